//! Graceful node shutdown (upstream's `pkg/kubelet/nodeshutdown`, Linux): the kubelet holds a
//! systemd-logind inhibitor lock of mode `delay` on `shutdown`, and when logind announces the
//! shutdown (`PrepareForShutdown(true)` on `org.freedesktop.login1.Manager`) it:
//!
//! 1. marks the node as shutting down: the Node's Ready condition turns False (`KubeletNotReady`,
//!    `node is shutting down`), a `NodeShutdown` event is recorded on the Node, and admission
//!    rejects new pods (`NodeShutdown`, `Pod was rejected as the node is shutting down.`);
//! 2. terminates the active pods group by group, from the lowest priority group to the highest
//!    ([`ShutdownConfig::groups`]: `shutdownGracePeriodByPodPriority`, or upstream's two groups
//!    derived from `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods`). Each pod of a
//!    group gets the group's grace period (or its own `terminationGracePeriodSeconds`, when
//!    shorter) and ends `Failed` with reason `Terminated`, message `Pod was terminated in
//!    response to imminent node shutdown.` and a `DisruptionTarget` condition; a group waits for
//!    its pods at most its grace period;
//! 3. releases the lock, so the shutdown goes on.
//!
//! `PrepareForShutdown(false)` (a cancelled shutdown) takes the lock again and the node is no
//! longer shutting down. Before taking the lock, logind's `InhibitDelayMaxUSec` is compared with
//! the sum of the groups' grace periods; when it is smaller, the kubelet writes the drop-in
//! `/etc/systemd/logind.conf.d/99-kubelet.conf` (`InhibitDelayMaxSec=`), has systemd send
//! logind SIGHUP (`KillUnit`), and checks again, as upstream does.
//!
//! The shutdown is also written down, as upstream's `graceful_node_shutdown_state` file in the
//! kubelet's root dir (`{"startTime": ..., "endTime": ...}`, written atomically): the start when
//! the shutdown event arrives, the end once every group is done. A kubelet restarted while the
//! node shuts down (killed, crashed, restarted by its unit while another delay lock holds logind
//! back) asks logind whether it is `PreparingForShutdown` once it holds its own lock again: when
//! it is, the node is shutting down from then on (NotReady, admission refuses pods),
//! the shutdown keeps the start time of the file (log: `kubelet restarted during a node
//! shutdown: resuming it`) and the pods left are
//! terminated as on the event. A file with a start and no end on a node that is not shutting
//! down is a shutdown the kubelet did not see to its end (logged, then the file is kept).
//!
//! The D-Bus side is [`Logind`] (zbus, the system bus of `DBUS_SYSTEM_BUS_ADDRESS` or
//! `/run/dbus/system_bus_socket`). The grouping and the grace periods are plain functions with
//! unit tests; tests/tests/kubelet_shutdown.rs boots a real systemd and powers it off.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::runtime::reflector::Store;
use kube::Client;
use serde::Deserialize;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::cri::CriRuntime;

/// Pod status reason of a pod ended by a node shutdown (upstream's `nodeShutdownReason`).
pub const REASON: &str = "Terminated";
/// Pod status message of a pod ended by a node shutdown (upstream's `nodeShutdownMessage`).
pub const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";
/// Admission reason while the node shuts down (upstream's `nodeShutdownNotAdmittedReason`).
pub const NOT_ADMITTED_REASON: &str = "NodeShutdown";
/// Admission message while the node shuts down.
pub const NOT_ADMITTED_MESSAGE: &str = "Pod was rejected as the node is shutting down.";
/// The Ready condition's message while the node shuts down.
pub const NODE_NOT_READY_MESSAGE: &str = "node is shutting down";
/// Where the kubelet raises logind's `InhibitDelayMaxSec` (upstream's drop-in).
pub const LOGIND_DROPIN_DIR: &str = "/etc/systemd/logind.conf.d";
pub const LOGIND_DROPIN_FILE: &str = "99-kubelet.conf";
/// system-cluster-critical's priority: the critical pods' group.
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
/// The shutdown state file in the kubelet's root dir (upstream's `localStorageStateFile`).
pub const STATE_FILE: &str = "graceful_node_shutdown_state";
/// Go's zero `time.Time` in JSON: an unset time in the state file, as upstream writes it.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Errors of the shutdown manager's D-Bus side.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("cannot connect to the system bus: {0}")]
    Connect(#[source] zbus::Error),
    #[error("logind {call} failed: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("unexpected answer to logind {call}: {message}")]
    Answer { call: &'static str, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node shutdown manager was unable to update logind InhibitDelayMaxSec to {requested:?} (ShutdownGracePeriod), current value of InhibitDelayMaxSec ({current:?}) is less than requested ShutdownGracePeriod")]
    InhibitDelayTooShort {
        requested: Duration,
        current: Duration,
    },
}

/// One `shutdownGracePeriodByPodPriority` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PriorityGrace {
    pub priority: i32,
    pub shutdown_grace_period_seconds: i64,
}

