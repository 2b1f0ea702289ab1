//! Reconciling one pod against the CRI: sandbox, images, containers, restarts with back-off, and
//! termination. API-free: [`PodSync::sync`] returns the status to write; the caller writes it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use skiff_proto::cri;
use tracing::{debug, info, warn};

use crate::cri::{labels, CriRuntime};
use crate::error::CriError;
use crate::events::PodEvent;
use crate::objects::{NoObjects, ObjectSource};
use crate::probe::{self, ContainerProbes, ProbeKind};
use crate::status::{self, StatusInput, Waiting};
use crate::volumes;

/// Initial crash / image pull back-off.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Maximum crash / image pull back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long resets its crash back-off.
const BACKOFF_RESET_AFTER_SECS: i64 = 600;

/// Node-wide settings the pod sync needs.
#[derive(Debug, Clone)]
pub struct SyncContext {
    pub node_name: String,
    pub node_ip: String,
    /// The node's address of the other family on a dual-stack node (`--node-ip=<v4>,<v6>`):
    /// pods list it after `node_ip` in `status.hostIPs`, as upstream's kubelet.
    pub secondary_node_ip: Option<String>,
    /// Root of pod log directories (`/var/log/pods`).
    pub pod_log_dir: PathBuf,
    /// Cluster DNS servers for `dnsPolicy: ClusterFirst` (empty: the runtime uses the host's).
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// Cgroup parent root for pods (cgroupfs driver), e.g. `/kubepods`.
    pub cgroup_root: String,
    /// The kubelet's state directory; emptyDir volumes live in `<root_dir>/pods/<uid>/volumes/`.
    pub root_dir: PathBuf,
}

/// Whether `c` is a sidecar: an init container with `restartPolicy: Always`.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// A pod's state directory under the kubelet root.
pub fn pod_dir(root: &std::path::Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

#[derive(Debug, Clone, Default)]
struct CrashBackoff {
    /// Delay applied to the next restart (zero: restart at once).
    delay: Duration,
    /// The exited container being waited on and when it may be restarted.
    pending: Option<(String, Instant)>,
}

#[derive(Debug, Clone)]
struct PullBackoff {
    delay: Duration,
    until: Instant,
    message: String,
}

/// One container to converge, with what it needs.
struct ContainerStep<'a> {
    pod: &'a Pod,
    c: &'a Container,
    history: &'a [cri::ContainerStatus],
    sandbox_id: &'a str,
    sandbox_config: &'a cri::PodSandboxConfig,
    now: Instant,
}

/// The per-pod state a worker keeps between syncs.
pub struct PodSync<R: CriRuntime> {
    cri: Arc<R>,
    ctx: Arc<SyncContext>,
    sandbox_id: Option<String>,
    pod_ips: Vec<String>,
    start_time: Option<Time>,
    crash: HashMap<String, CrashBackoff>,
    pull: HashMap<String, PullBackoff>,
    /// Containers whose CreateContainer failed: not tried again before `until` (upstream
    /// retries a CreateContainerError at the pod worker's 10 s back-off, not at every event).
    /// Per container: when the next create may be tried, and the runtime's error.
    create_failed: HashMap<String, (Instant, String)>,
    /// Set once the pod reached Succeeded/Failed and its sandbox was stopped.
    terminal_done: bool,
    /// Events collected since the last [`PodSync::take_events`].
    events: Vec<PodEvent>,
    /// One-shot events already recorded.
    reported: std::collections::HashSet<String>,
    /// Probe workers of the running containers, by container name.
    probes: HashMap<String, ContainerProbes>,
    /// Notified when a probe result changes, so the pod worker syncs at once.
    wake: Arc<tokio::sync::Notify>,
    /// ConfigMaps, Secrets and tokens for volumes and env.
    objects: Arc<dyn ObjectSource>,
    tokens: volumes::TokenCache,
    /// Host paths of the pod's persistentVolumeClaim volumes, by volume name.
    claim_paths: HashMap<String, PathBuf>,
    /// Ephemeral containers with a `targetContainerName`: the CRI id of the container whose
    /// PID namespace they join.
    ephemeral_targets: HashMap<String, String>,
    /// Set once every API-data volume was written; refreshed every [`VOLUME_REFRESH`], when
    /// a watched ConfigMap or Secret changes, when the pod's labels or annotations change
    /// (downward API) and when a token is due for renewal.
    volumes_ready: bool,
    volumes_refreshed: Option<Instant>,
    /// The object source's change counter and the pod's labels and annotations at the last
    /// refresh.
    volumes_seen: (u64, u64),
    /// `objects.changes()`: `None` for sources without a watch.
    object_changes: Option<tokio::sync::watch::Receiver<u64>>,
}

/// How often ConfigMap/Secret/downwardAPI/projected volume contents are refreshed when nothing
/// announced a change (upstream's sync frequency: objects are watched, so this is a safety net).
pub const VOLUME_REFRESH: Duration = Duration::from_secs(60);

/// Whether `pod` has volumes made from API data (ConfigMap, Secret, projected, downward API).
pub fn has_api_volumes(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vs| vs.iter().any(|v| volumes::plugin_dir(v).is_some()))
}

/// A hash of what the downward API volumes show of the pod's metadata.
fn metadata_hash(pod: &Pod) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pod.metadata.labels.hash(&mut h);
    pod.metadata.annotations.hash(&mut h);
    h.finish()
}

/// Env values the kubelet looked up in the API for one container.
#[derive(Debug, Default, Clone)]
pub struct ResolvedEnv {
    /// From `envFrom`, in order (prefix applied).
    pub from: Vec<(String, String)>,
    /// `env[].valueFrom` values that need the API or the resources, by env name.
    pub refs: HashMap<String, String>,
}

/// Node capacity (cpu cores, memory bytes) for resourceFieldRef without limits.
fn node_capacity() -> (f64, f64) {
    static CAP: std::sync::OnceLock<(f64, f64)> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb * 1024.0)
            .unwrap_or(0.0);
        (cpus, mem)
    })
}

fn next_delay(d: Duration) -> Duration {
    if d.is_zero() {
        BACKOFF_INITIAL
    } else {
        (d * 2).min(BACKOFF_MAX)
    }
}

/// The namespaces of a pod's sandbox and containers, as upstream's `namespacesForPod`: the
/// node's for hostNetwork/hostPID/hostIPC, one PID namespace for the pod with
/// shareProcessNamespace, else one per container.
fn pod_namespaces(spec: &k8s_openapi::api::core::v1::PodSpec) -> cri::NamespaceOption {
    let node = cri::NamespaceMode::Node as i32;
    let pod = cri::NamespaceMode::Pod as i32;
    cri::NamespaceOption {
        network: if spec.host_network.unwrap_or(false) {
            node
        } else {
            pod
        },
        pid: if spec.host_pid.unwrap_or(false) {
            node
        } else if spec.share_process_namespace.unwrap_or(false) {
            pod
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: if spec.host_ipc.unwrap_or(false) {
            node
        } else {
            pod
        },
        ..Default::default()
    }
}

/// An ephemeral container as the container it runs as (same fields but the target).
pub fn ephemeral_as_container(e: &k8s_openapi::api::core::v1::EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("targetContainerName");
    }
    serde_json::from_value(v).unwrap_or_else(|_| Container {
        name: e.name.clone(),
        image: e.image.clone(),
        ..Default::default()
    })
}

fn attempt_of(c: &cri::ContainerStatus) -> u32 {
    c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)
}

fn name_of(c: &cri::ContainerStatus) -> String {
    c.metadata
        .as_ref()
        .map(|m| m.name.clone())
        .or_else(|| c.labels.get(labels::CONTAINER_NAME).cloned())
        .unwrap_or_default()
}

