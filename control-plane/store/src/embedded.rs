//! The embedded store: one `redb` file, every write one durable (fsync'd) transaction.

use crate::history::History;
use crate::{Event, EventKind, KeyValue, Result, Store, StoreError, Watch};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Mutex;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode(create: i64, modr: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modr.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue> {
    if raw.len() < 16 {
        return Err(StoreError::Backend(format!("corrupt record for {key}")));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&raw[..8]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[8..16]);
    Ok(KeyValue {
        key: key.to_string(),
        value: raw[16..].to_vec(),
        create_revision: i64::from_le_bytes(a),
        mod_revision: i64::from_le_bytes(b),
    })
}

/// The default store of `skiff server`.
pub struct EmbeddedStore {
    db: Database,
    /// Serialises writers with the history so that watchers see events in revision order.
    state: Mutex<State>,
}

struct State {
    revision: i64,
    history: History,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            let meta = txn.open_table(META).map_err(backend)?;
            let r = meta.get(REVISION).map_err(backend)?.map(|g| g.value());
            let _ = txn.open_table(KV).map_err(backend)?;
            r.unwrap_or(1)
        };
        txn.commit().map_err(backend)?;
        tracing::info!(path = %path.display(), revision, "embedded store open");
        Ok(Self {
            db,
            state: Mutex::new(State {
                revision,
                history: History::new(revision),
            }),
        })
    }

    /// Runs one write: `f` gets the current record (if any) and the new revision and says what to
    /// store (`Some`) or delete (`None`).
    fn write<F>(&self, key: &str, f: F) -> Result<Event>
    where
        F: FnOnce(Option<&KeyValue>, i64) -> Result<Option<Vec<u8>>>,
    {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let rev = st.revision + 1;
        let txn = self.db.begin_write().map_err(backend)?;
        let ev = {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let prev = match kv.get(key).map_err(backend)? {
                Some(g) => Some(decode(key, g.value())?),
                None => None,
            };
            let ev = match f(prev.as_ref(), rev)? {
                Some(value) => {
                    let create = prev.as_ref().map(|p| p.create_revision).unwrap_or(rev);
                    kv.insert(key, encode(create, rev, &value).as_slice())
                        .map_err(backend)?;
                    Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: key.to_string(),
                            value,
                            create_revision: create,
                            mod_revision: rev,
                        },
                        prev,
                    }
                }
                None => {
                    let Some(p) = prev else {
                        return Err(StoreError::NotFound(key.to_string()));
                    };
                    kv.remove(key).map_err(backend)?;
                    let mut gone = p.clone();
                    gone.mod_revision = rev;
                    Event {
                        kind: EventKind::Delete,
                        kv: gone,
                        prev: Some(p),
                    }
                }
            };
            let mut meta = txn.open_table(META).map_err(backend)?;
            meta.insert(REVISION, rev).map_err(backend)?;
            ev
        };
        txn.commit().map_err(backend)?;
        st.revision = rev;
        st.history.push(ev.clone());
        Ok(ev)
    }
}

fn check(key: &str, prev: Option<&KeyValue>, expected: Option<i64>) -> Result<()> {
    let Some(p) = prev else {
        return Err(StoreError::NotFound(key.to_string()));
    };
    if let Some(exp) = expected {
        if exp != p.mod_revision {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                expected: exp,
                actual: p.mod_revision,
            });
        }
    }
    Ok(())
}

impl Store for EmbeddedStore {
    fn current_revision(&self) -> i64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revision
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let txn = self.db.begin_read().map_err(backend)?;
        let kv = txn.open_table(KV).map_err(backend)?;
        match kv.get(key).map_err(backend)? {
            Some(g) => Ok(Some(decode(key, g.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        // Read the revision under the writer lock so it matches the snapshot.
        let (txn, rev) = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (self.db.begin_read().map_err(backend)?, st.revision)
        };
        let kv = txn.open_table(KV).map_err(backend)?;
        let mut out = Vec::new();
        for item in kv.range(prefix..).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode(key, v.value())?);
        }
        Ok((out, rev))
    }

    fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.write(key, |prev, _| match prev {
            Some(_) => Err(StoreError::AlreadyExists(key.to_string())),
            None => Ok(Some(value)),
        })
        .map(|e| e.kv)
    }

    fn update(&self, key: &str, value: Vec<u8>, expected: Option<i64>) -> Result<KeyValue> {
        self.write(key, |prev, _| {
            check(key, prev, expected)?;
            Ok(Some(value))
        })
        .map(|e| e.kv)
    }

    fn delete(&self, key: &str, expected: Option<i64>) -> Result<KeyValue> {
        self.write(key, |prev, _| {
            check(key, prev, expected)?;
            Ok(None)
        })
        .map(|e| e.kv)
    }

    fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.history.watch(prefix, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revisions_cas_and_watch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let s = EmbeddedStore::open(&path).unwrap();
        let r0 = s.current_revision();
        let a = s.create("/r/pods/a", b"1".to_vec()).unwrap();
        assert_eq!(a.mod_revision, r0 + 1);
        assert!(matches!(
            s.create("/r/pods/a", b"x".to_vec()),
            Err(StoreError::AlreadyExists(_))
        ));
        let mut w = s.watch("/r/pods/", r0).unwrap();
        let b = s
            .update("/r/pods/a", b"2".to_vec(), Some(a.mod_revision))
            .unwrap();
        assert_eq!(b.create_revision, a.create_revision);
        assert!(matches!(
            s.update("/r/pods/a", b"3".to_vec(), Some(a.mod_revision)),
            Err(StoreError::Conflict { .. })
        ));
        s.create("/r/nodes/n", b"n".to_vec()).unwrap();
        let d = s.delete("/r/pods/a", None).unwrap();
        assert_eq!(d.value, b"2");
        let e1 = w.next().await.unwrap().unwrap();
        assert_eq!(
            (e1.kind, e1.kv.value.as_slice()),
            (EventKind::Put, &b"1"[..])
        );
        let e2 = w.next().await.unwrap().unwrap();
        assert_eq!(e2.kv.mod_revision, b.mod_revision);
        let e3 = w.next().await.unwrap().unwrap();
        assert_eq!(e3.kind, EventKind::Delete);
        let (items, rev) = s.list("/r/").unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(rev, s.current_revision());
        drop(s);
        // Crash-safe: everything committed is there after reopening.
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.current_revision(), rev);
        assert_eq!(s.get("/r/nodes/n").unwrap().unwrap().value, b"n");
        assert!(matches!(
            s.watch("/r/", r0),
            Err(StoreError::Compacted { .. })
        ));
    }
}
