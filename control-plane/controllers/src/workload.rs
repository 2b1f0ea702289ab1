//! Helpers shared by the workload controllers of this crate (Job, CronJob, DaemonSet,
//! StatefulSet): a pod cache fed by its own watch, upstream's "expectations" (a controller does not
//! act again on a key until the cache has seen its own creates and deletes), owner references,
//! pod predicates and event recording.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cached_pod::CachedPod;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};

/// Runs `fut` until `stop` completes.
pub async fn until(
    stop: impl std::future::Future<Output = ()>,
    fut: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = stop => {}
        _ = fut => {}
    }
}

/// A cache of `api`'s objects and the stream that feeds it: the controller that polls the stream
/// (as its `owns_stream`/`watches_stream` trigger) sees each change only after the cache holds
/// it, so a reconcile never reads a cache older than the event that started it.
pub fn reflect<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).modify(crate::informer::slim::<K>),
    )
    .default_backoff()
    .touched_objects();
    (reader, stream)
}

/// The shared pod cache (`ctx.informers.pods()`, upstream's shared informer) and a stream of the
/// pods that change from now on, each after the store has it: the added or updated pod, or the
/// deleted one. After a lag (the subscriber fell a channel's length behind) it yields every
/// pod in the store, so nothing is missed.
pub fn subscribe_pods(
    informers: &crate::informer::Informers,
) -> (
    Store<CachedPod>,
    impl futures::Stream<Item = Arc<CachedPod>> + Send + 'static,
) {
    use crate::informer::Change;
    use tokio::sync::broadcast::error::RecvError;
    let inf = informers.pods();
    let store = inf.store().clone();
    let rx = inf.subscribe();
    let stream = futures::stream::unfold(
        (rx, store.clone(), std::collections::VecDeque::new()),
        |(mut rx, store, mut backlog)| async move {
            loop {
                if let Some(p) = backlog.pop_front() {
                    return Some((p, (rx, store, backlog)));
                }
                match rx.recv().await {
                    Ok(Change::Added(p))
                    | Ok(Change::Deleted(p))
                    | Ok(Change::Updated { new: p, .. }) => return Some((p, (rx, store, backlog))),
                    Ok(Change::Resynced) => {}
                    Err(RecvError::Lagged(_)) => backlog.extend(store.state()),
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    (store, stream)
}

/// A reflected stream turned into "something changed" ticks (for `reconcile_all_on`).
pub fn ticks<K: Send + 'static>(
    s: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    s.filter_map(|r| async move { r.ok().map(|_| ()) })
}

/// The objects of `store` in `ns` whose controller reference is `uid`.
pub fn owned_by<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    ns: &str,
    uid: &str,
) -> Vec<Arc<K>> {
    store.state_filter(|o| {
        o.meta().namespace.as_deref() == Some(ns)
            && o.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
    })
}

/// A controller reference to `owner` (`controller` and `blockOwnerDeletion` true, as upstream's
/// `NewControllerRef`).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `labels` match `sel` (matchLabels and matchExpressions). An absent selector matches
/// nothing, an empty one everything, as upstream's `LabelSelectorAsSelector`.
pub fn selector_matches(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return false };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let have = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => !have.is_some_and(|h| values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

pub fn phase(pod: &CachedPod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Running or pending, and not being deleted (upstream's `IsPodActive`).
pub fn is_active(pod: &CachedPod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && !is_terminating(pod)
}

/// The pod's `Ready` condition is `True`.
pub fn is_ready(pod: &CachedPod) -> bool {
    pod_condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// Ready for at least `min_ready_seconds` at `now` (upstream's `IsPodAvailable`).
pub fn is_available(pod: &CachedPod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let Some(c) = pod_condition(pod, "Ready").filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    c.last_transition_time
        .as_ref()
        .is_some_and(|t| now.as_second() - t.0.as_second() >= i64::from(min_ready_seconds))
}

pub fn pod_condition<'a>(
    pod: &'a CachedPod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// An event recorder reporting as `controller` (upstream's component names, e.g. `job-controller`).
pub fn recorder(client: &Client, controller: &str) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: controller.into(),
            instance: None,
        },
    )
}

/// Records an event on `obj`; a failure to record is logged, never fatal.
pub async fn record<K: Resource<DynamicType = ()>>(
    rec: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = rec.publish(&ev, &obj.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "cannot record event");
    }
}

#[derive(Default)]
struct Pending {
    adds: HashSet<String>,
    dels: HashSet<String>,
    since: Option<Instant>,
}

/// Upstream's `ControllerExpectations`, by pod name: after a controller creates or deletes pods
/// for a key, it waits until its cache shows them before acting on that key again, so a lagging
/// watch never makes it create or delete twice. Expectations expire after 5 minutes like upstream's
/// (`ExpectationsTimeout`).
#[derive(Default, Clone)]
pub struct Expectations {
    inner: Arc<Mutex<HashMap<String, Pending>>>,
}

const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

impl Expectations {
    pub fn expect_add(&self, key: &str, name: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.entry(key.into()).or_default();
        p.adds.insert(name.into());
        p.since.get_or_insert_with(Instant::now);
    }

    pub fn expect_del(&self, key: &str, name: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.entry(key.into()).or_default();
        p.dels.insert(name.into());
        p.since.get_or_insert_with(Instant::now);
    }

    /// Whether the cache (`seen(name)`: `None` absent, `Some(terminating)`) shows every expected
    /// change of `key`; fulfilled ones are dropped.
    pub fn satisfied(&self, key: &str, seen: impl Fn(&str) -> Option<bool>) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = m.get_mut(key) else {
            return true;
        };
        p.adds.retain(|n| seen(n).is_none());
        p.dels.retain(|n| seen(n) == Some(false));
        if (p.adds.is_empty() && p.dels.is_empty())
            || p.since.is_some_and(|s| s.elapsed() > EXPECTATIONS_TIMEOUT)
        {
            m.remove(key);
            return true;
        }
        false
    }

    pub fn forget(&self, key: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key);
    }
}

/// `seen` for [`Expectations::satisfied`] over a pod cache in `ns`.
pub fn pod_seen<'a>(
    store: &'a Store<CachedPod>,
    ns: &'a str,
) -> impl Fn(&str) -> Option<bool> + 'a {
    move |name| {
        store
            .get(&reflector::ObjectRef::new(name).within(ns))
            .map(|p| is_terminating(&p))
    }
}

/// `ns/name` of an object.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> =
            [("app".to_string(), "a".to_string())].into_iter().collect();
        assert!(!selector_matches(None, &labels));
        assert!(selector_matches(Some(&LabelSelector::default()), &labels));
        let sel = LabelSelector {
            match_labels: Some(labels.clone()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
        };
        assert!(selector_matches(Some(&sel), &labels));
        let mut other = labels.clone();
        other.insert("tier".into(), "x".into());
        assert!(!selector_matches(Some(&sel), &other));
    }

    #[test]
    fn expectations_wait_for_the_cache() {
        let e = Expectations::default();
        e.expect_add("ns/j", "p1");
        e.expect_del("ns/j", "p0");
        assert!(!e.satisfied("ns/j", |n| (n == "p0").then_some(false)));
        assert!(!e.satisfied("ns/j", |_| Some(false)));
        assert!(e.satisfied("ns/j", |n| (n == "p1").then_some(false)));
        assert!(e.satisfied("ns/other", |_| None));
    }
}
