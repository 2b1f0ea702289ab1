//! The eviction manager (upstream's `pkg/kubelet/eviction`): eviction thresholds on signals
//! measured from the host, node pressure conditions, and pods evicted by upstream's ranking.
//!
//! Every [`MONITORING_INTERVAL`] it measures `memory.available` (MemTotal minus the root
//! cgroup's working set: usage minus inactive file pages, as cAdvisor), `nodefs.available` and
//! `nodefs.inodesFree` (statvfs of the kubelet's root dir), `imagefs.*` (the same filesystem
//! here) and `pid.available` (pid_max minus the processes). A threshold is met while the signal
//! is below it, and stays met until the signal is back above it plus its minimum reclaim. Met
//! thresholds (grace periods ignored) drive the node conditions MemoryPressure, DiskPressure and
//! PIDPressure, which hold for `--eviction-pressure-transition-period` after the last
//! observation; met hard thresholds, and soft ones met for their grace period, evict one pod per
//! interval: pods whose usage exceeds their requests first, then by priority, then by usage
//! above requests. emptyDir volumes over their `sizeLimit` evict their pod at once.
//!
//! Evicting a pod: the order is recorded (the pod sync then keeps it Failed with reason
//! `Evicted`), an `Evicted` event is posted, and the containers are stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use kube::Client;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cri::CriRuntime;
use crate::events::PodEvent;

/// Upstream's eviction monitoring period.
pub const MONITORING_INTERVAL: Duration = Duration::from_secs(10);
/// Grace period of pods evicted for a hard threshold or a local storage limit (upstream's
/// `immediateEvictionGracePeriodSeconds`).
pub const IMMEDIATE_GRACE_SECS: i64 = 1;
/// Pods at or above this priority are critical and never evicted (system-cluster-critical).
const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// An eviction signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    MemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    PidAvailable,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    fn parse(s: &str) -> Result<Signal, String> {
        Ok(match s {
            "memory.available" => Signal::MemoryAvailable,
            "nodefs.available" => Signal::NodeFsAvailable,
            "nodefs.inodesFree" => Signal::NodeFsInodesFree,
            "imagefs.available" => Signal::ImageFsAvailable,
            "imagefs.inodesFree" => Signal::ImageFsInodesFree,
            "pid.available" => Signal::PidAvailable,
            other => return Err(format!("unsupported eviction signal {other}")),
        })
    }

    /// The resource named in eviction messages.
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    /// The node condition this signal drives.
    pub fn condition(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "MemoryPressure",
            Signal::PidAvailable => "PIDPressure",
            _ => "DiskPressure",
        }
    }
}

/// A threshold value: an absolute quantity or a percentage of the signal's capacity.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Bytes, inodes or pids; the text as given (for messages).
    Quantity(i64, String),
    /// 0..100.
    Percentage(f64),
}

impl Value {
    fn parse(s: &str) -> Result<Value, String> {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.parse().map_err(|_| format!("invalid percentage {s:?}"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("invalid percentage {s:?}: must be in [0, 100]"));
            }
            return Ok(Value::Percentage(v));
        }
        let v =
            crate::volumes::parse_quantity(s).ok_or_else(|| format!("invalid quantity {s:?}"))?;
        if v < 0.0 {
            return Err(format!("eviction threshold {s:?} must be positive"));
        }
        Ok(Value::Quantity(v.ceil() as i64, s.to_string()))
    }

    /// The value against a capacity.
    pub fn amount(&self, capacity: i64) -> i64 {
        match self {
            Value::Quantity(v, _) => *v,
            Value::Percentage(p) => ((capacity as f64) * p / 100.0) as i64,
        }
    }
}

/// One eviction threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: Value,
    /// Soft thresholds only: how long the signal must stay below before pods are evicted.
    pub grace: Duration,
    pub min_reclaim: Option<Value>,
    pub hard: bool,
}

