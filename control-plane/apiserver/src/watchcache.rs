//! The watch cache: one store watch per stored resource feeds every client watch of it. Each
//! change is decoded once and kept in a window of recent events; a client watch from a
//! revision inside the window replays from it and then follows the live feed, so a thousand
//! watchers cost one store watch and one decode per change, and the frames sent to them are
//! encoded once per (event, type, format). Watches from revisions older than the window fall
//! back to the store's own history (and get `410 Gone` past that).

use serde_json::Value;
use skiff_store::{EventKind, Store};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Events kept per resource for watches that start a little in the past.
const WINDOW: usize = 2048;
/// Live events buffered per watcher before it counts as too slow (and gets 410).
const LAG: usize = 8192;

/// One change, decoded once.
pub struct CachedEvent {
    pub kind: EventKind,
    pub rev: i64,
    pub key: String,
    /// The stored object (storage form) with `metadata.resourceVersion` set.
    pub obj: Arc<Value>,
    pub prev: Option<Arc<Value>>,
    frames: Mutex<Vec<(&'static str, u8, bytes::Bytes)>>,
}

impl CachedEvent {
    /// A frame encoded once per (type, format) and shared by every watcher.
    pub fn frame(
        &self,
        kind: &'static str,
        format: u8,
        make: impl FnOnce() -> bytes::Bytes,
    ) -> bytes::Bytes {
        let mut f = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, b)) = f.iter().find(|(k, fm, _)| *k == kind && *fm == format) {
            return b.clone();
        }
        let b = make();
        f.push((kind, format, b.clone()));
        b
    }
}

impl CachedEvent {
    /// An event read from the store directly (watches older than the cache's window).
    pub fn from_store(ev: &skiff_store::Event) -> Option<CachedEvent> {
        Some(CachedEvent {
            kind: ev.kind.clone(),
            rev: ev.kv.mod_revision,
            key: ev.kv.key.clone(),
            obj: decode(&ev.kv)?,
            prev: ev.prev.as_ref().and_then(decode),
            frames: Mutex::new(Vec::new()),
        })
    }
}

fn decode(kv: &skiff_store::KeyValue) -> Option<Arc<Value>> {
    let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
    v["metadata"]["resourceVersion"] = Value::String(kv.mod_revision.to_string());
    Some(Arc::new(v))
}

struct Window {
    events: VecDeque<Arc<CachedEvent>>,
    /// Every event with a revision above this one is in `events` or still to come.
    complete_after: i64,
    broken: bool,
    /// Dropped when the feed breaks, which ends every subscriber's stream (its client watches
    /// again) instead of leaving it waiting for events that never come.
    tx: Option<broadcast::Sender<Arc<CachedEvent>>>,
}

struct Feed {
    window: Mutex<Window>,
}

/// Shared by all requests.
#[derive(Default)]
pub struct WatchCache {
    feeds: Mutex<HashMap<String, Arc<Feed>>>,
}

/// A client watch served from the cache.
pub struct Subscription {
    backlog: VecDeque<Arc<CachedEvent>>,
    rx: broadcast::Receiver<Arc<CachedEvent>>,
    last: i64,
}

pub enum Next {
    Event(Arc<CachedEvent>),
    /// The watcher fell too far behind: it must list again (410).
    TooSlow,
    Closed,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        loop {
            let ev = match self.backlog.pop_front() {
                Some(e) => e,
                None => match self.rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => return Next::TooSlow,
                    Err(broadcast::error::RecvError::Closed) => return Next::Closed,
                },
            };
            if ev.rev <= self.last {
                continue;
            }
            self.last = ev.rev;
            return Next::Event(ev);
        }
    }
}

impl WatchCache {
    async fn feed(&self, store: &Arc<dyn Store>, prefix: &str) -> Option<Arc<Feed>> {
        {
            let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = feeds.get(prefix) {
                if !f.window.lock().unwrap_or_else(|e| e.into_inner()).broken {
                    return Some(f.clone());
                }
            }
        }
        let start = store.current_revision().await.ok()?;
        let mut watch = store.watch(prefix, start).await.ok()?;
        let (tx, _) = broadcast::channel(LAG);
        let feed = Arc::new(Feed {
            window: Mutex::new(Window {
                events: VecDeque::new(),
                complete_after: start,
                broken: false,
                tx: Some(tx),
            }),
        });
        {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = feeds.get(prefix) {
                if !f.window.lock().unwrap_or_else(|e| e.into_inner()).broken {
                    // Another request started it meanwhile.
                    return Some(f.clone());
                }
            }
            feeds.insert(prefix.to_string(), feed.clone());
        }
        let f = feed.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            loop {
                let ev = match watch.next().await {
                    Some(Ok(ev)) => ev,
                    // Compacted, too slow or the store is gone: the next watch starts a new feed.
                    other => {
                        let why = match other {
                            Some(Err(e)) => e.to_string(),
                            _ => "the store ended the watch".into(),
                        };
                        tracing::warn!(%prefix, %why, "watch cache feed ended; its watchers start again");
                        break;
                    }
                };
                let Some(obj) = decode(&ev.kv) else { continue };
                let ce = Arc::new(CachedEvent {
                    kind: ev.kind,
                    rev: ev.kv.mod_revision,
                    key: ev.kv.key.clone(),
                    obj,
                    prev: ev.prev.as_ref().and_then(decode),
                    frames: Mutex::new(Vec::new()),
                });
                let mut w = f.window.lock().unwrap_or_else(|e| e.into_inner());
                if w.events.len() == WINDOW {
                    if let Some(old) = w.events.pop_front() {
                        w.complete_after = old.rev;
                    }
                }
                w.events.push_back(ce.clone());
                if let Some(tx) = &w.tx {
                    let _ = tx.send(ce);
                }
            }
            let mut w = f.window.lock().unwrap_or_else(|e| e.into_inner());
            w.broken = true;
            w.tx = None;
        });
        Some(feed)
    }

    /// Subscribes to changes under `prefix` after revision `after`; `None` when the cache
    /// cannot serve that revision (the caller uses the store's history instead).
    pub async fn subscribe(
        &self,
        store: &Arc<dyn Store>,
        prefix: &str,
        after: i64,
    ) -> Option<Subscription> {
        let feed = self.feed(store, prefix).await?;
        let w = feed.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.broken || after < w.complete_after {
            return None;
        }
        let rx = w.tx.as_ref()?.subscribe();
        let backlog = w.events.iter().filter(|e| e.rev > after).cloned().collect();
        Some(Subscription {
            backlog,
            rx,
            last: after,
        })
    }
}