/// The directory of a pod's logs: `<root>/<ns>_<name>_<uid>`.
pub fn pod_log_directory(root: &std::path::Path, ns: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{ns}_{name}_{uid}"))
}

/// The effective image pull policy (the API server's default when unset).
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref() {
        return p;
    }
    let image = c.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// `metadata.annotations['key']` -> (`metadata.annotations`, `key`), the downward API's map
/// field paths.
fn downward_map_key(path: &str) -> Option<(&str, &str)> {
    let (field, rest) = path.split_once('[')?;
    let key = rest.strip_suffix(']')?;
    let key = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))?;
    Some((field, key))
}

/// Expands `$(VAR)` references in `s` from `env` (upstream's rules: `$$` escapes, unknown
/// references stay as written).
pub fn expand_vars(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match env.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

impl<R: CriRuntime> PodSync<R> {
    pub fn new(cri: Arc<R>, ctx: Arc<SyncContext>) -> Self {
        Self {
            cri,
            ctx,
            sandbox_id: None,
            pod_ips: Vec::new(),
            start_time: None,
            crash: HashMap::new(),
            pull: HashMap::new(),
            create_failed: HashMap::new(),
            terminal_done: false,
            events: Vec::new(),
            reported: std::collections::HashSet::new(),
            probes: HashMap::new(),
            wake: Arc::new(tokio::sync::Notify::new()),
            objects: Arc::new(NoObjects),
            tokens: Default::default(),
            claim_paths: HashMap::new(),
            ephemeral_targets: HashMap::new(),
            volumes_ready: false,
            volumes_refreshed: None,
            volumes_seen: (0, 0),
            object_changes: None,
        }
    }

    /// How long the worker may sleep after a sync that produced `status`, unless woken by a
    /// container event, a probe result or a pod change: the next back-off or volume refresh
    /// deadline for a settled pod ([`crate::pods::RESYNC_SETTLED`] at most), one second while the
    /// pod is still in transition.
    pub fn next_wake(&self, pod: &Pod, status: &PodStatus, now: Instant) -> Duration {
        let mut wait = crate::pods::RESYNC_SETTLED;
        let phase = status.phase.as_deref().unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            return wait;
        }
        let statuses = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten());
        for cs in statuses {
            let waiting = cs
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref());
            match waiting {
                None | Some("CrashLoopBackOff" | "ImagePullBackOff" | "ErrImagePull") => {}
                // CreateContainerConfigError, ContainerCreating, PodInitializing...: retry soon.
                Some(_) => return crate::pods::RESYNC,
            }
        }
        let sandbox_ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "PodReadyToStartContainers" && c.status == "True");
        if phase == "Pending" && !sandbox_ready {
            return crate::pods::RESYNC;
        }
        if let Some(left) = self.active_deadline_left(pod) {
            wait = wait.min(left + Duration::from_millis(100));
        }
        for b in self.crash.values() {
            if let Some((_, until)) = &b.pending {
                wait = wait.min(until.saturating_duration_since(now) + Duration::from_millis(50));
            }
        }
        let untils = self.pull.values().map(|b| b.until);
        for until in untils.chain(self.create_failed.values().map(|(u, _)| *u)) {
            wait = wait.min(until.saturating_duration_since(now) + Duration::from_millis(50));
        }
        if has_api_volumes(pod) {
            let due = self
                .volumes_refreshed
                .map(|t| (t + VOLUME_REFRESH).saturating_duration_since(now))
                .unwrap_or(crate::pods::RESYNC);
            wait = wait.min(due);
            if let Some(at) = self.tokens.next_renewal() {
                let secs = (at - crate::volumes::now_unix()).max(0) as u64;
                wait = wait.min(Duration::from_secs(secs) + Duration::from_millis(100));
            }
        }
        wait.max(Duration::from_millis(100))
    }

    /// Time left before `activeDeadlineSeconds` (counted from the pod's startTime) runs out;
    /// `None` without a deadline.
    pub fn active_deadline_left(&self, pod: &Pod) -> Option<Duration> {
        let ads = pod.spec.as_ref()?.active_deadline_seconds?;
        let start = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .or_else(|| self.start_time.clone())?;
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let left = start.0.as_second() + ads - now;
        Some(Duration::from_secs(left.max(0) as u64))
    }

    /// The node's addresses for `status.hostIPs`: the primary, then the other family's.
    fn host_ips(&self) -> Vec<String> {
        std::iter::once(self.ctx.node_ip.clone())
            .chain(self.ctx.secondary_node_ip.clone())
            .filter(|ip| !ip.is_empty())
            .collect()
    }

    /// The pod's namespaces, with its own user namespace for `hostUsers: false`
    /// (node/src/userns.rs).
    fn pod_ns(&self, pod: &Pod) -> cri::NamespaceOption {
        let mut ns = pod_namespaces(&pod.spec.clone().unwrap_or_default());
        match crate::userns::for_pod(&self.ctx.root_dir.join("pods"), pod) {
            Ok(u) => ns.userns_options = u,
            Err(e) => warn!(error = %e, "cannot allocate the pod's user namespace"),
        }
        ns
    }

    /// Reads ConfigMaps, Secrets and tokens through `objects`.
    pub fn with_objects(mut self, objects: Arc<dyn ObjectSource>) -> Self {
        self.object_changes = objects.changes();
        self.objects = objects;
        self
    }

    /// Resolves when a ConfigMap or Secret read through the object source changed (never for
    /// sources without a watch).
    pub async fn objects_changed(&mut self) {
        match self.object_changes.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    self.object_changes = None;
                    std::future::pending::<()>().await
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Writes (or refreshes) the pod's API-data volumes. `false`: they are not usable yet.
    async fn sync_volumes(&mut self, pod: &Pod, now: Instant) -> bool {
        let seen = (
            self.object_changes.as_ref().map_or(0, |rx| *rx.borrow()),
            metadata_hash(pod),
        );
        let due = seen != self.volumes_seen
            || self
                .tokens
                .next_renewal()
                .is_some_and(|at| at <= crate::volumes::now_unix())
            || self
                .volumes_refreshed
                .is_none_or(|t| now.duration_since(t) >= VOLUME_REFRESH);
        if !due {
            return self.volumes_ready;
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let env = volumes::Env {
            objects: &*self.objects,
            pod_dir: pod_dir(&self.ctx.root_dir, &uid),
            node_capacity: node_capacity(),
        };
        match volumes::prepare(&env, pod, &mut self.tokens, &mut self.claim_paths).await {
            Ok(changed) => {
                if changed > 0 {
                    debug!(changed, "volume contents written");
                }
                self.volumes_ready = true;
                self.volumes_refreshed = Some(now);
                self.volumes_seen = seen;
            }
            Err(e) => {
                warn!(volume = %e.volume, error = %e.message, "volume setup failed");
                let msg = e.event_message();
                if self.reported.insert(format!("mount/{msg}")) {
                    self.events.push(PodEvent {
                        warning: true,
                        reason: "FailedMount",
                        message: msg,
                        field_path: None,
                    });
                }
            }
        }
        self.volumes_ready
    }

    /// Looks up the env values of `c` that come from ConfigMaps, Secrets or resources.
    /// The error is upstream's CreateContainerConfigError message.
    pub async fn resolve_env(&self, pod: &Pod, c: &Container) -> Result<ResolvedEnv, String> {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut out = ResolvedEnv::default();
        let mut cms: HashMap<String, Option<crate::objects::Data>> = HashMap::new();
        let mut secrets: HashMap<String, Option<crate::objects::Data>> = HashMap::new();
        for ef in c.env_from.iter().flatten() {
            let prefix = ef.prefix.clone().unwrap_or_default();
            let (data, optional, kind, name) = if let Some(r) = &ef.config_map_ref {
                let d = self.objects.config_map(ns.clone(), r.name.clone()).await?;
                cms.insert(r.name.clone(), d.clone());
                (d, r.optional.unwrap_or(false), "configmap", r.name.clone())
            } else if let Some(r) = &ef.secret_ref {
                let d = self.objects.secret(ns.clone(), r.name.clone()).await?;
                secrets.insert(r.name.clone(), d.clone());
                (d, r.optional.unwrap_or(false), "secret", r.name.clone())
            } else {
                continue;
            };
            match data {
                Some(d) => {
                    for (k, v) in d {
                        out.from.push((
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into_owned(),
                        ));
                    }
                }
                None if optional => {}
                None => return Err(format!("{kind} \"{name}\" not found")),
            }
        }
        for e in c.env.iter().flatten() {
            let Some(vf) = &e.value_from else { continue };
            if let Some(r) = &vf.config_map_key_ref {
                if !cms.contains_key(&r.name) {
                    let d = self.objects.config_map(ns.clone(), r.name.clone()).await?;
                    cms.insert(r.name.clone(), d);
                }
                let optional = r.optional.unwrap_or(false);
                match cms.get(&r.name).cloned().flatten() {
                    None if optional => {}
                    None => return Err(format!("configmap \"{}\" not found", r.name)),
                    Some(d) => match d.get(&r.key) {
                        Some(v) => {
                            out.refs
                                .insert(e.name.clone(), String::from_utf8_lossy(v).into_owned());
                        }
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ))
                        }
                    },
                }
            } else if let Some(r) = &vf.secret_key_ref {
                if !secrets.contains_key(&r.name) {
                    let d = self.objects.secret(ns.clone(), r.name.clone()).await?;
                    secrets.insert(r.name.clone(), d);
                }
                let optional = r.optional.unwrap_or(false);
                match secrets.get(&r.name).cloned().flatten() {
                    None if optional => {}
                    None => return Err(format!("secret \"{}\" not found", r.name)),
                    Some(d) => match d.get(&r.key) {
                        Some(v) => {
                            out.refs
                                .insert(e.name.clone(), String::from_utf8_lossy(v).into_owned());
                        }
                        None if optional => {}
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ))
                        }
                    },
                }
            } else if let Some(r) = &vf.resource_field_ref {
                let spec = pod.spec.clone().unwrap_or_default();
                let target = r
                    .container_name
                    .as_ref()
                    .filter(|n| !n.is_empty())
                    .and_then(|n| spec.containers.iter().find(|x| &x.name == n))
                    .unwrap_or(c);
                let v = volumes::container_resource(
                    target,
                    &r.resource,
                    r.divisor.as_ref(),
                    node_capacity(),
                )?;
                out.refs.insert(e.name.clone(), v);
            }
        }
        Ok(out)
    }

    /// Notified when something the status depends on changed outside a sync (a probe result).
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Kills the containers whose liveness or startup probe failed (they restart per the
    /// restart policy, with back-off), like upstream.
    async fn kill_unhealthy(&mut self, pod: &Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        let failed: Vec<(String, String, ProbeKind)> = self
            .probes
            .iter()
            .filter_map(|(name, p)| {
                p.failed()
                    .map(|k| (name.clone(), p.container_id.clone(), k))
            })
            .collect();
        for (name, id, kind) in failed {
            let probe = spec
                .containers
                .iter()
                .find(|c| c.name == name)
                .and_then(|c| match kind {
                    ProbeKind::Liveness => c.liveness_probe.clone(),
                    _ => c.startup_probe.clone(),
                });
            let grace = probe
                .and_then(|p| p.termination_grace_period_seconds)
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0);
            if let Some(p) = self.probes.remove(&name) {
                self.events.extend(p.take_events());
            }
            info!(container = %name, probe = kind.name(), "probe failed; restarting the container");
            self.events.push(PodEvent::normal(
                "Killing",
                &name,
                format!(
                    "Container {name} failed {} probe, will be restarted",
                    kind.name().to_lowercase()
                ),
            ));
            if let Err(e) = self.cri.stop_container(&id, grace).await {
                warn!(container = %name, error = %e, "StopContainer failed");
            }
        }
    }

    /// Starts probe workers for newly running containers, stops those of containers that no
    /// longer run, and returns (started, ready) of each probed container.
    fn update_probes(
        &mut self,
        pod: &Pod,
        observed: &HashMap<String, Vec<cri::ContainerStatus>>,
    ) -> HashMap<String, (bool, bool)> {
        let spec = pod.spec.clone().unwrap_or_default();
        let running = cri::ContainerState::ContainerRunning as i32;
        let mut out = HashMap::new();
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c));
        for c in spec.containers.iter().chain(sidecars) {
            let has = c.liveness_probe.is_some()
                || c.readiness_probe.is_some()
                || c.startup_probe.is_some();
            let latest = observed
                .get(&c.name)
                .and_then(|h| h.first())
                .filter(|l| l.state == running);
            let Some(l) = latest.filter(|_| has) else {
                if let Some(p) = self.probes.remove(&c.name) {
                    self.events.extend(p.take_events());
                }
                continue;
            };
            if self.probes.get(&c.name).map(|p| p.container_id.as_str()) != Some(l.id.as_str()) {
                let target = probe::Target {
                    pod_ip: self
                        .pod_ips
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "127.0.0.1".into()),
                    container_id: l.id.clone(),
                    container: c.clone(),
                    pod: (
                        pod.metadata.namespace.clone().unwrap_or_default(),
                        pod.metadata.name.clone().unwrap_or_default(),
                        pod.metadata.uid.clone().unwrap_or_default(),
                    ),
                };
                let p = ContainerProbes::start(
                    self.cri.clone(),
                    target,
                    l.started_at,
                    self.wake.clone(),
                );
                if let Some(old) = self.probes.insert(c.name.clone(), p) {
                    self.events.extend(old.take_events());
                }
            }
            if let Some(p) = self.probes.get(&c.name) {
                self.events.extend(p.take_events());
                out.insert(c.name.clone(), (p.started(), p.ready()));
            }
        }
        out
    }

    /// The node this kubelet runs as.
    pub fn node_name(&self) -> &str {
        &self.ctx.node_name
    }

    /// The events recorded since the last call, for the worker to post.
    pub fn take_events(&mut self) -> Vec<PodEvent> {
        std::mem::take(&mut self.events)
    }

    /// The current sandbox id, if any.
    pub fn sandbox_id(&self) -> Option<&str> {
        self.sandbox_id.as_deref()
    }

    /// The sandbox config the kubelet sends for `pod` (attempt `attempt`).
    pub fn sandbox_config(&self, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
        let md = &pod.metadata;
        let ns = md.namespace.clone().unwrap_or_else(|| "default".into());
        let name = md.name.clone().unwrap_or_default();
        let uid = md.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let host_network = spec.host_network.unwrap_or(false);
        let hostname = if host_network {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default()
        } else {
            spec.hostname.clone().unwrap_or_else(|| name.clone())
        };
        let dns_policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
        // ClusterFirst on the host network falls back to the host's resolv.conf, as upstream.
        let use_cluster_dns = match dns_policy {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !host_network,
            _ => false,
        };
        let mut dns_config = if use_cluster_dns && !self.ctx.cluster_dns.is_empty() {
            let d = &self.ctx.cluster_domain;
            Some(cri::DnsConfig {
                servers: self.ctx.cluster_dns.clone(),
                searches: vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()],
                options: vec!["ndots:5".into()],
            })
        } else {
            None
        };
        if dns_policy == "None" {
            dns_config = Some(cri::DnsConfig::default());
        }
        if let Some(pc) = spec.dns_config.as_ref() {
            let d = dns_config.get_or_insert_with(Default::default);
            d.servers.extend(pc.nameservers.clone().unwrap_or_default());
            d.searches.extend(pc.searches.clone().unwrap_or_default());
            for o in pc.options.clone().unwrap_or_default() {
                let name = o.name.unwrap_or_default();
                d.options.push(match o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name,
                });
            }
        }
        let port_mappings = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap_or_default())
            .filter(|p| p.host_port.unwrap_or(0) > 0)
            .map(|p| cri::PortMapping {
                protocol: match p.protocol.as_deref() {
                    Some("UDP") => cri::Protocol::Udp as i32,
                    Some("SCTP") => cri::Protocol::Sctp as i32,
                    _ => cri::Protocol::Tcp as i32,
                },
                container_port: p.container_port,
                host_port: p.host_port.unwrap_or(0),
                host_ip: p.host_ip.unwrap_or_default(),
            })
            .collect();
        let cgroup_parent = crate::cgroups::pod_cgroup_parent(&self.ctx.cgroup_root, pod);
        let ns_opts = self.pod_ns(pod);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: uid.clone(),
                namespace: ns.clone(),
                attempt,
            }),
            hostname,
            log_directory: pod_log_directory(&self.ctx.pod_log_dir, &ns, &name, &uid)
                .to_string_lossy()
                .into_owned(),
            dns_config,
            port_mappings,
            labels: status::sandbox_labels(pod).into_iter().collect(),
            annotations: md
                .annotations
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_opts),
                    privileged: spec.containers.iter().any(|c| {
                        c.security_context.as_ref().and_then(|s| s.privileged) == Some(true)
                    }),
                    ..Default::default()
                }),
                // Pod-level sysctls (namespaced ones; the runtime refuses the others).
                sysctls: spec
                    .security_context
                    .as_ref()
                    .and_then(|s| s.sysctls.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|s| (s.name.clone(), s.value.clone()))
                    .collect(),
                ..Default::default()
            }),
            windows: None,
        }
    }

    /// The container config for container `c` of `pod`, restart attempt `attempt`.
    pub fn container_config(&self, pod: &Pod, c: &Container, attempt: u32) -> cri::ContainerConfig {
        self.container_config_with(pod, c, attempt, &ResolvedEnv::default())
    }

    /// [`PodSync::container_config`] with the env values looked up by [`PodSync::resolve_env`].
    pub fn container_config_with(
        &self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        resolved: &ResolvedEnv,
    ) -> cri::ContainerConfig {
        let md = &pod.metadata;
        let mut env_map: HashMap<String, String> = HashMap::new();
        let mut envs: Vec<cri::KeyValue> = Vec::new();
        for (k, v) in &resolved.from {
            env_map.insert(k.clone(), v.clone());
            envs.retain(|e| &e.key != k);
            envs.push(cri::KeyValue {
                key: k.clone(),
                value: v.clone(),
            });
        }
        for e in c.env.clone().unwrap_or_default() {
            let value = if let Some(v) = resolved.refs.get(&e.name) {
                Some(v.clone())
            } else if let Some(v) = e.value {
                Some(expand_vars(&v, &env_map))
            } else if let Some(f) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
                match f.field_path.as_str() {
                    "metadata.name" => md.name.clone(),
                    "metadata.namespace" => md.namespace.clone(),
                    "metadata.uid" => md.uid.clone(),
                    "spec.nodeName" => Some(self.ctx.node_name.clone()),
                    "spec.serviceAccountName" => pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone()),
                    "status.hostIP" => Some(self.ctx.node_ip.clone()),
                    // Upstream joins the list with commas.
                    "status.hostIPs" => Some(self.host_ips().join(",")),
                    "status.podIP" => self.pod_ips.first().cloned(),
                    // Every pod address, primary first, comma-separated (as upstream).
                    "status.podIPs" => Some(self.pod_ips.join(",")),
                    other => match downward_map_key(other) {
                        Some(("metadata.annotations", k)) => {
                            md.annotations.as_ref().and_then(|a| a.get(k).cloned())
                        }
                        Some(("metadata.labels", k)) => {
                            md.labels.as_ref().and_then(|l| l.get(k).cloned())
                        }
                        _ => {
                            debug!(field = other, env = %e.name, "unsupported fieldRef; skipped");
                            None
                        }
                    },
                }
            } else {
                debug!(env = %e.name, "env valueFrom is not supported yet; skipped");
                None
            };
            if let Some(v) = value {
                env_map.insert(e.name.clone(), v.clone());
                envs.retain(|x| x.key != e.name);
                envs.push(cri::KeyValue {
                    key: e.name,
                    value: v,
                });
            }
        }
        let mut lbl = HashMap::new();
        lbl.insert(labels::POD_NAME.into(), md.name.clone().unwrap_or_default());
        lbl.insert(
            labels::POD_NAMESPACE.into(),
            md.namespace.clone().unwrap_or_default(),
        );
        lbl.insert(labels::POD_UID.into(), md.uid.clone().unwrap_or_default());
        lbl.insert(labels::CONTAINER_NAME.into(), c.name.clone());
        let mut annotations = HashMap::new();
        annotations.insert(
            "io.kubernetes.container.restartCount".to_string(),
            attempt.to_string(),
        );
        let image = c.image.clone().unwrap_or_default();
        let mounts = self.mounts(pod, c);
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: c.name.clone(),
                attempt,
            }),
            image: Some(crate::cri::image_spec(&image)),
            command: c
                .command
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|s| expand_vars(s, &env_map))
                .collect(),
            args: c
                .args
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|s| expand_vars(s, &env_map))
                .collect(),
            working_dir: c.working_dir.clone().unwrap_or_default(),
            envs,
            labels: lbl,
            annotations,
            log_path: format!("{}/{attempt}.log", c.name),
            mounts,
            stdin: c.stdin.unwrap_or(false),
            stdin_once: c.stdin_once.unwrap_or(false),
            tty: c.tty.unwrap_or(false),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    // `kubectl debug --target`: the ephemeral container joins the target's
                    // PID namespace (network and IPC stay the pod's).
                    namespace_options: Some(match self.ephemeral_targets.get(&c.name) {
                        Some(target) => cri::NamespaceOption {
                            pid: cri::NamespaceMode::Target as i32,
                            target_id: target.clone(),
                            ..self.pod_ns(pod)
                        },
                        None => self.pod_ns(pod),
                    }),
                    ..crate::security::container_security(
                        pod,
                        c,
                        &crate::security::seccomp_root(&self.ctx.root_dir),
                    )
                }),
                resources: Some(crate::resources::container_resources(
                    pod,
                    c,
                    crate::resources::HostInfo::get(),
                )),
            }),
            ..Default::default()
        }
    }

    /// Host mounts for the container's volume mounts: `emptyDir` (a directory under the pod's
    /// state dir, or a tmpfs), `hostPath`, `persistentVolumeClaim` (the bound hostPath/local PV's
    /// path) and the API-data volumes; other volume types are skipped with a log line.
    fn mounts(&self, pod: &Pod, c: &Container) -> Vec<cri::Mount> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        for vm in c.volume_mounts.iter().flatten() {
            let Some(v) = volumes.iter().find(|v| v.name == vm.name) else {
                warn!(volume = %vm.name, "volumeMount names no volume of the pod; skipped");
                continue;
            };
            let mut api_data = false;
            let base = if let Some(p) = v
                .persistent_volume_claim
                .as_ref()
                .and_then(|_| self.claim_paths.get(&v.name))
            {
                p.clone()
            } else if let Some(hp) = &v.host_path {
                let p = PathBuf::from(&hp.path);
                if matches!(hp.type_.as_deref(), Some("DirectoryOrCreate")) {
                    if let Err(e) = std::fs::create_dir_all(&p) {
                        warn!(path = %p.display(), error = %e, "cannot create hostPath directory");
                    }
                }
                p
            } else if let Some(p) = volumes::volume_dir(&pod_dir(&self.ctx.root_dir, &uid), v) {
                api_data = true;
                p
            } else if let Some(ed) = &v.empty_dir {
                let p = pod_dir(&self.ctx.root_dir, &uid)
                    .join("volumes/kubernetes.io~empty-dir")
                    .join(&v.name);
                if ed.medium.as_deref() == Some("Memory") {
                    // A tmpfs, capped by sizeLimit (upstream: the node's memory otherwise).
                    let size = ed
                        .size_limit
                        .as_ref()
                        .and_then(|q| volumes::parse_quantity(&q.0))
                        .map(|b| b as u64);
                    if let Err(e) = crate::mounts::ensure_tmpfs(&p, size) {
                        warn!(path = %p.display(), error = %e, "cannot mount the memory emptyDir");
                    }
                } else if let Err(e) = std::fs::create_dir_all(&p) {
                    warn!(path = %p.display(), error = %e, "cannot create emptyDir");
                }
                p
            } else {
                debug!(volume = %v.name, "volume type not supported yet; skipped");
                continue;
            };
            let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) if !sub.split('/').any(|p| p == "..") => {
                    let p = base.join(sub);
                    if api_data {
                        // A file of the volume: bind the current content (no updates, as
                        // upstream's subPath mounts).
                        std::fs::canonicalize(&p).unwrap_or(p)
                    } else {
                        if std::fs::symlink_metadata(&p).is_err() {
                            let _ = std::fs::create_dir_all(&p);
                        }
                        p
                    }
                }
                Some(sub) => {
                    warn!(sub_path = %sub, "subPath with '..' refused; skipped");
                    continue;
                }
                None => base,
            };
            out.push(cri::Mount {
                container_path: vm.mount_path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: vm.read_only.unwrap_or(false) || api_data,
                ..Default::default()
            });
        }
        out
    }

    /// CRI statuses of this pod's containers (all sandboxes), by name, newest attempt first.
    async fn observe(
        &self,
        uid: &str,
    ) -> Result<HashMap<String, Vec<cri::ContainerStatus>>, CriError> {
        let mut sel = HashMap::new();
        sel.insert(labels::POD_UID.to_string(), uid.to_string());
        let list = self.cri.list_containers("", sel).await?;
        let mut by_name: HashMap<String, Vec<cri::ContainerStatus>> = HashMap::new();
        for c in list {
            match self.cri.container_status(&c.id).await {
                Ok(s) => by_name.entry(name_of(&s)).or_default().push(s),
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for v in by_name.values_mut() {
            v.sort_by(|a, b| {
                attempt_of(b)
                    .cmp(&attempt_of(a))
                    .then(b.created_at.cmp(&a.created_at))
            });
        }
        Ok(by_name)
    }

    /// Finds or creates the pod's sandbox; returns its id and config.
    async fn ensure_sandbox(
        &mut self,
        pod: &Pod,
    ) -> Result<(String, cri::PodSandboxConfig), CriError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // The pod's QoS cgroup (with its limits) before the sandbox goes in it.
        crate::cgroups::ensure_pod_async(&self.ctx.cgroup_root, pod).await;
        let mut sel = HashMap::new();
        sel.insert(labels::POD_UID.to_string(), uid.clone());
        let existing = self.cri.list_pod_sandbox(sel).await?;
        let ready = cri::PodSandboxState::SandboxReady as i32;
        let current = existing
            .iter()
            .filter(|s| s.state == ready)
            .max_by_key(|s| {
                (
                    s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                    s.created_at,
                )
            });
        if let Some(sb) = current {
            let attempt = sb.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            if self.sandbox_id.as_deref() != Some(sb.id.as_str()) {
                info!(sandbox = %sb.id, "adopted existing sandbox");
            }
            self.sandbox_id = Some(sb.id.clone());
            return Ok((sb.id.clone(), self.sandbox_config(pod, attempt)));
        }
        if let Some(old) = self.sandbox_id.take() {
            warn!(sandbox = %old, "sandbox is no longer ready; creating a new one");
        }
        let attempt = existing
            .iter()
            .map(|s| s.metadata.as_ref().map(|m| m.attempt + 1).unwrap_or(1))
            .max()
            .unwrap_or(0);
        let config = self.sandbox_config(pod, attempt);
        let id = self.cri.run_pod_sandbox(config.clone()).await?;
        info!(sandbox = %id, attempt, "started pod sandbox");
        self.sandbox_id = Some(id.clone());
        Ok((id, config))
    }

    /// Ensures the image of `c` is present according to its pull policy.
    /// `Err(waiting)` says why the container cannot start now.
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        c: &Container,
        sandbox_config: &cri::PodSandboxConfig,
        now: Instant,
    ) -> Result<(), Waiting> {
        let image = c.image.clone().unwrap_or_default();
        if let Some(b) = self.pull.get(&c.name) {
            if now < b.until {
                return Err(Waiting::new(
                    "ImagePullBackOff",
                    format!(
                        "Back-off pulling image \"{image}\": ErrImagePull: {}",
                        b.message
                    ),
                ));
            }
        }
        let policy = pull_policy(c).to_string();
        if policy != "Always" {
            match self.cri.image_status(&image).await {
                Ok(Some(_)) => {
                    if !self.pulled_once(&c.name) {
                        self.events.push(PodEvent::normal(
                            "Pulled",
                            &c.name,
                            format!("Container image \"{image}\" already present on machine"),
                        ));
                    }
                    return Ok(());
                }
                Ok(None) if policy == "Never" => {
                    return Err(Waiting::new(
                        "ErrImageNeverPull",
                        format!(
                            "Container image \"{image}\" is not present with pull policy of Never"
                        ),
                    ))
                }
                Ok(None) => {}
                Err(e) => warn!(%image, error = %e, "ImageStatus failed; pulling"),
            }
        }
        info!(%image, "pulling image");
        self.events.push(PodEvent::normal(
            "Pulling",
            &c.name,
            format!("Pulling image \"{image}\""),
        ));
        let started = std::time::Instant::now();
        match self.pull_with_secrets(pod, &image, sandbox_config).await {
            Ok(r) => {
                info!(%image, image_ref = %r, "pulled image");
                self.events.push(PodEvent::normal(
                    "Pulled",
                    &c.name,
                    format!(
                        "Successfully pulled image \"{image}\" in {}ms",
                        started.elapsed().as_millis()
                    ),
                ));
                self.pull.remove(&c.name);
                Ok(())
            }
            Err(e) => {
                let message = e.message();
                warn!(%image, error = %message, "image pull failed");
                self.events.push(PodEvent::warning(
                    "Failed",
                    &c.name,
                    format!("Failed to pull image \"{image}\": {message}"),
                ));
                self.events.push(PodEvent::warning(
                    "Failed",
                    &c.name,
                    "Error: ErrImagePull".into(),
                ));
                let delay = next_delay(self.pull.get(&c.name).map(|b| b.delay).unwrap_or_default());
                self.pull.insert(
                    c.name.clone(),
                    PullBackoff {
                        delay,
                        until: now + delay,
                        message: message.clone(),
                    },
                );
                Err(Waiting::new("ErrImagePull", message))
            }
        }
    }

    /// Pulls `image` with the credentials of the pod's imagePullSecrets that match its registry
    /// (node/src/pull_secrets.rs), each in turn until one works; none match: anonymously.
    async fn pull_with_secrets(
        &mut self,
        pod: &Pod,
        image: &str,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let (entries, missing) = crate::pull_secrets::entries_of(&*self.objects, pod).await;
        if !missing.is_empty() && self.reported.insert(format!("pullsecrets/{missing:?}")) {
            self.events.push(PodEvent {
                warning: true,
                reason: "FailedToRetrieveImagePullSecret",
                message: format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                ),
                field_path: None,
            });
        }
        let creds = crate::pull_secrets::lookup(&entries, image);
        if creds.is_empty() {
            return self
                .cri
                .pull_image_auth(image, None, sandbox_config.clone())
                .await;
        }
        let mut last = None;
        for auth in creds {
            match self
                .cri
                .pull_image_auth(image, Some(auth), sandbox_config.clone())
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("one credential was tried"))
    }

    /// Whether an "already present" event was recorded for `container` (once per pod worker,
    /// not at every sync).
    fn pulled_once(&mut self, container: &str) -> bool {
        let key = format!("present/{container}");
        !self.reported.insert(key)
    }

    /// Whether a container whose latest instance exited should run again.
    fn should_restart(policy: &str, latest: &cri::ContainerStatus) -> bool {
        match policy {
            "Never" => false,
            "OnFailure" => latest.exit_code != 0,
            _ => true,
        }
    }

    /// One reconcile pass for a live pod: converge the CRI state and return the status.
    pub async fn sync(&mut self, pod: &Pod, now: Instant) -> PodStatus {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.start_time.is_none() {
            self.start_time = Some(status::now_time());
        }
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let old_phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        let terminal = matches!(old_phase.as_deref(), Some("Succeeded" | "Failed"));

        let mut sandbox_ready = false;
        if !terminal {
            self.kill_unhealthy(pod).await;
        }
        // An eviction (eviction manager) ends the pod like an exceeded deadline, with its own
        // reason; the manager posts the event.
        let evicted = crate::eviction::order(&uid);
        let deadline_exceeded = !terminal
            && (evicted.is_some() || self.active_deadline_left(pod) == Some(Duration::ZERO));
        if deadline_exceeded {
            let mut grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
            if let Some(o) = &evicted {
                grace = o.grace_secs.min(grace);
                info!(reason = %o.reason, "pod evicted or terminated by the node shutdown; stopping its containers");
            } else {
                info!("activeDeadlineSeconds exceeded; stopping the pod's containers");
                self.events.push(PodEvent {
                    warning: true,
                    reason: "DeadlineExceeded",
                    message: "Pod was active on the node longer than the specified deadline".into(),
                    field_path: None,
                });
            }
            self.probes.clear();
            crate::cri::stop_running_containers(&*self.cri, &uid, grace, "pod deletion").await;
        }
        // Once this worker saw the pod finish (and stopped its sandbox), it stays finished even
        // while the API still shows the old phase: no new sandbox for a completed pod.
        let terminal = terminal || deadline_exceeded || self.terminal_done;
        if !terminal {
            match self.ensure_sandbox(pod).await {
                Ok((sandbox_id, sandbox_config)) => {
                    sandbox_ready = true;
                    match self.cri.pod_sandbox_status(&sandbox_id).await {
                        Ok(st) => {
                            if let Some(net) = st.network {
                                let mut ips = Vec::new();
                                if !net.ip.is_empty() {
                                    ips.push(net.ip);
                                }
                                ips.extend(net.additional_ips.into_iter().map(|p| p.ip));
                                if !ips.is_empty() {
                                    self.pod_ips = ips;
                                }
                            }
                        }
                        Err(e) => warn!(error = %e, "PodSandboxStatus failed"),
                    }
                    if !self.sync_volumes(pod, now).await {
                        for c in &spec.containers {
                            waiting.insert(c.name.clone(), Waiting::new("ContainerCreating", ""));
                        }
                        for c in spec.init_containers.iter().flatten() {
                            waiting.insert(c.name.clone(), Waiting::new("ContainerCreating", ""));
                        }
                    } else if let Err(e) = self
                        .converge_containers(
                            pod,
                            &uid,
                            &policy,
                            &sandbox_id,
                            &sandbox_config,
                            now,
                            &mut waiting,
                        )
                        .await
                    {
                        warn!(error = %e, "container sync failed; retrying");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot run the pod sandbox; retrying");
                    for c in &spec.containers {
                        waiting.insert(c.name.clone(), Waiting::new("ContainerCreating", ""));
                    }
                }
            }
        }

        let observed = match self.observe(&uid).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "cannot list the pod's containers");
                HashMap::new()
            }
        };
        let probes = if terminal {
            self.probes.clear();
            HashMap::new()
        } else {
            self.update_probes(pod, &observed)
        };
        let input = StatusInput {
            probes,
            host_ip: self.ctx.node_ip.clone(),
            host_ips: self.host_ips(),
            pod_ips: self.pod_ips.clone(),
            sandbox_ready: sandbox_ready && !self.terminal_done,
            start_time: self.start_time.clone(),
            containers: observed,
            waiting,
            now: status::now_time(),
        };
        let mut st = status::compute_pod_status(pod, &input);
        if deadline_exceeded {
            st.phase = Some("Failed".into());
            st.reason = Some("DeadlineExceeded".into());
            st.message =
                Some("Pod was active on the node longer than the specified deadline".into());
            if let Some(o) = &evicted {
                st.reason = Some(o.reason.clone());
                st.message = Some(o.message.clone());
            }
        }
        let phase = st.phase.clone().unwrap_or_default();
        if (phase == "Succeeded" || phase == "Failed") && !self.terminal_done {
            // Like upstream: a finished pod's sandbox is stopped (its containers stay for logs).
            info!(%phase, "pod finished; stopping its sandbox");
            if let Some(id) = self.sandbox_id.clone() {
                if let Err(e) = self.cri.stop_pod_sandbox(&id).await {
                    warn!(error = %e, "StopPodSandbox failed");
                }
            }
            self.terminal_done = true;
            let (reason, message) = (st.reason.clone(), st.message.clone());
            st = status::compute_pod_status(
                pod,
                &StatusInput {
                    sandbox_ready: false,
                    ..input
                },
            );
            if deadline_exceeded {
                st.phase = Some("Failed".into());
                st.reason = reason;
                st.message = message;
            }
        }
        if let Some(o) = &evicted {
            crate::eviction::mark_disruption(pod, &mut st, &o.message);
        }
        st
    }

    #[allow(clippy::too_many_arguments)]
    async fn converge_containers(
        &mut self,
        pod: &Pod,
        uid: &str,
        policy: &str,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        now: Instant,
        waiting: &mut HashMap<String, Waiting>,
    ) -> Result<(), CriError> {
        let observed = self.observe(uid).await?;
        let spec = pod.spec.clone().unwrap_or_default();
        let exited = cri::ContainerState::ContainerExited as i32;
        let empty = Vec::new();
        // Init containers run one at a time, in order, each to success, before the others.
        // Sidecars (restartPolicy Always) only need to have started before the next one, keep
        // running beside the app containers, and restart whenever they exit.
        let running = cri::ContainerState::ContainerRunning as i32;
        let app_started = spec
            .containers
            .iter()
            .any(|c| observed.get(&c.name).is_some_and(|h| !h.is_empty()));
        for c in spec.init_containers.iter().flatten() {
            let history = observed.get(&c.name).unwrap_or(&empty);
            if is_sidecar(c) {
                let started = history.first().is_some_and(|l| l.state == running)
                    && (c.startup_probe.is_none()
                        || self.probes.get(&c.name).is_some_and(|p| p.started()));
                if started {
                    continue;
                }
                let always = |_: &cri::ContainerStatus| true;
                let step = ContainerStep {
                    pod,
                    c,
                    history,
                    sandbox_id,
                    sandbox_config,
                    now,
                };
                self.converge_one(step, &always, waiting).await;
                if app_started {
                    continue;
                }
                return Ok(());
            }
            if app_started
                && history
                    .first()
                    .is_some_and(|l| l.state == exited && l.exit_code == 0)
            {
                continue;
            }
            match history.first() {
                Some(l) if l.state == exited && l.exit_code == 0 => continue,
                Some(l) if l.state == exited && policy == "Never" => return Ok(()),
                _ => {
                    let restart = |_: &cri::ContainerStatus| true;
                    let step = ContainerStep {
                        pod,
                        c,
                        history,
                        sandbox_id,
                        sandbox_config,
                        now,
                    };
                    self.converge_one(step, &restart, waiting).await;
                    return Ok(());
                }
            }
        }
        let restart = |l: &cri::ContainerStatus| Self::should_restart(policy, l);
        for c in &spec.containers {
            let history = observed.get(&c.name).unwrap_or(&empty);
            let step = ContainerStep {
                pod,
                c,
                history,
                sandbox_id,
                sandbox_config,
                now,
            };
            self.converge_one(step, &restart, waiting).await;
        }
        // Ephemeral containers (`kubectl debug`): started once, never restarted.
        let never = |_: &cri::ContainerStatus| false;
        for e in spec.ephemeral_containers.iter().flatten() {
            let history = observed.get(&e.name).unwrap_or(&empty);
            if !history.is_empty() {
                continue;
            }
            if let Some(target) = e.target_container_name.as_deref() {
                match observed
                    .get(target)
                    .and_then(|h| h.first())
                    .filter(|l| l.state == running)
                {
                    Some(l) => {
                        self.ephemeral_targets.insert(e.name.clone(), l.id.clone());
                    }
                    None => {
                        waiting.insert(
                            e.name.clone(),
                            Waiting::new(
                                "ContainerCreating",
                                format!("waiting for target container {target} to run"),
                            ),
                        );
                        continue;
                    }
                }
            }
            let c = ephemeral_as_container(e);
            let step = ContainerStep {
                pod,
                c: &c,
                history,
                sandbox_id,
                sandbox_config,
                now,
            };
            self.converge_one(step, &never, waiting).await;
        }
        Ok(())
    }

    /// Brings one container towards running: starts it, restarts it after an exit when
    /// `restart` says so (with crash back-off), or records why it waits.
    async fn converge_one(
        &mut self,
        step: ContainerStep<'_>,
        restart: &(dyn Fn(&cri::ContainerStatus) -> bool + Sync),
        waiting: &mut HashMap<String, Waiting>,
    ) {
        let ContainerStep {
            pod,
            c,
            history,
            sandbox_id,
            sandbox_config,
            now,
        } = step;
        let pod_ref = format!(
            "{}_{}({})",
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default(),
        );
        // Old instances beyond the previous one are garbage.
        for old in history.iter().skip(2) {
            if old.state == cri::ContainerState::ContainerExited as i32 {
                debug!(container = %old.id, "removing old container instance");
                let _ = self.cri.remove_container(&old.id).await;
            }
        }
        let attempt = match history.first() {
            None => 0,
            Some(l) => {
                let state = cri::ContainerState::try_from(l.state)
                    .unwrap_or(cri::ContainerState::ContainerUnknown);
                match state {
                    cri::ContainerState::ContainerRunning
                    | cri::ContainerState::ContainerUnknown => return,
                    cri::ContainerState::ContainerCreated => {
                        // Created but never started (e.g. the kubelet restarted in between).
                        if let Err(e) = self.cri.start_container(&l.id).await {
                            waiting.insert(
                                c.name.clone(),
                                Waiting::new("RunContainerError", e.message()),
                            );
                        }
                        return;
                    }
                    cri::ContainerState::ContainerExited => {
                        if !restart(l) {
                            return;
                        }
                        let b = self.crash.entry(c.name.clone()).or_default();
                        if l.finished_at - l.started_at > BACKOFF_RESET_AFTER_SECS * 1_000_000_000 {
                            b.delay = Duration::ZERO;
                        }
                        let until = match &b.pending {
                            Some((id, until)) if *id == l.id => *until,
                            _ => {
                                let until = now + b.delay;
                                b.pending = Some((l.id.clone(), until));
                                until
                            }
                        };
                        if now < until {
                            waiting.insert(
                                c.name.clone(),
                                Waiting::new(
                                    "CrashLoopBackOff",
                                    format!(
                                        "back-off {}s restarting failed container={} pod={pod_ref}",
                                        b.delay.as_secs(),
                                        c.name
                                    ),
                                ),
                            );
                            // Upstream records this at every sync the back-off holds back
                            // (deduplicated into one event with a count).
                            self.events.push(PodEvent::warning(
                                "BackOff",
                                &c.name,
                                format!(
                                    "Back-off restarting failed container {} in pod {pod_ref}",
                                    c.name
                                ),
                            ));
                            return;
                        }
                        attempt_of(l) + 1
                    }
                }
            }
        };
        if let Some((until, message)) = self.create_failed.get(&c.name) {
            if now < *until {
                waiting.insert(
                    c.name.clone(),
                    Waiting::new("CreateContainerError", message.clone()),
                );
                return;
            }
        }
        if let Err(w) = self.ensure_image(pod, c, sandbox_config, now).await {
            waiting.insert(c.name.clone(), w);
            return;
        }
        let resolved = match self.resolve_env(pod, c).await {
            Ok(r) => r,
            Err(msg) => {
                if self.reported.insert(format!("config/{}/{msg}", c.name)) {
                    self.events.push(PodEvent::warning(
                        "Failed",
                        &c.name,
                        format!("Error: {msg}"),
                    ));
                }
                waiting.insert(
                    c.name.clone(),
                    Waiting::new("CreateContainerConfigError", msg),
                );
                return;
            }
        };
        // runAsNonRoot against the image's user (upstream's verifyRunAsNonRoot).
        let image = c.image.clone().unwrap_or_default();
        let (image_uid, image_user) = if crate::security::needs_image_user(pod, c) {
            match self.cri.image_status(&image).await {
                Ok(Some(i)) => (i.uid.map(|u| u.value), i.username),
                _ => (None, String::new()),
            }
        } else {
            (None, String::new())
        };
        if let Err(msg) = crate::security::verify_run_as_non_root(pod, c, image_uid, &image_user) {
            if self.reported.insert(format!("config/{}/{msg}", c.name)) {
                self.events.push(PodEvent::warning(
                    "Failed",
                    &c.name,
                    format!("Error: {msg}"),
                ));
            }
            waiting.insert(
                c.name.clone(),
                Waiting::new("CreateContainerConfigError", msg),
            );
            return;
        }
        let config = self.container_config_with(pod, c, attempt, &resolved);
        let id = match self
            .cri
            .create_container(sandbox_id, config, sandbox_config.clone())
            .await
        {
            Ok(id) => id,
            Err(e) => {
                warn!(container = %c.name, error = %e, "CreateContainer failed");
                self.events.push(PodEvent::warning(
                    "Failed",
                    &c.name,
                    format!("Error: {}", e.message()),
                ));
                waiting.insert(
                    c.name.clone(),
                    Waiting::new("CreateContainerError", e.message()),
                );
                self.create_failed.insert(
                    c.name.clone(),
                    (now + BACKOFF_INITIAL, e.message().to_string()),
                );
                return;
            }
        };
        self.create_failed.remove(&c.name);
        if attempt > 0 {
            let b = self.crash.entry(c.name.clone()).or_default();
            b.delay = next_delay(b.delay);
            b.pending = None;
        }
        self.events.push(PodEvent::normal(
            "Created",
            &c.name,
            format!("Created container {}", c.name),
        ));
        match self.cri.start_container(&id).await {
            Ok(()) => {
                info!(container = %c.name, id = %id, attempt, "started container");
                self.events.push(PodEvent::normal(
                    "Started",
                    &c.name,
                    format!("Started container {}", c.name),
                ));
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    let ip = self.pod_ips.first().cloned().unwrap_or_default();
                    let grace = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .max(0);
                    // Upstream runs postStart without its own deadline; bound it generously.
                    let limit = Duration::from_secs(300);
                    if let Err(msg) =
                        crate::hooks::run(&*self.cri, h, pod, c, &id, &ip, limit).await
                    {
                        warn!(container = %c.name, error = %msg, "postStart hook failed");
                        self.events.push(PodEvent::warning(
                            "FailedPostStartHook",
                            &c.name,
                            msg.clone(),
                        ));
                        self.events.push(PodEvent::normal(
                            "Killing",
                            &c.name,
                            "FailedPostStartHook".to_string(),
                        ));
                        if let Err(e) = self.cri.stop_container(&id, grace).await {
                            warn!(container = %c.name, error = %e, "StopContainer failed");
                        }
                        waiting.insert(c.name.clone(), Waiting::new("PostStartHookError", msg));
                    }
                }
            }
            Err(e) => {
                warn!(container = %c.name, error = %e, "StartContainer failed");
                self.events.push(PodEvent::warning(
                    "Failed",
                    &c.name,
                    format!("Error: {}", e.message()),
                ));
                let _ = self.cri.remove_container(&id).await;
                waiting.insert(
                    c.name.clone(),
                    Waiting::new("RunContainerError", e.message()),
                );
            }
        }
    }

    /// Stops and removes everything the pod has in the CRI (every sandbox with its uid label).
    /// `grace_secs` is the time containers get between SIGTERM and SIGKILL.
    pub async fn terminate(&mut self, uid: &str, grace_secs: i64) -> Result<(), CriError> {
        self.terminate_pod_of(None, uid, grace_secs).await
    }

    /// For a pod with sidecars: stops the app containers first, then the sidecars in reverse
    /// order, as upstream, within `grace_secs` in total.
    async fn stop_app_then_sidecars(
        &mut self,
        pod: &Pod,
        uid: &str,
        grace_secs: i64,
    ) -> Result<(), CriError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let sidecars: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| is_sidecar(c))
            .map(|c| c.name.clone())
            .collect();
        if sidecars.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut sel = HashMap::new();
        sel.insert(labels::POD_UID.to_string(), uid.to_string());
        let running = cri::ContainerState::ContainerRunning as i32;
        let list = self.cri.list_containers("", sel).await?;
        let name = |c: &cri::Container| {
            c.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default()
        };
        let apps = list
            .iter()
            .filter(|c| c.state == running && !sidecars.contains(&name(c)))
            .map(|c| self.cri.stop_container(&c.id, grace_secs));
        for r in futures::future::join_all(apps).await {
            if let Err(e) = r {
                warn!(error = %e, "StopContainer failed");
            }
        }
        for sc in sidecars.iter().rev() {
            let left = (grace_secs - started.elapsed().as_secs() as i64).max(2);
            for c in list.iter().filter(|c| c.state == running && &name(c) == sc) {
                if let Err(e) = self.cri.stop_container(&c.id, left).await {
                    warn!(error = %e, "StopContainer failed");
                }
            }
        }
        Ok(())
    }

    /// [`PodSync::terminate`] that first runs the preStop hooks of `pod`'s running containers
    /// (in parallel, within the grace period; the containers then get what is left of it, at
    /// least 2 s, as upstream).
    pub async fn terminate_pod_of(
        &mut self,
        pod: Option<&Pod>,
        uid: &str,
        grace_secs: i64,
    ) -> Result<(), CriError> {
        let mut grace_secs = grace_secs;
        if let Some(pod) = pod.filter(|p| {
            p.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()))
            })
        }) {
            let started = Instant::now();
            let mut sel = HashMap::new();
            sel.insert(labels::POD_UID.to_string(), uid.to_string());
            let running = cri::ContainerState::ContainerRunning as i32;
            let list = self.cri.list_containers("", sel).await?;
            let spec = pod.spec.clone().unwrap_or_default();
            let ip = self
                .pod_ips
                .first()
                .cloned()
                .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
                .unwrap_or_default();
            let limit = Duration::from_secs(grace_secs.max(0) as u64);
            let mut hooks = Vec::new();
            for ct in list.iter().filter(|c| c.state == running) {
                let name = ct
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let Some(c) = spec.containers.iter().find(|c| c.name == name) else {
                    continue;
                };
                let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) else {
                    continue;
                };
                let cri = self.cri.clone();
                let (pod, c, id, ip) = (pod.clone(), c.clone(), ct.id.clone(), ip.clone());
                hooks.push(async move {
                    let r = crate::hooks::run(&*cri, &h, &pod, &c, &id, &ip, limit).await;
                    (c.name, r)
                });
            }
            for (name, r) in futures::future::join_all(hooks).await {
                if let Err(msg) = r {
                    warn!(container = %name, error = %msg, "preStop hook failed");
                    self.events
                        .push(PodEvent::warning("FailedPreStopHook", &name, msg));
                }
            }
            let used = started.elapsed().as_secs() as i64;
            grace_secs = (grace_secs - used).max(2);
        }
        if let Some(pod) = pod {
            self.stop_app_then_sidecars(pod, uid, grace_secs).await?;
        }
        terminate_pod(&*self.cri, uid, grace_secs).await?;
        self.sandbox_id = None;
        let dir = pod_dir(&self.ctx.root_dir, uid);
        if !uid.is_empty() && dir.exists() {
            // tmpfs volumes (secrets, memory emptyDirs) go first.
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || crate::mounts::unmount_all_under(&d)).await {
                Ok(Err(e)) => {
                    warn!(path = %dir.display(), error = %e, "cannot unmount the pod's volumes")
                }
                Err(e) => warn!(error = %e, "unmount task failed"),
                Ok(Ok(())) => {}
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(path = %dir.display(), error = %e, "cannot remove the pod's directory");
            }
        }
        Ok(())
    }
}

/// Stops the containers (with `grace_secs`) and stops and removes every sandbox of pod `uid`.
pub async fn terminate_pod<R: CriRuntime>(
    cri: &R,
    uid: &str,
    grace_secs: i64,
) -> Result<(), CriError> {
    let mut sel = HashMap::new();
    sel.insert(labels::POD_UID.to_string(), uid.to_string());
    let containers = cri.list_containers("", sel.clone()).await?;
    let running = cri::ContainerState::ContainerRunning as i32;
    let stops = containers
        .iter()
        .filter(|c| c.state == running)
        .map(|c| cri.stop_container(&c.id, grace_secs));
    for r in futures::future::join_all(stops).await {
        if let Err(e) = r {
            if e.code() != tonic::Code::NotFound {
                return Err(e);
            }
        }
    }
    for sb in cri.list_pod_sandbox(sel).await? {
        info!(sandbox = %sb.id, "stopping and removing pod sandbox");
        for r in [
            cri.stop_pod_sandbox(&sb.id).await,
            cri.remove_pod_sandbox(&sb.id).await,
        ] {
            if let Err(e) = r {
                if e.code() != tonic::Code::NotFound {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