/// The eviction settings (`--eviction-*` flags and the KubeletConfiguration fields).
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    pub thresholds: Vec<Threshold>,
    /// `--eviction-pressure-transition-period` (5 m).
    pub pressure_transition_period: Duration,
    /// `--eviction-max-pod-grace-period` (0): the grace period of pods evicted for a soft
    /// threshold.
    pub max_pod_grace_period: i64,
    /// emptyDir `sizeLimit` enforcement (upstream's LocalStorageCapacityIsolation).
    pub local_storage_isolation: bool,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        Self {
            thresholds: default_hard(),
            pressure_transition_period: Duration::from_secs(300),
            max_pod_grace_period: 0,
            local_storage_isolation: true,
        }
    }
}

/// Upstream's default `--eviction-hard`.
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%";

fn default_hard() -> Vec<Threshold> {
    parse_thresholds(
        &split_map(DEFAULT_EVICTION_HARD, '<').unwrap_or_default(),
        true,
    )
    .unwrap_or_default()
}

/// `a<b,c<d` (or `a=b,c=d` with `sep` `=`) into pairs.
pub fn split_map(s: &str, sep: char) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once(sep)
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("invalid entry {p:?}: expected signal{sep}value"))
        })
        .collect()
}

/// Thresholds from `signal -> value` pairs (`0` or `0%` means "not set", as upstream).
pub fn parse_thresholds(pairs: &[(String, String)], hard: bool) -> Result<Vec<Threshold>, String> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let signal = Signal::parse(k)?;
        let value = Value::parse(v)?;
        if matches!(value, Value::Quantity(0, _)) || value == Value::Percentage(0.0) {
            continue;
        }
        out.push(Threshold {
            signal,
            value,
            grace: Duration::ZERO,
            min_reclaim: None,
            hard,
        });
    }
    Ok(out)
}

/// Builds the config: `hard` (None: upstream's defaults), `soft` with its grace periods (every
/// soft threshold needs one, as upstream), minimum reclaims.
pub fn build_config(
    hard: Option<&[(String, String)]>,
    soft: &[(String, String)],
    soft_grace: &[(String, String)],
    min_reclaim: &[(String, String)],
) -> Result<EvictionConfig, String> {
    let mut thresholds = match hard {
        Some(h) => parse_thresholds(h, true)?,
        None => default_hard(),
    };
    let mut soft_t = parse_thresholds(soft, false)?;
    let graces: HashMap<Signal, Duration> = soft_grace
        .iter()
        .map(|(k, v)| Ok((Signal::parse(k)?, parse_duration(v)?)))
        .collect::<Result<_, String>>()?;
    for t in &mut soft_t {
        t.grace = *graces.get(&t.signal).ok_or_else(|| {
            format!(
                "grace period must be specified for the soft eviction threshold {}",
                t.signal.name()
            )
        })?;
    }
    thresholds.extend(soft_t);
    for (k, v) in min_reclaim {
        let s = Signal::parse(k)?;
        let val = Value::parse(v)?;
        for t in thresholds.iter_mut().filter(|t| t.signal == s) {
            t.min_reclaim = Some(val.clone());
        }
    }
    Ok(EvictionConfig {
        thresholds,
        ..Default::default()
    })
}

