//! QoS-class pod cgroups (upstream's `--cgroups-per-qos`), cgroupfs driver, cgroup v1 and v2.
//!
//! Layout under `<cgroup-root>/kubepods` (the `cgroup_root` of [`crate::SyncContext`]):
//! - `kubepods`: cpu shares and memory limit from node allocatable (capacity minus
//!   `--kube-reserved` and `--system-reserved`, as upstream's `enforceNodeAllocatableCgroups` when
//!   `--enforce-node-allocatable` holds `pods`), else from capacity;
//! - `kubepods/besteffort`: cpu shares 2; `kubepods/burstable`: cpu shares from the sum of the
//!   cpu requests of the burstable pods (updated as they come and go);
//! - `pod<uid>` (Guaranteed pods directly under `kubepods`): shares from the pod's cpu requests,
//!   a CFS quota when every container has a cpu limit, a memory limit when every container has a
//!   memory limit (init containers count with their maximum, pod overhead is added), as
//!   upstream's `ResourceConfigForPod`.
//!
//! Every file write is in this module; the rest of the kubelet calls [`manager`] and the
//! functions of [`QosCgroups`]. The host decides v1 or v2 (`statfs` of `/sys/fs/cgroup`).
//!
//! With the systemd driver ([`Driver::Systemd`], node/src/systemd_cgroups.rs) the same names
//! become slices made through systemd's D-Bus API; only reading (usage, pids, the pods that
//! exist) and removing what systemd left goes through the files, at the slices' paths below
//! systemd's root cgroup.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::api::core::v1::{Container, Pod};
use tracing::{debug, info, warn};

/// Upstream's `MinShares`.
pub const MIN_SHARES: u64 = 2;
/// Upstream's `MaxShares`.
pub const MAX_SHARES: u64 = 262_144;
/// CFS period (µs), upstream's default.
pub const QUOTA_PERIOD: u64 = 100_000;
/// Upstream's `MinQuotaPeriod`-bound minimum quota (µs).
const MIN_QUOTA: i64 = 1000;

/// cgroup v1 controllers the kubelet manages pod and QoS folders in (the runtime makes the
/// others it needs, e.g. cpuset, below them).
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

/// The cgroup driver (`--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    #[default]
    Cgroupfs,
    Systemd,
}

impl Driver {
    /// `cgroupfs` or `systemd` (upstream's names); None for anything else.
    pub fn parse(s: &str) -> Option<Driver> {
        match s {
            "cgroupfs" => Some(Driver::Cgroupfs),
            "systemd" => Some(Driver::Systemd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }
}

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    V1,
    V2,
}

/// The host's cgroup mode: v2 when `/sys/fs/cgroup` is a cgroup2 mount (unified), else v1.
pub fn detect(mount: &Path) -> CgroupMode {
    match nix::sys::statfs::statfs(mount) {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => CgroupMode::V2,
        _ => CgroupMode::V1,
    }
}

/// Upstream's `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64) * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Upstream's `MilliCPUToQuota` (µs per [`QUOTA_PERIOD`]); 0 means none.
pub fn milli_cpu_to_quota(milli: i64, period: u64) -> i64 {
    if milli == 0 {
        return 0;
    }
    (milli * period as i64 / 1000).max(MIN_QUOTA)
}

/// cgroup v2 `cpu.weight` from v1 shares (the formula runc and upstream use).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + ((shares.clamp(MIN_SHARES, MAX_SHARES) - 2) * 9999) / 262_142
}

/// Resource limits of one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per [`QUOTA_PERIOD`].
    pub cpu_quota: Option<i64>,
    /// Bytes.
    pub memory: Option<i64>,
}

fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    r: &str,
) -> Option<f64> {
    map.and_then(|m| m.get(r))
        .and_then(|q| crate::volumes::parse_quantity(&q.0))
}

