//! What the scheduler knows of the cluster, kept from watch events: every node with the pods
//! bound or assumed on it and what they request, so a scheduling cycle needs no API call.

use crate::quantity::{milli_cpu, value};
use k8s_openapi::api::core::v1::{Affinity, Container, Node, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Requests (or allocatable amounts) of the resources the scheduler counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`, ...), in whole units.
    pub scalar: BTreeMap<String, i64>,
}

/// Requests upstream assumes for scoring when a container states none.
pub const DEFAULT_MILLI_CPU: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 << 20;

impl Resources {
    pub fn from_map(
        m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Self {
        let mut r = Resources::default();
        for (k, q) in m.into_iter().flatten() {
            match k.as_str() {
                "cpu" => r.milli_cpu = milli_cpu(&q.0),
                "memory" => r.memory = value(&q.0),
                "ephemeral-storage" => r.ephemeral_storage = value(&q.0),
                "pods" => r.pods = value(&q.0),
                other => {
                    r.scalar.insert(other.to_string(), value(&q.0));
                }
            }
        }
        r
    }

    pub fn add(&mut self, o: &Resources) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resources) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Element-wise maximum.
    pub fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

fn container_requests(c: &Container) -> Resources {
    let res = c.resources.as_ref();
    // Requests default to limits when only limits are given (the API server defaults this too).
    let mut r = Resources::from_map(res.and_then(|r| r.limits.as_ref()));
    let req = Resources::from_map(res.and_then(|r| r.requests.as_ref()));
    let has = |k: &str| {
        res.and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key(k))
    };
    if has("cpu") {
        r.milli_cpu = req.milli_cpu;
    }
    if has("memory") {
        r.memory = req.memory;
    }
    if has("ephemeral-storage") {
        r.ephemeral_storage = req.ephemeral_storage;
    }
    for (k, v) in req.scalar {
        r.scalar.insert(k, v);
    }
    r
}

/// What a pod asks of a node: the larger of its containers (plus sidecars) and any one init
/// container's need at its turn, plus the pod overhead; `pods: 1`.
pub fn pod_requests(pod: &Pod, non_zero: bool) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources {
            pods: 1,
            ..Default::default()
        };
    };
    let req = |c: &Container| {
        let mut r = container_requests(c);
        if non_zero {
            if r.milli_cpu == 0 {
                r.milli_cpu = DEFAULT_MILLI_CPU;
            }
            if r.memory == 0 {
                r.memory = DEFAULT_MEMORY;
            }
        }
        r
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&req(c));
    }
    // Init containers run one at a time, beside the sidecars started before them; sidecars
    // (restartPolicy Always) keep running beside the app containers.
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = req(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            init_peak.max(&sidecars);
        } else {
            let mut at = sidecars.clone();
            at.add(&r);
            init_peak.max(&at);
        }
    }
    total.add(&sidecars);
    total.max(&init_peak);
    if let Some(o) = spec.overhead.as_ref() {
        total.add(&Resources::from_map(Some(o)));
    }
    total.pods = 1;
    total
}

/// A host port a pod claims: protocol, host IP (`0.0.0.0` for any), port.
pub type HostPort = (String, String, i32);

pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return vec![];
    };
    let mut v = Vec::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                let ip = p
                    .host_ip
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into());
                v.push((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, hp));
            }
        }
    }
    v
}

/// A pod as the scheduler sees it, with what it requests worked out once, and what
/// scheduling *other* pods reads of it (labels, controller, affinity, deletion, start time).
/// A pod being scheduled keeps its (slimmed) `Pod` in `pod`; a pod placed on a node, which the
/// cache keeps for every bound pod of the cluster, keeps only these fields and shares one
/// empty `Pod` ([`PodInfo::placed`]): a k8s-openapi `Pod` is 2,176 bytes as a Rust value
/// before any string.
#[derive(Debug)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The uid of the controller that owns this pod, if any.
    pub owner: Option<String>,
    /// Its own affinity: existing pods' anti-affinity and preferences count for others.
    pub affinity: Option<Box<Affinity>>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    pub start_time: Option<Timestamp>,
    pub requests: Resources,
    pub non_zero: Resources,
    pub ports: Vec<HostPort>,
    pub priority: i32,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> PodInfo {
        let mut info = PodInfo::of(&pod);
        info.pod = pod;
        info
    }

    /// Everything but `pod` (left the shared empty one).
    fn of(pod: &Pod) -> PodInfo {
        let m = &pod.metadata;
        let spec = pod.spec.as_ref();
        PodInfo {
            pod: empty_pod(),
            uid: m.uid.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
            name: m.name.clone().unwrap_or_default(),
            resource_version: m.resource_version.clone(),
            labels: m.labels.clone().unwrap_or_default(),
            owner: m
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            affinity: spec
                .and_then(|s| s.affinity.as_ref())
                .filter(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
                .map(|a| {
                    Box::new(Affinity {
                        node_affinity: None,
                        pod_affinity: a.pod_affinity.clone(),
                        pod_anti_affinity: a.pod_anti_affinity.clone(),
                    })
                }),
            terminating: m.deletion_timestamp.is_some(),
            start_time: pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
            requests: pod_requests(pod, false),
            non_zero: pod_requests(pod, true),
            ports: host_ports(pod),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
        }
    }

    /// A pod bound to a node, as the cache keeps it (every bound pod of the cluster is there):
    /// its figures and what scheduling other pods reads of it, not the pod itself (`pod` is
    /// the shared empty one).
    pub fn placed(pod: Pod) -> PodInfo {
        PodInfo::of(&pod)
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The uid of the controller that owns this pod, if any.
    pub fn controller_uid(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

/// The one empty `Pod` that every placed [`PodInfo`] points at.
fn empty_pod() -> Arc<Pod> {
    static EMPTY: std::sync::OnceLock<Arc<Pod>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::new(Pod::default())).clone()
}

/// A node and what is placed on it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: Arc<Node>,
    pub name: String,
    pub allocatable: Resources,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub ports: Vec<HostPort>,
    /// Taints, plus `node.kubernetes.io/not-ready:NoSchedule` while the node is not Ready and
    /// does not carry that taint yet (what upstream's node lifecycle controller adds).
    pub taints: Vec<Taint>,
    /// Image name -> size in bytes (from `status.images`).
    pub images: HashMap<String, i64>,
}

pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl NodeInfo {
    fn new(node: Arc<Node>) -> NodeInfo {
        let mut n = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            node: node.clone(),
            allocatable: Resources::default(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: HashMap::new(),
            ports: Vec::new(),
            taints: Vec::new(),
            images: HashMap::new(),
        };
        n.set_node(node);
        n
    }

    fn set_node(&mut self, node: Arc<Node>) {
        let status = node.status.as_ref();
        self.allocatable = Resources::from_map(
            status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
        );
        let mut taints: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !node_ready(&node)
            && !taints.iter().any(|t| {
                t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable"
            })
        {
            taints.push(Taint {
                key: "node.kubernetes.io/not-ready".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        }
        self.taints = taints;
        self.images = status
            .and_then(|s| s.images.as_ref())
            .into_iter()
            .flatten()
            .flat_map(|i| {
                let size = i.size_bytes.unwrap_or(0);
                i.names
                    .iter()
                    .flatten()
                    .map(move |n| (normalize_image(n), size))
            })
            .collect();
        self.node = node;
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn unschedulable(&self) -> bool {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }

    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        if let Some(old) = self.pods.remove(&p.uid) {
            self.account(&old, false);
        }
        self.account(&p, true);
        self.pods.insert(p.uid.clone(), p);
    }

    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(uid)?;
        self.account(&old, false);
        Some(old)
    }

    fn account(&mut self, p: &PodInfo, add: bool) {
        if add {
            self.requested.add(&p.requests);
            self.non_zero_requested.add(&p.non_zero);
            self.ports.extend(p.ports.iter().cloned());
        } else {
            self.requested.sub(&p.requests);
            self.non_zero_requested.sub(&p.non_zero);
            for hp in &p.ports {
                if let Some(i) = self.ports.iter().position(|x| x == hp) {
                    self.ports.swap_remove(i);
                }
            }
        }
    }
}

/// `busybox` -> `docker.io/library/busybox:latest`, so pod images and node image names compare.
pub fn normalize_image(name: &str) -> String {
    if name.contains('@') {
        return name.to_string();
    }
    let (repo, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], &name[i + 1..]),
        _ => (name, "latest"),
    };
    let first = repo.split('/').next().unwrap_or("");
    let has_host =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo = if has_host {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}:{tag}")
}

/// Claims, volumes and classes (the VolumeBinding filter) and disruption budgets (preemption).
#[derive(Default)]
pub struct Volumes {
    /// By `namespace/name`.
    pub claims: HashMap<String, Arc<k8s_openapi::api::core::v1::PersistentVolumeClaim>>,
    pub pvs: HashMap<String, Arc<k8s_openapi::api::core::v1::PersistentVolume>>,
    pub classes: HashMap<String, Arc<k8s_openapi::api::storage::v1::StorageClass>>,
    /// PodDisruptionBudgets by `namespace/name`, for preemption.
    pub pdbs: HashMap<String, Arc<k8s_openapi::api::policy::v1::PodDisruptionBudget>>,
}

/// Nodes and the pods placed on them; pods bound by the API or assumed by this scheduler.
#[derive(Default)]
pub struct Cache {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub volumes: Volumes,
    /// Pod uid -> node it is on (bound or assumed).
    placed: HashMap<String, String>,
    /// Pods this scheduler placed before the API confirmed them.
    assumed: HashSet<String>,
    /// Namespace labels, for affinity terms with a namespaceSelector.
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Pods nominated to a node by preemption, waiting for their victims to go.
    pub nominated: HashMap<String, (String, Arc<PodInfo>)>,
    /// Pods bound to nodes the cache does not know (yet).
    orphans: HashMap<String, (String, Arc<PodInfo>)>,
}

impl Cache {
    pub fn set_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let node = Arc::new(node);
        match self.nodes.get_mut(&name) {
            Some(n) => n.set_node(node),
            None => {
                let mut info = NodeInfo::new(node);
                let waiting: Vec<String> = self
                    .orphans
                    .iter()
                    .filter(|(_, (n, _))| *n == name)
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in waiting {
                    if let Some((_, p)) = self.orphans.remove(&uid) {
                        info.add_pod(p);
                    }
                }
                self.nodes.insert(name, info);
            }
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(n) = self.nodes.remove(name) {
            for (uid, p) in n.pods {
                self.orphans.insert(uid, (name.to_string(), p));
            }
        }
    }

    /// A pod the API says is on `node` (or no longer anywhere, for `None`).
    pub fn set_pod_placement(&mut self, p: Arc<PodInfo>, node: Option<&str>) {
        let uid = p.uid.clone();
        self.assumed.remove(&uid);
        if let Some(prev) = self.placed.remove(&uid) {
            if let Some(n) = self.nodes.get_mut(&prev) {
                n.remove_pod(&uid);
            }
            self.orphans.remove(&uid);
        }
        let Some(node) = node else {
            return;
        };
        self.nominated.remove(&uid);
        self.placed.insert(uid.clone(), node.to_string());
        match self.nodes.get_mut(node) {
            Some(n) => n.add_pod(p),
            None => {
                self.orphans.insert(uid, (node.to_string(), p));
            }
        }
    }

    pub fn forget_pod(&mut self, uid: &str) {
        self.assumed.remove(uid);
        self.nominated.remove(uid);
        if let Some(prev) = self.placed.remove(uid) {
            if let Some(n) = self.nodes.get_mut(&prev) {
                n.remove_pod(uid);
            }
            self.orphans.remove(uid);
        }
    }

    /// Places a pod this scheduler chose, before its binding is confirmed.
    pub fn assume(&mut self, p: Arc<PodInfo>, node: &str) {
        let uid = p.uid.clone();
        self.set_pod_placement(p, Some(node));
        self.assumed.insert(uid);
    }

    pub fn is_placed(&self, uid: &str) -> bool {
        self.placed.contains_key(uid)
    }

    /// Drops an assumed pod whose binding failed.
    pub fn forget_assumed(&mut self, uid: &str) {
        if self.assumed.contains(uid) {
            self.forget_pod(uid);
        }
    }

    /// How many nodes hold each image (normalized name), for image locality.
    pub fn image_spread(&self) -> HashMap<&str, usize> {
        let mut m: HashMap<&str, usize> = HashMap::new();
        for n in self.nodes.values() {
            for img in n.images.keys() {
                *m.entry(img.as_str()).or_default() += 1;
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn requests_count_init_containers_sidecars_and_overhead() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "200m"}}}
                ],
                "initContainers": [
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                    {"name": "big", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}
                ],
                "overhead": {"cpu": "10m"}
            }
        }));
        let r = pod_requests(&p, false);
        // max(100+200+50, 50+1000) + 10
        assert_eq!(r.milli_cpu, 1060);
        assert_eq!(r.memory, 64 << 20);
        assert_eq!(r.pods, 1);
        let nz = pod_requests(
            &pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}})),
            true,
        );
        assert_eq!(
            (nz.milli_cpu, nz.memory),
            (DEFAULT_MILLI_CPU, DEFAULT_MEMORY)
        );
    }

    #[test]
    fn placed_pods_keep_their_requests_and_what_others_match() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                         "labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {
                "nodeName": "n1", "priority": 5,
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}},
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname",
                     "labelSelector": {"matchLabels": {"app": "web"}}}]}},
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}]},
            "status": {"phase": "Running", "podIP": "10.244.0.9",
                       "startTime": "2026-12-06T10:00:00Z"}
        }));
        let full = PodInfo::new(Arc::new(p.clone()));
        let placed = PodInfo::placed(p);
        assert_eq!(placed.requests, full.requests);
        assert_eq!(placed.non_zero, full.non_zero);
        assert_eq!(placed.requests.milli_cpu, 250);
        assert_eq!(placed.ports.len(), 1);
        assert_eq!(placed.priority, 5);
        assert_eq!(
            (placed.uid.as_str(), placed.key()),
            ("u", "ns/p".to_string())
        );
        assert_eq!(placed.labels().get("app").map(String::as_str), Some("web"));
        // The placed pod keeps no `Pod` of its own.
        assert!(placed.pod.spec.is_none() && placed.pod.metadata.name.is_none());
        assert!(placed
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .is_some());
        assert!(!placed.terminating);
        assert_eq!(placed.resource_version.as_deref(), Some("7"));
        assert!(placed.start_time.is_some());
    }

    /// A slim bound pod still counts for resource fit and its anti-affinity still repels.
    #[test]
    fn placed_pods_count_in_filters() {
        let mut c = Cache::default();
        for n in ["n1", "n2"] {
            c.set_node(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}},
                    "status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "10"},
                               "conditions": [{"type": "Ready", "status": "True"}]}
                }))
                .unwrap(),
            );
        }
        let bound = pod(serde_json::json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "u1", "labels": {"app": "db"}},
            "spec": {"nodeName": "n1",
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "900m"}}}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname",
                     "labelSelector": {"matchLabels": {"app": "web"}}}]}}}
        }));
        c.set_pod_placement(Arc::new(PodInfo::placed(bound)), Some("n1"));
        let profile = crate::config::Profile::default_profile("default-scheduler");
        let incoming = |labels: serde_json::Value, cpu: &str| {
            PodInfo::new(Arc::new(pod(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "uid": "u2", "labels": labels},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
            }))))
        };
        let (n1, n2) = (&c.nodes["n1"], &c.nodes["n2"]);
        let big = incoming(serde_json::json!({"app": "x"}), "200m");
        let cycle = crate::framework::Cycle::new(&big, &c);
        let unfit = cycle.filter(n1, &profile).unwrap_err();
        assert!(
            unfit.reasons.iter().any(|r| r == "Insufficient cpu"),
            "{unfit:?}"
        );
        assert!(cycle.filter(n2, &profile).is_ok());
        let web = incoming(serde_json::json!({"app": "web"}), "10m");
        let cycle = crate::framework::Cycle::new(&web, &c);
        assert!(cycle.filter(n1, &profile).is_err());
        assert!(cycle.filter(n2, &profile).is_ok());
    }

    #[test]
    fn image_names_normalize() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_image("nginx:1.25"),
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(
            normalize_image("127.0.0.1:5000/bb"),
            "127.0.0.1:5000/bb:latest"
        );
        assert_eq!(normalize_image("quay.io/a/b:v1"), "quay.io/a/b:v1");
    }

    #[global_allocator]
    static A: skiff_memtrim::counting::Counting = skiff_memtrim::counting::Counting;
    use skiff_memtrim::counting;

    /// A bound pod of `bench/controllers/rss.sh` (zone spread, as the API server defaults it),
    /// as the cache keeps it: a fraction of the `Pod` (figures in bench/README.md).
    #[test]
    fn a_placed_pod_is_small() {
        let body = serde_json::to_vec(&serde_json::json!({
            "metadata": {"name": "sk-bench-04-5d8f7c9b6d-x7k2p", "generateName": "sk-bench-04-5d8f7c9b6d-",
                "namespace": "sk-bench", "uid": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e",
                "resourceVersion": "123456", "creationTimestamp": "2026-12-07T01:00:00Z",
                "labels": {"app": "sk-bench-04", "pod-template-hash": "5d8f7c9b6d"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "sk-bench-04-5d8f7c9b6d", "uid": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                    "controller": true, "blockOwnerDeletion": true}]},
            "spec": {
                "containers": [{"name": "c", "image": "sk-busybox",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "Always"}],
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "sk-bench-04"}}}],
                "restartPolicy": "Always", "nodeName": "sk-node-042", "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                "priority": 0},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
        }))
        .unwrap();
        // The shared empty `Pod` exists before the figure is taken.
        drop(PodInfo::placed(Pod::default()));
        let (full, full_bytes) =
            counting::live_bytes(|| Arc::new(serde_json::from_slice::<Pod>(&body).unwrap()));
        let (placed, placed_bytes) = counting::live_bytes(|| {
            Arc::new(PodInfo::placed(
                serde_json::from_slice::<Pod>(&body).unwrap(),
            ))
        });
        eprintln!("bench pod live bytes: Pod {full_bytes}, placed PodInfo {placed_bytes}");
        assert_eq!(placed.requests, pod_requests(&full, false));
        assert!(
            placed_bytes * 4 < full_bytes && placed_bytes < 2048,
            "Pod {full_bytes} B, placed PodInfo {placed_bytes} B"
        );
    }
}
