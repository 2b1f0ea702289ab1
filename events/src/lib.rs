//! Event recording shared by the kubelet, the scheduler and the controllers, with the correlation
//! upstream's recorder (client-go's `EventCorrelator`) applies before writing, so that
//! `kubectl describe` and `kubectl get events` show `x12 over 3m` rather than a flood:
//!
//! 1. **Spam filter**: per source and involved object, a token bucket of 25 events refilled at
//!    one per 5 minutes; events beyond it are dropped.
//! 2. **Aggregation**: when one source records 10 or more different messages with the same
//!    reason about the same object within 10 minutes, further ones are folded into a single
//!    event whose message starts with `(combined from similar events): `.
//! 3. **Deduplication**: an event identical to one already written (same source, object,
//!    type, reason and message) is not written again: the existing one gets `count` + 1 and a
//!    new `lastTimestamp` (a patch), and is created afresh if it was deleted meanwhile.
//!
//! The state is per process and keyed by the event's source, like upstream's per-broadcaster
//! cache; events are best effort (a failed write is logged at debug and dropped).

use k8s_openapi::api::core::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Different messages with one reason about one object before they are combined.
const MAX_SIMILAR: usize = 10;
/// How long similar messages are remembered.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// The spam filter's burst and refill (upstream: 25, one per 300 s).
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL_PER_SEC: f64 = 1.0 / 300.0;
/// Entries each cache holds before old ones are dropped (upstream's LRU size).
const CACHE_ENTRIES: usize = 4096;
/// The message prefix of a combined event.
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";

struct Similar {
    messages: HashSet<String>,
    last: Instant,
}

struct Seen {
    count: i32,
    first: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    name: String,
    at: Instant,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What to do with one event after correlation.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write a new event.
    Create(Event),
    /// Bump the existing event of this name (its new count and timestamp are in the event).
    Bump(Event),
    /// Spam: drop it.
    Drop,
}

/// The correlation state (one per process is enough: keys include the source).
#[derive(Default)]
pub struct Correlator {
    similar: HashMap<String, Similar>,
    seen: HashMap<String, Seen>,
    spam: HashMap<String, Bucket>,
}

fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

fn object_key(ev: &Event) -> String {
    let src = ev.source.clone().unwrap_or_default();
    let o = &ev.involved_object;
    [
        s(&src.component),
        s(&src.host),
        s(&o.kind),
        s(&o.namespace),
        s(&o.name),
        s(&o.uid),
        s(&o.api_version),
    ]
    .join("\u{1}")
}

/// Events alike but for their message.
fn aggregate_key(ev: &Event) -> String {
    [
        object_key(ev).as_str(),
        s(&ev.type_),
        s(&ev.reason),
        s(&ev.reporting_component),
        s(&ev.reporting_instance),
    ]
    .join("\u{1}")
}

/// Identical events.
fn event_key(ev: &Event) -> String {
    [
        object_key(ev).as_str(),
        s(&ev.involved_object.field_path),
        s(&ev.type_),
        s(&ev.reason),
        s(&ev.message),
    ]
    .join("\u{1}")
}

fn trim<V>(map: &mut HashMap<String, V>, old: impl Fn(&V) -> bool) {
    if map.len() >= CACHE_ENTRIES {
        map.retain(|_, v| !old(v));
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
    }
}

