//! The monitoring endpoints of the :10250 server: `/metrics` (the kubelet's own Prometheus
//! metrics), `/metrics/resource` (CPU and memory of the node, pods and containers),
//! `/stats/summary` (upstream's Summary API), `/configz` and `/runningpods/`.
//!
//! Container and pod figures come from the CRI (`ListContainerStats`, `ListPodSandboxStats`:
//! cgroups, writable layer, the pod netns's counters); node figures from `/proc` and the root
//! cgroups. Counters are add-only statics (Firecracker's `SharedIncMetric` idea): writers only
//! observe, a scrape only reads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use skiff_proto::cri;

use crate::cri::labels;
use crate::KubeletConfig;

/// A Prometheus histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistState>,
}

#[derive(Default)]
struct HistState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new(HistState {
                counts: Vec::new(),
                sum: 0.0,
                count: 0,
            }),
        }
    }

    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        if let Ok(mut s) = self.inner.lock() {
            if s.counts.len() != self.bounds.len() {
                s.counts = vec![0; self.bounds.len()];
            }
            for (i, b) in self.bounds.iter().enumerate() {
                if v <= *b {
                    s.counts[i] += 1;
                }
            }
            s.sum += v;
            s.count += 1;
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let Ok(s) = self.inner.lock() else { return };
        for (i, b) in self.bounds.iter().enumerate() {
            let c = s.counts.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {c}\n"));
        }
        out.push_str(&format!("{name}_bucket{{le=\"+Inf\"}} {}\n", s.count));
        out.push_str(&format!("{name}_sum {}\n{name}_count {}\n", s.sum, s.count));
    }
}

/// The kubelet's own counters.
pub struct KubeletMetrics {
    /// From a pod's first sight by its worker to its first Running status.
    pub pod_start: Histogram,
    /// One PLEG relist.
    pub pleg_relist: Histogram,
    /// Pod syncs run.
    pub pod_syncs: AtomicU64,
    /// Probe runs by (probe_type, result, container, namespace, pod, pod_uid).
    probes: Mutex<BTreeMap<[String; 6], u64>>,
}

impl KubeletMetrics {
    /// Counts one probe run (`prober_probe_total`).
    pub fn count_probe(
        &self,
        kind: &str,
        result: &str,
        container: &str,
        pod: &(String, String, String),
    ) {
        if let Ok(mut m) = self.probes.lock() {
            let key = [
                kind.to_string(),
                result.to_string(),
                container.to_string(),
                pod.0.clone(),
                pod.1.clone(),
                pod.2.clone(),
            ];
            *m.entry(key).or_default() += 1;
        }
    }

    /// Drops a finished pod's probe series.
    pub fn forget_pod(&self, uid: &str) {
        if let Ok(mut m) = self.probes.lock() {
            m.retain(|k, _| k[5] != uid);
        }
    }

    /// `/metrics/probes`.
    pub fn render_probes(&self) -> String {
        let mut o = String::from("# HELP prober_probe_total [BETA] Cumulative number of a liveness, readiness or startup probe for a container by result.\n# TYPE prober_probe_total counter\n");
        if let Ok(m) = self.probes.lock() {
            for ([kind, result, c, ns, pod, uid], n) in m.iter() {
                o.push_str(&format!(
                    "prober_probe_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\",pod_uid=\"{}\",probe_type=\"{kind}\",result=\"{result}\"}} {n}\n",
                    esc(c),
                    esc(ns),
                    esc(pod),
                    esc(uid)
                ));
            }
        }
        o
    }
}

/// Upstream's bucket bounds for pod start (seconds).
const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];
/// Prometheus' default buckets (upstream's relist histogram uses them).
const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub static METRICS: KubeletMetrics = KubeletMetrics {
    pod_start: Histogram::new(POD_START_BUCKETS),
    pleg_relist: Histogram::new(DEFAULT_BUCKETS),
    pod_syncs: AtomicU64::new(0),
    probes: Mutex::new(BTreeMap::new()),
};

/// What the monitoring handlers know besides the CRI and the pod store.
pub struct Monitor {
    pub node_name: String,
    /// The effective KubeletConfiguration (`/configz`).
    pub configz: Value,
    pub root_dir: PathBuf,
    pub started: SystemTime,
    /// Previous node CPU sample (for usageNanoCores).
    cpu_sample: Mutex<Option<(Instant, u64)>>,
}

fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

impl Monitor {
    pub fn new(cfg: &KubeletConfig) -> Self {
        Self {
            node_name: cfg.node_name.clone(),
            configz: configz(cfg),
            root_dir: cfg.root_dir.clone(),
            started: SystemTime::now(),
            cpu_sample: Mutex::new(None),
        }
    }
}

/// The effective configuration as a KubeletConfiguration (upstream's field names).
pub fn configz(cfg: &KubeletConfig) -> Value {
    let a = &cfg.auth;
    let mut c = json!({
        "enableServer": true,
        "syncFrequency": "1m0s",
        "address": cfg.bind_address.to_string(),
        "port": cfg.port,
        "authentication": {
            "x509": {},
            "webhook": {"enabled": a.webhook_authn, "cacheTTL": go_duration(a.token_ttl)},
            "anonymous": {"enabled": a.anonymous},
        },
        "authorization": {
            "mode": a.mode.as_str(),
            "webhook": {"cacheAuthorizedTTL": go_duration(a.authorized_ttl),
                        "cacheUnauthorizedTTL": go_duration(a.unauthorized_ttl)},
        },
        "clusterDomain": cfg.cluster_domain,
        "clusterDNS": cfg.cluster_dns.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "maxPods": cfg.max_pods,
        "podCIDR": cfg.pod_cidr,
        "cgroupRoot": cfg.cgroup_root.strip_suffix("/kubepods").filter(|s| !s.is_empty()).unwrap_or("/"),
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": format!("unix://{}", cfg.cri_endpoint.display()),
        "podLogsDir": cfg.pod_log_dir.display().to_string(),
        "nodeStatusUpdateFrequency": go_duration(cfg.status_interval),
        "registerNode": true,
        "registerWithTaints": cfg.register_with_taints,
    });
    if let Some(ca) = &cfg.client_ca {
        c["authentication"]["x509"]["clientCAFile"] = json!(ca.display().to_string());
    }
    if let Some(p) = &cfg.tls_cert {
        c["tlsCertFile"] = json!(p.display().to_string());
    }
    if let Some(p) = &cfg.tls_key {
        c["tlsPrivateKeyFile"] = json!(p.display().to_string());
    }
    match cfg.healthz {
        Some(h) => {
            c["healthzPort"] = json!(h.port());
            c["healthzBindAddress"] = json!(h.ip().to_string());
        }
        None => c["healthzPort"] = json!(0),
    }
    if let Some(p) = &cfg.pod_manifest_path {
        c["staticPodPath"] = json!(p.display().to_string());
    }
    json!({"kubeletconfig": c})
}

/// One container's stats with its pod.
struct CStat<'a> {
    ns: &'a str,
    pod: &'a str,
    uid: &'a str,
    name: &'a str,
    s: &'a cri::ContainerStats,
}

fn cstats(list: &[cri::ContainerStats]) -> Vec<CStat<'_>> {
    list.iter()
        .filter_map(|s| {
            let a = s.attributes.as_ref()?;
            let l = |k: &str| a.labels.get(k).map(String::as_str).unwrap_or("");
            Some(CStat {
                ns: l(labels::POD_NAMESPACE),
                pod: l(labels::POD_NAME),
                uid: l(labels::POD_UID),
                name: a
                    .metadata
                    .as_ref()
                    .map(|m| m.name.as_str())
                    .filter(|n| !n.is_empty())
                    .unwrap_or(l(labels::CONTAINER_NAME)),
                s,
            })
        })
        .collect()
}

fn u(v: &Option<cri::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|x| x.value)
}

/// Node figures read from the host.
#[derive(Default, Debug, Clone)]
pub struct NodeUsage {
    pub cpu_ns: Option<u64>,
    pub nano_cores: Option<u64>,
    pub mem_working_set: Option<u64>,
    pub mem_usage: Option<u64>,
    pub mem_available: Option<u64>,
    pub mem_rss: Option<u64>,
    pub fs_capacity: Option<u64>,
    pub fs_available: Option<u64>,
    pub fs_inodes: Option<u64>,
    pub fs_inodes_free: Option<u64>,
    pub max_pid: Option<u64>,
    pub procs: Option<u64>,
    /// Host interfaces (name, rx bytes, rx errors, tx bytes, tx errors), without `lo`.
    pub interfaces: Vec<(String, u64, u64, u64, u64)>,
    /// The interface of the default route.
    pub default_interface: Option<String>,
}

