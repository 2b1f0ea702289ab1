//! A work queue with client-go's guarantees: a key is queued at most once however often it is
//! added, is never worked on by two workers at once (an add while it is processed queues it again
//! for after), and failures are retried with per-key exponential back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
    /// Longest retry back-off in ms (0: client-go's default controller limit, 1000 s).
    max_backoff_ms: u64,
}

/// What a sync asks for next.
pub type SyncResult<E> = Result<Option<Duration>, E>;

impl WorkQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(WorkQueue::default())
    }

    /// A queue whose retry back-off stops growing at `max` (e.g. the namespace controller's
    /// 5 ms .. 60 s).
    pub fn with_max_backoff(max: Duration) -> Arc<Self> {
        Arc::new(WorkQueue {
            max_backoff_ms: (max.as_millis() as u64).max(5),
            ..WorkQueue::default()
        })
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut s = self.state.lock().expect("queue lock");
        if !s.dirty.insert(key.clone()) {
            return;
        }
        if s.processing.contains(&key) {
            return;
        }
        s.queue.push_back(key);
        drop(s);
        self.notify.notify_one();
    }

    pub fn add_after(self: &Arc<Self>, key: impl Into<String>, after: Duration) {
        let key = key.into();
        if after.is_zero() {
            return self.add(key);
        }
        let q = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(q) = q.upgrade() {
                q.add(key);
            }
        });
    }

    /// Re-adds after a back-off that doubles with each failure of the key (5 ms .. 1000 s, as
    /// client-go's default controller rate limiter).
    fn add_rate_limited(self: &Arc<Self>, key: String) {
        let n = {
            let mut s = self.state.lock().expect("queue lock");
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let max = if self.max_backoff_ms == 0 {
            1_000_000
        } else {
            self.max_backoff_ms
        };
        let ms = 5u64.saturating_mul(1u64 << (n - 1).min(30)).min(max);
        self.add_after(key, Duration::from_millis(ms));
    }

    fn forget(&self, key: &str) {
        self.state.lock().expect("queue lock").failures.remove(key);
    }

    async fn get(&self) -> String {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(k) = s.queue.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    if !s.queue.is_empty() {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: &str) {
        let mut s = self.state.lock().expect("queue lock");
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.to_string());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Runs `workers` workers calling `sync` for each key until the future is dropped.
    pub async fn run<F, Fut, E>(self: Arc<Self>, workers: usize, name: &'static str, sync: F)
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = SyncResult<E>> + Send,
        E: std::fmt::Display + Send,
    {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let q = self.clone();
            let sync = sync.clone();
            set.spawn(async move {
                loop {
                    let key = q.get().await;
                    let r = sync(key.clone()).await;
                    match r {
                        Ok(after) => {
                            q.forget(&key);
                            q.done(&key);
                            if let Some(d) = after {
                                q.add_after(key, d);
                            }
                        }
                        Err(e) => {
                            tracing::info!(controller = name, %key, error = %e, "sync failed; will retry");
                            q.done(&key);
                            q.add_rate_limited(key);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
}
