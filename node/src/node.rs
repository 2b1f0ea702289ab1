//! The Node object: host facts, registration (create or update), the status heartbeat, and the
//! node Lease in `kube-node-lease`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use tracing::{debug, info};

use crate::error::NodeError;
use crate::status::now_time;

/// The kubelet version reported in `nodeInfo`.
pub const KUBELET_VERSION: &str = "v1.32.0-skiff";
/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Lease duration in seconds.
pub const LEASE_DURATION_SECS: i32 = 40;

/// Facts about the host, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: usize,
    pub memory_kib: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `MemTotal` of `/proc/meminfo` content, in KiB.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `PRETTY_NAME` of `/etc/os-release` content.
pub fn parse_pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
}

impl HostInfo {
    /// Reads the host's facts from /proc and /etc.
    pub fn read() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            other => other,
        };
        Self {
            hostname: read_trim("/proc/sys/kernel/hostname"),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_kib: parse_mem_total_kib(&read_trim("/proc/meminfo")).unwrap_or(0),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            os_image: parse_pretty_name(&read_trim("/etc/os-release"))
                .unwrap_or_else(|| "Linux".into()),
            architecture: arch.into(),
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// What the node reports besides host facts.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// A dual-stack node's InternalIP of the other family, listed after `node_ip`.
    pub secondary_node_ip: Option<IpAddr>,
    pub pod_cidr: String,
    pub port: u16,
    /// Roles: each becomes the label `node-role.kubernetes.io/<role>`.
    pub roles: Vec<String>,
    pub extra_labels: BTreeMap<String, String>,
    pub host: HostInfo,
    /// Capacity `pods` (`--max-pods`, 110).
    pub max_pods: u32,
    /// Taints set when the Node is created (`--register-with-taints`).
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Capacity `ephemeral-storage` in bytes (the root dir's filesystem), when known.
    pub ephemeral_storage: Option<i64>,
    /// Subtracted from capacity for allocatable (reserved + hard eviction thresholds): cpu in
    /// millicores, memory and ephemeral-storage in bytes, pods as a count.
    pub reserved: BTreeMap<String, i64>,
    /// The eviction manager's pressure conditions.
    pub pressure: Option<crate::eviction::SharedPressure>,
    /// Set while the node shuts down (node/src/shutdown.rs): Ready turns False.
    pub shutdown: Option<crate::shutdown::SharedShutdown>,
}

/// The root dir filesystem's size in bytes (capacity `ephemeral-storage`).
pub fn ephemeral_storage_capacity(root_dir: &std::path::Path) -> Option<i64> {
    let mut p = root_dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return None;
        }
    }
    let s = nix::sys::statvfs::statvfs(&p).ok()?;
    Some(s.blocks() as i64 * s.fragment_size() as i64)
}

/// What allocatable leaves out (upstream's `GetNodeAllocatableReservation`): kube-reserved +
/// system-reserved, plus the hard eviction thresholds of memory.available (memory) and
/// nodefs.available (ephemeral-storage). Percentages are of capacity, resolved in
/// [`node_status`]: they are kept here as negative per-million values.
pub fn allocatable_reserve(
    reserved: &BTreeMap<String, i64>,
    eviction: &crate::eviction::EvictionConfig,
) -> BTreeMap<String, i64> {
    let mut r = reserved.clone();
    for t in eviction.thresholds.iter().filter(|t| t.hard) {
        let res = match t.signal {
            crate::eviction::Signal::MemoryAvailable => "memory",
            crate::eviction::Signal::NodeFsAvailable => "ephemeral-storage",
            _ => continue,
        };
        match &t.value {
            crate::eviction::Value::Quantity(v, _) => *r.entry(res.into()).or_insert(0) += v,
            crate::eviction::Value::Percentage(p) => {
                r.insert(format!("{res}%"), (p * 10_000.0) as i64);
            }
        }
    }
    r
}

