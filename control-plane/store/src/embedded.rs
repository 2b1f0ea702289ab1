//! The default store: an append-only log (`log.rs`) and an in-memory index of the live keys.
//!
//! Reads are answered from memory under a read lock. A commit takes a batch of transactions,
//! evaluates them in order against the index, appends one record per transaction, makes them durable
//! once, then publishes the batch (index, revision, watch events) and answers the callers. A write
//! is visible to readers only once it is durable. When the log has grown past
//! `2 x live data + rewrite_slack`, the commit rewrites it as a snapshot.
//!
//! Who commits (the log file is behind one mutex, so commits never overlap):
//! - **Inline**, when the caller is the only writer in progress (none committing, queued or
//!   waiting) and runs on a worker of a multi-threaded tokio runtime: it commits its own
//!   transaction inside
//!   `tokio::task::block_in_place` (tokio hands the worker's other tasks to another thread for
//!   the duration, so no task waits behind the fsync). A lone writer thus pays no hand-off to
//!   another thread and back (two wake-ups, each costly on a VM's idle vCPU). Concurrent writers
//!   never go inline: a batch of one would cost them the sharing of fsyncs.
//! - **The committer thread** otherwise: writers that arrive while a commit runs queue for it,
//!   and it takes every queued transaction at once when the log is free (group commit: they
//!   share one fsync).

use crate::history::{range_start, History};
use crate::log::{self, Entry, Index, LogFile, LOG};
use crate::txn::{self, Evaluated};
use crate::{
    BoxFuture, KeyValue, RangeRequest, RangeResponse, Result, Store, StoreError, Txn, TxnResponse,
    Watch,
};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// The previous backend's file in the same directory, imported once.
pub const REDB_FILE: &str = "state.redb";
const LOCK: &str = "LOCK";
/// Most transactions one fsync covers.
const MAX_BATCH: usize = 4096;

/// Tuning of [`EmbeddedStore`].
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The log is rewritten as a snapshot when it is larger than twice the live data plus this.
    pub rewrite_slack: u64,
    /// A lone writer on a multi-threaded tokio runtime commits on its own thread (see the module
    /// docs). Off: every write goes through the committer thread.
    pub inline_commit: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            rewrite_slack: 8 << 20,
            inline_commit: true,
        }
    }
}

/// The default store of `skiff server`: `<dir>/store.log`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    dir: PathBuf,
    /// Held (flock) while open: one process per directory.
    _lock: File,
}

struct Shared {
    /// Lock order: `writer`, then `state`, then `history`.
    state: RwLock<State>,
    history: Mutex<History>,
    /// The log, held by whoever commits.
    writer: Mutex<Writer>,
    /// Writes in progress (from `txn` until answered or dropped).
    writers: AtomicUsize,
    /// Commits so far: (all, inline).
    commits: (AtomicU64, AtomicU64),
    opts: EmbeddedOptions,
}

struct Writer {
    file: LogFile,
    /// The records of the batch being committed.
    buf: Vec<u8>,
}

struct State {
    index: Index,
    revision: i64,
    /// Size of a snapshot of `index`.
    live: u64,
    /// Set after an I/O error: what is on disk is unknown, so no more writes are accepted.
    failed: Option<String>,
}

type Request = (Txn, oneshot::Sender<Result<TxnResponse>>);

fn open_err(dir: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Open {
        path: dir.display().to_string(),
        reason: e.to_string(),
    }
}

