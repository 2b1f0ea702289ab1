//! The scheduling queue: pods waiting for a node, highest priority first (then oldest); pods
//! that failed wait out a back-off (1 s doubling to the maximum), and pods no node could take
//! wait in an unschedulable set until a cluster event (a node added or changed, a pod gone)
//! might help them, or a minute passes.

use k8s_openapi::api::core::v1::Pod;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a pod stays unschedulable without any event before it is tried again.
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    InFlight,
}

struct Entry {
    pod: Arc<Pod>,
    attempts: u32,
    state: State,
    /// Sequence of the heap entry that is current (older heap entries are stale).
    seq: u64,
    /// The move counter when this pod was popped: events while in flight send it to back-off
    /// rather than the unschedulable set.
    popped_at_move: u64,
    /// Pod changed (or was removed) while in flight.
    dirty: bool,
    priority: i32,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    heap: BinaryHeap<(i32, Reverse<u64>, String)>,
    seq: u64,
    moves: u64,
}

pub struct Queue {
    inner: Mutex<Inner>,
    notify: Notify,
    initial_backoff: Duration,
    max_backoff: Duration,
}

fn uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

impl Inner {
    fn push_active(&mut self, uid: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(e) = self.entries.get_mut(uid) {
            e.state = State::Active;
            e.seq = seq;
            self.heap.push((e.priority, Reverse(seq), uid.to_string()));
        }
    }
}

