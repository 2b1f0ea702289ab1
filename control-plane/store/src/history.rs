//! Recent events kept in memory so that watches can start from a past revision, plus the fan-out
//! to live watchers.

use crate::{Event, Result, StoreError, Watch};
use std::collections::VecDeque;

/// How many events are kept for watches that start in the past (etcd keeps history until
/// compaction; the API server's watch cache keeps a window like this one).
const HISTORY: usize = 10_000;
const WATCH_BUFFER: usize = 1024;

struct Watcher {
    prefix: String,
    tx: tokio::sync::mpsc::Sender<Result<Event>>,
}

pub(crate) struct History {
    events: VecDeque<Event>,
    /// Revision at which history starts: events after it are all in `events`.
    base: i64,
    watchers: Vec<Watcher>,
}

impl History {
    pub(crate) fn new(base: i64) -> Self {
        Self {
            events: VecDeque::new(),
            base,
            watchers: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, ev: Event) {
        self.watchers.retain(|w| {
            if !ev.kv.key.starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            match w.tx.try_send(Ok(ev.clone())) {
                Ok(()) => true,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    // A slow watcher loses its place: tell it to relist rather than drop events.
                    tracing::warn!(prefix = %w.prefix, "watcher too slow; closing it");
                    false
                }
                Err(_) => false,
            }
        });
        self.events.push_back(ev);
        while self.events.len() > HISTORY {
            if let Some(old) = self.events.pop_front() {
                self.base = old.revision();
            }
        }
    }

    pub(crate) fn watch(&mut self, prefix: &str, after: i64) -> Result<Watch> {
        if after < self.base {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: self.base,
            });
        }
        let backlog: Vec<Event> = self
            .events
            .iter()
            .filter(|e| e.revision() > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER.max(backlog.len() + 16));
        for ev in backlog {
            // Cannot fail: the channel is larger than the backlog.
            let _ = tx.try_send(Ok(ev));
        }
        self.watchers.push(Watcher {
            prefix: prefix.to_string(),
            tx,
        });
        Ok(Watch::new(rx))
    }
}