/// A Go duration (`1m30s`, `90s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().copied().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(n);
            chars.next();
        }
        let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        num.clear();
        total += v * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            _ => return Err(format!("invalid duration {s:?}")),
        };
    }
    if !num.is_empty() && num != "0" {
        return Err(format!("invalid duration {s:?}: missing unit"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// One measured signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub available: i64,
    pub capacity: i64,
}

/// Quantity text as upstream's `resource.Quantity` prints binary amounts (`100Mi`, `95828Ki`).
pub fn format_quantity(v: i64, signal: Signal) -> String {
    if !matches!(
        signal,
        Signal::MemoryAvailable | Signal::NodeFsAvailable | Signal::ImageFsAvailable
    ) {
        return v.to_string();
    }
    for (suffix, unit) in [
        ("Ei", 1i64 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if v != 0 && v % unit == 0 {
            return format!("{}{suffix}", v / unit);
        }
    }
    v.to_string()
}

fn statvfs_obs(path: &Path) -> Option<(Observation, Observation)> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let frsize = s.fragment_size() as i64;
    let bytes = Observation {
        available: s.blocks_available() as i64 * frsize,
        capacity: s.blocks() as i64 * frsize,
    };
    let inodes = Observation {
        available: s.files_free() as i64,
        capacity: s.files() as i64,
    };
    Some((bytes, inodes))
}

fn meminfo_kib(meminfo: &str, key: &str) -> Option<i64> {
    meminfo
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `memory.available`: capacity (MemTotal) minus the working set of the root cgroup.
fn memory_observation() -> Option<Observation> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_kib(&meminfo, "MemTotal")? * 1024;
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let working = match (
        std::fs::read_to_string(v1.join("memory.usage_in_bytes")),
        std::fs::read_to_string(v1.join("memory.stat")),
    ) {
        (Ok(u), Ok(stat)) => {
            let usage: i64 = u.trim().parse().ok()?;
            let inactive =
                crate::cgroups::stat_value(&stat, "total_inactive_file").unwrap_or(0) as i64;
            (usage - inactive).max(0)
        }
        _ => {
            // cgroup v2 (no usage file at the root): used memory from /proc/meminfo minus the
            // inactive file pages, as cAdvisor does for the root.
            let free = meminfo_kib(&meminfo, "MemFree")? * 1024;
            let inactive = meminfo_kib(&meminfo, "Inactive(file)").unwrap_or(0) * 1024;
            (total - free - inactive).max(0)
        }
    };
    Some(Observation {
        available: total - working,
        capacity: total,
    })
}

fn pid_observation() -> Option<Observation> {
    let max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let procs = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .count() as i64;
    Some(Observation {
        available: max - procs,
        capacity: max,
    })
}

/// Measures every signal (blocking: runs off the async workers).
pub fn observe(root_dir: &Path) -> HashMap<Signal, Observation> {
    let mut out = HashMap::new();
    if let Some(m) = memory_observation() {
        out.insert(Signal::MemoryAvailable, m);
    }
    let fs_dir = existing_ancestor(root_dir);
    if let Some((bytes, inodes)) = statvfs_obs(&fs_dir) {
        out.insert(Signal::NodeFsAvailable, bytes);
        out.insert(Signal::NodeFsInodesFree, inodes);
        out.insert(Signal::ImageFsAvailable, bytes);
        out.insert(Signal::ImageFsInodesFree, inodes);
    }
    if let Some(p) = pid_observation() {
        out.insert(Signal::PidAvailable, p);
    }
    out
}

fn existing_ancestor(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Whether `t` is met by `obs`; with `min_reclaim`, the threshold raised by its minimum reclaim
/// (a threshold stays met until that much was reclaimed).
pub fn is_met(t: &Threshold, obs: &Observation, with_min_reclaim: bool) -> bool {
    let mut amount = t.value.amount(obs.capacity);
    if with_min_reclaim {
        if let Some(r) = &t.min_reclaim {
            amount += r.amount(obs.capacity);
        }
    }
    obs.available < amount
}

/// The node's pressure conditions, shared with the node status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// Node-wide pressure the node status reports.
pub type SharedPressure = Arc<Mutex<Pressure>>;

/// An eviction decided for a pod: the pod sync keeps it Failed with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The pod status reason: `Evicted`, or `Terminated` for a node shutdown.
    pub reason: String,
    pub message: String,
    pub grace_secs: i64,
}

fn orders() -> &'static Mutex<HashMap<String, Order>> {
    static O: OnceLock<Mutex<HashMap<String, Order>>> = OnceLock::new();
    O.get_or_init(Default::default)
}

/// The eviction order of pod `uid`, if it was evicted.
pub fn order(uid: &str) -> Option<Order> {
    orders().lock().ok()?.get(uid).cloned()
}

/// Forgets the order of a pod that is gone.
pub fn forget(uid: &str) {
    if let Ok(mut o) = orders().lock() {
        o.remove(uid);
    }
}

/// Records an order for pod `uid` (the eviction manager's, or the node shutdown manager's).
pub fn record_order(uid: &str, order: Order) {
    if let Ok(mut o) = orders().lock() {
        o.insert(uid.to_string(), order);
    }
}

/// Adds upstream's `DisruptionTarget` condition (reason `TerminationByKubelet`) to the status
/// of an evicted pod, keeping its first transition time.
pub fn mark_disruption(pod: &Pod, st: &mut k8s_openapi::api::core::v1::PodStatus, message: &str) {
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget"))
        .cloned();
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != "DisruptionTarget");
    conds.push(k8s_openapi::api::core::v1::PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some("TerminationByKubelet".into()),
        message: Some(message.to_string()),
        last_transition_time: old
            .and_then(|c| c.last_transition_time)
            .or_else(|| Some(crate::status::now_time())),
        ..Default::default()
    });
}

