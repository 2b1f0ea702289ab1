//! skiff-node: Skiff's kubelet.
//!
//! It registers the Node, keeps its status and Lease fresh, runs this node's pods through a CRI
//! runtime (runtime.v1 over a unix socket) and serves `/containerLogs` on :10250 for `kubectl logs`.
//!
//! Module layout:
//! - [`cri`]: the [`CriRuntime`] trait (the CRI calls the kubelet makes) and [`GrpcCri`], the tonic
//!   client over a unix socket. [`fake`]: an in-memory runtime for tests.
//! - [`reconcile`]: per-pod sync against the CRI (sandbox, image pulls with back-off, containers,
//!   restart policy with crash back-off, termination). API-free; returns the status to write.
//! - [`status`]: the pure pod-status computation (phase, conditions, container statuses).
//! - [`pods`]: the pod manager: watch + reflector store of `spec.nodeName=<node>` pods, one worker
//!   task per pod, status writes through `pods/status`, final deletion, orphan sandbox sweep.
//! - [`node`]: host facts, Node registration, status heartbeat, Lease renewal.
//! - [`server`] and [`tls`]: the HTTPS server on :10250; [`logs`]: CRI log-line parsing/rendering.
//! - [`error`]: [`NodeError`] and [`CriError`].

pub mod admission;
pub mod auth;
pub mod cgroups;
pub mod cri;
pub mod error;
pub mod events;
pub mod eviction;
pub mod fake;
pub mod fsgroup;
pub mod gc;
pub mod hooks;
pub mod logs;
pub mod monitor;
pub mod mounts;
pub mod node;
pub mod object_watch;
pub mod objects;
pub mod pleg;
pub mod pods;
pub mod probe;
pub mod pull_secrets;
pub mod reconcile;
pub mod resources;
pub mod security;
pub mod server;
pub mod shutdown;
pub mod static_pods;
pub mod status;
pub mod stream;
pub mod systemd_cgroups;
pub mod tls;
pub mod userns;
pub mod volumes;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

pub use cri::{CriRuntime, GrpcCri};
pub use error::{CriError, NodeError};
pub use reconcile::SyncContext;

/// Where the kubelet gets its API server connection from.
#[derive(Clone)]
pub enum KubeSource {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// A ready client configuration.
    Config(Box<kube::Config>),
    /// `KUBECONFIG`, `~/.kube/config` or the in-cluster service account.
    Infer,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeSource::Kubeconfig(p) => write!(f, "Kubeconfig({})", p.display()),
            KubeSource::Config(c) => write!(f, "Config({})", c.cluster_url),
            KubeSource::Infer => write!(f, "Infer"),
        }
    }
}

