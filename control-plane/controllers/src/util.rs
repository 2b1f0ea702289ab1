//! Helpers the controllers share: label selectors, pod readiness and availability, controller
//! references, keys.

use std::collections::BTreeMap;

use crate::cached_pod::CachedPod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

/// `namespace/name`, the work-queue key of a namespaced object.
pub fn key_of<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// Whether `sel` selects `labels`. A missing selector selects nothing; an empty one everything.
pub fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = sel else { return false };
    if let Some(ml) = &sel.match_labels {
        if !ml.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        let val = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or(&[]);
        let ok = match req.operator.as_str() {
            "In" => val.is_some_and(|v| values.contains(v)),
            "NotIn" => !val.is_some_and(|v| values.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether the selector is `{}` (upstream refuses to act on one: it would select every pod).
pub fn selects_everything(sel: Option<&LabelSelector>) -> bool {
    sel.is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    })
}

pub fn controller_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// An owner reference making `owner` the controller of a dependent (controller=true,
/// blockOwnerDeletion=true, as upstream's controllers set it).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Running or pending, not terminating: a pod that counts toward a controller's replicas.
pub fn is_active(p: &CachedPod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed")) && p.metadata.deletion_timestamp.is_none()
}

fn ready_condition(p: &CachedPod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn is_ready(p: &CachedPod) -> bool {
    ready_condition(p).is_some_and(|c| c.status == "True")
}

/// Since when the pod is ready, if it is.
pub fn ready_since(p: &CachedPod) -> Option<Timestamp> {
    ready_condition(p)
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready for at least `min_ready_seconds` (upstream's `IsPodAvailable`).
pub fn is_available(p: &CachedPod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !is_ready(p) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    match ready_since(p) {
        Some(t) => t.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
        None => false,
    }
}

/// Resolves `${value}` of an int-or-percent against `total` (upstream's
/// `GetScaledValueFromIntOrPercent`): percentages round up or down as asked.
pub fn scaled_value(
    v: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    default: &str,
    total: i32,
    round_up: bool,
) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let s = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let Some(pct) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
        return s.parse().unwrap_or(0);
    };
    let x = pct * i64::from(total);
    (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
}

/// Waits until a reflector store holds its first full list. kube-runtime's
/// `Store::wait_until_ready` parks its waker in a one-shot channel that keeps only the last
/// waiter's, so when several tasks wait on clones of one store all but one sleep forever; asking
/// again every 100 ms wakes everyone soon after the list is in.
pub async fn ready<K>(
    store: &kube::runtime::reflector::Store<K>,
) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: 'static + Clone + kube::runtime::reflector::Lookup,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(100),
            store.wait_until_ready(),
        )
        .await
        {
            Ok(r) => return r,
            Err(_) => continue,
        }
    }
}

/// Runs a controller's informer handlers and work-queue workers until `stop` (Ok), or until
/// either of them ends, which is an error naming the controller.
pub async fn until_stopped<H, W>(
    name: &'static str,
    stop: impl std::future::Future<Output = ()>,
    handlers: H,
    workers: W,
) -> Result<(), crate::ControllerError>
where
    H: std::future::Future,
    W: std::future::Future,
{
    let stopped = |reason: &str| crate::ControllerError::Stopped {
        name,
        reason: reason.into(),
    };
    tokio::select! {
        _ = stop => Ok(()),
        _ = handlers => Err(stopped("informer closed")),
        _ = workers => Err(stopped("workers ended")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_like_upstream() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let mut sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        };
        assert!(selects(Some(&sel), &labels));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "Exists".into(),
            values: None,
        }]);
        assert!(!selects(Some(&sel), &labels));
        assert!(!selects(None, &labels));
        assert!(selects_everything(Some(&LabelSelector::default())));
    }

    #[test]
    fn percentages_round_as_asked() {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled_value(Some(&p), "25%", 10, true), 3);
        assert_eq!(scaled_value(Some(&p), "25%", 10, false), 2);
        assert_eq!(scaled_value(None, "25%", 4, false), 1);
        assert_eq!(
            scaled_value(Some(&IntOrString::Int(2)), "25%", 10, false),
            2
        );
    }
}