/// `/proc/net/dev` of the host's network namespace.
fn host_interfaces() -> Vec<(String, u64, u64, u64, u64)> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((
                name.to_string(),
                *f.first()?,
                *f.get(2)?,
                *f.get(8)?,
                *f.get(10)?,
            ))
        })
        .collect()
}

/// The interface of the IPv4 default route (`/proc/net/route`).
fn default_route_interface() -> Option<String> {
    std::fs::read_to_string("/proc/net/route")
        .ok()?
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
        })
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn kv_file(path: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?.trim_end_matches(':').to_string();
            Some((k, it.next()?.parse().ok()?))
        })
        .collect()
}

impl Monitor {
    /// Reads the node's figures (blocking file reads: call from `spawn_blocking`).
    pub fn node_usage(&self) -> NodeUsage {
        // CPU: the root cpuacct cgroup, else /proc/stat.
        let cpu_ns = read_u64("/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage")
            .or_else(|| read_u64("/sys/fs/cgroup/cpuacct/cpuacct.usage"))
            .or_else(|| {
                let stat = std::fs::read_to_string("/proc/stat").ok()?;
                let line = stat.lines().next()?;
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                let busy: u64 = f
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .take(6)
                    .map(|(_, v)| *v)
                    .sum();
                let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                    .ok()
                    .flatten()
                    .unwrap_or(100) as u64;
                Some(busy * (1_000_000_000 / hz.max(1)))
            });
        let mut n = NodeUsage {
            cpu_ns,
            ..NodeUsage::default()
        };
        if let (Some(total), Ok(mut prev)) = (n.cpu_ns, self.cpu_sample.lock()) {
            let now = Instant::now();
            if let Some((t, v)) = *prev {
                let dt = now.duration_since(t).as_nanos();
                if dt > 0 && total >= v {
                    n.nano_cores = Some(((total - v) as u128 * 1_000_000_000 / dt) as u64);
                }
            }
            *prev = Some((now, total));
        }
        let mi = kv_file("/proc/meminfo");
        let kib = |k: &str| mi.get(k).map(|v| v * 1024);
        let total = kib("MemTotal");
        let cg = kv_file("/sys/fs/cgroup/memory/memory.stat");
        let root_usage = read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes");
        match (root_usage, cg.get("total_inactive_file")) {
            (Some(usage), Some(inactive)) => {
                n.mem_usage = Some(usage);
                n.mem_working_set = Some(usage.saturating_sub(*inactive));
                n.mem_rss = cg.get("total_rss").copied();
            }
            _ => {
                let avail = kib("MemAvailable");
                n.mem_usage = total.zip(kib("MemFree")).map(|(t, f)| t.saturating_sub(f));
                n.mem_working_set = total.zip(avail).map(|(t, a)| t.saturating_sub(a));
            }
        }
        n.mem_available = total
            .zip(n.mem_working_set)
            .map(|(t, w)| t.saturating_sub(w));
        if let Ok(s) =
            nix::sys::statvfs::statvfs(&self.root_dir).or_else(|_| nix::sys::statvfs::statvfs("/"))
        {
            let f = s.fragment_size();
            n.fs_capacity = Some(s.blocks() * f);
            n.fs_available = Some(s.blocks_available() * f);
            n.fs_inodes = Some(s.files());
            n.fs_inodes_free = Some(s.files_free());
        }
        n.interfaces = host_interfaces();
        n.default_interface = default_route_interface();
        n.max_pid = read_u64("/proc/sys/kernel/pid_max");
        n.procs = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok());
        n
    }
}