impl Correlator {
    /// Correlates `ev` (a fresh event: unique name, count 1, first = last timestamp) at `now`.
    pub fn correlate(&mut self, mut ev: Event, now: Instant) -> Action {
        // 1. Spam filter.
        trim(&mut self.spam, |b: &Bucket| {
            now.duration_since(b.at) > AGGREGATE_WINDOW
        });
        let b = self.spam.entry(object_key(&ev)).or_insert(Bucket {
            tokens: SPAM_BURST,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * SPAM_REFILL_PER_SEC)
            .min(SPAM_BURST);
        b.at = now;
        if b.tokens < 1.0 {
            return Action::Drop;
        }
        b.tokens -= 1.0;

        // 2. Aggregation of similar messages.
        trim(&mut self.similar, |v: &Similar| {
            now.duration_since(v.last) > AGGREGATE_WINDOW
        });
        let agg = aggregate_key(&ev);
        let sim = self.similar.entry(agg.clone()).or_insert(Similar {
            messages: HashSet::new(),
            last: now,
        });
        if now.duration_since(sim.last) > AGGREGATE_WINDOW {
            sim.messages.clear();
        }
        sim.last = now;
        let message = ev.message.clone().unwrap_or_default();
        sim.messages.insert(message.clone());
        let key = if sim.messages.len() < MAX_SIMILAR {
            event_key(&ev)
        } else {
            ev.message = Some(format!("{COMBINED_PREFIX}{message}"));
            agg
        };

        // 3. Deduplication.
        trim(&mut self.seen, |v: &Seen| {
            now.duration_since(v.at) > AGGREGATE_WINDOW
        });
        match self.seen.get_mut(&key) {
            Some(seen) => {
                seen.count += 1;
                seen.at = now;
                ev.count = Some(seen.count);
                ev.first_timestamp = seen.first.clone();
                ev.metadata.name = Some(seen.name.clone());
                Action::Bump(ev)
            }
            None => {
                self.seen.insert(
                    key,
                    Seen {
                        count: ev.count.unwrap_or(1),
                        first: ev.first_timestamp.clone(),
                        name: ev.metadata.name.clone().unwrap_or_default(),
                        at: now,
                    },
                );
                Action::Create(ev)
            }
        }
    }
}

static STATE: LazyLock<Mutex<Correlator>> = LazyLock::new(Mutex::default);

/// Records `ev` (a fresh event as upstream's recorder makes it: name `<object>.<nanos hex>`,
/// count 1, first and last timestamps now) after correlation.
pub async fn record(client: &Client, ev: Event) {
    let action = STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .correlate(ev, Instant::now());
    let (ev, bump) = match action {
        Action::Drop => {
            tracing::debug!("event dropped by the spam filter");
            return;
        }
        Action::Create(ev) => (ev, false),
        Action::Bump(ev) => (ev, true),
    };
    let ns = ev
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if bump {
        let name = ev.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "count": ev.count,
            "lastTimestamp": ev.last_timestamp,
            "message": ev.message,
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            // Deleted meanwhile (or expired): written afresh below.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::debug!(error = %e, event = %name, "could not update event");
                return;
            }
        }
    }
    let mut ev = ev;
    ev.metadata.resource_version = None;
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(error = %e, reason = ?ev.reason, "could not record event");
    }
}

/// Event writes in flight per process. Upstream's broadcaster writes events one at a time;
/// a few at once keep up with a burst (a controller creating hundreds of pods) without opening
/// a connection per event.
static WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Records `ev` without making the caller wait.
pub fn record_later(client: &Client, ev: Event) {
    let client = client.clone();
    tokio::spawn(async move {
        let _permit = WRITES.acquire().await;
        record(&client, ev).await
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ev(name: &str, reason: &str, message: &str) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some("sk-p".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            count: Some(1),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some("n1".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn identical_events_bump_the_first_one() {
        let mut c = Correlator::default();
        let t = Instant::now();
        assert!(matches!(
            c.correlate(ev("a.1", "BackOff", "m"), t),
            Action::Create(_)
        ));
        match c.correlate(ev("a.2", "BackOff", "m"), t) {
            Action::Bump(e) => {
                assert_eq!(e.metadata.name.as_deref(), Some("a.1"));
                assert_eq!(e.count, Some(2));
            }
            other => panic!("{other:?}"),
        }
        match c.correlate(ev("a.3", "BackOff", "m"), t) {
            Action::Bump(e) => assert_eq!(e.count, Some(3)),
            other => panic!("{other:?}"),
        }
        // Another message is another event.
        assert!(matches!(
            c.correlate(ev("a.4", "BackOff", "other"), t),
            Action::Create(_)
        ));
    }

    #[test]
    fn ten_similar_messages_are_combined() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..9 {
            assert!(matches!(
                c.correlate(ev(&format!("a.{i}"), "Failed", &format!("m{i}")), t),
                Action::Create(_)
            ));
        }
        match c.correlate(ev("a.9", "Failed", "m9"), t) {
            Action::Create(e) => {
                assert_eq!(
                    e.message.as_deref(),
                    Some("(combined from similar events): m9")
                )
            }
            other => panic!("{other:?}"),
        }
        match c.correlate(ev("a.10", "Failed", "m10"), t) {
            Action::Bump(e) => {
                assert_eq!(e.metadata.name.as_deref(), Some("a.9"));
                assert_eq!(e.count, Some(2));
                assert_eq!(
                    e.message.as_deref(),
                    Some("(combined from similar events): m10")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spam_filter_allows_a_burst_of_25_then_one_per_5_minutes() {
        let mut c = Correlator::default();
        let t = Instant::now();
        for i in 0..25 {
            assert_ne!(
                c.correlate(ev(&format!("a.{i}"), "R", "m"), t),
                Action::Drop
            );
        }
        assert_eq!(c.correlate(ev("a.x", "R", "m"), t), Action::Drop);
        let later = t + Duration::from_secs(301);
        assert_ne!(c.correlate(ev("a.y", "R", "m"), later), Action::Drop);
        assert_eq!(c.correlate(ev("a.z", "R", "m"), later), Action::Drop);
    }
}