/// Requests and limits of a container: (cpu request milli, cpu limit milli, memory request,
/// memory limit), a missing request defaulting to the limit as the API server does.
fn container_amounts(c: &Container) -> (i64, Option<i64>, i64, Option<i64>) {
    let res = c.resources.as_ref();
    let req = res.and_then(|r| r.requests.as_ref());
    let lim = res.and_then(|r| r.limits.as_ref());
    let cpu_lim = quantity(lim, "cpu").map(|v| (v * 1000.0).ceil() as i64);
    let mem_lim = quantity(lim, "memory").map(|v| v.ceil() as i64);
    let cpu_req = quantity(req, "cpu")
        .map(|v| (v * 1000.0).ceil() as i64)
        .or(cpu_lim)
        .unwrap_or(0);
    let mem_req = quantity(req, "memory")
        .map(|v| v.ceil() as i64)
        .or(mem_lim)
        .unwrap_or(0);
    (cpu_req, cpu_lim, mem_req, mem_lim)
}

/// A pod's effective requests (cpu milli, memory bytes): the sum over app containers (and
/// sidecars), the max with each init container, plus the pod overhead (upstream's
/// `PodRequests`).
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let (mut cpu, mut mem) = (0i64, 0i64);
    for c in &spec.containers {
        let (cr, _, mr, _) = container_amounts(c);
        cpu += cr;
        mem += mr;
    }
    let (mut sidecar_cpu, mut sidecar_mem) = (0i64, 0i64);
    for c in spec.init_containers.iter().flatten() {
        let (cr, _, mr, _) = container_amounts(c);
        if crate::reconcile::is_sidecar(c) {
            sidecar_cpu += cr;
            sidecar_mem += mr;
            cpu += cr;
            mem += mr;
        } else {
            cpu = cpu.max(cr + sidecar_cpu);
            mem = mem.max(mr + sidecar_mem);
        }
    }
    let overhead = spec.overhead.as_ref();
    cpu += quantity(overhead, "cpu")
        .map(|v| (v * 1000.0).ceil() as i64)
        .unwrap_or(0);
    mem += quantity(overhead, "memory")
        .map(|v| v.ceil() as i64)
        .unwrap_or(0);
    (cpu, mem)
}

/// The pod-level cgroup limits, as upstream's `ResourceConfigForPod`.
pub fn pod_limits(pod: &Pod) -> CgroupLimits {
    let qos = crate::status::qos_class(pod);
    let Some(spec) = pod.spec.as_ref() else {
        return CgroupLimits::default();
    };
    if qos == "BestEffort" {
        return CgroupLimits {
            cpu_shares: Some(MIN_SHARES),
            ..Default::default()
        };
    }
    let (cpu_req, _) = pod_requests(pod);
    // Limits: every container must declare one, else the pod is unbounded for that resource.
    let (mut cpu_lim, mut mem_lim) = (Some(0i64), Some(0i64));
    let (mut init_cpu, mut init_mem) = (0i64, 0i64);
    for c in &spec.containers {
        let (_, cl, _, ml) = container_amounts(c);
        cpu_lim = cpu_lim.zip(cl).map(|(a, b)| a + b);
        mem_lim = mem_lim.zip(ml).map(|(a, b)| a + b);
    }
    for c in spec.init_containers.iter().flatten() {
        let (_, cl, _, ml) = container_amounts(c);
        match (cl, ml) {
            (Some(cl), Some(ml)) if !crate::reconcile::is_sidecar(c) => {
                init_cpu = init_cpu.max(cl);
                init_mem = init_mem.max(ml);
            }
            (cl, ml) => {
                if crate::reconcile::is_sidecar(c) {
                    cpu_lim = cpu_lim.zip(cl).map(|(a, b)| a + b);
                    mem_lim = mem_lim.zip(ml).map(|(a, b)| a + b);
                } else {
                    cpu_lim = cpu_lim.and(cl);
                    mem_lim = mem_lim.and(ml);
                }
            }
        }
    }
    let overhead = spec.overhead.as_ref();
    let ov_cpu = quantity(overhead, "cpu")
        .map(|v| (v * 1000.0).ceil() as i64)
        .unwrap_or(0);
    let ov_mem = quantity(overhead, "memory")
        .map(|v| v.ceil() as i64)
        .unwrap_or(0);
    let cpu_lim = cpu_lim.map(|l| l.max(init_cpu) + ov_cpu);
    let mem_lim = mem_lim.map(|l| l.max(init_mem) + ov_mem);
    CgroupLimits {
        cpu_shares: Some(milli_cpu_to_shares(cpu_req)),
        cpu_quota: cpu_lim
            .filter(|l| *l > 0)
            .map(|l| milli_cpu_to_quota(l, QUOTA_PERIOD)),
        memory: mem_lim.filter(|l| *l > 0),
    }
}