/// The kubelet's configuration. [`KubeletConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node_name: String,
    pub kube: KubeSource,
    /// CRI unix socket (`/run/skiff/cri.sock`).
    pub cri_endpoint: PathBuf,
    /// This node's pod CIDR (`10.42.0.0/24`), written to `spec.podCIDR`.
    pub pod_cidr: String,
    /// The node's InternalIP (also the pods' hostIP).
    pub node_ip: IpAddr,
    /// The other family's InternalIP of a dual-stack node (`--node-ip=<v4>,<v6>`).
    pub secondary_node_ip: Option<IpAddr>,
    /// Port of the kubelet's HTTPS server (10250).
    pub port: u16,
    /// Address to bind the server on (all addresses by default).
    pub bind_address: IpAddr,
    /// State directory (`/var/lib/skiff/kubelet`); the self-signed certificate goes to `pki/`.
    pub root_dir: PathBuf,
    /// Root of the pod log directories (`/var/log/pods`).
    pub pod_log_dir: PathBuf,
    /// Serving certificate and key (PEM). Both unset: a self-signed pair in `<root_dir>/pki`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to; unset: no client authentication.
    pub client_ca: Option<PathBuf>,
    /// Cluster DNS server(s) for `dnsPolicy: ClusterFirst` (empty: pods use the host's resolv.conf).
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// Node roles: labels `node-role.kubernetes.io/<role>=true`.
    pub roles: Vec<String>,
    /// Extra node labels.
    pub node_labels: BTreeMap<String, String>,
    /// Cgroup parent root of pods (cgroupfs layout), `/kubepods`; with the systemd driver the
    /// same name stands for `kubepods.slice` (node/src/systemd_cgroups.rs).
    pub cgroup_root: String,
    /// `--cgroup-driver` (`cgroupfs`).
    pub cgroup_driver: cgroups::Driver,
    /// Whether the driver was given (flag or file): a runtime that reports another one is then
    /// refused; unset, the runtime's driver is used (upstream's `KubeletCgroupDriverFromCRI`).
    pub cgroup_driver_set: bool,
    /// Node status and Lease renewal period (10 s).
    pub status_interval: Duration,
    /// Capacity `pods` (110).
    pub max_pods: u32,
    /// Taints the Node is registered with.
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// Authentication and authorization of the :10250 server (upstream's flag defaults:
    /// anonymous allowed, AlwaysAllow; `skiff server` uses [`auth::AuthSettings::secure`]).
    pub auth: auth::AuthSettings,
    /// Folder of static pod manifests (`--pod-manifest-path`, `staticPodPath`).
    pub pod_manifest_path: Option<PathBuf>,
    /// Plain-HTTP `/healthz` (`--healthz-port`/`--healthz-bind-address`; unset: none).
    pub healthz: Option<SocketAddr>,
    /// QoS-class cgroups `kubepods/{burstable,besteffort}/pod<uid>` (`--cgroups-per-qos`, true).
    pub cgroups_per_qos: bool,
    /// `--enforce-node-allocatable` (`pods`): `pods` limits the `kubepods` cgroup to allocatable.
    pub enforce_node_allocatable: Vec<String>,
    /// `--kube-reserved` / `--system-reserved`: cpu in millicores, memory and
    /// ephemeral-storage in bytes, pid as a count.
    pub kube_reserved: BTreeMap<String, i64>,
    pub system_reserved: BTreeMap<String, i64>,
    /// Eviction thresholds and periods (`--eviction-*`).
    pub eviction: eviction::EvictionConfig,
    /// The cgroup filesystem (`/sys/fs/cgroup`).
    pub cgroup_mount: PathBuf,
    /// Image and dead-container garbage collection (node/src/gc.rs).
    pub gc: gc::GcConfig,
    /// Graceful node shutdown (`shutdownGracePeriod*`, node/src/shutdown.rs); off by default.
    pub shutdown: shutdown::ShutdownConfig,
}

impl KubeletConfig {
    /// A configuration with the defaults of `skiff agent` for `node_name`.
    pub fn new(node_name: impl Into<String>, kube: KubeSource, node_ip: IpAddr) -> Self {
        Self {
            node_name: node_name.into(),
            kube,
            cri_endpoint: PathBuf::from("/run/skiff/cri.sock"),
            pod_cidr: "10.42.0.0/24".into(),
            node_ip,
            secondary_node_ip: None,
            port: 10250,
            bind_address: IpAddr::from([0, 0, 0, 0]),
            root_dir: PathBuf::from("/var/lib/skiff/kubelet"),
            pod_log_dir: PathBuf::from("/var/log/pods"),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            roles: Vec::new(),
            node_labels: BTreeMap::new(),
            cgroup_root: "/kubepods".into(),
            cgroup_driver: cgroups::Driver::Cgroupfs,
            cgroup_driver_set: false,
            status_interval: Duration::from_secs(10),
            max_pods: 110,
            register_with_taints: Vec::new(),
            auth: auth::AuthSettings::default(),
            pod_manifest_path: None,
            healthz: None,
            cgroups_per_qos: true,
            enforce_node_allocatable: vec!["pods".into()],
            kube_reserved: BTreeMap::new(),
            system_reserved: BTreeMap::new(),
            eviction: eviction::EvictionConfig::default(),
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            gc: gc::GcConfig::default(),
            shutdown: shutdown::ShutdownConfig::default(),
        }
    }
}