/// Pod usage figures used for ranking.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodUsage {
    pub memory: i64,
    pub disk: i64,
    pub pids: i64,
}

fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn ephemeral_request(p: &Pod) -> i64 {
    p.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| {
                    c.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("ephemeral-storage"))
                        .and_then(|q| crate::volumes::parse_quantity(&q.0))
                })
                .sum::<f64>() as i64
        })
        .unwrap_or(0)
}

/// Orders eviction candidates as upstream's `rankMemoryPressure` / `rankDiskPressure` /
/// `rankPIDPressure`: first victim first.
pub fn rank(signal: Signal, pods: &mut [(Pod, PodUsage)]) {
    pods.sort_by(|(a, ua), (b, ub)| {
        let (usage_a, req_a, usage_b, req_b) = match signal.resource() {
            "memory" => (
                ua.memory,
                crate::cgroups::pod_requests(a).1,
                ub.memory,
                crate::cgroups::pod_requests(b).1,
            ),
            "pids" => (ua.pids, 0, ub.pids, 0),
            _ => (ua.disk, ephemeral_request(a), ub.disk, ephemeral_request(b)),
        };
        if signal.resource() == "pids" {
            return priority(a).cmp(&priority(b)).then(usage_b.cmp(&usage_a));
        }
        let exceeds_a = usage_a > req_a;
        let exceeds_b = usage_b > req_b;
        exceeds_b
            .cmp(&exceeds_a)
            .then(priority(a).cmp(&priority(b)))
            .then((usage_b - req_b).cmp(&(usage_a - req_a)))
    });
}

/// Upstream's eviction message for a threshold.
pub fn threshold_message(t: &Threshold, obs: &Observation) -> String {
    let quantity = match &t.value {
        Value::Quantity(v, _) => format_quantity(*v, t.signal),
        Value::Percentage(_) => format_quantity(t.value.amount(obs.capacity), t.signal),
    };
    format!(
        "The node was low on resource: {}. Threshold quantity: {}, available: {}. ",
        t.signal.resource(),
        quantity,
        available_text(obs.available, t.signal)
    )
}

fn available_text(v: i64, s: Signal) -> String {
    match s {
        Signal::MemoryAvailable | Signal::NodeFsAvailable | Signal::ImageFsAvailable => {
            format!("{}Ki", v / 1024)
        }
        _ => v.to_string(),
    }
}

/// Disk usage (allocated blocks) of a folder tree, not crossing into other mounts' roots.
pub fn du(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = md.blocks() as i64 * 512;
    if md.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                total += du(&e.path());
            }
        }
    }
    total
}

/// emptyDir volumes of `pod` over their `sizeLimit`: the eviction message.
fn empty_dir_violation(root_dir: &Path, pod: &Pod) -> Option<String> {
    let uid = pod.metadata.uid.as_deref()?;
    let base = crate::reconcile::pod_dir(root_dir, uid).join("volumes/kubernetes.io~empty-dir");
    for v in pod.spec.as_ref()?.volumes.iter().flatten() {
        let Some(ed) = &v.empty_dir else { continue };
        let Some(limit) = &ed.size_limit else {
            continue;
        };
        let Some(bytes) = crate::volumes::parse_quantity(&limit.0) else {
            continue;
        };
        let used = du(&base.join(&v.name));
        if used as f64 > bytes {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                v.name, limit.0
            ));
        }
    }
    None
}