/// The pod's cgroup parent, relative to the cgroup mount (`/kubepods/burstable/pod<uid>`).
pub fn pod_cgroup_name(qos_root: &str, pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let root = qos_root.trim_end_matches('/');
    match crate::status::qos_class(pod) {
        "Guaranteed" => format!("{root}/pod{uid}"),
        "Burstable" => format!("{root}/burstable/pod{uid}"),
        _ => format!("{root}/besteffort/pod{uid}"),
    }
}

/// The pod's cgroup parent as the CRI gets it: [`pod_cgroup_name`], in systemd form
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`) when the
/// kubelet of `qos_root` runs the systemd driver.
pub fn pod_cgroup_parent(qos_root: &str, pod: &Pod) -> String {
    let name = pod_cgroup_name(qos_root, pod);
    match manager(qos_root).map(|m| m.driver) {
        Some(Driver::Systemd) => crate::systemd_cgroups::to_systemd(&name),
        _ => name,
    }
}

/// The node's allocatable for the `kubepods` cgroup (cpu milli, memory bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAllocatable {
    pub cpu_milli: i64,
    pub memory: i64,
}

/// The QoS cgroup manager of one kubelet.
#[derive(Debug)]
pub struct QosCgroups {
    mount: PathBuf,
    mode: CgroupMode,
    /// `/kubepods` under the cgroup root.
    root: String,
    /// Burstable pods' cpu requests (milli), by uid.
    burstable: Mutex<HashMap<String, i64>>,
    /// Pods whose cgroup this process set up.
    ensured: Mutex<HashSet<String>>,
    driver: Driver,
    /// systemd's root cgroup (systemd driver): the slices' folders are below it.
    systemd_root: String,
    /// The systemd connection (systemd driver), made on first use.
    systemd: tokio::sync::OnceCell<crate::systemd_cgroups::Systemd>,
}

fn managers() -> &'static Mutex<HashMap<String, Arc<QosCgroups>>> {
    static M: OnceLock<Mutex<HashMap<String, Arc<QosCgroups>>>> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// The manager of the kubelet whose pod cgroups live under `qos_root` (`/kubepods`), if that
/// kubelet runs with `--cgroups-per-qos`.
pub fn manager(qos_root: &str) -> Option<Arc<QosCgroups>> {
    managers().lock().ok()?.get(qos_root).cloned()
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Writes `value` unless the file already holds it (or does not exist: a controller that
/// lacks the file on this kernel).
fn set(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let p = dir.join(file);
    match std::fs::read_to_string(&p) {
        Ok(cur) if cur.trim() == value => Ok(()),
        Ok(_) => write(&p, value),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl QosCgroups {
    /// Registers the manager of the pods under `qos_root` (`/kubepods`) on `mount`
    /// (`/sys/fs/cgroup`).
    pub fn register(mount: &Path, qos_root: &str) -> Arc<QosCgroups> {
        Self::register_with(mount, qos_root, Driver::Cgroupfs)
    }

    /// [`QosCgroups::register`] with a driver. The systemd driver's methods talk to systemd
    /// on the system bus from the blocking threads they run on (`spawn_blocking`).
    pub fn register_with(mount: &Path, qos_root: &str, driver: Driver) -> Arc<QosCgroups> {
        let m = Arc::new(QosCgroups {
            mount: mount.to_path_buf(),
            mode: detect(mount),
            root: format!("/{}", qos_root.trim_matches('/')),
            burstable: Mutex::default(),
            ensured: Mutex::default(),
            driver,
            systemd_root: match driver {
                Driver::Systemd => crate::systemd_cgroups::root_cgroup(),
                Driver::Cgroupfs => String::new(),
            },
            systemd: tokio::sync::OnceCell::new(),
        });
        if let Ok(mut all) = managers().lock() {
            all.insert(m.root.clone(), m.clone());
        }
        m
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// The folder (below each controller's mount) of the kubelet's cgroup `name`: the name
    /// itself, or the slice's path below systemd's root.
    fn fs_rel(&self, name: &str) -> String {
        match self.driver {
            Driver::Cgroupfs => name.to_string(),
            Driver::Systemd => format!(
                "{}{}",
                self.systemd_root,
                crate::systemd_cgroups::to_systemd(name)
            ),
        }
    }

    /// Runs a systemd call from a blocking thread of the kubelet's runtime.
    fn with_systemd<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a crate::systemd_cgroups::Systemd,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<T, crate::systemd_cgroups::SystemdError>>
                    + Send
                    + 'a,
            >,
        >,
    ) -> io::Result<T> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("systemd driver outside the runtime: {e}")))?;
        handle
            .block_on(async {
                let sd = self
                    .systemd
                    .get_or_try_init(crate::systemd_cgroups::Systemd::connect)
                    .await?;
                f(sd).await
            })
            .map_err(io::Error::other)
    }

    /// Processes in pod `uid`'s cgroup (`pids.current`), 0 when unknown.
    pub fn pod_pids(&self, uid: &str) -> i64 {
        let Some(name) = self.existing_pods().get(uid).cloned() else {
            return 0;
        };
        let rel = self.fs_rel(&name);
        let rel = rel.trim_start_matches('/');
        let d = match self.mode {
            CgroupMode::V1 => self.mount.join("pids").join(rel),
            CgroupMode::V2 => self.mount.join(rel),
        };
        std::fs::read_to_string(d.join("pids.current"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether this process already set up pod `uid`'s cgroup.
    pub fn is_ensured(&self, uid: &str) -> bool {
        self.ensured.lock().is_ok_and(|e| e.contains(uid))
    }

    fn v1_dir(&self, controller: &str, name: &str) -> PathBuf {
        self.mount
            .join(controller)
            .join(name.trim_start_matches('/'))
    }

    /// Creates cgroup `name` (and its parents) and applies `limits`.
    fn apply(&self, name: &str, limits: &CgroupLimits) -> io::Result<()> {
        if self.driver == Driver::Systemd {
            let unit = crate::systemd_cgroups::slice_name(name);
            let parent = crate::systemd_cgroups::slice_name(
                name.rsplit_once('/').map(|(p, _)| p).unwrap_or("/"),
            );
            let mode = self.mode;
            let limits = limits.clone();
            return self.with_systemd(move |sd| {
                Box::pin(async move { sd.ensure_slice(&unit, &parent, mode, &limits).await })
            });
        }
        match self.mode {
            CgroupMode::V1 => {
                for c in V1_CONTROLLERS {
                    let base = self.mount.join(c);
                    if !base.exists() {
                        continue;
                    }
                    std::fs::create_dir_all(self.v1_dir(c, name))?;
                }
                let cpu = self.v1_dir("cpu", name);
                if let Some(s) = limits.cpu_shares {
                    set(&cpu, "cpu.shares", &s.to_string())?;
                }
                if let Some(q) = limits.cpu_quota {
                    set(&cpu, "cpu.cfs_period_us", &QUOTA_PERIOD.to_string())?;
                    set(&cpu, "cpu.cfs_quota_us", &q.to_string())?;
                }
                if let Some(m) = limits.memory {
                    set(
                        &self.v1_dir("memory", name),
                        "memory.limit_in_bytes",
                        &m.to_string(),
                    )?;
                }
            }
            CgroupMode::V2 => {
                // Controllers must be enabled in each parent's subtree_control first.
                let rel = name.trim_start_matches('/');
                let mut dir = self.mount.clone();
                for part in rel.split('/').filter(|p| !p.is_empty()) {
                    let sub = dir.join("cgroup.subtree_control");
                    if let Ok(avail) = std::fs::read_to_string(dir.join("cgroup.controllers")) {
                        let enabled = std::fs::read_to_string(&sub).unwrap_or_default();
                        for c in ["cpu", "memory", "pids"] {
                            if avail.split_whitespace().any(|a| a == c)
                                && !enabled.split_whitespace().any(|a| a == c)
                            {
                                if let Err(e) = write(&sub, &format!("+{c}")) {
                                    debug!(error = %e, "cannot enable a cgroup controller");
                                }
                            }
                        }
                    }
                    dir = dir.join(part);
                    match std::fs::create_dir(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                }
                if let Some(s) = limits.cpu_shares {
                    set(&dir, "cpu.weight", &shares_to_weight(s).to_string())?;
                }
                if let Some(q) = limits.cpu_quota {
                    set(&dir, "cpu.max", &format!("{q} {QUOTA_PERIOD}"))?;
                }
                if let Some(m) = limits.memory {
                    set(&dir, "memory.max", &m.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// Creates `kubepods`, `kubepods/burstable` and `kubepods/besteffort` with their limits
    /// (upstream's node allocatable and QoS container managers).
    pub fn setup(&self, alloc: NodeAllocatable) -> io::Result<()> {
        self.apply(
            &self.root,
            &CgroupLimits {
                cpu_shares: Some(milli_cpu_to_shares(alloc.cpu_milli)),
                cpu_quota: None,
                memory: (alloc.memory > 0).then_some(alloc.memory),
            },
        )?;
        self.apply(
            &format!("{}/besteffort", self.root),
            &CgroupLimits {
                cpu_shares: Some(MIN_SHARES),
                ..Default::default()
            },
        )?;
        self.update_burstable()?;
        info!(root = %self.root, mode = ?self.mode, cpu_milli = alloc.cpu_milli, memory = alloc.memory,
            "QoS cgroups set up");
        Ok(())
    }

    fn update_burstable(&self) -> io::Result<()> {
        let sum: i64 = self.burstable.lock().map(|b| b.values().sum()).unwrap_or(0);
        self.apply(
            &format!("{}/burstable", self.root),
            &CgroupLimits {
                cpu_shares: Some(milli_cpu_to_shares(sum)),
                ..Default::default()
            },
        )
    }

    /// Creates the pod's cgroup with its limits (once per pod and process), and updates the
    /// burstable class's shares.
    pub fn ensure_pod(&self, pod: &Pod) -> io::Result<()> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if uid.is_empty() || self.ensured.lock().is_ok_and(|e| e.contains(&uid)) {
            return Ok(());
        }
        if crate::status::qos_class(pod) == "Burstable" {
            if let Ok(mut b) = self.burstable.lock() {
                b.insert(uid.clone(), pod_requests(pod).0);
            }
            self.update_burstable()?;
        }
        let name = pod_cgroup_name(&self.root, pod);
        self.apply(&name, &pod_limits(pod))?;
        debug!(cgroup = %name, "pod cgroup set up");
        if let Ok(mut e) = self.ensured.lock() {
            e.insert(uid);
        }
        Ok(())
    }

    /// The pod cgroups that exist now: their names (cgroupfs-style, `/kubepods/burstable/pod<uid>`)
    /// by uid.
    pub fn existing_pods(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        let base = match self.mode {
            CgroupMode::V1 => self.mount.join("memory"),
            CgroupMode::V2 => self.mount.clone(),
        };
        for class in ["", "burstable", "besteffort"] {
            let name = format!("{}/{class}", self.root);
            let name = name.trim_end_matches('/');
            let rel = self.fs_rel(name);
            let Ok(rd) = std::fs::read_dir(base.join(rel.trim_start_matches('/'))) else {
                continue;
            };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let uid = match self.driver {
                    Driver::Cgroupfs => n.strip_prefix("pod").map(str::to_string),
                    Driver::Systemd => crate::systemd_cgroups::pod_uid_of_slice(&n),
                };
                if let Some(uid) = uid {
                    out.insert(uid.clone(), format!("{name}/pod{uid}"));
                }
            }
        }
        out
    }

    /// Removes the cgroup of pod `uid` (its folders in every controller, deepest first), and
    /// forgets it. Folders that still hold processes stay (the next sweep retries).
    pub fn remove_pod(&self, uid: &str) {
        if let Ok(mut e) = self.ensured.lock() {
            e.remove(uid);
        }
        let was_burstable = self
            .burstable
            .lock()
            .is_ok_and(|mut b| b.remove(uid).is_some());
        if was_burstable {
            if let Err(e) = self.update_burstable() {
                warn!(error = %e, "cannot update the burstable cgroup");
            }
        }
        if let Some(name) = self.existing_pods().get(uid) {
            if self.driver == Driver::Systemd {
                let unit = crate::systemd_cgroups::slice_name(name);
                if let Err(e) =
                    self.with_systemd(move |sd| Box::pin(async move { sd.stop(&unit).await }))
                {
                    warn!(%uid, error = %e, "cannot stop the pod's slice");
                }
            }
            let mut left = false;
            for d in self.all_controller_dirs(&self.fs_rel(name)) {
                if remove_tree(&d).is_err() {
                    left = true;
                }
            }
            if left {
                debug!(%uid, "pod cgroup still busy; left for the next sweep");
            } else {
                info!(%uid, cgroup = %name, "removed pod cgroup");
            }
        }
    }

    /// The folder of `name` in every mounted controller (v1), or the one folder (v2).
    fn all_controller_dirs(&self, name: &str) -> Vec<PathBuf> {
        let rel = name.trim_start_matches('/');
        match self.mode {
            CgroupMode::V2 => vec![self.mount.join(rel)],
            CgroupMode::V1 => std::fs::read_dir(&self.mount)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path().join(rel))
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Removes pod cgroups whose uid is not in `known` (pods deleted while the kubelet was
    /// down, or whose removal failed before).
    pub fn sweep(&self, known: &HashSet<String>) {
        for uid in self.existing_pods().into_keys() {
            if !known.contains(&uid) {
                self.remove_pod(&uid);
            }
        }
    }

    /// Memory working set of pod `uid` in bytes (usage minus inactive file pages), if its
    /// cgroup exists.
    pub fn pod_working_set(&self, uid: &str) -> Option<u64> {
        let name = self.fs_rel(self.existing_pods().get(uid)?);
        let rel = name.trim_start_matches('/');
        match self.mode {
            CgroupMode::V1 => {
                let d = self.mount.join("memory").join(rel);
                let usage: u64 = std::fs::read_to_string(d.join("memory.usage_in_bytes"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
                let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
                Some(usage.saturating_sub(inactive))
            }
            CgroupMode::V2 => {
                let d = self.mount.join(rel);
                let usage: u64 = std::fs::read_to_string(d.join("memory.current"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                let stat = std::fs::read_to_string(d.join("memory.stat")).unwrap_or_default();
                let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
                Some(usage.saturating_sub(inactive))
            }
        }
    }
}

/// A `key value` line of a memory.stat file.
pub fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Removes a cgroup folder and the (empty) cgroup folders below it, deepest first.
fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = remove_tree(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The async hook of the pod sync: sets up the pod's cgroup before its sandbox, off the async
/// workers.
pub async fn ensure_pod_async(qos_root: &str, pod: &Pod) {
    let Some(m) = manager(qos_root) else { return };
    if m.is_ensured(pod.metadata.uid.as_deref().unwrap_or_default()) {
        return;
    }
    let pod = pod.clone();
    let res = tokio::task::spawn_blocking(move || m.ensure_pod(&pod)).await;
    match res {
        Ok(Err(e)) => warn!(error = %e, "cannot set up the pod cgroup"),
        Err(e) => warn!(error = %e, "pod cgroup task failed"),
        Ok(Ok(())) => {}
    }
}

/// The async hook of the pod manager: removes the cgroup of a pod that is gone.
pub async fn remove_pod_async(qos_root: &str, uid: &str) {
    let Some(m) = manager(qos_root) else { return };
    let uid = uid.to_string();
    let _ = tokio::task::spawn_blocking(move || m.remove_pod(&uid)).await;
}

/// The async hook of the orphan sweep.
pub async fn sweep_async(qos_root: &str, known: HashSet<String>) {
    let Some(m) = manager(qos_root) else { return };
    let _ = tokio::task::spawn_blocking(move || m.sweep(&known)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": containers}
        }))
        .unwrap()
    }

    #[test]
    fn pod_limits_follow_upstream() {
        let g = pod(serde_json::json!([
            {"name": "a", "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}}}
        ]));
        assert_eq!(crate::status::qos_class(&g), "Guaranteed");
        let l = pod_limits(&g);
        assert_eq!(l.cpu_shares, Some(768));
        assert_eq!(l.cpu_quota, Some(75_000));
        assert_eq!(l.memory, Some(96 * 1024 * 1024));
        assert_eq!(pod_cgroup_name("/kubepods", &g), "/kubepods/podu1");

        let b = pod(serde_json::json!([
            {"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}},
            {"name": "b"}
        ]));
        assert_eq!(crate::status::qos_class(&b), "Burstable");
        let l = pod_limits(&b);
        assert_eq!(l.cpu_shares, Some(102));
        assert_eq!(l.cpu_quota, None, "not every container has a cpu limit");
        assert_eq!(l.memory, None, "not every container has a memory limit");
        assert_eq!(
            pod_cgroup_name("/kubepods", &b),
            "/kubepods/burstable/podu1"
        );

        let be = pod(serde_json::json!([{"name": "a"}]));
        assert_eq!(pod_limits(&be).cpu_shares, Some(2));
        assert_eq!(pod_limits(&be).memory, None);
        assert_eq!(
            pod_cgroup_name("/kubepods", &be),
            "/kubepods/besteffort/podu1"
        );

        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(2000), 2048);
        assert_eq!(milli_cpu_to_quota(5, QUOTA_PERIOD), 1000);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn requests_count_init_containers_and_overhead() {
        let mut p = pod(serde_json::json!([
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "10Mi"}}}
        ]));
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![serde_json::from_value(serde_json::json!(
            {"name": "i", "resources": {"requests": {"cpu": "300m", "memory": "1Mi"}}}
        ))
        .unwrap()]);
        spec.overhead = Some(
            [(
                "cpu".to_string(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("10m".into()),
            )]
            .into_iter()
            .collect(),
        );
        assert_eq!(pod_requests(&p), (310, 10 * 1024 * 1024));
    }

    #[test]
    fn sets_up_a_v1_tree_in_a_plain_folder() {
        // A plain folder stands in for the cgroup mount: files that do not exist are skipped,
        // so only the folders are checked here (the cluster test reads the real files).
        let dir = tempfile::tempdir().unwrap();
        for c in V1_CONTROLLERS {
            std::fs::create_dir_all(dir.path().join(c)).unwrap();
        }
        let m = QosCgroups::register(dir.path(), "/sk-unit/kubepods");
        assert_eq!(m.mode(), CgroupMode::V1);
        m.setup(NodeAllocatable {
            cpu_milli: 2000,
            memory: 1 << 30,
        })
        .unwrap();
        assert!(dir.path().join("cpu/sk-unit/kubepods/besteffort").is_dir());
        assert!(dir
            .path()
            .join("memory/sk-unit/kubepods/burstable")
            .is_dir());
        let b = pod(serde_json::json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]));
        m.ensure_pod(&b).unwrap();
        assert!(dir
            .path()
            .join("memory/sk-unit/kubepods/burstable/podu1")
            .is_dir());
        assert_eq!(
            m.existing_pods().get("u1").map(String::as_str),
            Some("/sk-unit/kubepods/burstable/podu1")
        );
        m.sweep(&HashSet::new());
        assert!(!dir
            .path()
            .join("memory/sk-unit/kubepods/burstable/podu1")
            .exists());
        assert!(manager("/sk-unit/kubepods").is_some());
    }
}