fn ts_ms(nanos: i64) -> i64 {
    if nanos > 0 {
        nanos / 1_000_000
    } else {
        now_ms()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339_nanos(nanos: i64) -> String {
    chrono::DateTime::from_timestamp(nanos / 1_000_000_000, (nanos % 1_000_000_000) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics/resource`: upstream's resource metrics.
pub fn render_resource(
    node: &NodeUsage,
    containers: &[cri::ContainerStats],
    sandboxes: &[cri::PodSandboxStats],
    started: &HashMap<String, i64>,
    scrape_error: bool,
) -> String {
    let mut o = String::new();
    let now = now_ms();
    let cs = cstats(containers);
    o.push_str("# HELP container_cpu_usage_seconds_total [STABLE] Cumulative CPU time of the container in core-seconds\n# TYPE container_cpu_usage_seconds_total counter\n");
    for c in &cs {
        if let Some(cpu) = &c.s.cpu {
            if let Some(v) = u(&cpu.usage_core_nano_seconds) {
                o.push_str(&format!(
                    "container_cpu_usage_seconds_total{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}\n",
                    esc(c.name), esc(c.ns), esc(c.pod), v as f64 / 1e9, ts_ms(cpu.timestamp)
                ));
            }
        }
    }
    o.push_str("# HELP container_memory_working_set_bytes [STABLE] Working set of the container in bytes\n# TYPE container_memory_working_set_bytes gauge\n");
    for c in &cs {
        if let Some(m) = &c.s.memory {
            if let Some(v) = u(&m.working_set_bytes) {
                o.push_str(&format!(
                    "container_memory_working_set_bytes{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}\n",
                    esc(c.name), esc(c.ns), esc(c.pod), v, ts_ms(m.timestamp)
                ));
            }
        }
    }
    o.push_str("# HELP container_start_time_seconds [STABLE] Start time of the container since the Unix epoch in seconds\n# TYPE container_start_time_seconds gauge\n");
    for c in &cs {
        let id = c.s.attributes.as_ref().map(|a| a.id.as_str()).unwrap_or("");
        if let Some(t) = started.get(id) {
            o.push_str(&format!(
                "container_start_time_seconds{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} {} {}\n",
                esc(c.name), esc(c.ns), esc(c.pod), *t as f64 / 1e9, now
            ));
        }
    }
    o.push_str("# HELP node_cpu_usage_seconds_total [STABLE] Cumulative CPU time of the node in core-seconds\n# TYPE node_cpu_usage_seconds_total counter\n");
    if let Some(v) = node.cpu_ns {
        o.push_str(&format!(
            "node_cpu_usage_seconds_total {} {now}\n",
            v as f64 / 1e9
        ));
    }
    o.push_str("# HELP node_memory_working_set_bytes [STABLE] Working set of the node in bytes\n# TYPE node_memory_working_set_bytes gauge\n");
    if let Some(v) = node.mem_working_set {
        o.push_str(&format!("node_memory_working_set_bytes {v} {now}\n"));
    }
    // Pods: the sandbox's own figures, else the sum of its containers'.
    let mut pods: BTreeMap<(String, String), (Option<u64>, Option<u64>)> = BTreeMap::new();
    for s in sandboxes {
        let Some(a) = &s.attributes else { continue };
        let Some(m) = &a.metadata else { continue };
        let l = s.linux.as_ref();
        let cpu = l
            .and_then(|l| l.cpu.as_ref())
            .and_then(|c| u(&c.usage_core_nano_seconds));
        let mem = l
            .and_then(|l| l.memory.as_ref())
            .and_then(|m| u(&m.working_set_bytes));
        pods.insert((m.namespace.clone(), m.name.clone()), (cpu, mem));
    }
    for c in &cs {
        let e = pods
            .entry((c.ns.to_string(), c.pod.to_string()))
            .or_default();
        let cpu = c.s.cpu.as_ref().and_then(|x| u(&x.usage_core_nano_seconds));
        let mem = c.s.memory.as_ref().and_then(|x| u(&x.working_set_bytes));
        if e.0.is_none() {
            e.0 = cpu;
        }
        if e.1.is_none() {
            e.1 = mem;
        }
    }
    o.push_str("# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative CPU time of the pod in core-seconds\n# TYPE pod_cpu_usage_seconds_total counter\n");
    for ((ns, name), (cpu, _)) in &pods {
        if let Some(v) = cpu {
            o.push_str(&format!(
                "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {now}\n",
                esc(ns),
                esc(name),
                *v as f64 / 1e9
            ));
        }
    }
    o.push_str("# HELP pod_memory_working_set_bytes [STABLE] Working set of the pod in bytes\n# TYPE pod_memory_working_set_bytes gauge\n");
    for ((ns, name), (_, mem)) in &pods {
        if let Some(v) = mem {
            o.push_str(&format!(
                "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {v} {now}\n",
                esc(ns),
                esc(name)
            ));
        }
    }
    o.push_str("# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE resource_scrape_error gauge\n");
    o.push_str(&format!(
        "resource_scrape_error {}\n",
        u8::from(scrape_error)
    ));
    o
}

fn process_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

/// `/metrics`: the kubelet's own metrics.
pub fn render_metrics(
    running_pods: usize,
    containers: &[cri::Container],
    node_name: &str,
    started: SystemTime,
) -> String {
    let mut o = String::new();
    let ver = env!("CARGO_PKG_VERSION");
    o.push_str("# HELP kubernetes_build_info [ALPHA] A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running.\n# TYPE kubernetes_build_info gauge\n");
    o.push_str(&format!(
        "kubernetes_build_info{{build_date=\"\",compiler=\"rustc\",git_commit=\"\",git_tree_state=\"\",git_version=\"v1.33.0-skiff-{ver}\",go_version=\"\",major=\"1\",minor=\"33\",platform=\"linux/{}\"}} 1\n",
        std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")
    ));
    o.push_str("# HELP kubelet_node_name [ALPHA] The node's name. The count is always 1.\n# TYPE kubelet_node_name gauge\n");
    o.push_str(&format!(
        "kubelet_node_name{{node=\"{}\"}} 1\n",
        esc(node_name)
    ));
    o.push_str("# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\n");
    o.push_str(&format!("kubelet_running_pods {running_pods}\n"));
    let mut by_state: BTreeMap<&str, usize> = ["created", "exited", "running", "unknown"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for c in containers {
        let s = match cri::ContainerState::try_from(c.state) {
            Ok(cri::ContainerState::ContainerCreated) => "created",
            Ok(cri::ContainerState::ContainerRunning) => "running",
            Ok(cri::ContainerState::ContainerExited) => "exited",
            _ => "unknown",
        };
        *by_state.entry(s).or_default() += 1;
    }
    o.push_str("# HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\n");
    for (s, n) in by_state {
        o.push_str(&format!(
            "kubelet_running_containers{{container_state=\"{s}\"}} {n}\n"
        ));
    }
    METRICS.pod_start.render(
        &mut o,
        "kubelet_pod_start_duration_seconds",
        "[ALPHA] Duration in seconds from the kubelet seeing a pod for the first time to the pod starting to run",
    );
    METRICS.pleg_relist.render(
        &mut o,
        "kubelet_pleg_relist_duration_seconds",
        "[ALPHA] Duration in seconds for relisting pods in PLEG.",
    );
    o.push_str("# HELP kubelet_pod_syncs_total Pod syncs run by the pod workers.\n# TYPE kubelet_pod_syncs_total counter\n");
    o.push_str(&format!(
        "kubelet_pod_syncs_total {}\n",
        METRICS.pod_syncs.load(Ordering::Relaxed)
    ));
    o.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n");
    if let Some(rss) = process_rss() {
        o.push_str(&format!("process_resident_memory_bytes {rss}\n"));
    }
    o.push_str("# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\n");
    if let Ok(d) = started.duration_since(UNIX_EPOCH) {
        o.push_str(&format!("process_start_time_seconds {}\n", d.as_secs_f64()));
    }
    o
}

fn cpu_json(c: Option<&cri::CpuUsage>) -> Option<Value> {
    let c = c?;
    let mut v = json!({"time": rfc3339_nanos(c.timestamp)});
    if let Some(x) = u(&c.usage_nano_cores) {
        v["usageNanoCores"] = json!(x);
    }
    if let Some(x) = u(&c.usage_core_nano_seconds) {
        v["usageCoreNanoSeconds"] = json!(x);
    }
    Some(v)
}

fn mem_json(m: Option<&cri::MemoryUsage>) -> Option<Value> {
    let m = m?;
    let mut v = json!({"time": rfc3339_nanos(m.timestamp)});
    for (k, x) in [
        ("availableBytes", &m.available_bytes),
        ("usageBytes", &m.usage_bytes),
        ("workingSetBytes", &m.working_set_bytes),
        ("rssBytes", &m.rss_bytes),
        ("pageFaults", &m.page_faults),
        ("majorPageFaults", &m.major_page_faults),
    ] {
        if let Some(x) = u(x) {
            v[k] = json!(x);
        }
    }
    Some(v)
}

fn net_json(n: Option<&cri::NetworkUsage>) -> Option<Value> {
    let n = n?;
    let iface = |i: &cri::NetworkInterfaceUsage| {
        json!({"name": i.name, "rxBytes": u(&i.rx_bytes), "rxErrors": u(&i.rx_errors),
               "txBytes": u(&i.tx_bytes), "txErrors": u(&i.tx_errors)})
    };
    let mut v = json!({"time": rfc3339_nanos(n.timestamp)});
    if let Some(d) = &n.default_interface {
        if let Value::Object(m) = iface(d) {
            for (k, x) in m {
                v[k] = x;
            }
        }
    }
    v["interfaces"] = Value::Array(n.interfaces.iter().map(iface).collect());
    Some(v)
}

/// `/stats/summary`: upstream's Summary API (`stats.k8s.io/v1alpha1` Summary).
pub fn summary(
    node_name: &str,
    started: SystemTime,
    node: &NodeUsage,
    pods: &[Arc<Pod>],
    containers: &[cri::ContainerStats],
    sandboxes: &[cri::PodSandboxStats],
    container_started: &HashMap<String, i64>,
) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut n = json!({
        "nodeName": node_name,
        "systemContainers": [{"name": "kubelet", "startTime": rfc3339(started)}],
        "startTime": rfc3339(started),
    });
    let mut cpu = json!({"time": now});
    if let Some(x) = node.nano_cores {
        cpu["usageNanoCores"] = json!(x);
    }
    if let Some(x) = node.cpu_ns {
        cpu["usageCoreNanoSeconds"] = json!(x);
    }
    n["cpu"] = cpu;
    let mut mem = json!({"time": now});
    for (k, x) in [
        ("availableBytes", node.mem_available),
        ("usageBytes", node.mem_usage),
        ("workingSetBytes", node.mem_working_set),
        ("rssBytes", node.mem_rss),
    ] {
        if let Some(x) = x {
            mem[k] = json!(x);
        }
    }
    n["memory"] = mem;
    let fs = json!({"time": now, "availableBytes": node.fs_available, "capacityBytes": node.fs_capacity,
        "usedBytes": node.fs_capacity.zip(node.fs_available).map(|(c, a)| c.saturating_sub(a)),
        "inodesFree": node.fs_inodes_free, "inodes": node.fs_inodes,
        "inodesUsed": node.fs_inodes.zip(node.fs_inodes_free).map(|(t, f)| t.saturating_sub(f))});
    n["fs"] = fs.clone();
    n["runtime"] = json!({"imageFs": fs.clone(), "containerFs": fs});
    n["rlimit"] = json!({"time": now, "maxpid": node.max_pid, "curproc": node.procs});
    if !node.interfaces.is_empty() {
        let iface = |(name, rx, rxe, tx, txe): &(String, u64, u64, u64, u64)| json!({"name": name, "rxBytes": rx, "rxErrors": rxe, "txBytes": tx, "txErrors": txe});
        let mut net = json!({"time": now});
        let default = node
            .default_interface
            .as_ref()
            .and_then(|d| node.interfaces.iter().find(|i| &i.0 == d))
            .or(node.interfaces.first());
        if let Some(Value::Object(m)) = default.map(iface) {
            for (k, v) in m {
                net[k] = v;
            }
        }
        net["interfaces"] = Value::Array(node.interfaces.iter().map(iface).collect());
        n["network"] = net;
    }

    let cs = cstats(containers);
    let by_uid: HashMap<&str, &cri::PodSandboxStats> = sandboxes
        .iter()
        .filter_map(|s| {
            let uid = s.attributes.as_ref()?.metadata.as_ref()?.uid.as_str();
            Some((uid, s))
        })
        .collect();
    let mut out_pods = Vec::new();
    for p in pods {
        let uid = p.metadata.uid.as_deref().unwrap_or_default();
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let mine: Vec<&CStat<'_>> = cs.iter().filter(|c| c.uid == uid).collect();
        let sb = by_uid.get(uid);
        if mine.is_empty() && sb.is_none() {
            continue;
        }
        let mut pv = json!({
            "podRef": {"name": name, "namespace": ns, "uid": uid},
            "startTime": p.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0.to_string()),
        });
        let mut containers_json = Vec::new();
        let (mut cpu_sum, mut mem_sum, mut ws_sum, mut disk) = (0u64, 0u64, 0u64, 0u64);
        for c in &mine {
            let id = c.s.attributes.as_ref().map(|a| a.id.as_str()).unwrap_or("");
            let mut cv = json!({"name": c.name,
                "startTime": container_started.get(id).map(|t| rfc3339_nanos(*t))});
            if let Some(x) = cpu_json(c.s.cpu.as_ref()) {
                cv["cpu"] = x;
            }
            if let Some(x) = mem_json(c.s.memory.as_ref()) {
                cv["memory"] = x;
            }
            if let Some(w) = &c.s.writable_layer {
                cv["rootfs"] = json!({"time": rfc3339_nanos(w.timestamp),
                    "availableBytes": node.fs_available, "capacityBytes": node.fs_capacity,
                    "usedBytes": u(&w.used_bytes), "inodesUsed": u(&w.inodes_used)});
                disk += u(&w.used_bytes).unwrap_or(0);
            }
            cpu_sum +=
                c.s.cpu
                    .as_ref()
                    .and_then(|x| u(&x.usage_core_nano_seconds))
                    .unwrap_or(0);
            mem_sum +=
                c.s.memory
                    .as_ref()
                    .and_then(|x| u(&x.usage_bytes))
                    .unwrap_or(0);
            ws_sum +=
                c.s.memory
                    .as_ref()
                    .and_then(|x| u(&x.working_set_bytes))
                    .unwrap_or(0);
            containers_json.push(cv);
        }
        pv["containers"] = Value::Array(containers_json);
        let linux = sb.and_then(|s| s.linux.as_ref());
        pv["cpu"] = cpu_json(linux.and_then(|l| l.cpu.as_ref()))
            .unwrap_or_else(|| json!({"time": now, "usageCoreNanoSeconds": cpu_sum}));
        pv["memory"] = mem_json(linux.and_then(|l| l.memory.as_ref())).unwrap_or_else(
            || json!({"time": now, "usageBytes": mem_sum, "workingSetBytes": ws_sum}),
        );
        if let Some(net) = net_json(linux.and_then(|l| l.network.as_ref())) {
            pv["network"] = net;
        }
        if let Some(pc) = linux
            .and_then(|l| l.process.as_ref())
            .and_then(|p| u(&p.process_count))
        {
            pv["process_stats"] = json!({"process_count": pc});
        }
        pv["ephemeral-storage"] = json!({"time": now, "availableBytes": node.fs_available,
            "capacityBytes": node.fs_capacity, "usedBytes": disk});
        out_pods.push(pv);
    }
    json!({"node": n, "pods": out_pods})
}

/// `/runningpods/`: the pods the runtime runs, as upstream (name, namespace, uid and the
/// containers' names and images only).
pub fn running_pods(sandboxes: &[cri::PodSandbox], containers: &[cri::Container]) -> Value {
    let ready = cri::PodSandboxState::SandboxReady as i32;
    let items: Vec<Value> = sandboxes
        .iter()
        .filter(|s| s.state == ready)
        .filter_map(|s| {
            let m = s.metadata.as_ref()?;
            let cs: Vec<Value> = containers
                .iter()
                .filter(|c| c.pod_sandbox_id == s.id)
                .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
                .map(|c| {
                    json!({"name": c.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                           "image": c.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
                           "resources": {}})
                })
                .collect();
            Some(
                json!({"metadata": {"name": m.name, "namespace": m.namespace, "uid": m.uid,
                                     "creationTimestamp": null},
                        "spec": {"containers": cs}, "status": {}}),
            )
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

/// `/metrics/cadvisor`: the container metrics Prometheus setups scrape from the kubelet's
/// embedded cAdvisor, for the figures the CRI has (labels `container`, `image`, `name` (the
/// container id), `namespace`, `pod`; pod network on the sandbox, `container=""`).
pub fn render_cadvisor(
    containers: &[cri::ContainerStats],
    sandboxes: &[cri::PodSandboxStats],
    listed: &[cri::Container],
    started: &HashMap<String, i64>,
) -> String {
    let mut o = String::new();
    let now = now_ms();
    let image_of: HashMap<&str, &str> = listed
        .iter()
        .map(|c| {
            (
                c.id.as_str(),
                c.image.as_ref().map(|i| i.image.as_str()).unwrap_or(""),
            )
        })
        .collect();
    let cs = cstats(containers);
    let labels = |c: &CStat<'_>| {
        let id = c.s.attributes.as_ref().map(|a| a.id.as_str()).unwrap_or("");
        format!(
            "container=\"{}\",image=\"{}\",name=\"{}\",namespace=\"{}\",pod=\"{}\"",
            esc(c.name),
            esc(image_of.get(id).copied().unwrap_or("")),
            esc(id),
            esc(c.ns),
            esc(c.pod)
        )
    };
    type Pick = fn(&cri::ContainerStats) -> Option<f64>;
    let series: [(&str, &str, &str, Pick); 5] = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed in seconds.",
            |s| {
                s.cpu
                    .as_ref()
                    .and_then(|c| u(&c.usage_core_nano_seconds))
                    .map(|v| v as f64 / 1e9)
            },
        ),
        (
            "container_memory_usage_bytes",
            "gauge",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            |s| s.memory.as_ref().and_then(|m| u(&m.usage_bytes)).map(|v| v as f64),
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set in bytes.",
            |s| {
                s.memory
                    .as_ref()
                    .and_then(|m| u(&m.working_set_bytes))
                    .map(|v| v as f64)
            },
        ),
        (
            "container_memory_rss",
            "gauge",
            "Size of RSS in bytes.",
            |s| s.memory.as_ref().and_then(|m| u(&m.rss_bytes)).map(|v| v as f64),
        ),
        (
            "container_fs_usage_bytes",
            "gauge",
            "Number of bytes that are consumed by the container on this filesystem.",
            |s| {
                s.writable_layer
                    .as_ref()
                    .and_then(|w| u(&w.used_bytes))
                    .map(|v| v as f64)
            },
        ),
    ];
    for (name, kind, help, pick) in series {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for c in &cs {
            if let Some(v) = pick(c.s) {
                o.push_str(&format!("{name}{{{}}} {v} {now}\n", labels(c)));
            }
        }
    }
    o.push_str("# HELP container_start_time_seconds Start time of the container since unix epoch in seconds.\n# TYPE container_start_time_seconds gauge\n");
    for c in &cs {
        let id = c.s.attributes.as_ref().map(|a| a.id.as_str()).unwrap_or("");
        if let Some(t) = started.get(id) {
            o.push_str(&format!(
                "container_start_time_seconds{{{}}} {} {now}\n",
                labels(c),
                *t as f64 / 1e9
            ));
        }
    }
    let net: Vec<(&cri::PodSandboxStats, &cri::NetworkInterfaceUsage)> = sandboxes
        .iter()
        .flat_map(|s| {
            s.linux
                .as_ref()
                .and_then(|l| l.network.as_ref())
                .map(|n| n.interfaces.iter().map(move |i| (s, i)).collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    type NetPick = fn(&cri::NetworkInterfaceUsage) -> Option<u64>;
    let net_series: [(&str, &str, NetPick); 4] = [
        (
            "container_network_receive_bytes_total",
            "Cumulative count of bytes received",
            |i| u(&i.rx_bytes),
        ),
        (
            "container_network_receive_errors_total",
            "Cumulative count of errors encountered while receiving",
            |i| u(&i.rx_errors),
        ),
        (
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted",
            |i| u(&i.tx_bytes),
        ),
        (
            "container_network_transmit_errors_total",
            "Cumulative count of errors encountered while transmitting",
            |i| u(&i.tx_errors),
        ),
    ];
    for (name, help, pick) in net_series {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for (s, i) in &net {
            let Some(v) = pick(i) else { continue };
            let a = s.attributes.as_ref();
            let m = a.and_then(|a| a.metadata.as_ref());
            o.push_str(&format!(
                "{name}{{container=\"\",image=\"\",interface=\"{}\",name=\"{}\",namespace=\"{}\",pod=\"{}\"}} {v} {now}\n",
                esc(&i.name),
                esc(a.map(|a| a.id.as_str()).unwrap_or("")),
                esc(m.map(|m| m.namespace.as_str()).unwrap_or("")),
                esc(m.map(|m| m.name.as_str()).unwrap_or(""))
            ));
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    o.push_str(
        "# HELP machine_cpu_cores Number of logical CPU cores.\n# TYPE machine_cpu_cores gauge\n",
    );
    o.push_str(&format!("machine_cpu_cores {cores}\n"));
    if let Some(kib) = kv_file("/proc/meminfo").get("MemTotal") {
        o.push_str("# HELP machine_memory_bytes Amount of memory installed on the machine.\n# TYPE machine_memory_bytes gauge\n");
        o.push_str(&format!("machine_memory_bytes {}\n", kib * 1024));
    }
    o
}