async fn make_client(src: &KubeSource) -> Result<Client, NodeError> {
    let mut config = match src {
        KubeSource::Kubeconfig(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| NodeError::Kubeconfig {
                path: path.clone(),
                message: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| NodeError::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?
        }
        KubeSource::Config(c) => (**c).clone(),
        KubeSource::Infer => kube::Config::infer()
            .await
            .map_err(|e| NodeError::Client(e.to_string()))?,
    };
    // No read timeout (kube's default) would let a silently dead connection hold the pod watch
    // forever; watches get bookmarks at least every minute.
    if config.read_timeout.is_none() {
        config.read_timeout = Some(std::time::Duration::from_secs(90));
    }
    Client::try_from(config).map_err(|e| NodeError::Client(e.to_string()))
}

/// `skiff://0.1.0` from a CRI Version answer.
fn runtime_version(v: &skiff_proto::cri::VersionResponse) -> String {
    format!("{}://{}", v.runtime_name, v.runtime_version)
}

/// Retries `f` every `delay` until it succeeds or shutdown; logs each failure with `what`.
async fn retry<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    shutdown: &mut watch::Receiver<bool>,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => warn!("{what}: {e}; retrying in {}s", delay.as_secs_f32()),
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Runs the kubelet until `shutdown` resolves. Pods keep running after it returns.
///
/// Waits (with retries and a log line each time) for the CRI runtime and the API server, so it
/// can start before them.
pub async fn run(
    cfg: KubeletConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    if cfg.node_name.is_empty() {
        return Err(NodeError::Config("node name is empty".into()));
    }
    if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
        return Err(NodeError::Config(
            "give both the serving certificate and its key, or neither".into(),
        ));
    }
    let cri = Arc::new(GrpcCri::new(&cfg.cri_endpoint)?);
    let mut cfg = cfg;
    cfg.cgroup_driver = cgroup_driver(&cfg, &*cri).await?;
    setup_qos_cgroups(&cfg).await;
    run_with_runtime(cfg, cri, shutdown).await
}