/// What the eviction manager works with.
pub struct Manager<R: CriRuntime> {
    pub client: Client,
    pub cri: Arc<R>,
    pub pods: Store<Pod>,
    pub node_name: String,
    pub root_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    /// `/kubepods` (the pod cgroups' root), for pod memory and pids usage.
    pub qos_root: String,
    pub config: EvictionConfig,
    pub pressure: SharedPressure,
    /// Dead-container GC policy and the image GC state, for reclaiming node-level resources
    /// before evicting pods under disk pressure.
    pub gc: crate::gc::GcConfig,
    pub images: crate::gc::SharedImageGc,
}

/// The thresholds still met by `obs`, minimum reclaim included, grace periods ignored
/// (upstream's `thresholdsMet(..., enforceMinReclaim=true)` after a node-level reclaim).
pub fn thresholds_met(
    thresholds: &[Threshold],
    obs: &HashMap<Signal, Observation>,
) -> Vec<Threshold> {
    thresholds
        .iter()
        .filter(|t| obs.get(&t.signal).is_some_and(|o| is_met(t, o, true)))
        .cloned()
        .collect()
}

fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
        && p.metadata.deletion_timestamp.is_none()
        && p.metadata
            .uid
            .as_deref()
            .is_some_and(|u| order(u).is_none())
}

/// Whether the pod is critical (static, mirror, or priority at least system-cluster-critical's):
/// never evicted, and admitted under disk pressure.
pub fn is_critical(p: &Pod) -> bool {
    crate::static_pods::is_static(p)
        || crate::static_pods::is_mirror(p)
        || priority(p) >= CRITICAL_PRIORITY
}