impl Queue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            initial_backoff,
            max_backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pending pod was added or changed.
    pub fn upsert(&self, pod: Arc<Pod>) {
        let id = uid(&pod);
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let mut q = self.lock();
        match q.entries.get_mut(&id) {
            Some(e) => {
                let spec_changed =
                    e.pod.spec != pod.spec || e.pod.metadata.labels != pod.metadata.labels;
                e.pod = pod;
                e.priority = priority;
                match e.state {
                    State::InFlight => e.dirty = true,
                    State::Unschedulable(_) if spec_changed => {
                        q.push_active(&id);
                        drop(q);
                        self.notify.notify_one();
                    }
                    _ => {}
                }
            }
            None => {
                q.entries.insert(
                    id.clone(),
                    Entry {
                        pod,
                        attempts: 0,
                        state: State::Active,
                        seq: 0,
                        popped_at_move: 0,
                        dirty: false,
                        priority,
                    },
                );
                q.push_active(&id);
                drop(q);
                self.notify.notify_one();
            }
        }
    }

    /// A pod is no longer pending (bound, deleted, or handed to another scheduler).
    pub fn remove(&self, uid: &str) {
        let mut q = self.lock();
        if let Some(e) = q.entries.get_mut(uid) {
            if e.state == State::InFlight {
                e.dirty = true;
            }
        }
        if q.entries
            .get(uid)
            .is_some_and(|e| e.state != State::InFlight)
        {
            q.entries.remove(uid);
        }
    }

    /// Something changed that may let unschedulable pods fit: move them to back-off/active.
    pub fn move_all(&self) {
        let mut q = self.lock();
        q.moves += 1;
        let now = Instant::now();
        let ids: Vec<String> = q
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let mut woke = false;
        for id in ids {
            let until = {
                let e = &q.entries[&id];
                self.backoff_until(e.attempts, now)
            };
            if until <= now {
                q.push_active(&id);
                woke = true;
            } else if let Some(e) = q.entries.get_mut(&id) {
                e.state = State::Backoff(until);
                woke = true;
            }
        }
        drop(q);
        if woke {
            self.notify.notify_one();
        }
    }

    fn backoff_until(&self, attempts: u32, from: Instant) -> Instant {
        let mut d = self.initial_backoff;
        for _ in 1..attempts {
            d = (d * 2).min(self.max_backoff);
        }
        from + d
    }

    /// Waits for the next pod to schedule.
    pub async fn pop(&self) -> Arc<Pod> {
        loop {
            let next_wake = {
                let mut q = self.lock();
                let now = Instant::now();
                let due: Vec<String> = q
                    .entries
                    .iter()
                    .filter(|(_, e)| match e.state {
                        State::Backoff(t) => t <= now,
                        State::Unschedulable(t) => now.duration_since(t) >= UNSCHEDULABLE_FLUSH,
                        _ => false,
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for id in due {
                    q.push_active(&id);
                }
                while let Some((_, Reverse(seq), id)) = q.heap.pop() {
                    let moves = q.moves;
                    let Some(e) = q.entries.get_mut(&id) else {
                        continue;
                    };
                    if e.seq != seq || e.state != State::Active {
                        continue;
                    }
                    e.state = State::InFlight;
                    e.attempts += 1;
                    e.popped_at_move = moves;
                    e.dirty = false;
                    return e.pod.clone();
                }
                q.entries
                    .values()
                    .filter_map(|e| match e.state {
                        State::Backoff(t) => Some(t),
                        State::Unschedulable(t) => Some(t + UNSCHEDULABLE_FLUSH),
                        _ => None,
                    })
                    .min()
            };
            let sleep = next_wake
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// The popped pod is placed (binding started): it leaves the queue.
    pub fn done(&self, uid: &str) {
        self.lock().entries.remove(uid);
    }

    /// No node fits the popped pod now.
    pub fn unschedulable(&self, uid: &str) {
        let mut q = self.lock();
        let moves = q.moves;
        let now = Instant::now();
        let until = match q.entries.get(uid) {
            Some(e) => self.backoff_until(e.attempts, now),
            None => return,
        };
        let Some(e) = q.entries.get_mut(uid) else {
            return;
        };
        // Something happened while it was being tried: it might fit now, after its back-off.
        e.state = if e.dirty || e.popped_at_move != moves {
            State::Backoff(until)
        } else {
            State::Unschedulable(now)
        };
        drop(q);
        self.notify.notify_one();
    }

    /// Scheduling or binding failed for another reason: retry after the back-off.
    pub fn retry(&self, pod: Arc<Pod>) {
        let id = uid(&pod);
        let mut q = self.lock();
        let now = Instant::now();
        let attempts = q.entries.get(&id).map(|e| e.attempts).unwrap_or(1);
        let until = self.backoff_until(attempts, now);
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let e = q.entries.entry(id).or_insert(Entry {
            pod: pod.clone(),
            attempts,
            state: State::Backoff(until),
            seq: 0,
            popped_at_move: 0,
            dirty: false,
            priority,
        });
        e.state = State::Backoff(until);
        drop(q);
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, prio: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": uid, "uid": uid},
                "spec": {"containers": [], "priority": prio}
            }))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn highest_priority_first_then_fifo() {
        let q = Queue::new(Duration::from_millis(10), Duration::from_millis(40));
        q.upsert(pod("a", 0));
        q.upsert(pod("b", 10));
        q.upsert(pod("c", 0));
        assert_eq!(q.pop().await.metadata.uid.as_deref(), Some("b"));
        assert_eq!(q.pop().await.metadata.uid.as_deref(), Some("a"));
        assert_eq!(q.pop().await.metadata.uid.as_deref(), Some("c"));
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event() {
        let q = Queue::new(Duration::from_millis(10), Duration::from_millis(40));
        q.upsert(pod("a", 0));
        let p = q.pop().await;
        q.unschedulable("a");
        let waited = tokio::time::timeout(Duration::from_millis(100), q.pop()).await;
        assert!(
            waited.is_err(),
            "an unschedulable pod came back with no event"
        );
        q.move_all();
        let again = tokio::time::timeout(Duration::from_secs(1), q.pop())
            .await
            .unwrap();
        assert_eq!(again.metadata.uid, p.metadata.uid);
        q.done("a");
        assert!(q.is_empty());
    }
}