/// The graceful shutdown settings of the KubeletConfiguration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// `shutdownGracePeriod` (0: graceful shutdown off, unless `by_priority` is given).
    pub grace_period: Duration,
    /// `shutdownGracePeriodCriticalPods`, part of `grace_period` kept for critical pods.
    pub critical_grace_period: Duration,
    /// `shutdownGracePeriodByPodPriority` (wins over the two above).
    pub by_priority: Vec<PriorityGrace>,
}

impl ShutdownConfig {
    /// The shutdown groups, by ascending priority (upstream's `migrateConfig` when
    /// `shutdownGracePeriodByPodPriority` is empty: priority 0 gets the grace period less the
    /// critical pods' part, system-cluster-critical gets that part). Empty: shutdown handling off.
    pub fn groups(&self) -> Vec<PriorityGrace> {
        let mut g = if self.by_priority.is_empty() {
            if self.grace_period.is_zero() || self.critical_grace_period > self.grace_period {
                return Vec::new();
            }
            let default = self.grace_period - self.critical_grace_period;
            vec![
                PriorityGrace {
                    priority: 0,
                    shutdown_grace_period_seconds: default.as_secs() as i64,
                },
                PriorityGrace {
                    priority: SYSTEM_CRITICAL_PRIORITY,
                    shutdown_grace_period_seconds: self.critical_grace_period.as_secs() as i64,
                },
            ]
        } else {
            self.by_priority.clone()
        };
        g.sort_by_key(|p| p.priority);
        g
    }

    /// The time the whole shutdown may take: the sum of the groups' grace periods.
    pub fn total(&self) -> Duration {
        Duration::from_secs(
            self.groups()
                .iter()
                .map(|g| g.shutdown_grace_period_seconds.max(0) as u64)
                .sum(),
        )
    }

    /// Whether the kubelet handles node shutdown at all.
    pub fn enabled(&self) -> bool {
        !self.total().is_zero()
    }
}

