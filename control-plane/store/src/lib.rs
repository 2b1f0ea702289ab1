//! Skiff's key-value store with etcd semantics.
//!
//! Start with [`Store`]: one trait with a global revision, per-key create/mod revisions,
//! compare-and-swap updates, prefix range reads and watches from a revision. The API server's
//! `resourceVersion` is the store revision, so list/watch semantics are the real ones.
//!
//! Implementations: [`EmbeddedStore`] (default; `redb`, crash-safe, fsync on every commit).
//! An etcd v3 backend for HA comes next behind the same trait.

mod embedded;
mod history;

pub use embedded::EmbeddedStore;

use std::fmt;

/// One stored key with its revisions.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key.
    pub create_revision: i64,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("len", &self.value.len())
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// What happened to a key at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change, as a watcher sees it. For a delete, `kv` is the last value with `mod_revision` set to
/// the revision of the delete.
#[derive(Clone, Debug)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0} already exists")]
    AlreadyExists(String),
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: i64,
        actual: i64,
    },
    #[error("revision {requested} has been compacted; the oldest watchable revision is {oldest}: list again")]
    Compacted { requested: i64, oldest: i64 },
    #[error("store database error: {0}")]
    Backend(String),
    #[error("cannot open store at {path}: {reason}")]
    Open { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A live watch: events with a revision greater than the one it was started from, in order.
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<Event>>,
}

impl Watch {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Result<Event>>) -> Self {
        Self { rx }
    }
    /// The next event; `None` when the store is gone. An `Err(Compacted)` means the watcher fell
    /// too far behind and must list again.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

/// A key-value store with etcd semantics.
pub trait Store: Send + Sync + 'static {
    /// The revision of the last write.
    fn current_revision(&self) -> i64;
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, in key order, and the revision they were read at.
    fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)>;
    /// Creates `key`; fails with `AlreadyExists` if it is there.
    fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;
    /// Replaces `key`. With `expected` set, only if its mod revision is still that (CAS).
    fn update(&self, key: &str, value: Vec<u8>, expected: Option<i64>) -> Result<KeyValue>;
    /// Deletes `key` (CAS as in `update`); returns the deleted value with the delete's revision.
    fn delete(&self, key: &str, expected: Option<i64>) -> Result<KeyValue>;
    /// Watches keys under `prefix` for changes after revision `after`.
    fn watch(&self, prefix: &str, after: i64) -> Result<Watch>;
}