impl Shared {
    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    fn state_mut(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`, importing `dir/state.redb` (the previous
    /// backend) the first time.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: &Path, opts: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| open_err(dir, e))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(|e| open_err(dir, e))?;
        lock.try_lock()
            .map_err(|e| open_err(dir, format!("in use by another process ({e})")))?;
        let log_path = dir.join(LOG);
        if !log_path.exists() {
            Self::create_log(dir)?;
        } else if dir.join(REDB_FILE).exists() {
            // A crash between writing the imported log and renaming the old file.
            tracing::warn!(
                path = %dir.join(REDB_FILE).display(),
                "ignoring an old redb store: the log store in the same directory is newer"
            );
        }
        let data = std::fs::read(&log_path).map_err(|e| open_err(dir, e))?;
        let rep = log::replay(&data, &log_path).map_err(|e| open_err(dir, e))?;
        drop(data);
        if rep.torn > 0 {
            tracing::warn!(
                path = %log_path.display(),
                offset = rep.good_len,
                bytes = rep.torn,
                "store log ends with a torn (unacknowledged) write; cutting it off"
            );
        }
        let mut file =
            LogFile::open(dir, rep.good_len, rep.torn > 0).map_err(|e| open_err(dir, e))?;
        let live = snapshot_len(&rep.index);
        if needs_rewrite(file.len, live, &opts) {
            file.rewrite(rep.revision, &rep.index)
                .map_err(|e| open_err(dir, e))?;
        }
        tracing::info!(
            path = %log_path.display(),
            revision = rep.revision,
            keys = rep.index.len(),
            log_bytes = file.len,
            "embedded store open"
        );
        let shared = Arc::new(Shared {
            history: Mutex::new(History::new(rep.revision)),
            state: RwLock::new(State {
                index: rep.index,
                revision: rep.revision,
                live,
                failed: None,
            }),
            writer: Mutex::new(Writer {
                file,
                buf: Vec::new(),
            }),
            writers: AtomicUsize::new(0),
            commits: Default::default(),
            opts,
        });
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        let committer = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || commit_loop(&sh, rx))
            .map_err(|e| open_err(dir, e))?;
        Ok(Self {
            shared,
            tx: Some(tx),
            committer: Some(committer),
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the log: empty at revision 1, or with the keys of an old `state.redb`, which is
    /// then renamed `state.redb.imported`.
    fn create_log(dir: &Path) -> Result<()> {
        let redb = dir.join(REDB_FILE);
        if !redb.exists() {
            return log::write_snapshot(dir, 1, std::iter::empty())
                .map(drop)
                .map_err(|e| open_err(dir, e));
        }
        let (kvs, revision) = crate::redb_store::read_all(&redb)?;
        let index: Index = kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    Entry {
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        value: kv.value,
                    },
                )
            })
            .collect();
        log::write_snapshot(dir, revision, index.iter()).map_err(|e| open_err(dir, e))?;
        let done = dir.join(format!("{REDB_FILE}.imported"));
        std::fs::rename(&redb, &done).map_err(|e| open_err(dir, e))?;
        log::sync_dir(dir).map_err(|e| open_err(dir, e))?;
        tracing::info!(
            from = %redb.display(),
            keys = index.len(),
            revision,
            "imported the redb store into the log store; the old file is kept as {}",
            done.display()
        );
        Ok(())
    }

    /// Commits so far (batches, each with one fsync) and how many of them a lone writer made
    /// inline.
    pub fn commit_counts(&self) -> (u64, u64) {
        let (all, inline) = &self.shared.commits;
        (all.load(Ordering::Relaxed), inline.load(Ordering::Relaxed))
    }

    /// Commits `txn` on this thread when `lone` (no other write in progress), the log is free
    /// and the thread is a worker of a multi-threaded runtime (see the module docs); otherwise
    /// gives it back, for the committer.
    fn commit_inline(
        &self,
        lone: bool,
        txn: Txn,
        reply: oneshot::Sender<Result<TxnResponse>>,
    ) -> Option<Request> {
        let sh = &self.shared;
        let multi_thread = || {
            tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        };
        if !lone || !sh.opts.inline_commit || !multi_thread() {
            return Some((txn, reply));
        }
        let Ok(mut w) = sh.writer.try_lock() else {
            return Some((txn, reply));
        };
        tokio::task::block_in_place(|| commit(sh, &mut w, vec![(txn, reply)]));
        sh.commits.1.fetch_add(1, Ordering::Relaxed);
        None
    }

    fn read_range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let st = self.shared.state();
        let history = self.shared.history();
        let iter = st
            .index
            .range::<str, _>((
                std::ops::Bound::Included(range_start(req)),
                std::ops::Bound::Unbounded,
            ))
            .map(Ok);
        history.range(
            req,
            st.revision,
            iter,
            |(k, _)| k.as_str(),
            |(k, e)| Ok(e.to_kv(k)),
        )
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // The committer finishes the queued writes and stops when the queue closes.
        drop(self.tx.take());
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

fn snapshot_len(index: &Index) -> u64 {
    8 + 16
        + index
            .iter()
            .map(|(k, e)| Entry::encoded_len(k, e.value.len()))
            .sum::<u64>()
}

fn needs_rewrite(log_len: u64, live: u64, opts: &EmbeddedOptions) -> bool {
    log_len > live.saturating_mul(2).saturating_add(opts.rewrite_slack)
}

fn commit_loop(shared: &Shared, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        // Wait for an inline commit to finish before taking the queue: what arrived meanwhile
        // joins this batch.
        let mut w = shared.writer();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        commit(shared, &mut w, batch);
    }
}

/// Commits `batch` (see the module docs) and answers each transaction's caller.
fn commit(shared: &Shared, w: &mut Writer, batch: Vec<Request>) {
    shared.commits.0.fetch_add(1, Ordering::Relaxed);
    let Writer { file, buf } = w;
    buf.clear();
    let mut done: Vec<(oneshot::Sender<Result<TxnResponse>>, Result<Evaluated>)> =
        Vec::with_capacity(batch.len());
    {
        let st = shared.state();
        if let Some(f) = &st.failed {
            for (_, reply) in batch {
                let _ = reply.send(Err(StoreError::Backend(f.clone())));
            }
            return;
        }
        // Values written earlier in this batch, not yet in the index.
        let mut overlay: HashMap<String, Option<KeyValue>> = HashMap::new();
        let mut rev = st.revision;
        for (t, reply) in batch {
            let r = txn::evaluate(t, rev, |k| {
                Ok(match overlay.get(k) {
                    Some(v) => v.clone(),
                    None => st.index.get(k).map(|e| e.to_kv(k)),
                })
            });
            if let Ok(ev) = &r {
                if !ev.writes.is_empty() {
                    rev = ev.response.revision;
                    log::encode_record(
                        buf,
                        rev,
                        ev.writes.iter().map(|(k, v)| {
                            (
                                k.as_str(),
                                v.as_ref().map(|kv| {
                                    (kv.create_revision, kv.mod_revision, kv.value.as_slice())
                                }),
                            )
                        }),
                    );
                    for (k, v) in &ev.writes {
                        overlay.insert(k.clone(), v.clone());
                    }
                }
            }
            done.push((reply, r));
        }
    }
    if !buf.is_empty() {
        if let Err(e) = file.append(buf) {
            let msg = format!("writing the store log failed, restart to recover: {e}");
            tracing::error!(error = %e, "store log write failed; refusing further writes");
            shared.state_mut().failed = Some(msg.clone());
            for (reply, _) in done {
                let _ = reply.send(Err(StoreError::Backend(msg.clone())));
            }
            return;
        }
    }
    // Durable: publish, answer, then send the events to watchers (the callers wait for
    // their answer; watchers do not wait for each other's writers).
    let mut published = Vec::new();
    let rewrite = {
        let mut st = shared.state_mut();
        let mut history = shared.history();
        for (_, r) in &mut done {
            let Ok(ev) = r else { continue };
            if ev.writes.is_empty() {
                continue;
            }
            for (k, v) in ev.writes.drain(..) {
                let key_len = Entry::encoded_len(&k, 0);
                let old = match v {
                    Some(kv) => {
                        st.live += key_len + kv.value.len() as u64;
                        st.index.insert(
                            k,
                            Entry {
                                create_revision: kv.create_revision,
                                mod_revision: kv.mod_revision,
                                value: kv.value,
                            },
                        )
                    }
                    None => st.index.remove(&k),
                };
                if let Some(o) = old {
                    st.live -= key_len + o.value.len() as u64;
                }
            }
            st.revision = ev.response.revision;
            for e in ev.events.drain(..) {
                history.record(e.clone());
                published.push(e);
            }
        }
        needs_rewrite(file.len, st.live, &shared.opts)
    };
    for (reply, r) in done {
        let _ = reply.send(r.map(|ev| ev.response));
    }
    shared.history().fan_out(&published);
    if rewrite {
        let st = shared.state();
        let before = file.len;
        match file.rewrite(st.revision, &st.index) {
            Ok(()) => tracing::info!(before, after = file.len, "store log rewritten"),
            Err(e) => {
                drop(st);
                tracing::error!(error = %e, "store log rewrite failed; refusing further writes");
                shared.state_mut().failed =
                    Some(format!("rewriting the store log failed, restart: {e}"));
            }
        }
    }
}

/// Counts a write in progress until dropped (answered, or its future dropped).
struct Writing<'a>(&'a AtomicUsize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Store for EmbeddedStore {
    fn current_revision(&self) -> BoxFuture<'_, Result<i64>> {
        let rev = self.shared.state().revision;
        Box::pin(std::future::ready(Ok(rev)))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let kv = self.shared.state().index.get(key).map(|e| e.to_kv(key));
        Box::pin(std::future::ready(Ok(kv)))
    }

    fn range(&self, req: RangeRequest) -> BoxFuture<'_, Result<RangeResponse>> {
        Box::pin(std::future::ready(self.read_range(&req)))
    }

    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResponse>> {
        Box::pin(async move {
            let lone = self.shared.writers.fetch_add(1, Ordering::AcqRel) == 0;
            let _writing = Writing(&self.shared.writers);
            let (reply, mut rx) = oneshot::channel();
            let Some(txn) = self.commit_inline(lone, txn, reply) else {
                return rx
                    .try_recv()
                    .map_err(|_| StoreError::Backend("an inline commit gave no answer".into()))?;
            };
            let sent = self.tx.as_ref().is_some_and(|tx| tx.send(txn).is_ok());
            if !sent {
                return Err(StoreError::Backend("the store is closed".into()));
            }
            rx.await
                .map_err(|_| StoreError::Backend("the store committer stopped".into()))?
        })
    }

    fn list_containing<'a>(
        &'a self,
        prefix: &'a str,
        needle: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<KeyValue>>> {
        // Under the read lock, copying only the matches: a scan for a uid over every stored
        // object would otherwise copy them all.
        let finder = memchr::memmem::Finder::new(needle);
        let kvs = {
            let st = self.shared.state();
            st.index
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
                .filter(|(_, e)| finder.find(&e.value).is_some())
                .map(|(k, e)| e.to_kv(k))
                .collect()
        };
        Box::pin(std::future::ready(Ok(kvs)))
    }

    fn watch<'a>(&'a self, prefix: &'a str, after: i64) -> BoxFuture<'a, Result<Watch>> {
        let w = self.shared.history().watch(prefix, after);
        Box::pin(std::future::ready(w))
    }

    fn compact(&self, revision: i64) -> BoxFuture<'_, Result<()>> {
        let r = {
            let st = self.shared.state();
            let r = self.shared.history().compact(revision, st.revision);
            r
        };
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compare, CompareOp, EventKind, OpResult, RedbStore, TxnOp};

    fn put(key: &str, value: &[u8]) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    #[tokio::test]
    async fn revisions_cas_and_watch() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let r0 = s.current_revision().await.unwrap();
        let a = s.create("/r/pods/a", b"1".to_vec()).await.unwrap();
        assert_eq!(a.mod_revision, r0 + 1);
        assert!(matches!(
            s.create("/r/pods/a", b"x".to_vec()).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let mut w = s.watch("/r/pods/", r0).await.unwrap();
        let b = s
            .update("/r/pods/a", b"2".to_vec(), Some(a.mod_revision))
            .await
            .unwrap();
        assert_eq!(b.create_revision, a.create_revision);
        assert!(matches!(
            s.update("/r/pods/a", b"3".to_vec(), Some(a.mod_revision))
                .await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.update("/r/pods/zz", b"3".to_vec(), None).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.delete("/r/pods/zz", Some(4)).await,
            Err(StoreError::NotFound(_))
        ));
        s.create("/r/nodes/n", b"n".to_vec()).await.unwrap();
        let d = s.delete("/r/pods/a", None).await.unwrap();
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
        assert_eq!(e3.kv.mod_revision, d.mod_revision);
        let (items, rev) = s.list("/r/").await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(rev, s.current_revision().await.unwrap());
        drop(s);
        // Everything committed is there after reopening, and revisions go on from there.
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), rev);
        assert_eq!(s.get("/r/nodes/n").await.unwrap().unwrap().value, b"n");
        assert!(s.get("/r/pods/a").await.unwrap().is_none());
        assert!(matches!(
            s.watch("/r/", r0).await,
            Err(StoreError::Compacted { .. })
        ));
        let c = s.create("/r/pods/c", b"c".to_vec()).await.unwrap();
        assert_eq!(c.mod_revision, rev + 1);
    }

    #[tokio::test]
    async fn txn_range_pages_past_revisions_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        txn_range_suite(s.as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_store_passes_the_same_suite() {
        let dir = tempfile::tempdir().unwrap();
        let s: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("db.redb")).unwrap());
        txn_range_suite(s.as_ref()).await;
    }

    /// Transactions, pages, past revisions and compaction, on any backend.
    async fn txn_range_suite(s: &dyn Store) {
        for i in 0..10 {
            s.create(&format!("/p/{i}"), vec![i]).await.unwrap();
        }
        s.create("/q/x", b"x".to_vec()).await.unwrap();
        // Values containing some bytes, under a prefix only.
        s.create("/q/y", b"owner uid-1 here".to_vec())
            .await
            .unwrap();
        s.create("/r/y", b"uid-1".to_vec()).await.unwrap();
        let hits = s.list_containing("/q/", b"uid-1").await.unwrap();
        assert_eq!(
            hits.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
            ["/q/y"]
        );
        assert!(s.list_containing("/p/", b"uid-1").await.unwrap().is_empty());
        s.delete("/q/y", None).await.unwrap();
        s.delete("/r/y", None).await.unwrap();
        let before = s.current_revision().await.unwrap();
        let p3 = s.get("/p/3").await.unwrap().unwrap();

        // A transaction: every compare holds, so both ops apply at one revision.
        let r = s
            .txn(Txn {
                compare: vec![
                    Compare::new("/p/3", CompareOp::Equal, p3.mod_revision),
                    Compare::new("/p/new", CompareOp::Equal, 0),
                ],
                ops: vec![
                    put("/p/new", b"n"),
                    TxnOp::Delete { key: "/p/3".into() },
                    TxnOp::Delete {
                        key: "/p/missing".into(),
                    },
                ],
            })
            .await
            .unwrap();
        assert!(r.succeeded);
        assert_eq!(r.revision, before + 1);
        assert!(matches!(&r.results[0], OpResult::Put(kv) if kv.mod_revision == before + 1));
        assert!(matches!(&r.results[1], OpResult::Delete(Some(kv)) if kv.value == [3]));
        assert!(matches!(&r.results[2], OpResult::Delete(None)));
        // The same compares fail now; nothing changes and the current values come back.
        let f = s
            .txn(Txn {
                compare: vec![Compare::new("/p/3", CompareOp::Equal, p3.mod_revision)],
                ops: vec![put("/p/3", b"again")],
            })
            .await
            .unwrap();
        assert!(!f.succeeded);
        assert_eq!(f.revision, before + 1);
        assert!(f.current[0].is_none());
        assert!(matches!(
            s.txn(Txn {
                compare: vec![],
                ops: vec![put("/d", b"1"), put("/d", b"2")],
            })
            .await,
            Err(StoreError::InvalidTxn(_))
        ));

        // Pages of 4 at the current revision.
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let page = s
                .range(RangeRequest {
                    prefix: "/p/".into(),
                    start: start.take(),
                    limit: 4,
                    revision: 0,
                })
                .await
                .unwrap();
            keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
            if !page.more {
                break;
            }
            start = Some(format!("{}\0", page.kvs.last().unwrap().key));
        }
        assert_eq!(keys.len(), 10);
        assert!(keys.contains(&"/p/new".to_string()) && !keys.contains(&"/p/3".to_string()));

        // The past: /p/3 is back, /p/new not there yet; pages at that revision too.
        let old = s
            .range(RangeRequest {
                prefix: "/p/".into(),
                start: Some("/p/2".into()),
                limit: 2,
                revision: before,
            })
            .await
            .unwrap();
        assert_eq!(old.revision, before);
        assert_eq!(old.count, 8);
        assert!(old.more);
        let got: Vec<_> = old.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(got, ["/p/2", "/p/3"]);
        assert!(matches!(
            s.range(RangeRequest {
                prefix: "/p/".into(),
                revision: before + 5,
                ..Default::default()
            })
            .await,
            Err(StoreError::FutureRevision { .. })
        ));

        // Compaction: the past revision is gone for reads and watches.
        s.compact(before + 1).await.unwrap();
        assert!(matches!(
            s.range(RangeRequest {
                prefix: "/p/".into(),
                revision: before,
                ..Default::default()
            })
            .await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(matches!(
            s.watch("/p/", before).await,
            Err(StoreError::Compacted { .. })
        ));
        assert!(s.watch("/p/", before + 1).await.is_ok());
        assert!(s.compact(before + 10).await.is_err());
    }

    /// Ranges at past revisions (pages from several starts) against the state kept by the test
    /// after each of many random puts and deletes.
    #[tokio::test]
    async fn past_revision_pages_match_the_state_then() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        s.create("/other", b"x".to_vec()).await.unwrap();
        let mut state = std::collections::BTreeMap::new();
        let mut states = vec![(s.current_revision().await.unwrap(), state.clone())];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..300u32 {
            let key = format!("/k/{:02}", next() % 30);
            if next() % 3 == 0 {
                if s.delete(&key, None).await.is_ok() {
                    state.remove(&key);
                }
            } else {
                let v = i.to_be_bytes().to_vec();
                let kv = s
                    .txn(Txn {
                        compare: vec![],
                        ops: vec![put(&key, &v)],
                    })
                    .await
                    .unwrap();
                assert!(kv.succeeded);
                state.insert(key, v);
            }
            states.push((s.current_revision().await.unwrap(), state.clone()));
        }
        for (rev, then) in states.iter().step_by(7) {
            for start in [None, Some("/k/1"), Some("/k/25\0")] {
                for limit in [0, 1, 5] {
                    let got = s
                        .range(RangeRequest {
                            prefix: "/k/".into(),
                            start: start.map(str::to_string),
                            limit,
                            revision: *rev,
                        })
                        .await
                        .unwrap();
                    let want: Vec<(&String, &Vec<u8>)> = then
                        .iter()
                        .filter(|(k, _)| start.is_none_or(|st| k.as_str() >= st))
                        .collect();
                    let n = if limit == 0 {
                        want.len()
                    } else {
                        limit.min(want.len())
                    };
                    let kvs: Vec<(&String, &Vec<u8>)> =
                        got.kvs.iter().map(|kv| (&kv.key, &kv.value)).collect();
                    assert_eq!(
                        kvs,
                        want[..n],
                        "revision {rev}, start {start:?}, limit {limit}"
                    );
                    assert_eq!(got.count, want.len());
                    assert_eq!(got.more, want.len() > n);
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_writer_commits_inline() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        for i in 0..20 {
            s.create(&format!("/l/{i}"), vec![1]).await.unwrap();
        }
        assert_eq!(s.commit_counts(), (20, 20));
        drop(s);
        // Off by option; and never on a current-thread runtime (block_in_place would panic).
        let opts = EmbeddedOptions {
            inline_commit: false,
            ..Default::default()
        };
        let s = EmbeddedStore::open_with(dir.path(), opts).unwrap();
        s.create("/l/off", vec![1]).await.unwrap();
        assert_eq!(s.commit_counts(), (1, 0));
        drop(s);
        let s = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let s = EmbeddedStore::open(dir.path()).unwrap();
            rt.block_on(s.create("/l/current", vec![1])).unwrap();
            s.commit_counts()
        });
        assert_eq!(s.join().unwrap(), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let r0 = s.current_revision().await.unwrap();
        let mut w = s.watch("/c/", r0).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..50 {
                    let kv = s
                        .create(&format!("/c/{t}/{i}"), vec![t as u8; 100])
                        .await
                        .unwrap();
                    revs.push(kv.mod_revision);
                }
                // Contended CAS on one shared key: retried until it applies.
                loop {
                    let cur = s.get("/c/shared").await.unwrap();
                    let r = match cur {
                        None => s.create("/c/shared", vec![1]).await.map(drop),
                        Some(kv) => {
                            let mut v = kv.value.clone();
                            v.push(1);
                            s.update("/c/shared", v, Some(kv.mod_revision))
                                .await
                                .map(drop)
                        }
                    };
                    match r {
                        Ok(()) => break,
                        Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                revs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 16 * 50, "every write has its own revision");
        let (commits, _) = s.commit_counts();
        assert!(
            commits < 16 * 50,
            "{commits} commits for {} writes: concurrent writers share fsyncs",
            16 * 50
        );
        assert_eq!(s.get("/c/shared").await.unwrap().unwrap().value.len(), 16);
        let end = s.current_revision().await.unwrap();
        assert_eq!(end, r0 + 16 * 50 + 16);
        // Watchers see every event in revision order.
        let mut last = r0;
        for _ in 0..(16 * 50 + 16) {
            let e = w.next().await.unwrap().unwrap();
            assert!(e.revision() > last);
            last = e.revision();
        }
        drop(w);
        let s = Arc::into_inner(s).unwrap();
        drop(s);
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), end);
        assert_eq!(s.list("/c/").await.unwrap().0.len(), 16 * 50 + 1);
    }

    #[tokio::test]
    async fn log_is_rewritten_when_it_outgrows_live_data() {
        let dir = tempfile::tempdir().unwrap();
        let opts = EmbeddedOptions {
            rewrite_slack: 64 << 10,
            ..Default::default()
        };
        let s = EmbeddedStore::open_with(dir.path(), opts.clone()).unwrap();
        s.create("/keep", b"k".to_vec()).await.unwrap();
        let mut rev = 0;
        for i in 0..2000 {
            let value = format!("lease renewal {i:06}").repeat(10).into_bytes();
            rev = match s.get("/lease").await.unwrap() {
                None => s.create("/lease", value).await.unwrap().mod_revision,
                Some(kv) => {
                    s.update("/lease", value, Some(kv.mod_revision))
                        .await
                        .unwrap()
                        .mod_revision
                }
            };
        }
        let mut log = std::fs::read(dir.path().join(LOG)).unwrap();
        while log.last() == Some(&0) {
            log.pop();
        }
        let len = log.len();
        // 2000 x ~200 bytes were appended; the rewrites keep the file near the slack.
        assert!(len < (64 << 10) + 4096, "log is {len} bytes");
        drop(s);
        let s = EmbeddedStore::open_with(dir.path(), opts).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), rev);
        let l = s.get("/lease").await.unwrap().unwrap();
        assert_eq!(l.mod_revision, rev);
        assert!(l.value.starts_with(b"lease renewal 001999"));
        assert_eq!(s.get("/keep").await.unwrap().unwrap().value, b"k");
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        s.create("/a", b"a".to_vec()).await.unwrap();
        let b = s.create("/b", b"b".to_vec()).await.unwrap();
        drop(s);
        let path = dir.path().join(LOG);
        // The records, without the preallocated zeros after them.
        let mut good = std::fs::read(&path).unwrap();
        while good.last() == Some(&0) {
            good.pop();
        }
        // Half a record at the end, then preallocated zeros: a write that was never
        // acknowledged.
        let mut torn = good.clone();
        let mut rec = Vec::new();
        log::encode_record(
            &mut rec,
            b.mod_revision + 1,
            [("/c", Some((9, 9, &b"c"[..])))].into_iter(),
        );
        torn.extend_from_slice(&rec[..rec.len() - 3]);
        torn.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, &torn).unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), b.mod_revision);
        assert!(s.get("/c").await.unwrap().is_none());
        let c = s.create("/c", b"c2".to_vec()).await.unwrap();
        assert_eq!(c.mod_revision, b.mod_revision + 1);
        drop(s);
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.get("/c").await.unwrap().unwrap().value, b"c2");
        drop(s);
        // A flipped byte in a record that has good records after it: refuse to open.
        let mut bad = std::fs::read(&path).unwrap();
        let at = good.len() - 3;
        bad[at] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            EmbeddedStore::open(dir.path()),
            Err(StoreError::Open { .. })
        ));
    }

    #[tokio::test]
    async fn imports_an_old_redb_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let (rev, created) = {
            let old = RedbStore::open(&dir.path().join(REDB_FILE)).unwrap();
            let a = old.create("/r/a", b"a".to_vec()).await.unwrap();
            old.update("/r/a", b"a2".to_vec(), None).await.unwrap();
            old.create("/r/b", b"b".to_vec()).await.unwrap();
            old.delete("/r/b", None).await.unwrap();
            (old.current_revision().await.unwrap(), a.create_revision)
        };
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), rev);
        let a = s.get("/r/a").await.unwrap().unwrap();
        assert_eq!(
            (a.value.as_slice(), a.create_revision, a.mod_revision),
            (&b"a2"[..], created, created + 1)
        );
        assert!(s.get("/r/b").await.unwrap().is_none());
        assert!(!dir.path().join(REDB_FILE).exists());
        assert!(dir.path().join("state.redb.imported").exists());
        let n = s.create("/r/n", b"n".to_vec()).await.unwrap();
        assert_eq!(n.mod_revision, rev + 1);
        drop(s);
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.current_revision().await.unwrap(), rev + 1);
        assert!(s.get("/r/n").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _s = EmbeddedStore::open(dir.path()).unwrap();
        assert!(EmbeddedStore::open(dir.path()).is_err());
    }

    #[tokio::test]
    async fn redb_store_keeps_its_behaviour() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("db.redb")).unwrap();
        let r0 = s.current_revision().await.unwrap();
        let a = s.create("/x/a", b"1".to_vec()).await.unwrap();
        assert_eq!(a.mod_revision, r0 + 1);
        assert!(matches!(
            s.update("/x/a", b"2".to_vec(), Some(r0)).await,
            Err(StoreError::Conflict { .. })
        ));
        s.update("/x/a", b"2".to_vec(), Some(a.mod_revision))
            .await
            .unwrap();
        let old = s
            .range(RangeRequest {
                prefix: "/x/".into(),
                revision: a.mod_revision,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(old.kvs[0].value, b"1");
        assert_eq!(s.list("/x/").await.unwrap().0[0].value, b"2");
    }
}
