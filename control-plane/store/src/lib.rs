//! Skiff's key-value store with etcd semantics.
//!
//! Start with [`Store`]: one object-safe async trait with a global revision, per-key create/mod
//! revisions, transactions (compare mod revisions, then puts/deletes atomically), prefix range
//! reads with a limit, a start key and a past revision, watches from a revision and compaction.
//! The API server's `resourceVersion` is the store revision, so list/watch semantics are the real
//! ones.
//!
//! Every method returns a [`BoxFuture`] (a hand-written `Pin<Box<dyn Future + Send>>`, no macro)
//! so that `Arc<dyn Store>` works and no implementation blocks a tokio worker: the embedded
//! backends answer reads from memory and hand writes to a committer thread the caller awaits.
//! `create`/`update`/`delete`/`list` are provided methods built on [`Store::txn`] and
//! [`Store::range`], which is all an etcd v3 backend has to implement (the request shapes map
//! one to one onto etcd's `Txn`, `Range`, `Watch` and `Compact`).
//!
//! Implementations:
//! - [`EmbeddedStore`] (default): an append-only, CRC'd log with an in-memory index, group commit
//!   and periodic rewrites (`log.rs`); imports an old `state.redb` once.
//! - [`RedbStore`]: the previous `redb` B-tree store, kept for the import and for comparison.

mod embedded;
mod history;
mod log;
mod redb_store;
mod txn;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use redb_store::RedbStore;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// The future every [`Store`] method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
/// the revision of the delete. Every op of one transaction has the transaction's revision.
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
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision { requested: i64, current: i64 },
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
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
    /// A watch fed by `rx` (for backends outside this crate, e.g. one on etcd).
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<Event>>) -> Self {
        Self { rx }
    }
    /// The next event; `None` when the store is gone or the watcher fell too far behind (it
    /// must list again).
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
    /// The next event if one is waiting (never waits). A watcher that drains in batches and
    /// does not wait in between is not woken for each event.
    pub fn try_next(&mut self) -> Option<Result<Event>> {
        self.rx.try_recv().ok()
    }
}

/// A range read: the keys starting with `prefix`, in key order (etcd `Range` with
/// `range_end = prefix_end(prefix)`).
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub prefix: String,
    /// First key to return (inclusive), for pagination: pass the last key of the previous page
    /// followed by `"\0"`. `None` starts at `prefix`.
    pub start: Option<String>,
    /// At most this many keys; 0 means no limit.
    pub limit: usize,
    /// Read at this revision; 0 means the current one. A revision older than the oldest one
    /// still in history answers `Compacted`, a newer one than current `FutureRevision`.
    pub revision: i64,
}

impl RangeRequest {
    /// Every key under `prefix` at the current revision.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys follow the last one returned (the limit cut the answer).
    pub more: bool,
    /// How many keys the range holds from `start` on, ignoring the limit (etcd `count`).
    pub count: usize,
    /// The revision the answer reflects: the requested one, or the current one when 0 was asked.
    pub revision: i64,
}

/// How a [`Compare`] compares a key's mod revision (0 when the key does not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// A transaction guard on one key's mod revision (etcd `Compare` with target `MOD`).
/// `mod_revision == 0` with `Equal` means "the key does not exist", `Greater` 0 "it exists".
#[derive(Clone, Debug)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub mod_revision: i64,
}

impl Compare {
    pub fn new(key: impl Into<String>, op: CompareOp, mod_revision: i64) -> Self {
        Self {
            key: key.into(),
            op,
            mod_revision,
        }
    }
    pub(crate) fn holds(&self, actual: i64) -> bool {
        match self.op {
            CompareOp::Equal => actual == self.mod_revision,
            CompareOp::NotEqual => actual != self.mod_revision,
            CompareOp::Greater => actual > self.mod_revision,
            CompareOp::Less => actual < self.mod_revision,
        }
    }
}

#[derive(Clone, Debug)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// Deleting a missing key is allowed and changes nothing (as in etcd).
    Delete {
        key: String,
    },
}

impl TxnOp {
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
        }
    }
}

/// If every compare holds, apply `ops` atomically at one new revision. A key may appear in at
/// most one op (etcd rejects duplicates too).
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

/// What one op of a successful transaction did.
#[derive(Clone, Debug)]
pub enum OpResult {
    /// The key as stored now.
    Put(KeyValue),
    /// The deleted key's last value (`None` when it did not exist).
    Delete(Option<KeyValue>),
}

