//! State stores, kept apart from the handlers: an in-memory map per kind, each record persisted as
//! versioned JSON in `<dir>/<key>/<file>` (temp + fsync + rename) and reloaded at start.

pub(crate) mod container;
pub(crate) mod image;
pub(crate) mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CriError, Result};
use crate::util::{read_json, write_json_atomic, write_json_fast};

/// Version of the on-disk record format; bump and migrate on incompatible changes.
pub(crate) const RECORD_VERSION: u32 = 1;

/// A record kept by a [`Store`].
pub(crate) trait Record:
    Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
    /// What the record is called in errors ("sandbox", "container", "image").
    const KIND: &'static str;
    /// The file name inside the record's directory.
    const FILE: &'static str;
    fn key(&self) -> &str;
    fn version(&self) -> u32;
    /// Whether writes are fsynced. Image records are (their blobs and snapshots outlive a
    /// reboot); sandbox and container records describe processes and mounts that a reboot ends,
    /// so a rename without fsync is enough (whole across a server crash).
    const DURABLE: bool = false;
}

pub(crate) struct Store<T> {
    dir: PathBuf,
    items: RwLock<HashMap<String, T>>,
}

impl<T: Record> Store<T> {
    /// Loads every `<dir>/*/<FILE>`; directories without a record (a crash mid-create) are
    /// returned in the second value so the caller can clean them up.
    pub(crate) fn load(dir: &Path) -> Result<(Store<T>, Vec<PathBuf>)> {
        std::fs::create_dir_all(dir).map_err(CriError::io("creating state dir", dir))?;
        let mut items = HashMap::new();
        let mut orphans = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(CriError::io("reading state dir", dir))? {
            let entry = entry.map_err(CriError::io("reading state dir", dir))?;
            if !entry.path().is_dir() {
                continue;
            }
            let file = entry.path().join(T::FILE);
            if !file.exists() {
                orphans.push(entry.path());
                continue;
            }
            match read_json::<T>(&file) {
                Ok(rec) if rec.version() == RECORD_VERSION => {
                    items.insert(rec.key().to_string(), rec);
                }
                Ok(rec) => tracing::warn!(
                    path = %file.display(),
                    version = rec.version(),
                    "skipping {} record of unknown version",
                    T::KIND
                ),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable {} record", T::KIND),
            }
        }
        Ok((
            Store {
                dir: dir.to_path_buf(),
                items: RwLock::new(items),
            },
            orphans,
        ))
    }

    pub(crate) fn record_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Persists the record, then publishes it in memory.
    pub(crate) fn put(&self, rec: T) -> Result<()> {
        let path = self.record_dir(rec.key()).join(T::FILE);
        if T::DURABLE {
            write_json_atomic(&path, &rec)?;
        } else {
            write_json_fast(&path, &rec)?;
        }
        self.items
            .write()
            .expect("store lock poisoned")
            .insert(rec.key().to_string(), rec);
        Ok(())
    }

    /// Looks a record up by full key or by a unique key prefix.
    pub(crate) fn get(&self, key: &str) -> Result<T> {
        let items = self.items.read().expect("store lock poisoned");
        if let Some(r) = items.get(key) {
            return Ok(r.clone());
        }
        if !key.is_empty() {
            let mut found = items.iter().filter(|(k, _)| k.starts_with(key));
            if let (Some((_, r)), None) = (found.next(), found.next()) {
                return Ok(r.clone());
            }
        }
        Err(CriError::not_found(T::KIND, key))
    }

    pub(crate) fn list(&self) -> Vec<T> {
        self.items
            .read()
            .expect("store lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Updates a record in place with `f` and persists it; returns the new value.
    pub(crate) fn update(&self, key: &str, f: impl FnOnce(&mut T)) -> Result<T> {
        let mut rec = self.get(key)?;
        f(&mut rec);
        self.put(rec.clone())?;
        Ok(rec)
    }

    /// Forgets a record and removes its file (the caller removes the rest of its directory).
    pub(crate) fn delete(&self, key: &str) -> Result<()> {
        let path = self.record_dir(key).join(T::FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CriError::io("removing record", path)(e)),
        }
        self.items.write().expect("store lock poisoned").remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::image::ImageRecord;

    #[test]
    fn records_persist_and_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, orphans) = Store::<ImageRecord>::load(tmp.path()).unwrap();
        assert!(orphans.is_empty());
        let mut rec = ImageRecord::new(format!("sha256:{}", "ab".repeat(32)));
        rec.repo_tags.push("x/y:z".into());
        store.put(rec).unwrap();
        std::fs::create_dir_all(tmp.path().join("half-made")).unwrap();

        let (again, orphans) = Store::<ImageRecord>::load(tmp.path()).unwrap();
        assert_eq!(orphans, vec![tmp.path().join("half-made")]);
        let got = again.get("abab").unwrap();
        assert_eq!(got.repo_tags, ["x/y:z"]);
        again.delete(got.hex()).unwrap();
        assert!(matches!(again.get("abab"), Err(CriError::NotFound { .. })));
    }
}
