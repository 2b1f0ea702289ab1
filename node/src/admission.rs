//! Pod admission, as upstream's kubelet admits a pod before its first sync
//! (`pkg/kubelet/eviction/eviction_manager.go` `Admit`, then `pkg/kubelet/lifecycle/predicate.go`).
//!
//! 1. **Eviction**: under node pressure, critical pods (static, mirror, priority at least
//!    system-cluster-critical's) are admitted; with MemoryPressure alone, pods that are not
//!    BestEffort, and BestEffort pods tolerating the `node.kubernetes.io/memory-pressure`
//!    NoSchedule taint, are admitted; every other pod is rejected with reason `Evicted` and
//!    `The node had condition: [MemoryPressure]. `.
//! 2. **General predicates** against the Node the API holds (when known): the pod's `kubernetes.io/os`
//!    label and `spec.os`, then resources (`OutOfpods`, `OutOfcpu`, `OutOfmemory`,
//!    `OutOfephemeral-storage`: `Node didn't have enough resource: cpu, requested: 500, used: 1800,
//!    capacity: 2000`, requests summed over the admitted pods that are not finished), node
//!    affinity (`NodeAffinity`), the node name, host ports (`NodePorts`) and untolerated
//!    NoExecute taints (`TaintToleration`, static pods exempt), each `Predicate X failed: ...`.
//!
//! A rejected pod gets phase Failed, the reason, `Pod was rejected: <message>` and a Warning
//! event with the reason and message; its containers never start.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerPort, Node, Pod, Taint, Toleration};
use kube::api::Api;
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::watch;
use tracing::debug;

use crate::eviction::{Pressure, SharedPressure};

/// Upstream's eviction admission reason.
pub const REASON_EVICTED: &str = "Evicted";

/// Why a pod was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }

    fn predicate(name: &'static str, desc: &str) -> Self {
        Rejection::new(name, format!("Predicate {name} failed: {desc}"))
    }

    /// The pod status message upstream's `rejectPod` writes.
    pub fn status_message(&self) -> String {
        format!("Pod was rejected: {}", self.message)
    }
}

/// What admission decides with: the eviction manager's pressure and the latest Node.
#[derive(Clone, Default)]
pub struct Admission {
    pub pressure: SharedPressure,
    pub node: Arc<RwLock<Option<Node>>>,
    /// The node shutdown manager's state: while shutting down every pod is rejected.
    pub shutdown: crate::shutdown::SharedShutdown,
}

impl Admission {
    pub fn new(pressure: SharedPressure) -> Self {
        Admission {
            pressure,
            node: Arc::default(),
            shutdown: Arc::default(),
        }
    }

    /// Admits `pod` beside `others` (the admitted pods that are not finished).
    pub fn admit(&self, pod: &Pod, others: &[&Pod]) -> Result<(), Rejection> {
        if self.shutdown.is_shutting_down() {
            return Err(Rejection {
                reason: crate::shutdown::NOT_ADMITTED_REASON,
                message: crate::shutdown::NOT_ADMITTED_MESSAGE.into(),
            });
        }
        let pressure = self.pressure.lock().map(|p| *p).unwrap_or_default();
        let node = self.node.read().ok().and_then(|n| n.clone());
        admit(pod, others, pressure, node.as_ref())
    }