/// The cgroup driver to run with: the runtime's (`RuntimeConfig`) when it reports one, as
/// upstream's kubelet with `KubeletCgroupDriverFromCRI`; a different driver given explicitly is
/// refused. The runtime gets up to 30 s to answer; a runtime without the call leaves the
/// configured driver.
pub async fn cgroup_driver<R: CriRuntime>(
    cfg: &KubeletConfig,
    cri: &R,
) -> Result<cgroups::Driver, NodeError> {
    let mut tries = 0;
    let reported = loop {
        match cri.cgroup_driver().await {
            Ok(d) => break d,
            Err(e) if tries < 30 => {
                tries += 1;
                tracing::debug!(error = %e, "RuntimeConfig: runtime not ready yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                warn!(error = %e, "cannot ask the runtime for its cgroup driver; using cgroupDriver from the kubelet config");
                return Ok(cfg.cgroup_driver);
            }
        }
    };
    let Some(reported) = reported else {
        info!("CRI implementation should be updated to support RuntimeConfig. Falling back to using cgroupDriver from kubelet config.");
        return Ok(cfg.cgroup_driver);
    };
    let runtime = match reported {
        skiff_proto::cri::CgroupDriver::Systemd => cgroups::Driver::Systemd,
        skiff_proto::cri::CgroupDriver::Cgroupfs => cgroups::Driver::Cgroupfs,
    };
    if runtime != cfg.cgroup_driver && cfg.cgroup_driver_set {
        return Err(NodeError::Config(format!(
            "misconfiguration: kubelet cgroup driver: {:?} is different from the container runtime's cgroup driver: {:?} (RuntimeConfig); set --cgroup-driver (cgroupDriver) to {:?} or change the runtime's",
            cfg.cgroup_driver.name(),
            runtime.name(),
            runtime.name()
        )));
    }
    info!(
        cgroup_driver = runtime.name(),
        "Using cgroup driver setting received from the CRI runtime"
    );
    Ok(runtime)
}

/// Reserved amounts (kube + system) by resource.
fn reserved(cfg: &KubeletConfig) -> BTreeMap<String, i64> {
    let mut r = cfg.kube_reserved.clone();
    for (k, v) in &cfg.system_reserved {
        *r.entry(k.clone()).or_insert(0) += v;
    }
    r
}

/// Creates the QoS cgroups (`--cgroups-per-qos`) with `kubepods` sized to node allocatable, and
/// registers their manager for the pod sync. A host without cgroups (or rights) logs and goes on.
async fn setup_qos_cgroups(cfg: &KubeletConfig) {
    if !cfg.cgroups_per_qos {
        return;
    }
    let host = node::HostInfo::read();
    let res = reserved(cfg);
    let mut alloc = cgroups::NodeAllocatable {
        cpu_milli: host.cpus as i64 * 1000,
        memory: host.memory_kib as i64 * 1024,
    };
    if cfg.enforce_node_allocatable.iter().any(|e| e == "pods") {
        alloc.cpu_milli -= res.get("cpu").copied().unwrap_or(0);
        alloc.memory -= res.get("memory").copied().unwrap_or(0);
    }
    let mount = cfg.cgroup_mount.clone();
    let root = cfg.cgroup_root.clone();
    let driver = cfg.cgroup_driver;
    let done = tokio::task::spawn_blocking(move || {
        let m = cgroups::QosCgroups::register_with(&mount, &root, driver);
        m.setup(alloc)
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot set up the QoS cgroups; pods run without them"),
        Err(e) => warn!(error = %e, "QoS cgroup setup failed"),
    }
}

/// [`run`] with a given CRI runtime (tests use [`fake::FakeCri`]).
pub async fn run_with_runtime<R: CriRuntime>(
    cfg: KubeletConfig,
    cri: Arc<R>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    if cfg.node_name.is_empty() {
        return Err(NodeError::Config("node name is empty".into()));
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let client = make_client(&cfg.kube).await?;
    info!(node = %cfg.node_name, cri = %cfg.cri_endpoint.display(), "kubelet starting");

    let what = format!("CRI runtime at {} not ready", cfg.cri_endpoint.display());
    let Some(version) = retry(&what, &mut stop_rx, || cri.version()).await else {
        return Ok(());
    };
    let rt_version = runtime_version(&version);
    info!(runtime = %rt_version, "connected to the CRI runtime");
    // Unit tests share one process (and the fake runtime's name) across kubelets.
    #[cfg(not(test))]
    status::set_runtime_name(&version.runtime_name);

    // Pods (static ones above all) run before the node is registered: a kubelet can start the
    // control plane it registers with from its manifest folder, as upstream's does.
    let (reader, writer) = kube::runtime::reflector::store();
    let static_registry = static_pods::Registry::default();
    let ctx = Arc::new(SyncContext {
        node_name: cfg.node_name.clone(),
        node_ip: cfg.node_ip.to_string(),
        secondary_node_ip: cfg.secondary_node_ip.map(|ip| ip.to_string()),
        pod_log_dir: cfg.pod_log_dir.clone(),
        cluster_dns: cfg.cluster_dns.iter().map(|ip| ip.to_string()).collect(),
        cluster_domain: cfg.cluster_domain.clone(),
        cgroup_root: cfg.cgroup_root.clone(),
        root_dir: cfg.root_dir.clone(),
    });
    let mut statics = pods::StaticSource {
        rx: None,
        registry: static_registry.clone(),
    };
    if let Some(dir) = cfg.pod_manifest_path.clone() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        statics.rx = Some(rx);
        tokio::spawn(static_pods::watch_dir(
            dir,
            cfg.node_name.clone(),
            tx,
            stop_rx.clone(),
        ));
    }
    let pressure = eviction::SharedPressure::default();
    let images = gc::SharedImageGc::default();
    tokio::spawn(
        eviction::Manager {
            client: client.clone(),
            cri: cri.clone(),
            pods: reader.clone(),
            node_name: cfg.node_name.clone(),
            root_dir: cfg.root_dir.clone(),
            pod_log_dir: cfg.pod_log_dir.clone(),
            qos_root: cfg.cgroup_root.clone(),
            config: cfg.eviction.clone(),
            pressure: pressure.clone(),
            gc: cfg.gc.clone(),
            images: images.clone(),
        }
        .run(stop_rx.clone()),
    );
    tokio::spawn(gc::run_shared(
        cri.clone(),
        cfg.gc.clone(),
        images,
        stop_rx.clone(),
    ));
    let shutdown_state = shutdown::SharedShutdown::default();
    if cfg.shutdown.enabled() {
        tokio::spawn(
            shutdown::Manager {
                client: client.clone(),
                cri: cri.clone(),
                pods: reader.clone(),
                node_name: cfg.node_name.clone(),
                config: cfg.shutdown.clone(),
                state: shutdown_state.clone(),
                logind_dropin_dir: PathBuf::from(shutdown::LOGIND_DROPIN_DIR),
                state_file: cfg.root_dir.join(shutdown::STATE_FILE),
            }
            .run(stop_rx.clone()),
        );
    }
    let mut admission = admission::Admission::new(pressure.clone());
    admission.shutdown = shutdown_state.clone();
    tokio::spawn(admission.clone().watch_node(
        client.clone(),
        cfg.node_name.clone(),
        stop_rx.clone(),
    ));
    let pods_task = tokio::spawn(pods::run(
        client.clone(),
        cri.clone(),
        ctx,
        writer,
        reader.clone(),
        statics,
        Some(admission),
        stop_rx.clone(),
    ));

    let facts = node::NodeFacts {
        node_name: cfg.node_name.clone(),
        node_ip: cfg.node_ip,
        secondary_node_ip: cfg.secondary_node_ip,
        pod_cidr: cfg.pod_cidr.clone(),
        port: cfg.port,
        roles: cfg.roles.clone(),
        extra_labels: cfg.node_labels.clone(),
        host: node::HostInfo::read(),
        max_pods: cfg.max_pods,
        taints: cfg.register_with_taints.clone(),
        ephemeral_storage: node::ephemeral_storage_capacity(&cfg.root_dir),
        reserved: node::allocatable_reserve(&reserved(&cfg), &cfg.eviction),
        pressure: Some(pressure),
        shutdown: Some(shutdown_state.clone()),
    };
    let Some(node_obj) = retry(
        "cannot register the node with the API server",
        &mut stop_rx,
        || node::register(&client, &facts),
    )
    .await
    else {
        return Ok(());
    };

    // TLS and the :10250 server.
    let (cert, key) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => tls::ensure_self_signed(&cfg.root_dir.join("pki"), &cfg.node_name, cfg.node_ip)?,
    };
    let tls_cfg = tls::server_config(&cert, &key, cfg.client_ca.as_deref())?;
    let addr = SocketAddr::new(cfg.bind_address, cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;

    let server_state = Arc::new(server::ServerState {
        cri: cri.clone(),
        pods: reader.clone(),
        pod_log_dir: cfg.pod_log_dir.clone(),
        auth: Arc::new(auth::Auth::new(
            cfg.auth.clone(),
            cfg.node_name.clone(),
            Some(client.clone()),
        )),
        monitor: Some(Arc::new(monitor::Monitor::new(&cfg))),
        static_pods: static_registry.clone(),
    });
    if let Some(h) = cfg.healthz {
        tokio::spawn(server::serve_healthz(h, stop_rx.clone()));
    }
    let mut srv_stop = stop_rx.clone();
    let server_task = tokio::spawn(async move {
        server::serve_listener(listener, tls_cfg, server_state, &mut srv_stop).await;
    });

    // Node status + lease heartbeat.
    let hb_client = client.clone();
    let hb_cri = cri.clone();
    let mut hb_stop = stop_rx.clone();
    let interval = cfg.status_interval;
    let hb_facts = facts.clone();
    let heartbeat = tokio::spawn(async move {
        let node_uid = node_obj.metadata.uid.clone();
        let mut old_status = node_obj.status.clone();
        let mut health = node::RuntimeHealth {
            version: rt_version,
            problem: None,
        };
        // Unchanged statuses are reported at most this often (upstream's
        // nodeStatusReportFrequency); changes go out at once.
        let report_every = Duration::from_secs(300);
        let mut last_report = std::time::Instant::now();
        loop {
            // Bounded too: a runtime that does not answer is a problem to report, not a reason
            // to stop heartbeating.
            match tokio::time::timeout(Duration::from_secs(10), hb_cri.version()).await {
                Ok(Ok(v)) => {
                    health.version = runtime_version(&v);
                    health.problem = None;
                }
                Ok(Err(e)) => health.problem = Some(e.to_string()),
                Err(_) => {
                    health.problem =
                        Some("the container runtime did not answer Version within 10 s".into())
                }
            }
            let force = last_report.elapsed() >= report_every;
            // Each call is bounded (as upstream's heartbeat requests are): a request stuck on a
            // dead connection must not stop the heartbeat.
            let bound = std::time::Duration::from_secs(10);
            match tokio::time::timeout(
                bound,
                node::update_status(&hb_client, &hb_facts, &health, old_status.as_ref(), force),
            )
            .await
            {
                Ok(Ok(Some(n))) => {
                    old_status = n.status;
                    last_report = std::time::Instant::now();
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => warn!(error = %e, detail = ?e, "cannot update node status; retrying"),
                Err(_) => warn!("updating node status took over 10 s; retrying"),
            }
            match tokio::time::timeout(
                bound,
                node::renew_lease(&hb_client, &hb_facts.node_name, node_uid.as_deref()),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, detail = ?e, "cannot renew the node lease; retrying")
                }
                Err(_) => warn!("renewing the node lease took over 10 s; retrying"),
            }
            tokio::select! {
                _ = hb_stop.changed() => return,
                _ = tokio::time::sleep(interval) => {}
                // A node shutdown (or its cancellation) is reported at once, as upstream's
                // shutdown manager syncs the node status.
                _ = shutdown_state.changed.notified() => {}
            }
        }
    });

    let _ = pods_task.await;
    let _ = heartbeat.await;
    let _ = server_task.await;
    info!("kubelet stopped");
    Ok(())
}