/// Capacity minus the reserve for `res` (percent-of-capacity reserves included), never below 0.
fn allocatable_of(f: &NodeFacts, res: &str, capacity: i64) -> i64 {
    let fixed = f.reserved.get(res).copied().unwrap_or(0);
    let pct = f
        .reserved
        .get(&format!("{res}%"))
        .map(|ppm| (capacity as f64 * *ppm as f64 / 1_000_000.0) as i64)
        .unwrap_or(0);
    (capacity - fixed - pct).max(0)
}

fn cpu_text(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// The Node's labels.
pub fn node_labels(f: &NodeFacts) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("kubernetes.io/hostname".into(), f.node_name.clone());
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert("kubernetes.io/arch".into(), f.host.architecture.clone());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert(
        "beta.kubernetes.io/arch".into(),
        f.host.architecture.clone(),
    );
    for r in &f.roles {
        l.insert(format!("node-role.kubernetes.io/{r}"), "true".into());
    }
    l.extend(f.extra_labels.clone());
    l
}

/// The Node object the kubelet registers.
/// The node's pod ranges: `pod_cidr` is one CIDR or a dual-stack pair (`a,b`, primary first).
fn pod_cidrs(pod_cidr: &str) -> Vec<String> {
    pod_cidr.split(',').map(|c| c.trim().to_string()).collect()
}

fn primary_cidr(pod_cidr: &str) -> String {
    pod_cidrs(pod_cidr).swap_remove(0)
}

pub fn node_object(f: &NodeFacts) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(f.node_name.clone()),
            labels: Some(node_labels(f)),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(primary_cidr(&f.pod_cidr)),
            pod_cidrs: Some(pod_cidrs(&f.pod_cidr)),
            taints: (!f.taints.is_empty()).then(|| f.taints.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The runtime's health as seen by the status loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeHealth {
    /// e.g. `skiff://0.1.0`, empty if the runtime was never reached.
    pub version: String,
    /// `None` when healthy, else why not.
    pub problem: Option<String>,
}