    /// Keeps [`Admission::node`] up to date from a watch of the Node `name`.
    pub async fn watch_node(self, client: Client, name: String, mut stop: watch::Receiver<bool>) {
        let api: Api<Node> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher::watcher(api, cfg).boxed();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                ev = events.next() => {
                    let Some(ev) = ev else { return };
                    match ev {
                        Ok(watcher::Event::Apply(n)) | Ok(watcher::Event::InitApply(n)) => {
                            if let Ok(mut slot) = self.node.write() {
                                *slot = Some(n);
                            }
                        }
                        Ok(watcher::Event::Delete(_)) => {
                            if let Ok(mut slot) = self.node.write() {
                                *slot = None;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            debug!(error = %e, "node watch for admission failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        }
    }
}

/// The admission decision for `pod` (see the module doc).
pub fn admit(
    pod: &Pod,
    others: &[&Pod],
    pressure: Pressure,
    node: Option<&Node>,
) -> Result<(), Rejection> {
    admit_pressure(pod, pressure)?;
    if let Some(node) = node {
        admit_predicates(pod, others, node)?;
    }
    Ok(())
}

/// Upstream's eviction manager `Admit`.
pub fn admit_pressure(pod: &Pod, pressure: Pressure) -> Result<(), Rejection> {
    let mut conditions = Vec::new();
    if pressure.memory {
        conditions.push("MemoryPressure");
    }
    if pressure.disk {
        conditions.push("DiskPressure");
    }
    if pressure.pid {
        conditions.push("PIDPressure");
    }
    if conditions.is_empty() || crate::eviction::is_critical(pod) {
        return Ok(());
    }
    if conditions == ["MemoryPressure"] {
        if crate::status::qos_class(pod) != "BestEffort" {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/memory-pressure".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if tolerations(pod).iter().any(|t| tolerates(t, &taint)) {
            return Ok(());
        }
    }
    Err(Rejection::new(
        REASON_EVICTED,
        format!("The node had condition: [{}]. ", conditions.join(" ")),
    ))
}

fn tolerations(pod: &Pod) -> Vec<Toleration> {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default()
}

/// Whether toleration `t` tolerates `taint` (upstream's `ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or_default();
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

fn quantity_of(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    r: &str,
) -> Option<f64> {
    map.and_then(|m| m.get(r))
        .and_then(|q| crate::volumes::parse_quantity(&q.0))
}

/// A pod's `ephemeral-storage` request: containers summed, init containers by max (sidecars
/// added), as upstream's `PodRequests`.
fn ephemeral_request(pod: &Pod) -> i64 {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    let req = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        quantity_of(r.and_then(|r| r.requests.as_ref()), "ephemeral-storage")
            .or_else(|| quantity_of(r.and_then(|r| r.limits.as_ref()), "ephemeral-storage"))
            .map(|v| v.ceil() as i64)
            .unwrap_or(0)
    };
    let mut sum: i64 = spec.containers.iter().map(req).sum();
    let mut sidecars = 0;
    for c in spec.init_containers.iter().flatten() {
        if crate::reconcile::is_sidecar(c) {
            sidecars += req(c);
            sum += req(c);
        } else {
            sum = sum.max(req(c) + sidecars);
        }
    }
    sum
}

/// Upstream's general predicates (the resource fit, node affinity, node name, host ports, and
/// the NoExecute taints).
pub fn admit_predicates(pod: &Pod, others: &[&Pod], node: &Node) -> Result<(), Rejection> {
    let node_labels = node.metadata.labels.clone().unwrap_or_default();
    let pod_os = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"));
    if pod_os.is_some_and(|os| os != "linux") {
        return Err(Rejection::new(
            "PodOSSelectorNodeLabelDoesNotMatch",
            "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label",
        ));
    }
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.os.as_ref())
        .is_some_and(|os| os.name != "linux")
    {
        return Err(Rejection::new(
            "PodOSNotSupported",
            "Failed to admit pod as the OS field doesn't match node OS",
        ));
    }

    // Resources, in upstream's order: pods, cpu, memory, ephemeral-storage.
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let alloc_of = |r: &str| quantity_of(alloc, r);
    if let Some(max_pods) = alloc_of("pods") {
        let max_pods = max_pods as i64;
        if others.len() as i64 + 1 > max_pods {
            return Err(insufficient("pods", 1, others.len() as i64, max_pods));
        }
    }
    let (cpu, mem) = crate::cgroups::pod_requests(pod);
    let used = others
        .iter()
        .map(|p| crate::cgroups::pod_requests(p))
        .fold((0i64, 0i64), |a, b| (a.0 + b.0, a.1 + b.1));
    if let Some(cap) = alloc_of("cpu").map(|v| (v * 1000.0).round() as i64) {
        if cpu > 0 && cpu > cap - used.0 {
            return Err(insufficient("cpu", cpu, used.0, cap));
        }
    }
    if let Some(cap) = alloc_of("memory").map(|v| v as i64) {
        if mem > 0 && mem > cap - used.1 {
            return Err(insufficient("memory", mem, used.1, cap));
        }
    }
    let eph = ephemeral_request(pod);
    if let Some(cap) = alloc_of("ephemeral-storage").map(|v| v as i64) {
        let used_eph: i64 = others.iter().map(|p| ephemeral_request(p)).sum();
        if eph > 0 && eph > cap - used_eph {
            return Err(insufficient("ephemeral-storage", eph, used_eph, cap));
        }
    }

    let node_name = node.metadata.name.as_deref().unwrap_or_default();
    if !matches_node_affinity(pod, node_name, &node_labels) {
        return Err(Rejection::predicate(
            "NodeAffinity",
            "node(s) didn't match Pod's node affinity/selector",
        ));
    }
    if let Some(want) = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
    {
        if want != node_name {
            return Err(Rejection::predicate(
                "NodeName",
                "node(s) didn't match the requested node name",
            ));
        }
    }
    let used_ports: Vec<ContainerPort> = others.iter().flat_map(|p| host_ports(p)).collect();
    if host_ports(pod)
        .iter()
        .any(|want| used_ports.iter().any(|u| ports_conflict(want, u)))
    {
        return Err(Rejection::predicate(
            "NodePorts",
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    if !crate::static_pods::is_static(pod) {
        let tols = tolerations(pod);
        let untolerated = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoExecute")
            .any(|t| !tols.iter().any(|tol| tolerates(tol, t)));
        if untolerated {
            return Err(Rejection::predicate(
                "TaintToleration",
                "node(s) had untolerated taint",
            ));
        }
    }
    Ok(())
}

fn insufficient(resource: &'static str, requested: i64, used: i64, capacity: i64) -> Rejection {
    let reason = match resource {
        "cpu" => "OutOfcpu",
        "memory" => "OutOfmemory",
        "pods" => "OutOfpods",
        _ => "OutOfephemeral-storage",
    };
    Rejection::new(
        reason,
        format!(
            "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    )
}

fn host_ports(p: &Pod) -> Vec<ContainerPort> {
    let Some(spec) = p.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .collect()
}

fn ports_conflict(a: &ContainerPort, b: &ContainerPort) -> bool {
    let proto = |p: &ContainerPort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let ip = |p: &ContainerPort| {
        p.host_ip
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0.0.0.0".into())
    };
    a.host_port == b.host_port
        && proto(a) == proto(b)
        && (ip(a) == ip(b) || ip(a) == "0.0.0.0" || ip(b) == "0.0.0.0")
}

/// `spec.nodeSelector` and the required node affinity terms (upstream's
/// `GetRequiredNodeAffinity(pod).Match(node)`).
pub fn matches_node_affinity(
    pod: &Pod,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.clone());
    match terms {
        None => true,
        Some(terms) => terms
            .iter()
            .any(|t| skiff_selectors::term_matches(t, node_name, labels)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn best_effort() -> Pod {
        pod(serde_json::json!({"metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c"}]}}))
    }

    fn burstable(cpu: &str, mem: &str) -> Pod {
        pod(serde_json::json!({"metadata": {"name": "p", "uid": "u"},
            "spec": {"nodeName": "n", "containers": [{"name": "c",
                "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}}))
    }

    fn node() -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": {"kubernetes.io/hostname": "n", "disk": "ssd", "gen": "5"}},
            "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoExecute"},
                                {"key": "soft", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "3"}}
        }))
        .unwrap()
    }

    fn tolerate_k(mut p: Pod) -> Pod {
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("k".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn every_pod_is_rejected_while_the_node_shuts_down() {
        let a = Admission::new(SharedPressure::default());
        assert!(a.admit(&best_effort(), &[]).is_ok());
        a.shutdown.set(true);
        let r = a.admit(&best_effort(), &[]).unwrap_err();
        assert_eq!(r.reason, "NodeShutdown");
        assert_eq!(
            r.status_message(),
            "Pod was rejected: Pod was rejected as the node is shutting down."
        );
        a.shutdown.set(false);
        assert!(a.admit(&best_effort(), &[]).is_ok());
    }

    #[test]
    fn memory_pressure_rejects_best_effort_only() {
        let mem = Pressure {
            memory: true,
            ..Default::default()
        };
        let r = admit_pressure(&best_effort(), mem).unwrap_err();
        assert_eq!(r.reason, "Evicted");
        assert_eq!(r.message, "The node had condition: [MemoryPressure]. ");
        assert_eq!(
            r.status_message(),
            "Pod was rejected: The node had condition: [MemoryPressure]. "
        );
        assert!(admit_pressure(&burstable("100m", "10Mi"), mem).is_ok());
        let mut tolerant = best_effort();
        tolerant.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("node.kubernetes.io/memory-pressure".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert!(admit_pressure(&tolerant, mem).is_ok());
    }

    #[test]
    fn disk_pressure_rejects_all_but_critical() {
        let disk = Pressure {
            disk: true,
            memory: true,
            ..Default::default()
        };
        let r = admit_pressure(&burstable("100m", "10Mi"), disk).unwrap_err();
        assert_eq!(
            r.message,
            "The node had condition: [MemoryPressure DiskPressure]. "
        );
        let mut critical = best_effort();
        critical.spec.as_mut().unwrap().priority = Some(2_000_001_000);
        assert!(admit_pressure(&critical, disk).is_ok());
        assert!(admit_pressure(&best_effort(), Pressure::default()).is_ok());
    }

    #[test]
    fn resources_fit() {
        let n = node();
        let a = tolerate_k(burstable("1500m", "100Mi"));
        let b = tolerate_k(burstable("600m", "100Mi"));
        let r = admit_predicates(&b, &[&a], &n).unwrap_err();
        assert_eq!(r.reason, "OutOfcpu");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000"
        );
        let c = tolerate_k(burstable("100m", "1000Mi"));
        let r = admit_predicates(&c, &[&a], &n).unwrap_err();
        assert_eq!(r.reason, "OutOfmemory");
        assert!(admit_predicates(&tolerate_k(burstable("100m", "10Mi")), &[&a], &n).is_ok());
        let small = tolerate_k(burstable("1m", "1Mi"));
        let r = admit_predicates(&small, &[&small, &small, &small], &n).unwrap_err();
        assert_eq!(r.reason, "OutOfpods");
        assert_eq!(
            r.message,
            "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"
        );
    }

    #[test]
    fn affinity_taints_ports() {
        let n = node();
        let mut p = tolerate_k(burstable("1m", "1Mi"));
        p.spec.as_mut().unwrap().node_selector =
            Some([("disk".to_string(), "hdd".to_string())].into());
        let r = admit_predicates(&p, &[], &n).unwrap_err();
        assert_eq!(r.reason, "NodeAffinity");
        assert_eq!(
            r.message,
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
        );
        let p: Pod = pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c"}],
        "tolerations": [{"operator": "Exists"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["7"]}]},
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]},
                                      {"key": "gpu", "operator": "DoesNotExist"}],
                 "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]}
            ]}}}}}));
        assert!(admit_predicates(&p, &[], &n).is_ok());
        // NoExecute taint not tolerated (the NoSchedule one is the scheduler's business).
        let r = admit_predicates(&best_effort(), &[], &n).unwrap_err();
        assert_eq!(r.reason, "TaintToleration");
        let hp = |port: i32| {
            tolerate_k(pod(serde_json::json!({"metadata": {"name": "p"}, "spec": {
                "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": port}]}]}})))
        };
        let r = admit_predicates(&hp(8080), &[&hp(8080)], &n).unwrap_err();
        assert_eq!(r.reason, "NodePorts");
        assert!(admit_predicates(&hp(8080), &[&hp(8081)], &n).is_ok());
    }
}