#[derive(Clone, Debug)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store revision after the transaction: the new one when it wrote something, else the
    /// current one.
    pub revision: i64,
    /// On success, one result per op in order; empty on failure.
    pub results: Vec<OpResult>,
    /// On failure, the current value of each compared key in `compare` order (etcd: a `Range`
    /// per compared key in the failure branch); empty on success.
    pub current: Vec<Option<KeyValue>>,
}

/// A key-value store with etcd semantics. Object-safe: use it as `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// The revision of the last write.
    fn current_revision(&self) -> BoxFuture<'_, Result<i64>>;

    /// The current value of `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// A prefix range read with limit, start key and revision (see [`RangeRequest`]).
    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse>>;

    /// Applies `txn` durably: when the future resolves `Ok`, the write survives a crash.
    /// A dropped future does not cancel the write.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse>>;

    /// Watches keys under `prefix` for changes after revision `after`.
    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch>>;

    /// Forgets history up to `revision`: reads and watches at older revisions answer
    /// `Compacted` from now on.
    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>>;

    /// Every key starting with `prefix`, in key order, and the revision they were read at.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<(Vec<KeyValue>, i64)>> {
        Box::pin(async move {
            let r = self.range(RangeRequest::prefix(prefix)).await?;
            Ok((r.kvs, r.revision))
        })
    }

    /// The keys under `prefix` whose value contains the bytes `needle`, at the current revision:
    /// a cheap pre-filter before decoding (e.g. the objects that may name an owner's uid). The
    /// default lists and filters; a backend holding its values in memory skips copying the
    /// others.
    fn list_containing<'a>(
        &'a self,
        prefix: &'a str,
        needle: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<KeyValue>>> {
        Box::pin(async move {
            let (kvs, _) = self.list(prefix).await?;
            let finder = memchr::memmem::Finder::new(needle);
            Ok(kvs
                .into_iter()
                .filter(|kv| finder.find(&kv.value).is_some())
                .collect())
        })
    }

    /// Creates `key`; fails with `AlreadyExists` if it is there.
    fn create<'a>(&'a self, key: &'a str, value: Vec<u8>) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            let r = self
                .txn(Txn {
                    compare: vec![Compare::new(key, CompareOp::Equal, 0)],
                    ops: vec![TxnOp::Put {
                        key: key.to_string(),
                        value,
                    }],
                })
                .await?;
            if !r.succeeded {
                return Err(StoreError::AlreadyExists(key.to_string()));
            }
            put_result(r)
        })
    }

    /// Replaces `key`, which must exist. With `expected` set, only if its mod revision is still
    /// that (CAS), else `Conflict`.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expected: Option<i64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            let r = self
                .txn(Txn {
                    compare: vec![guard(key, expected)],
                    ops: vec![TxnOp::Put {
                        key: key.to_string(),
                        value,
                    }],
                })
                .await?;
            if !r.succeeded {
                return Err(guard_failed(key, expected, &r));
            }
            put_result(r)
        })
    }

    /// Deletes `key` (CAS as in `update`); returns the deleted value with the delete's revision.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<i64>,
    ) -> BoxFuture<'a, Result<KeyValue>> {
        Box::pin(async move {
            let r = self
                .txn(Txn {
                    compare: vec![guard(key, expected)],
                    ops: vec![TxnOp::Delete {
                        key: key.to_string(),
                    }],
                })
                .await?;
            if !r.succeeded {
                return Err(guard_failed(key, expected, &r));
            }
            match r.results.into_iter().next() {
                Some(OpResult::Delete(Some(mut kv))) => {
                    kv.mod_revision = r.revision;
                    Ok(kv)
                }
                _ => Err(StoreError::NotFound(key.to_string())),
            }
        })
    }
}

fn guard(key: &str, expected: Option<i64>) -> Compare {
    match expected {
        Some(rev) => Compare::new(key, CompareOp::Equal, rev),
        None => Compare::new(key, CompareOp::Greater, 0),
    }
}

fn guard_failed(key: &str, expected: Option<i64>, r: &TxnResponse) -> StoreError {
    match (r.current.first().cloned().flatten(), expected) {
        (None, _) | (_, None) => StoreError::NotFound(key.to_string()),
        (Some(kv), Some(exp)) => StoreError::Conflict {
            key: key.to_string(),
            expected: exp,
            actual: kv.mod_revision,
        },
    }
}

fn put_result(r: TxnResponse) -> Result<KeyValue> {
    match r.results.into_iter().next() {
        Some(OpResult::Put(kv)) => Ok(kv),
        other => Err(StoreError::Backend(format!(
            "transaction answered {other:?} to a put"
        ))),
    }
}

/// Smallest key greater than every key starting with `prefix` (etcd's `range_end`), or `None`
/// when there is none (empty prefix or all 0xff).
pub fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