/// The node's status. `old` is the current status in the API (for condition transition times).
pub fn node_status(
    f: &NodeFacts,
    rt: &RuntimeHealth,
    old: Option<&NodeStatus>,
    now: &Time,
) -> NodeStatus {
    let mut cap = BTreeMap::new();
    cap.insert("cpu".to_string(), Quantity(f.host.cpus.to_string()));
    cap.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", f.host.memory_kib)),
    );
    cap.insert("pods".to_string(), Quantity(f.max_pods.to_string()));
    if let Some(es) = f.ephemeral_storage {
        cap.insert(
            "ephemeral-storage".to_string(),
            Quantity(format!("{}Ki", es / 1024)),
        );
    }
    let mut alloc = cap.clone();
    if !f.reserved.is_empty() {
        let cpu = allocatable_of(f, "cpu", f.host.cpus as i64 * 1000);
        alloc.insert("cpu".into(), Quantity(cpu_text(cpu)));
        let mem = allocatable_of(f, "memory", f.host.memory_kib as i64 * 1024);
        alloc.insert("memory".into(), Quantity(format!("{}Ki", mem / 1024)));
        if let Some(es) = f.ephemeral_storage {
            let es = allocatable_of(f, "ephemeral-storage", es);
            alloc.insert("ephemeral-storage".into(), Quantity(es.to_string()));
        }
        let pods = allocatable_of(f, "pods", i64::from(f.max_pods));
        alloc.insert("pods".into(), Quantity(pods.to_string()));
    }
    let (mem_pressure, disk_pressure, pid_pressure) = f
        .pressure
        .as_ref()
        .and_then(|p| p.lock().ok().map(|p| (p.memory, p.disk, p.pid)))
        .unwrap_or_default();
    let old_conds = old.and_then(|s| s.conditions.clone()).unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: &str| {
        let status = if ok { "True" } else { "False" };
        let ltt = old_conds
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(ltt),
        }
    };
    let shutting_down = f.shutdown.as_ref().is_some_and(|s| s.is_shutting_down());
    let ready = match &rt.problem {
        _ if shutting_down => cond(
            "Ready",
            false,
            "KubeletNotReady",
            crate::shutdown::NODE_NOT_READY_MESSAGE,
        ),
        None => cond(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status",
        ),
        Some(p) => cond(
            "Ready",
            false,
            "KubeletNotReady",
            &format!("container runtime is down: {p}"),
        ),
    };
    NodeStatus {
        capacity: Some(cap),
        allocatable: Some(alloc),
        addresses: Some(
            std::iter::once(f.node_ip)
                .chain(f.secondary_node_ip)
                .map(|ip| NodeAddress {
                    type_: "InternalIP".into(),
                    address: ip.to_string(),
                })
                .chain(std::iter::once(NodeAddress {
                    type_: "Hostname".into(),
                    address: f.node_name.clone(),
                }))
                .collect(),
        ),
        conditions: Some(vec![
            if mem_pressure {
                cond(
                    "MemoryPressure",
                    true,
                    "KubeletHasInsufficientMemory",
                    "kubelet has insufficient memory available",
                )
            } else {
                cond(
                    "MemoryPressure",
                    false,
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                )
            },
            if disk_pressure {
                cond(
                    "DiskPressure",
                    true,
                    "KubeletHasDiskPressure",
                    "kubelet has disk pressure",
                )
            } else {
                cond(
                    "DiskPressure",
                    false,
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                )
            },
            if pid_pressure {
                cond(
                    "PIDPressure",
                    true,
                    "KubeletHasInsufficientPID",
                    "kubelet has insufficient PID available",
                )
            } else {
                cond(
                    "PIDPressure",
                    false,
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                )
            },
            ready,
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(f.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: f.host.architecture.clone(),
            boot_id: f.host.boot_id.clone(),
            container_runtime_version: rt.version.clone(),
            kernel_version: f.host.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: f.host.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: f.host.os_image.clone(),
            system_uuid: f.host.machine_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node, or updates the labels and pod CIDR of an existing one.
pub async fn register(client: &Client, f: &NodeFacts) -> Result<Node, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let name = f.node_name.as_str();
    match api
        .get_opt(name)
        .await
        .map_err(|e| NodeError::api(format!("get node {name}"), e))?
    {
        None => {
            let n = api
                .create(&PostParams::default(), &node_object(f))
                .await
                .map_err(|e| NodeError::api(format!("create node {name}"), e))?;
            info!(node = name, "registered node");
            Ok(n)
        }
        Some(existing) => {
            let mut patch = serde_json::json!({"metadata": {"labels": node_labels(f)}});
            let cidr = existing.spec.as_ref().and_then(|s| s.pod_cidr.clone());
            if cidr.is_none() {
                patch["spec"] = serde_json::json!({"podCIDR": primary_cidr(&f.pod_cidr),
                    "podCIDRs": pod_cidrs(&f.pod_cidr)});
            } else if cidr != Some(primary_cidr(&f.pod_cidr)) {
                tracing::warn!(node = name, existing = ?cidr, configured = %f.pod_cidr,
                    "node already has a different podCIDR; keeping the existing one");
            }
            let n = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| NodeError::api(format!("update node {name}"), e))?;
            info!(node = name, "node already registered; updated it");
            Ok(n)
        }
    }
}

/// Writes the node's status (merge patch of the status subresource).
pub async fn update_status(
    client: &Client,
    f: &NodeFacts,
    rt: &RuntimeHealth,
    old: Option<&NodeStatus>,
    force: bool,
) -> Result<Option<Node>, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let st = node_status(f, rt, old, &now_time());
    if !force && old.is_some_and(|o| same_status(o, &st)) {
        // Like upstream's kubelet with node leases: an unchanged status is only reported every
        // nodeStatusReportFrequency; the Lease says the node is alive in between.
        return Ok(None);
    }
    let patch = serde_json::json!({ "status": st });
    let n = api
        .patch_status(&f.node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| NodeError::api(format!("update status of node {}", f.node_name), e))?;
    debug!("node status updated");
    Ok(Some(n))
}

/// Whether two statuses differ only in their heartbeat times.
pub fn same_status(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Creates the node's Lease or renews it. `node_uid` makes the Node its owner (garbage collection).
pub async fn renew_lease(
    client: &Client,
    node_name: &str,
    node_uid: Option<&str>,
) -> Result<(), NodeError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let spec = LeaseSpec {
        holder_identity: Some(node_name.into()),
        lease_duration_seconds: Some(LEASE_DURATION_SECS),
        renew_time: Some(micro_now()),
        ..Default::default()
    };
    match api
        .get_opt(node_name)
        .await
        .map_err(|e| NodeError::api(format!("get lease {LEASE_NAMESPACE}/{node_name}"), e))?
    {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.into()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: node_uid.map(|uid| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: node_name.into(),
                            uid: uid.into(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease)
                .await
                .map_err(|e| {
                    NodeError::api(format!("create lease {LEASE_NAMESPACE}/{node_name}"), e)
                })?;
            info!(lease = node_name, "created node lease");
        }
        Some(mut lease) => {
            lease.spec = Some(LeaseSpec {
                acquire_time: lease.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                ..spec
            });
            api.replace(node_name, &PostParams::default(), &lease)
                .await
                .map_err(|e| {
                    NodeError::api(format!("renew lease {LEASE_NAMESPACE}/{node_name}"), e)
                })?;
            debug!("renewed node lease");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            node_name: "sk-node".into(),
            node_ip: "10.0.0.5".parse().unwrap(),
            secondary_node_ip: None,
            pod_cidr: "10.42.0.0/24".into(),
            port: 10250,
            roles: vec!["control-plane".into()],
            extra_labels: BTreeMap::new(),
            max_pods: 110,
            taints: Vec::new(),
            ephemeral_storage: None,
            reserved: BTreeMap::new(),
            pressure: None,
            shutdown: None,
            host: HostInfo {
                hostname: "h".into(),
                cpus: 2,
                memory_kib: 4_000_000,
                kernel_version: "6.1.0".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                architecture: "amd64".into(),
                machine_id: "m".into(),
                boot_id: "b".into(),
            },
        }
    }

    #[test]
    fn parses_host_files() {
        assert_eq!(
            parse_mem_total_kib("MemTotal:        8040728 kB\nMemFree: 1 kB\n"),
            Some(8040728)
        );
        assert_eq!(
            parse_pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            Some("Debian GNU/Linux 12 (bookworm)".into())
        );
        let h = HostInfo::read();
        assert!(h.cpus >= 1);
        assert!(h.memory_kib > 0);
    }

    #[test]
    fn node_object_and_status() {
        let f = facts();
        let n = node_object(&f);
        let l = n.metadata.labels.unwrap();
        assert_eq!(l["kubernetes.io/hostname"], "sk-node");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert!(l.contains_key("node-role.kubernetes.io/control-plane"));
        assert_eq!(n.spec.unwrap().pod_cidr.as_deref(), Some("10.42.0.0/24"));

        let rt = RuntimeHealth {
            version: "skiff://0.1.0".into(),
            problem: None,
        };
        let t0 = Time(Timestamp::from_second(1000).unwrap());
        let st = node_status(&f, &rt, None, &t0);
        let ready = st
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.reason.as_deref(), Some("KubeletReady"));
        assert_eq!(st.capacity.as_ref().unwrap()["pods"].0, "110");
        assert_eq!(st.capacity.as_ref().unwrap()["memory"].0, "4000000Ki");
        let info = st.node_info.clone().unwrap();
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "skiff://0.1.0");
        assert_eq!(
            st.daemon_endpoints
                .as_ref()
                .unwrap()
                .kubelet_endpoint
                .as_ref()
                .unwrap()
                .port,
            10250
        );

        // Transition times survive heartbeats; a change of status moves them.
        let t1 = Time(Timestamp::from_second(2000).unwrap());
        let st2 = node_status(&f, &rt, Some(&st), &t1);
        let r2 = st2
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(r2.last_transition_time, Some(t0.clone()));
        assert_eq!(r2.last_heartbeat_time, Some(t1.clone()));
        let down = RuntimeHealth {
            version: "skiff://0.1.0".into(),
            problem: Some("connection refused".into()),
        };
        let st3 = node_status(&f, &down, Some(&st2), &t1);
        let r3 = st3
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(r3.status, "False");
        assert_eq!(r3.last_transition_time, Some(t1));
    }
}
