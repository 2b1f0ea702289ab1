//! Recent events kept in memory so that watches can start from a past revision, plus the fan-out
//! to live watchers.

use crate::{Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result, StoreError, Watch};
use std::collections::{BTreeMap, VecDeque};

/// How many events are kept for watches that start in the past (etcd keeps history until
/// compaction; the API server's watch cache keeps a window like this one).
const HISTORY: usize = 10_000;
const WATCH_BUFFER: usize = 1024;

struct Watcher {
    prefix: String,
    /// Events up to this revision were in its backlog: the fan-out skips them.
    from: i64,
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

    /// Records `ev` and sends it to the live watchers.
    pub(crate) fn push(&mut self, ev: Event) {
        self.fan_out(std::slice::from_ref(&ev));
        self.record(ev);
    }

    /// Records `ev` in the history (reads at past revisions and new watches see it) without
    /// sending it: [`History::fan_out`] does that later, outside the writer's critical path.
    pub(crate) fn record(&mut self, ev: Event) {
        self.events.push_back(ev);
        while self.events.len() > HISTORY {
            if let Some(old) = self.events.pop_front() {
                self.base = old.revision();
            }
        }
    }

    /// Sends recorded events to the live watchers that did not get them in their backlog.
    pub(crate) fn fan_out(&mut self, evs: &[Event]) {
        if evs.is_empty() {
            return;
        }
        self.watchers.retain(|w| {
            for ev in evs {
                if ev.revision() <= w.from || !ev.kv.key.starts_with(&w.prefix) {
                    continue;
                }
                match w.tx.try_send(Ok(ev.clone())) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        // A slow watcher loses its place: tell it to relist rather than drop
                        // events.
                        tracing::warn!(prefix = %w.prefix, "watcher too slow; closing it");
                        return false;
                    }
                    Err(_) => return false,
                }
            }
            !w.tx.is_closed()
        });
    }

    /// Drops the events up to `revision` (no-op when history already starts later).
    pub(crate) fn compact(&mut self, revision: i64, current: i64) -> Result<()> {
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= self.base {
            return Ok(());
        }
        while self
            .events
            .front()
            .is_some_and(|e| e.revision() <= revision)
        {
            self.events.pop_front();
        }
        self.base = revision;
        Ok(())
    }

    /// Answers `req` from the current keys (`iter`, in key order, starting at
    /// [`range_start`]) and, for a past revision, by undoing the events after it. `key` reads an
    /// item's key, `to_kv` turns it into a [`KeyValue`] (only for the items returned).
    pub(crate) fn range<T>(
        &self,
        req: &RangeRequest,
        current: i64,
        iter: impl Iterator<Item = Result<T>>,
        key: impl Fn(&T) -> &str,
        to_kv: impl Fn(T) -> Result<KeyValue>,
    ) -> Result<RangeResponse> {
        let start = range_start(req);
        let in_range = |k: &str| k.starts_with(&req.prefix) && k >= start;
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };
        if req.revision == 0 || req.revision == current {
            let mut kvs = Vec::new();
            let mut count = 0;
            for item in iter {
                let item = item?;
                if !key(&item).starts_with(&req.prefix) {
                    break;
                }
                count += 1;
                if kvs.len() < limit {
                    kvs.push(to_kv(item)?);
                }
            }
            return Ok(RangeResponse {
                more: count > kvs.len(),
                kvs,
                count,
                revision: current,
            });
        }
        if req.revision > current {
            return Err(StoreError::FutureRevision {
                requested: req.revision,
                current,
            });
        }
        if req.revision < self.base {
            return Err(StoreError::Compacted {
                requested: req.revision,
                oldest: self.base,
            });
        }
        // The keys changed since the revision, with what they held then (None: absent). Only
        // those are taken from history; the others are read as they are now, and only the
        // returned ones are copied (a page of a large list at a past revision used to copy
        // every value of the prefix once per page).
        let mut then: BTreeMap<&str, Option<&KeyValue>> = BTreeMap::new();
        for e in self.events.iter().rev() {
            if e.revision() <= req.revision {
                break;
            }
            if !in_range(&e.kv.key) {
                continue;
            }
            // Newest first: the oldest event after the revision is the last one inserted.
            match (&e.kind, &e.prev) {
                (_, Some(p)) => then.insert(e.kv.key.as_str(), Some(p)),
                (EventKind::Put, None) => then.insert(e.kv.key.as_str(), None),
                (EventKind::Delete, None) => None,
            };
        }
        let mut kvs = Vec::new();
        let mut count = 0;
        let take = |kv: Option<&KeyValue>, kvs: &mut Vec<KeyValue>, count: &mut usize| {
            if let Some(kv) = kv {
                *count += 1;
                if kvs.len() < limit {
                    kvs.push(kv.clone());
                }
            }
        };
        let mut changed = then.into_iter().peekable();
        for item in iter {
            let item = item?;
            let now = {
                let k = key(&item);
                if !k.starts_with(&req.prefix) {
                    break;
                }
                // Keys gone since the revision that sort before this one.
                while let Some((_, kv)) = changed.next_if(|(c, _)| *c < k) {
                    take(kv, &mut kvs, &mut count);
                }
                match changed.next_if(|(c, _)| *c == k) {
                    Some((_, kv)) => {
                        take(kv, &mut kvs, &mut count);
                        false
                    }
                    None => true,
                }
            };
            if now {
                count += 1;
                if kvs.len() < limit {
                    kvs.push(to_kv(item)?);
                }
            }
        }
        for (_, kv) in changed {
            take(kv, &mut kvs, &mut count);
        }
        Ok(RangeResponse {
            more: count > kvs.len(),
            kvs,
            count,
            revision: req.revision,
        })
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
        let from = self
            .events
            .back()
            .map_or(after, |e| e.revision().max(after));
        self.watchers.push(Watcher {
            prefix: prefix.to_string(),
            from,
            tx,
        });
        Ok(Watch::new(rx))
    }
}

/// The first key a range read looks at.
pub(crate) fn range_start(req: &RangeRequest) -> &str {
    match req.start.as_deref() {
        Some(s) if s > req.prefix.as_str() => s,
        _ => &req.prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: format!("/a/{rev}"),
                value: vec![],
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        }
    }

    #[tokio::test]
    async fn a_watch_between_record_and_fan_out_gets_each_event_once() {
        let mut h = History::new(0);
        let mut early = h.watch("/a/", 0).unwrap();
        h.record(put(1));
        h.record(put(2));
        // Registered after the events were recorded but before they were sent.
        let mut late = h.watch("/a/", 1).unwrap();
        h.fan_out(&[put(1), put(2)]);
        h.push(put(3));
        let revs = |w: &mut Watch| {
            let mut out = vec![];
            while let Ok(Ok(ev)) = w.rx.try_recv() {
                out.push(ev.revision());
            }
            out
        };
        assert_eq!(revs(&mut early), vec![1, 2, 3]);
        assert_eq!(revs(&mut late), vec![2, 3]);
    }
}