fn priority(p: &Pod) -> i32 {
    p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Puts each pod in the group of the highest priority not above its own (pods below every group
/// go to the lowest, as upstream's `groupByPriority`). `groups` is sorted by priority.
pub fn group_pods(pods: Vec<Pod>, groups: &[PriorityGrace]) -> Vec<(PriorityGrace, Vec<Pod>)> {
    let mut out: Vec<(PriorityGrace, Vec<Pod>)> = groups.iter().map(|g| (*g, Vec::new())).collect();
    if out.is_empty() {
        return out;
    }
    for pod in pods {
        let p = priority(&pod);
        let i = groups.iter().rposition(|g| g.priority <= p).unwrap_or(0);
        out[i].1.push(pod);
    }
    out
}

/// The grace period a pod of `group` is killed with: the group's, or the pod's own
/// `terminationGracePeriodSeconds` when that is not longer.
pub fn pod_grace(pod: &Pod, group: &PriorityGrace) -> i64 {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds);
    match own {
        Some(s) if s <= group.shutdown_grace_period_seconds => s.max(0),
        _ => group.shutdown_grace_period_seconds.max(0),
    }
}

/// The drop-in that raises logind's `InhibitDelayMaxSec` to `delay`.
pub fn logind_dropin(delay: Duration) -> String {
    format!(
        "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec={}\n",
        delay.as_secs()
    )
}

/// Errors of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("graceful shutdown state {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The state file's content: when the last shutdown the kubelet handled started and ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateRecord {
    pub start: Option<chrono::DateTime<chrono::Utc>>,
    pub end: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(serde::Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateJson {
    #[serde(default)]
    start_time: String,
    #[serde(default)]
    end_time: String,
}

fn time_to_json(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_else(|| GO_ZERO_TIME.to_string())
}

fn time_from_json(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    (t.timestamp() > 0).then(|| t.with_timezone(&chrono::Utc))
}

impl StateRecord {
    /// A shutdown that started and was not seen to its end.
    pub fn in_progress(&self) -> bool {
        self.start.is_some() && self.end.is_none()
    }

    pub fn to_json(self) -> String {
        serde_json::to_string(&StateJson {
            start_time: time_to_json(self.start),
            end_time: time_to_json(self.end),
        })
        .unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        let j: StateJson = serde_json::from_str(s)?;
        Ok(StateRecord {
            start: time_from_json(&j.start_time),
            end: time_from_json(&j.end_time),
        })
    }

    /// Reads the file; a missing file is an empty record (upstream's `Load`).
    pub fn load(path: &Path) -> Result<Self, StateFileError> {
        match std::fs::read_to_string(path) {
            Ok(s) => Self::from_json(&s).map_err(|e| StateFileError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StateFileError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// Writes the file atomically: a temporary file beside it, fsync, rename.
    pub fn store(self, path: &Path) -> Result<(), StateFileError> {
        let err = |e: std::io::Error| StateFileError::Write {
            path: path.to_path_buf(),
            source: e,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".tmp-{STATE_FILE}.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        use std::io::Write;
        f.write_all(self.to_json().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }
}

/// Writes `rec` to `path` off the async workers; failures are logged (as upstream).
async fn store_state(path: &Path, rec: StateRecord) {
    let p = path.to_path_buf();
    match tokio::task::spawn_blocking(move || rec.store(&p)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "failed to store graceful shutdown state"),
        Err(e) => warn!(error = %e, "failed to store graceful shutdown state"),
    }
}

/// Whether the node is shutting down, shared with the node status and admission.
#[derive(Debug, Default)]
pub struct ShutdownState {
    shutting_down: AtomicBool,
    /// Woken when the state changes, so the node status goes out at once (one waiter: the
    /// status loop; a change while it is busy is kept for its next wait).
    pub changed: Notify,
}

impl ShutdownState {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    pub fn set(&self, on: bool) {
        if self.shutting_down.swap(on, Ordering::SeqCst) != on {
            self.changed.notify_one();
        }
    }
}

pub type SharedShutdown = Arc<ShutdownState>;

const LOGIN1: &str = "org.freedesktop.login1";
const LOGIN1_PATH: &str = "/org/freedesktop/login1";
const LOGIN1_MANAGER: &str = "org.freedesktop.login1.Manager";

/// systemd-logind (and systemd, to reload logind) on the system bus.
pub struct Logind {
    conn: zbus::Connection,
}

impl Logind {
    pub async fn connect() -> Result<Self, ShutdownError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(ShutdownError::Connect)?;
        Ok(Logind { conn })
    }

    /// A property of logind's manager.
    async fn property(
        &self,
        call: &'static str,
        name: &str,
    ) -> Result<zbus::zvariant::OwnedValue, ShutdownError> {
        let reply = self
            .conn
            .call_method(
                Some(LOGIN1),
                LOGIN1_PATH,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(LOGIN1_MANAGER, name),
            )
            .await
            .map_err(|source| ShutdownError::Call { call, source })?;
        reply
            .body()
            .deserialize()
            .map_err(|source| ShutdownError::Call { call, source })
    }

    /// logind's `InhibitDelayMaxUSec`.
    pub async fn inhibit_delay(&self) -> Result<Duration, ShutdownError> {
        let call = "Get(InhibitDelayMaxUSec)";
        let v = self.property(call, "InhibitDelayMaxUSec").await?;
        let us = u64::try_from(v).map_err(|e| ShutdownError::Answer {
            call,
            message: e.to_string(),
        })?;
        Ok(Duration::from_micros(us))
    }

    /// logind's `PreparingForShutdown`: a shutdown was announced and waits for delay locks.
    pub async fn preparing_for_shutdown(&self) -> Result<bool, ShutdownError> {
        let call = "Get(PreparingForShutdown)";
        let v = self.property(call, "PreparingForShutdown").await?;
        bool::try_from(v).map_err(|e| ShutdownError::Answer {
            call,
            message: e.to_string(),
        })
    }

    /// Takes a `delay` inhibitor lock on `shutdown`; the lock lasts while the fd is open.
    pub async fn inhibit(&self) -> Result<zbus::zvariant::OwnedFd, ShutdownError> {
        let call = "Inhibit";
        let reply = self
            .conn
            .call_method(
                Some(LOGIN1),
                LOGIN1_PATH,
                Some(LOGIN1_MANAGER),
                "Inhibit",
                &(
                    "shutdown",
                    "kubelet",
                    "Kubelet needs time to handle node shutdown",
                    "delay",
                ),
            )
            .await
            .map_err(|source| ShutdownError::Call { call, source })?;
        reply
            .body()
            .deserialize::<zbus::zvariant::OwnedFd>()
            .map_err(|source| ShutdownError::Call { call, source })
    }

    /// Asks systemd to send logind SIGHUP, so it reads its configuration again.
    pub async fn reload(&self) -> Result<(), ShutdownError> {
        self.conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "KillUnit",
                &("systemd-logind.service", "main", libc_sighup()),
            )
            .await
            .map_err(|source| ShutdownError::Call {
                call: "KillUnit(systemd-logind.service)",
                source,
            })?;
        Ok(())
    }

    /// The `PrepareForShutdown` signals, as their argument.
    pub async fn shutdown_signals(
        &self,
    ) -> Result<impl futures::Stream<Item = bool> + Unpin, ShutdownError> {
        let call = "AddMatch(PrepareForShutdown)";
        let err = |source| ShutdownError::Call { call, source };
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(LOGIN1)
            .map_err(err)?
            .interface(LOGIN1_MANAGER)
            .map_err(err)?
            .member("PrepareForShutdown")
            .map_err(err)?
            .path(LOGIN1_PATH)
            .map_err(err)?
            .build();
        let stream = zbus::MessageStream::for_match_rule(rule, &self.conn, None)
            .await
            .map_err(err)?;
        Ok(Box::pin(stream.filter_map(|m| async move {
            m.ok().and_then(|m| m.body().deserialize::<bool>().ok())
        })))
    }
}

fn libc_sighup() -> i32 {
    nix::sys::signal::Signal::SIGHUP as i32
}

/// Makes logind's inhibit delay at least `requested` (upstream's start of the manager).
async fn ensure_inhibit_delay(
    logind: &Logind,
    requested: Duration,
    dropin_dir: &Path,
) -> Result<(), ShutdownError> {
    let current = logind.inhibit_delay().await?;
    if current >= requested {
        return Ok(());
    }
    info!(current = ?current, requested = ?requested, "raising logind's InhibitDelayMaxSec");
    let path = dropin_dir.join(LOGIND_DROPIN_FILE);
    let text = logind_dropin(requested);
    let dir = dropin_dir.to_path_buf();
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&p, text)
    })
    .await
    .map_err(|e| ShutdownError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| ShutdownError::Write {
        path: path.clone(),
        source,
    })?;
    logind.reload().await?;
    // The reload is asynchronous: poll with back-off (100 ms doubling, 5 steps), as upstream.
    let mut delay = Duration::from_millis(100);
    let mut current = current;
    for _ in 0..5 {
        tokio::time::sleep(delay).await;
        current = logind.inhibit_delay().await?;
        if current >= requested {
            return Ok(());
        }
        delay *= 2;
    }
    Err(ShutdownError::InhibitDelayTooShort { requested, current })
}

/// The shutdown manager.
pub struct Manager<R: CriRuntime> {
    pub client: Client,
    pub cri: Arc<R>,
    pub pods: Store<Pod>,
    pub node_name: String,
    pub config: ShutdownConfig,
    pub state: SharedShutdown,
    /// Where the logind drop-in goes ([`LOGIND_DROPIN_DIR`]).
    pub logind_dropin_dir: PathBuf,
    /// The state file ([`STATE_FILE`] in the kubelet's root dir).
    pub state_file: PathBuf,
}

impl<R: CriRuntime> Manager<R> {
    /// Takes the lock and handles shutdown events until `stop`. Errors (no logind, no D-Bus)
    /// are logged: the kubelet runs on without graceful shutdown, as upstream's logs an error.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let groups = self.config.groups();
        let total = self.config.total();
        info!(grace = ?total, groups = ?groups, "creating the node shutdown manager");
        let logind = match Logind::connect().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "node shutdown manager: cannot reach logind; graceful node shutdown is off");
                return;
            }
        };
        if let Err(e) = ensure_inhibit_delay(&logind, total, &self.logind_dropin_dir).await {
            warn!(error = %e, "node shutdown manager failed to start");
            return;
        }
        let mut signals = match logind.shutdown_signals().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "node shutdown manager failed to start");
                return;
            }
        };
        let mut lock = match logind.inhibit().await {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(error = %e, "node shutdown manager failed to start");
                return;
            }
        };
        info!("node shutdown manager holds the inhibitor lock (delay)");
        let path = self.state_file.clone();
        let record = tokio::task::spawn_blocking(move || StateRecord::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(StateFileError::Read {
                    path: self.state_file.clone(),
                    message: e.to_string(),
                })
            })
            .unwrap_or_else(|e| {
                warn!(error = %e, "failed to load graceful shutdown state");
                StateRecord::default()
            });
        // A shutdown announced before this kubelet subscribed (it was restarted meanwhile):
        // logind says so, and the state file tells when it began.
        let mut resumed = match logind.preparing_for_shutdown().await {
            Ok(true) => {
                info!(started = ?record.start, "kubelet restarted during a node shutdown: resuming it");
                Some(record)
            }
            Ok(false) => {
                if record.in_progress() {
                    warn!(started = ?record.start, "the last node shutdown was not seen to its end");
                }
                None
            }
            Err(e) => {
                warn!(error = %e, "cannot ask logind whether the node is shutting down");
                None
            }
        };
        loop {
            let ev = if resumed.is_some() {
                Some(true)
            } else {
                tokio::select! {
                    _ = stop.changed() => return,
                    ev = signals.next() => ev,
                }
            };
            let Some(shutting_down) = ev else {
                warn!("ended watching the node for shutdown events");
                return;
            };
            info!(
                event = if shutting_down {
                    "shutdown"
                } else {
                    "cancelled"
                },
                "shutdown manager detected new shutdown event"
            );
            self.node_event(if shutting_down {
                "Shutdown manager detected shutdown event"
            } else {
                "Shutdown manager detected shutdown cancellation"
            })
            .await;
            self.state.set(shutting_down);
            if shutting_down {
                // A resumed shutdown keeps the start time the first kubelet wrote.
                let start = resumed
                    .take()
                    .and_then(|r| r.start)
                    .unwrap_or_else(chrono::Utc::now);
                let mut rec = StateRecord {
                    start: Some(start),
                    end: None,
                };
                store_state(&self.state_file, rec).await;
                self.process_shutdown(&groups).await;
                rec.end = Some(chrono::Utc::now());
                store_state(&self.state_file, rec).await;
                // Closing the fd releases the lock: the shutdown goes on.
                drop(lock.take());
                info!("shutdown manager released the inhibitor lock");
            } else if lock.is_none() {
                match logind.inhibit().await {
                    Ok(fd) => lock = Some(fd),
                    Err(e) => warn!(error = %e, "cannot take the inhibitor lock again"),
                }
            }
        }
    }

    async fn node_event(&self, message: &str) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", self.node_name, now.as_nanosecond())),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Node".into()),
                name: Some(self.node_name.clone()),
                uid: Some(self.node_name.clone()),
                ..Default::default()
            },
            reason: Some("NodeShutdown".into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node_name.clone()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node_name.clone()),
            }),
            ..Default::default()
        };
        skiff_events::record(&self.client, ev).await;
    }

    /// Terminates the active pods, group by group (upstream's `processShutdownEvent`).
    async fn process_shutdown(&self, groups: &[PriorityGrace]) {
        let active: Vec<Pod> = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .map(|p| (**p).clone())
            .collect();
        info!(
            pods = active.len(),
            "shutdown manager processing shutdown event"
        );
        for (group, pods) in group_pods(active, groups) {
            if pods.is_empty() {
                continue;
            }
            let kills = pods.iter().map(|p| self.kill(p, pod_grace(p, &group)));
            let limit = Duration::from_secs(group.shutdown_grace_period_seconds.max(0) as u64);
            if tokio::time::timeout(limit, futures::future::join_all(kills))
                .await
                .is_err()
            {
                warn!(
                    priority = group.priority,
                    "shutdown manager pod killing time out"
                );
            }
        }
    }

    /// Ends `pod` as terminated by the shutdown and waits until the API shows it Failed.
    async fn kill(&self, pod: &Pod, grace: i64) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        info!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace, grace, "shutdown manager killing pod with gracePeriod");
        crate::eviction::record_order(
            &uid,
            crate::eviction::Order {
                reason: REASON.into(),
                message: MESSAGE.into(),
                grace_secs: grace,
            },
        );
        // Stopping the containers wakes the pod worker, which writes the Failed status.
        crate::cri::stop_running_containers(&*self.cri, &uid, grace, "node shutdown").await;
        let key = kube::runtime::reflector::ObjectRef::<Pod>::new(
            pod.metadata.name.as_deref().unwrap_or_default(),
        )
        .within(pod.metadata.namespace.as_deref().unwrap_or("default"));
        loop {
            let done = self.pods.get(&key).is_none_or(|p| {
                p.metadata.uid.as_deref() != Some(uid.as_str())
                    || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            });
            if done {
                info!(pod = ?pod.metadata.name, "shutdown manager finished killing pod");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, prio: Option<i32>, grace: Option<i64>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": name},
            "spec": {"priority": prio, "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "c"}]}
        }))
        .unwrap()
    }

    #[test]
    fn groups_from_the_two_grace_periods_as_upstream() {
        let c = ShutdownConfig {
            grace_period: Duration::from_secs(30),
            critical_grace_period: Duration::from_secs(10),
            by_priority: Vec::new(),
        };
        assert_eq!(
            c.groups(),
            vec![
                PriorityGrace {
                    priority: 0,
                    shutdown_grace_period_seconds: 20
                },
                PriorityGrace {
                    priority: SYSTEM_CRITICAL_PRIORITY,
                    shutdown_grace_period_seconds: 10
                },
            ]
        );
        assert_eq!(c.total(), Duration::from_secs(30));
        assert!(!ShutdownConfig::default().enabled());
        let bad = ShutdownConfig {
            grace_period: Duration::from_secs(5),
            critical_grace_period: Duration::from_secs(10),
            by_priority: Vec::new(),
        };
        assert!(!bad.enabled());
    }

    #[test]
    fn pods_go_to_the_highest_group_not_above_them() {
        let groups = ShutdownConfig {
            by_priority: vec![
                PriorityGrace {
                    priority: 100000,
                    shutdown_grace_period_seconds: 5,
                },
                PriorityGrace {
                    priority: 1,
                    shutdown_grace_period_seconds: 20,
                },
                PriorityGrace {
                    priority: SYSTEM_CRITICAL_PRIORITY,
                    shutdown_grace_period_seconds: 3,
                },
            ],
            ..Default::default()
        }
        .groups();
        assert_eq!(groups[0].priority, 1);
        let pods = vec![
            pod("low", Some(-5), None),
            pod("none", None, None),
            pod("one", Some(1), None),
            pod("mid", Some(99999), None),
            pod("high", Some(100000), None),
            pod("crit", Some(2_000_001_000), None),
        ];
        let g = group_pods(pods, &groups);
        let names = |i: usize| {
            g[i].1
                .iter()
                .map(|p| p.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["low", "none", "one", "mid"]);
        assert_eq!(names(1), ["high"]);
        assert_eq!(names(2), ["crit"]);
    }

    #[test]
    fn a_shorter_pod_grace_period_wins() {
        let g = PriorityGrace {
            priority: 0,
            shutdown_grace_period_seconds: 20,
        };
        assert_eq!(pod_grace(&pod("a", None, Some(5)), &g), 5);
        assert_eq!(pod_grace(&pod("a", None, Some(60)), &g), 20);
        assert_eq!(pod_grace(&pod("a", None, None), &g), 20);
    }

    #[test]
    fn dropin_text() {
        assert_eq!(
            logind_dropin(Duration::from_secs(45)),
            "# Kubelet logind override\n[Login]\nInhibitDelayMaxSec=45\n"
        );
    }

    #[test]
    fn state_file_round_trips_in_upstreams_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(StateRecord::load(&path).unwrap(), StateRecord::default());
        let start = chrono::DateTime::parse_from_rfc3339("2026-12-07T01:02:03Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let rec = StateRecord {
            start: Some(start),
            end: None,
        };
        rec.store(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            r#"{"startTime":"2026-12-07T01:02:03.000000000Z","endTime":"0001-01-01T00:00:00Z"}"#
        );
        let back = StateRecord::load(&path).unwrap();
        assert_eq!(back, rec);
        assert!(back.in_progress());
        // Go's own encoding of a time (no fraction) reads too.
        let go = StateRecord::from_json(
            r#"{"startTime":"2026-12-07T01:02:03Z","endTime":"2026-12-07T01:02:33.5+00:00"}"#,
        )
        .unwrap();
        assert_eq!(go.start, Some(start));
        assert!(!go.in_progress());
        std::fs::write(&path, "{").unwrap();
        assert!(StateRecord::load(&path).is_err());
    }

    #[test]
    fn state_notifies_changes() {
        let s = ShutdownState::default();
        assert!(!s.is_shutting_down());
        s.set(true);
        assert!(s.is_shutting_down());
    }
}
