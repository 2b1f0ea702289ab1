//! The previous embedded store: one `redb` file, every write one durable (fsync'd) B-tree
//! transaction. [`crate::EmbeddedStore`] replaced it as the default (redb rewrites pages on every
//! small write: hundreds of KiB a minute on an idle cluster); it stays for importing an existing
//! `state.redb` and for the benchmark. Writes run on tokio's blocking pool.

use crate::history::{range_start, History};
use crate::txn::{self, Evaluated};
use crate::{
    BoxFuture, KeyValue, RangeRequest, RangeResponse, Result, Store, StoreError, Txn, TxnResponse,
    Watch,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

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

fn open_db(path: &Path) -> Result<Database> {
    let err = |e: String| StoreError::Open {
        path: path.display().to_string(),
        reason: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    Database::create(path).map_err(|e| err(e.to_string()))
}

/// Every key and the revision of a redb store file (for the import into the log store).
pub(crate) fn read_all(path: &Path) -> Result<(Vec<KeyValue>, i64)> {
    let db = open_db(path)?;
    let txn = db.begin_read().map_err(backend)?;
    let revision = match txn.open_table(META) {
        Ok(meta) => meta.get(REVISION).map_err(backend)?.map(|g| g.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(backend(e)),
    }
    .unwrap_or(1);
    let mut out = Vec::new();
    match txn.open_table(KV) {
        Ok(kv) => {
            for item in kv.iter().map_err(backend)? {
                let (k, v) = item.map_err(backend)?;
                out.push(decode(k.value(), v.value())?);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(backend(e)),
    }
    Ok((out, revision))
}

/// The redb-backed store (see the module docs).
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Serialises writers with the history so that watchers see events in revision order.
    state: Mutex<State>,
}

struct State {
    revision: i64,
    history: History,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn txn(&self, t: Txn) -> Result<TxnResponse> {
        let mut st = self.state();
        let wtxn = self.db.begin_write().map_err(backend)?;
        let Evaluated {
            response, events, ..
        } = {
            let mut kv = wtxn.open_table(KV).map_err(backend)?;
            let ev = txn::evaluate(t, st.revision, |k| match kv.get(k).map_err(backend)? {
                Some(g) => Ok(Some(decode(k, g.value())?)),
                None => Ok(None),
            })?;
            if ev.writes.is_empty() {
                return Ok(ev.response);
            }
            for (k, v) in &ev.writes {
                match v {
                    Some(v) => {
                        kv.insert(
                            k.as_str(),
                            encode(v.create_revision, v.mod_revision, &v.value).as_slice(),
                        )
                        .map_err(backend)?;
                    }
                    None => {
                        kv.remove(k.as_str()).map_err(backend)?;
                    }
                }
            }
            let mut meta = wtxn.open_table(META).map_err(backend)?;
            meta.insert(REVISION, ev.response.revision)
                .map_err(backend)?;
            ev
        };
        wtxn.commit().map_err(backend)?;
        st.revision = response.revision;
        for e in events {
            st.history.push(e);
        }
        Ok(response)
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        // The snapshot and the revision are taken under the writer lock so that they match.
        let st = self.state();
        let rtxn = self.db.begin_read().map_err(backend)?;
        let kv = rtxn.open_table(KV).map_err(backend)?;
        let iter = kv
            .range(range_start(req)..)
            .map_err(backend)?
            .map(|item| item.map_err(backend));
        st.history.range(
            req,
            st.revision,
            iter,
            |(k, _)| k.value(),
            |(k, v)| decode(k.value(), v.value()),
        )
    }
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = open_db(path)?;
        let txn = db.begin_write().map_err(backend)?;
        let revision = {
            let meta = txn.open_table(META).map_err(backend)?;
            let r = meta.get(REVISION).map_err(backend)?.map(|g| g.value());
            let _ = txn.open_table(KV).map_err(backend)?;
            r.unwrap_or(1)
        };
        txn.commit().map_err(backend)?;
        tracing::info!(path = %path.display(), revision, "redb store open");
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                state: Mutex::new(State {
                    revision,
                    history: History::new(revision),
                }),
            }),
        })
    }

    /// Runs `f` on the blocking pool (a redb commit waits for an fsync).
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'_, Result<T>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
        })
    }
}

impl Store for RedbStore {
    fn current_revision(&self) -> BoxFuture<'_, Result<i64>> {
        let rev = self.inner.state().revision;
        Box::pin(std::future::ready(Ok(rev)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            match kv.get(key.as_str()).map_err(backend)? {
                Some(g) => Ok(Some(decode(&key, g.value())?)),
                None => Ok(None),
            }
        })
    }

    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse>> {
        self.blocking(move |inner| inner.range(&req))
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse>> {
        self.blocking(move |inner| inner.txn(txn))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch>> {
        let w = self.inner.state().history.watch(prefix, after);
        Box::pin(std::future::ready(w))
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>> {
        let mut st = self.inner.state();
        let current = st.revision;
        let r = st.history.compact(revision, current);
        Box::pin(std::future::ready(r))
    }
}