impl<R: CriRuntime> Manager<R> {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut met: Vec<Threshold> = Vec::new();
        let mut first_observed: HashMap<(Signal, bool), Instant> = HashMap::new();
        let mut condition_seen: HashMap<&'static str, Instant> = HashMap::new();
        info!(thresholds = ?self.config.thresholds.iter().map(|t| format!("{}{}", t.signal.name(), if t.hard {" (hard)"} else {" (soft)"})).collect::<Vec<_>>(),
            "eviction manager started");
        loop {
            self.cycle(&mut met, &mut first_observed, &mut condition_seen)
                .await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(MONITORING_INTERVAL) => {}
            }
        }
    }

    async fn cycle(
        &self,
        met: &mut Vec<Threshold>,
        first_observed: &mut HashMap<(Signal, bool), Instant>,
        condition_seen: &mut HashMap<&'static str, Instant>,
    ) {
        let root = self.root_dir.clone();
        let Ok(obs) = tokio::task::spawn_blocking(move || observe(&root)).await else {
            return;
        };
        let now = Instant::now();
        // Thresholds met now, and those met before whose minimum reclaim is not done yet.
        let mut now_met: Vec<Threshold> = Vec::new();
        for t in &self.config.thresholds {
            let Some(o) = obs.get(&t.signal) else {
                continue;
            };
            let was = met.iter().any(|m| m == t);
            if is_met(t, o, false) || (was && is_met(t, o, true)) {
                now_met.push(t.clone());
            }
        }
        first_observed.retain(|k, _| now_met.iter().any(|t| (t.signal, t.hard) == *k));
        for t in &now_met {
            first_observed.entry((t.signal, t.hard)).or_insert(now);
            condition_seen.insert(t.signal.condition(), now);
        }
        *met = now_met.clone();
        let period = self.config.pressure_transition_period;
        let active = |c: &str| {
            condition_seen
                .get(c)
                .is_some_and(|t| now.duration_since(*t) < period)
        };
        let (memory, disk, pid) = (
            active("MemoryPressure"),
            active("DiskPressure"),
            active("PIDPressure"),
        );
        if let Ok(mut p) = self.pressure.lock() {
            if (p.memory, p.disk, p.pid) != (memory, disk, pid) {
                info!(memory, disk, pid, "node pressure changed");
            }
            *p = Pressure { memory, disk, pid };
        }

        let pods: Vec<Pod> = self
            .pods
            .state()
            .iter()
            .map(|p| (**p).clone())
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.node_name.as_str())
            })
            .filter(is_active)
            .collect();

        // emptyDir sizeLimit (local storage isolation) comes first, as upstream.
        if self.config.local_storage_isolation {
            let root = self.root_dir.clone();
            let candidates = pods.clone();
            let violations = tokio::task::spawn_blocking(move || {
                candidates
                    .iter()
                    .filter_map(|p| empty_dir_violation(&root, p).map(|m| (p.clone(), m)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            if !violations.is_empty() {
                for (p, msg) in violations {
                    self.evict(&p, msg, IMMEDIATE_GRACE_SECS).await;
                }
                return;
            }
        }

        // Thresholds past their grace period, memory first.
        let mut ready: Vec<&Threshold> = met
            .iter()
            .filter(|t| {
                t.hard
                    || first_observed
                        .get(&(t.signal, t.hard))
                        .is_some_and(|f| now.duration_since(*f) >= t.grace)
            })
            .collect();
        if ready.is_empty() {
            return;
        }
        ready.sort_by_key(|t| (t.signal != Signal::MemoryAvailable, !t.hard));
        let t = ready[0].clone();
        let Some(mut o) = obs.get(&t.signal).copied() else {
            return;
        };
        // Disk pressure: node-level resources (dead containers, unused images) go before pods,
        // as upstream's `reclaimNodeLevelResources`.
        if t.signal.condition() == "DiskPressure" {
            match self.reclaim_node_level(t.signal).await {
                Some(after) if thresholds_met(&self.config.thresholds, &after).is_empty() => {
                    info!(
                        resource = t.signal.resource(),
                        "eviction manager: able to reduce resource pressure without evicting pods"
                    );
                    return;
                }
                Some(after) => {
                    if let Some(a) = after.get(&t.signal) {
                        o = *a;
                    }
                }
                None => {}
            }
        }
        let candidates: Vec<Pod> = pods.into_iter().filter(|p| !is_critical(p)).collect();
        if candidates.is_empty() {
            debug!(
                signal = t.signal.name(),
                "threshold met but no pod to evict"
            );
            return;
        }
        let qos_root = self.qos_root.clone();
        let root = self.root_dir.clone();
        let logs = self.pod_log_dir.clone();
        let mut ranked = tokio::task::spawn_blocking(move || {
            let m = crate::cgroups::manager(&qos_root);
            candidates
                .into_iter()
                .map(|p| {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    let memory = m
                        .as_ref()
                        .and_then(|m| m.pod_working_set(&uid))
                        .unwrap_or(0) as i64;
                    let disk = du(&crate::reconcile::pod_dir(&root, &uid))
                        + du(&crate::reconcile::pod_log_directory(
                            &logs,
                            p.metadata.namespace.as_deref().unwrap_or("default"),
                            p.metadata.name.as_deref().unwrap_or_default(),
                            &uid,
                        ));
                    let pids = m.as_ref().map(|m| m.pod_pids(&uid)).unwrap_or(0);
                    (p, PodUsage { memory, disk, pids })
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        rank(t.signal, &mut ranked);
        let (victim, usage) = ranked.remove(0);
        let mut message = threshold_message(&t, &o);
        if t.signal == Signal::MemoryAvailable {
            // Upstream names the containers using more than they requested; the pod's usage
            // stands in for its containers here.
            let req = crate::cgroups::pod_requests(&victim).1;
            if usage.memory > req {
                if let Some(c) = victim.spec.as_ref().and_then(|s| s.containers.first()) {
                    message.push_str(&format!(
                        "Container {} was using {}Ki, request is {}, has larger consumption of memory. ",
                        c.name,
                        usage.memory / 1024,
                        format_quantity(req, Signal::MemoryAvailable)
                    ));
                }
            }
        }
        let grace = if t.hard {
            IMMEDIATE_GRACE_SECS
        } else {
            self.config.max_pod_grace_period
        };
        self.evict(&victim, message, grace).await;
    }

    /// Removes every dead container the GC policy lets go and every unused image old enough,
    /// then observes again. `None` when the new observation failed.
    async fn reclaim_node_level(&self, signal: Signal) -> Option<HashMap<Signal, Observation>> {
        info!(signal = signal.name(), "eviction manager: attempting to reclaim node-level resources (dead containers, unused images)");
        match crate::gc::collect_containers(&*self.cri, &self.gc).await {
            Ok(n) => debug!(removed = n, "reclaim: dead containers removed"),
            Err(e) => {
                warn!(error = %e, "eviction manager: unexpected error when attempting to reduce resource pressure (containers)")
            }
        }
        let freed = self
            .images
            .lock()
            .await
            .delete_unused(&*self.cri, &self.gc, Instant::now())
            .await;
        match freed {
            Ok(b) => info!(freed_bytes = b, "reclaim: unused images removed"),
            Err(e) => {
                warn!(error = %e, "eviction manager: unexpected error when attempting to reduce resource pressure (images)")
            }
        }
        let root = self.root_dir.clone();
        tokio::task::spawn_blocking(move || observe(&root))
            .await
            .ok()
    }

    async fn evict(&self, pod: &Pod, message: String, grace: i64) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        info!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace, %uid, %message, "evicting pod");
        record_order(
            &uid,
            Order {
                reason: crate::admission::REASON_EVICTED.into(),
                message: message.clone(),
                grace_secs: grace,
            },
        );
        crate::events::post(
            &self.client,
            &self.node_name,
            pod,
            vec![PodEvent {
                warning: true,
                reason: "Evicted",
                message,
                field_path: None,
            }],
        )
        .await;
        // Stopping the containers wakes the pod worker (container events), which then writes
        // the Failed status.
        crate::cri::stop_running_containers(&*self.cri, &uid, grace, "eviction").await;
    }
}

/// Parses `k=v` resource lists (`--kube-reserved cpu=100m,memory=100Mi`) into base units
/// (cpu in millicores, the rest as numbers).
pub fn parse_reserved(pairs: &[(String, String)]) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        let q = crate::volumes::parse_quantity(v)
            .ok_or_else(|| format!("invalid quantity {v:?} for {k}"))?;
        let n = if k == "cpu" {
            (q * 1000.0).ceil() as i64
        } else {
            q.ceil() as i64
        };
        *out.entry(k.clone()).or_insert(0) += n;
    }
    Ok(out)
}

/// Keeps the set of uids with orders to those in `alive` (orders of deleted pods go).
pub fn retain_orders(alive: &HashSet<String>) {
    if let Ok(mut o) = orders().lock() {
        o.retain(|k, _| alive.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, res: serde_json::Value, prio: i32) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": name},
            "spec": {"priority": prio, "containers": [{"name": "c", "resources": res}]}
        }))
        .unwrap()
    }

    #[test]
    fn parses_upstream_flags() {
        let c = build_config(None, &[], &[], &[]).unwrap();
        assert_eq!(c.thresholds.len(), 4);
        let m = &c.thresholds[0];
        assert_eq!(m.signal, Signal::MemoryAvailable);
        assert_eq!(m.value, Value::Quantity(100 << 20, "100Mi".into()));
        let soft = split_map("memory.available<1Gi", '<').unwrap();
        assert!(build_config(None, &soft, &[], &[])
            .unwrap_err()
            .contains("grace period"));
        let grace = split_map("memory.available=1m30s", '=').unwrap();
        let reclaim = split_map("memory.available=50Mi", '=').unwrap();
        let hard = split_map("nodefs.available<5%", '<').unwrap();
        let c = build_config(Some(&hard), &soft, &grace, &reclaim).unwrap();
        assert_eq!(
            c.thresholds.len(),
            2,
            "a given --eviction-hard replaces the defaults"
        );
        assert_eq!(c.thresholds[1].grace, Duration::from_secs(90));
        assert!(!c.thresholds[1].hard);
        assert!(c.thresholds[1].min_reclaim.is_some());
        assert!(split_map("bogus", '<').is_err());
        assert!(parse_thresholds(&[("x.available".into(), "1".into())], true).is_err());
    }

    #[test]
    fn thresholds_and_messages() {
        let t = Threshold {
            signal: Signal::MemoryAvailable,
            value: Value::Quantity(100 << 20, "100Mi".into()),
            grace: Duration::ZERO,
            min_reclaim: Some(Value::Quantity(50 << 20, "50Mi".into())),
            hard: true,
        };
        let o = Observation {
            available: 120 << 20,
            capacity: 1 << 30,
        };
        assert!(!is_met(&t, &o, false));
        assert!(is_met(&t, &o, true), "not reclaimed enough yet");
        let low = Observation {
            available: 95828 * 1024,
            capacity: 1 << 30,
        };
        assert_eq!(
            threshold_message(&t, &low),
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 95828Ki. "
        );
        let pct = Threshold {
            signal: Signal::NodeFsAvailable,
            value: Value::Percentage(10.0),
            ..t
        };
        assert!(threshold_message(
            &pct,
            &Observation {
                available: 1024,
                capacity: 10 << 30
            }
        )
        .starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi"));
    }

    #[test]
    fn reclaim_counts_only_when_min_reclaim_is_met() {
        let t = Threshold {
            signal: Signal::NodeFsAvailable,
            value: Value::Quantity(1 << 30, "1Gi".into()),
            grace: Duration::ZERO,
            min_reclaim: Some(Value::Quantity(500 << 20, "500Mi".into())),
            hard: true,
        };
        let obs = |avail: i64| {
            let mut m = HashMap::new();
            m.insert(
                Signal::NodeFsAvailable,
                Observation {
                    available: avail,
                    capacity: 10 << 30,
                },
            );
            m
        };
        // Above the threshold but not by the minimum reclaim: pods still go.
        assert_eq!(
            thresholds_met(std::slice::from_ref(&t), &obs(1200 << 20)).len(),
            1
        );
        // Threshold plus minimum reclaim available: no eviction.
        assert!(thresholds_met(std::slice::from_ref(&t), &obs(1600 << 20)).is_empty());
        // A signal not observed is not met.
        assert!(thresholds_met(&[t], &HashMap::new()).is_empty());
    }

    #[test]
    fn ranks_like_upstream() {
        let be = pod("be", serde_json::json!({}), 0);
        let g = pod(
            "g",
            serde_json::json!({"limits": {"cpu": "100m", "memory": "64Mi"}}),
            0,
        );
        let big_g = pod(
            "bigg",
            serde_json::json!({"limits": {"cpu": "100m", "memory": "64Mi"}}),
            0,
        );
        let hi = pod("hi", serde_json::json!({}), 1000);
        let mut pods = vec![
            (
                g,
                PodUsage {
                    memory: 10 << 20,
                    ..Default::default()
                },
            ),
            (
                hi,
                PodUsage {
                    memory: 90 << 20,
                    ..Default::default()
                },
            ),
            (
                big_g,
                PodUsage {
                    memory: 80 << 20,
                    ..Default::default()
                },
            ),
            (
                be,
                PodUsage {
                    memory: 1 << 20,
                    ..Default::default()
                },
            ),
        ];
        rank(Signal::MemoryAvailable, &mut pods);
        let order: Vec<_> = pods
            .iter()
            .map(|(p, _)| p.metadata.name.clone().unwrap())
            .collect();
        // Over their requests first (by priority, then usage above requests), then the rest.
        assert_eq!(order, ["bigg", "be", "hi", "g"]);
        assert_eq!(format_quantity(100 << 20, Signal::MemoryAvailable), "100Mi");
        assert_eq!(format_quantity(1000, Signal::MemoryAvailable), "1000");
    }
}
