//! `skiff server`: the whole single-node cluster in one process.

use anyhow::{Context, Result};
use clap::Args;
use skiff_apiserver::{pki::Pki, ApiServerConfig};
use skiff_store::{EmbeddedStore, Store};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Folder for all state (store, PKI, CRI, kubelet).
    #[arg(long, short = 'd', default_value = "/var/lib/skiff")]
    pub data_dir: PathBuf,
    /// Port of the API server.
    #[arg(long, default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Address of this node as the cluster sees it (default: the host's default-route
    /// address); an IPv4,IPv6 pair for a dual-stack node (kubelet's flag).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Name of this node (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where the admin kubeconfig is written.
    #[arg(long, default_value = "/etc/skiff/skiff.yaml")]
    pub write_kubeconfig: PathBuf,
    /// Pod network; this node gets its first /24. A comma-separated IPv4,IPv6 pair makes the
    /// cluster dual-stack (the node also gets the first /64 of the IPv6 range).
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Host addresses NodePorts answer on (kube-proxy's flag): CIDRs or `primary`; default
    /// every local address.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Service network; a comma-separated IPv4,IPv6 pair for dual-stack Services
    /// (kube-apiserver's name `--service-cluster-ip-range` works too).
    #[arg(
        long,
        visible_alias = "service-cluster-ip-range",
        default_value = "10.43.0.0/16"
    )]
    pub service_cidr: String,
    /// Port range reserved for NodePort Services (kube-apiserver's flag).
    #[arg(long, default_value = "30000-32767")]
    pub service_node_port_range: String,
    /// Audit policy (an audit.k8s.io/v1 Policy, YAML or JSON), as kube-apiserver's flag.
    #[arg(long)]
    pub audit_policy_file: Option<PathBuf>,
    /// Where audit events go as JSON lines (`-`: standard output); needs --audit-policy-file.
    #[arg(long)]
    pub audit_log_path: Option<PathBuf>,
    /// Rotate the audit log when it reaches this many MiB (0: never).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxsize: u64,
    /// Rotated audit logs to keep (0: all).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxbackup: usize,
    /// Days to keep rotated audit logs (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub audit_log_maxage: u64,
    /// Cluster DNS address(es) handed to pods: one, or an IPv4,IPv6 pair on a dual-stack
    /// cluster (default: the tenth address of each `--service-cidr` range, 10.43.0.10).
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// A KubeSchedulerConfiguration file (kubescheduler.config.k8s.io/v1): scheduler profiles,
    /// plugin weights, back-off.
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Do not run the scheduler (run `skiff scheduler` or another one instead).
    #[arg(long)]
    pub disable_scheduler: bool,
    /// Do not run the controllers (run `skiff controller-manager` or another one instead; k3s's
    /// flag).
    #[arg(long)]
    pub disable_controller_manager: bool,
    /// Run only the control plane (no kubelet, no CRI server on this host).
    #[arg(long)]
    pub disable_agent: bool,
    /// etcd endpoints for HA (e.g. http://127.0.0.1:2379); the embedded store when unset.
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
    /// Runtime folder: CRI socket, sandbox netns mounts, OCI runtime state.
    #[arg(long, default_value = "/run/skiff")]
    pub run_dir: PathBuf,
    /// Root of the pods' log folders.
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_log_dir: PathBuf,
    /// Use this CRI endpoint (unix socket path, e.g. containerd's) instead of the embedded CRI server.
    #[arg(long)]
    pub container_runtime_endpoint: Option<PathBuf>,
    /// Config file of the embedded CRI server (TOML: `[runtimes.<handler>]` for RuntimeClass
    /// handlers). Read when it exists.
    #[arg(long, default_value = crate::cri::DEFAULT_CONFIG)]
    pub cri_config: PathBuf,
    /// Port of the kubelet's HTTPS server.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Folder of static pod manifests (kubelet's `--pod-manifest-path`).
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// The kubelet's image and dead-container GC flags (same names as `skiff kubelet`).
    #[command(flatten)]
    pub gc: crate::gc_flags::GcArgs,
    /// Linux bridge the pod network uses (several Skiff nodes on one host need one each).
    #[arg(long, default_value = "cni0")]
    pub cni_bridge: String,
    /// Root cgroup of pods (kubelet's flag): pods go under `<cgroup-root>/kubepods`.
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// The service proxy's nftables table (family ip); several Skiff nodes on one host need
    /// one each.
    #[arg(long, default_value = skiff_proxy::DEFAULT_TABLE)]
    pub nftables_table: String,
    /// Cluster domain (kubelet's flag).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Resolver config whose nameservers get the names cluster DNS does not own (kubelet's flag).
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Dummy interface that holds the cluster DNS address on this host.
    #[arg(long, default_value = "skiff-dns")]
    pub cluster_dns_interface: String,
    /// Do not serve cluster DNS.
    #[arg(long)]
    pub disable_dns: bool,
    /// Do not run the service proxy (k3s's flag).
    #[arg(long)]
    pub disable_kube_proxy: bool,
    /// Registries (host:port) pulled over plain HTTP. Loopback registries are always allowed.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// The kubelet's QoS cgroup, node allocatable and eviction flags (upstream's names).
    #[command(flatten)]
    pub node_resources: crate::kubelet::NodeResourceArgs,
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "skiff-node".into())
}

/// The source address of the default route, read from the kernel's routing decision for an
/// unconnected UDP socket (no packet is sent).
fn default_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

pub async fn run(args: ServerArgs) -> Result<()> {
    if let Some(ep) = &args.datastore_endpoint {
        anyhow::bail!(
            "--datastore-endpoint {ep}: the etcd backend is not available yet; run without it to use the embedded store"
        );
    }
    if !args.disable_agent && args.container_runtime_endpoint.is_none() {
        // Refuse a bad CRI config file before anything starts (the CRI starts last).
        crate::cri::finish_config(skiff_cri::CriConfig::default(), &args.cri_config)?;
    }
    let sched_cfg = match &args.scheduler_config {
        Some(p) => skiff_scheduler::config::SchedulerConfig::from_file(p)?,
        None => Default::default(),
    };
    let node_name = args.node_name.clone().unwrap_or_else(host_name);
    let node_ips = match &args.node_ip {
        Some(s) => crate::kubelet::parse_node_ips(s)?,
        None => vec![default_ip()],
    };
    let node_ip = node_ips[0];
    let advertise = SocketAddr::new(node_ip, args.https_listen_port);
    let mut sans = vec![
        "kubernetes".to_string(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "localhost".into(),
        "127.0.0.1".into(),
        node_name.clone(),
    ];
    sans.extend(node_ips.iter().map(|ip| ip.to_string()));
    sans.dedup();
    let mut kubelet_sans = vec![node_name.clone(), "localhost".into(), "127.0.0.1".into()];
    kubelet_sans.extend(node_ips.iter().map(|ip| ip.to_string()));
    kubelet_sans.dedup();
    let pki = Pki::ensure(&args.data_dir.join("tls"), &node_name, &sans, &kubelet_sans)
        .context("setting up the cluster PKI")?;
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&args.data_dir.join("db")).context("opening the embedded store")?,
    );
    let server_url = format!("https://127.0.0.1:{}", args.https_listen_port);
    pki.write_kubeconfig(&args.write_kubeconfig, &server_url, &pki.admin)
        .context("writing the admin kubeconfig")?;
    let kubelet_kubeconfig = args.data_dir.join("agent/kubelet.kubeconfig");
    pki.write_kubeconfig(&kubelet_kubeconfig, &server_url, &pki.kubelet_client)
        .context("writing the kubelet kubeconfig")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut api_cfg = ApiServerConfig::new(
        SocketAddr::new(args.bind_address, args.https_listen_port),
        advertise,
        pki.clone(),
    );
    api_cfg.service_cidr = args.service_cidr.clone();
    api_cfg.node_port_range = parse_port_range(&args.service_node_port_range)?;
    // As upstream: the log backend runs when both a policy and a log path are given.
    if let (Some(policy), Some(log)) = (&args.audit_policy_file, &args.audit_log_path) {
        let audit = skiff_apiserver::audit::AuditConfig {
            policy_file: policy.clone(),
            log_path: log.clone(),
            max_size_mib: args.audit_log_maxsize,
            max_backup: args.audit_log_maxbackup,
            max_age_days: args.audit_log_maxage,
        };
        // Checked here so that a bad policy stops the start with its error.
        skiff_apiserver::audit::Auditor::open(&audit)
            .map_err(|e| anyhow::anyhow!("{e} (fix the file or drop --audit-policy-file)"))?;
        api_cfg.audit = Some(audit);
    }
    let api = tokio::spawn(skiff_apiserver::serve(api_cfg, store.clone(), stopped()));
    wait_healthy(args.https_listen_port).await;
    println!(
        "skiff server is up. Point kubectl at it with:\n  export KUBECONFIG={}",
        args.write_kubeconfig.display()
    );
    crate::notify::ready();

    // Each component has its own identity (upstream's user names), never the admin's.
    let identity = |name: &str, pair: &skiff_apiserver::pki::CertPair| -> Result<PathBuf> {
        let path = args.data_dir.join(format!("server/{name}.kubeconfig"));
        pki.write_kubeconfig(&path, &server_url, pair)
            .with_context(|| format!("writing the {name} kubeconfig"))?;
        Ok(path)
    };
    let sched_client = kube_client(&identity("scheduler", &pki.scheduler)?).await?;
    let ctl_config = kube_config(&identity("controller", &pki.controller_manager)?).await?;
    let proxy_kubeconfig = identity("kube-proxy", &pki.kube_proxy)?;
    let dns_kubeconfig = identity("dns", &pki.dns)?;
    let sched = if args.disable_scheduler {
        tokio::spawn(async {
            std::future::pending::<Result<(), skiff_scheduler::SchedulerError>>().await
        })
    } else {
        tokio::spawn(skiff_scheduler::run_with(
            sched_client,
            sched_cfg,
            stopped(),
        ))
    };
    let controllers = if args.disable_controller_manager {
        tokio::spawn(async {
            std::future::pending::<Result<(), skiff_controllers::ControllerError>>().await
        })
    } else {
        skiff_controllers::storage::set_data_dir(args.data_dir.clone());
        skiff_controllers::certificates::set_ca_dir(args.data_dir.join("tls"));
        // The embedded store serves one server, so there is no other controller manager to
        // elect against: like k3s on its single-server datastore (kube-controller-manager
        // `--leader-elect=false`), no Lease is renewed every 2 s. Those renewals were an idle
        // cluster's main disk writes (~144 KiB/min of fdatasync'd pages). A separate `skiff
        // controller-manager` (with `--disable-controller-manager` here) still elects.
        skiff_controllers::leader::set_leader_elect(false);
        tokio::spawn(skiff_controllers::run(ctl_config, stopped()))
    };

    let agent = if args.disable_agent {
        None
    } else {
        Some(start_agent(
            &args,
            &pki,
            &node_name,
            &node_ips,
            Kubeconfigs {
                kubelet: &kubelet_kubeconfig,
                proxy: &proxy_kubeconfig,
                dns: &dns_kubeconfig,
            },
            &stopped,
        )?)
    };
    let (cri, kubelet, dns) = match agent {
        Some((c, k, d)) => (c, Some(k), d),
        None => (None, None, None),
    };
    let cri = async {
        match cri {
            Some(h) => h.await,
            None => std::future::pending().await,
        }
    };
    let kubelet = async {
        match kubelet {
            Some(h) => h.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = api => { r?.context("API server")?; }
        r = sched => { r?.context("scheduler")?; }
        r = controllers => { r?.context("controllers")?; }
        r = cri => { r?.context("CRI server")?; }
        r = kubelet => { r?.context("kubelet")?; }
        _ = shutdown_signal() => { tracing::info!("shutting down"); }
    }
    let _ = stop_tx.send(true);
    // A clean stop takes the cluster DNS address off the host (its dummy link, or lo): give
    // the DNS task the few milliseconds it needs before the runtime goes away.
    if let Some(dns) = dns {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), dns).await;
    }
    Ok(())
}

type Task<E> = tokio::task::JoinHandle<Result<(), E>>;

/// The agent's tasks `run` waits on: the CRI server (unless an outside one is used), the
/// kubelet, and the cluster DNS (awaited after a stop, so that it can clean up).
type AgentTasks = (
    Option<Task<skiff_cri::CriError>>,
    Task<skiff_node::NodeError>,
    Option<tokio::task::JoinHandle<()>>,
);

/// This node's pod ranges: the first /24 of the cluster CIDR, and the first /64 of its IPv6
/// range when it is a dual-stack pair (`10.42.0.0/16,fd00:42::/56`), comma-separated.
fn node_pod_cidr(cluster_cidr: &str) -> Result<String> {
    let mut out: Vec<String> = vec![];
    for part in cluster_cidr.split(',') {
        let base = part.trim().split('/').next().unwrap_or_default();
        let ip: IpAddr = base.parse().with_context(|| {
            format!("--cluster-cidr {cluster_cidr}: expected a CIDR such as 10.42.0.0/16 or an IPv4,IPv6 pair")
        })?;
        out.push(match ip {
            IpAddr::V4(a) => format!("{a}/24"),
            IpAddr::V6(a) => format!("{a}/64"),
        });
    }
    let v6 = out.iter().filter(|c| c.contains(':')).count();
    anyhow::ensure!(
        out.len() == 1 || (out.len() == 2 && v6 == 1),
        "--cluster-cidr {cluster_cidr}: expected one CIDR or a dual-stack pair (one IPv4, one IPv6)"
    );
    Ok(out.join(","))
}

/// A binary installed next to `skiff` (`skiff-runtime`, `skiff-monitor`, `skiff-cni`).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the skiff binary")?;
    let p = exe.with_file_name(name);
    anyhow::ensure!(
        p.exists(),
        "{} not found next to {}: build all binaries with `cargo build --release --bins`",
        name,
        exe.display()
    );
    Ok(p)
}

/// Writes the node's CNI network (a bridge, `cni0` by default, + host-local) and installs the
/// plugins. The network is `skiff` on `cni0`, else `skiff-<bridge>` (host-local keeps its
/// reservations per network name).
fn setup_cni(
    agent_dir: &std::path::Path,
    pod_cidr: &str,
    bridge: &str,
) -> Result<(PathBuf, PathBuf)> {
    let conf_dir = agent_dir.join("etc/cni/net.d");
    let bin_dir = agent_dir.join("cni/bin");
    std::fs::create_dir_all(&conf_dir)?;
    skiff_cni::install(&bin_dir, &sibling("skiff-cni")?)
        .with_context(|| format!("installing CNI plugins into {}", bin_dir.display()))?;
    let network = if bridge == "cni0" {
        "skiff".to_string()
    } else {
        format!("skiff-{bridge}")
    };
    // One host-local range per family (a dual-stack node gets an IPv4 and an IPv6 address
    // per pod), a default route for each.
    let ranges: Vec<serde_json::Value> = pod_cidr
        .split(',')
        .map(|c| serde_json::json!([{"subnet": c}]))
        .collect();
    let mut routes = vec![];
    for c in pod_cidr.split(',') {
        routes.push(if c.contains(':') {
            serde_json::json!({"dst": "::/0"})
        } else {
            serde_json::json!({"dst": "0.0.0.0/0"})
        });
    }
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": ranges, "routes": routes}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        conf_dir.join("10-skiff.conflist"),
        serde_json::to_vec_pretty(&conflist)?,
    )?;
    Ok((conf_dir, bin_dir))
}

/// Starts the node side: the embedded CRI server (unless an external endpoint is given) and
/// the kubelet.
/// The node components' identities (kubeconfig files).
struct Kubeconfigs<'a> {
    kubelet: &'a std::path::Path,
    proxy: &'a std::path::Path,
    dns: &'a std::path::Path,
}

fn start_agent<F, Fut>(
    args: &ServerArgs,
    pki: &Pki,
    node_name: &str,
    node_ips: &[IpAddr],
    kubeconfigs: Kubeconfigs<'_>,
    stopped: &F,
) -> Result<AgentTasks>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let agent_dir = args.data_dir.join("agent");
    let pod_cidr = node_pod_cidr(&args.cluster_cidr)?;
    let (cri_task, endpoint) = match &args.container_runtime_endpoint {
        Some(ep) => (None, ep.clone()),
        None => {
            let (cni_conf_dir, cni_bin_dir) = setup_cni(&agent_dir, &pod_cidr, &args.cni_bridge)?;
            let mut insecure = vec!["127.0.0.1:5000".to_string(), "localhost:5000".to_string()];
            insecure.extend(args.insecure_registries.iter().cloned());
            let cfg = skiff_cri::CriConfig {
                socket: args.run_dir.join("cri.sock"),
                state_dir: args.data_dir.join("cri"),
                runtime_bin: sibling("skiff-runtime")?,
                runtime_root: args.run_dir.join("runtime"),
                monitor_bin: sibling("skiff-monitor")?,
                cni_conf_dir,
                cni_bin_dir,
                netns_dir: args.run_dir.join("netns"),
                insecure_registries: insecure,
                // runc's memfd-bind: no sealing re-exec per runtime call (shims/cri/src/seal.rs).
                seal_runtime: true,
                ..Default::default()
            };
            let cfg = crate::cri::finish_config(cfg, &args.cri_config)?;
            let socket = cfg.socket.clone();
            (Some(tokio::spawn(skiff_cri::serve(cfg, stopped()))), socket)
        }
    };
    let mut kcfg = skiff_node::KubeletConfig::new(
        node_name,
        skiff_node::KubeSource::Kubeconfig(kubeconfigs.kubelet.to_path_buf()),
        node_ips[0],
    );
    kcfg.secondary_node_ip = node_ips.get(1).copied();
    kcfg.cri_endpoint = endpoint;
    kcfg.pod_cidr = pod_cidr;
    kcfg.port = args.kubelet_port;
    kcfg.root_dir = agent_dir.join("kubelet");
    kcfg.pod_log_dir = args.pod_log_dir.clone();
    kcfg.tls_cert = Some(pki.kubelet_serving.cert.clone());
    kcfg.tls_key = Some(pki.kubelet_serving.key.clone());
    kcfg.client_ca = Some(pki.ca.cert.clone());
    // :10250 as a secured upstream kubelet: client certificates or TokenReviewed bearer tokens,
    // SubjectAccessReviews for every request, no anonymous access.
    kcfg.auth = skiff_node::auth::AuthSettings::secure();
    kcfg.pod_manifest_path = args.pod_manifest_path.clone();
    crate::gc_flags::apply(&args.gc, &Default::default(), &mut kcfg.gc)?;
    let cluster_dns = cluster_dns(&args.cluster_dns, &args.service_cidr)?;
    kcfg.cluster_dns = cluster_dns.clone();
    kcfg.roles = vec!["control-plane".into(), "master".into()];
    kcfg.cgroup_root = format!("{}/kubepods", args.cgroup_root.trim_end_matches('/'));
    crate::kubelet::apply_resource_flags(&mut kcfg, &args.node_resources)?;
    let kubelet = tokio::spawn(skiff_node::run(kcfg, stopped()));
    if !args.disable_kube_proxy {
        skiff_proxy::nodeport::parse(&args.nodeport_addresses)?;
        let mut pcfg = skiff_proxy::ProxyConfig::new(node_name);
        pcfg.table = args.nftables_table.clone();
        pcfg.cluster_cidr = Some(args.cluster_cidr.clone());
        pcfg.nodeport_addresses = args.nodeport_addresses.clone();
        pcfg.node_ips = node_ips.to_vec();
        // system:kube-proxy (upstream's system:node-proxier, plus skiff:service-lb for the
        // LoadBalancer statuses it writes).
        let kubeconfig = kubeconfigs.proxy.to_path_buf();
        let stop = stopped();
        tokio::spawn(async move {
            let run = async {
                let client = kube_client(&kubeconfig).await?;
                skiff_proxy::run(client, pcfg, stop).await?;
                anyhow::Ok(())
            };
            if let Err(e) = run.await {
                tracing::error!(error = %e, "service proxy stopped");
            }
        });
    }
    let mut dns_task = None;
    if !args.disable_dns {
        let mut dcfg = skiff_dns::DnsConfig::new(cluster_dns[0], node_name);
        dcfg.secondary = cluster_dns.get(1).copied();
        dcfg.cluster_domain = args.cluster_domain.clone();
        dcfg.resolv_conf = args.resolv_conf.clone();
        dcfg.interface = Some(args.cluster_dns_interface.clone());
        let kubeconfig = kubeconfigs.dns.to_path_buf();
        let stop = stopped();
        dns_task = Some(tokio::spawn(async move {
            let run = async {
                let client = kube_client(&kubeconfig).await?;
                skiff_dns::run(client, dcfg, stop).await?;
                anyhow::Ok(())
            };
            if let Err(e) = run.await {
                tracing::error!(error = %e, "cluster DNS stopped");
            }
        }));
    }
    Ok((cri_task, kubelet, dns_task))
}

/// `--cluster-dns`: the given address(es) (one, or one per family), else the tenth address of
/// each service range (k3s's default: `10.43.0.10`; a dual-stack `--service-cidr` gives the
/// IPv6 range's too).
pub(crate) fn cluster_dns(given: &[IpAddr], service_cidr: &str) -> Result<Vec<IpAddr>> {
    if !given.is_empty() {
        anyhow::ensure!(
            given.len() == 1 || (given.len() == 2 && given[0].is_ipv4() != given[1].is_ipv4()),
            "--cluster-dns: expected one address or an IPv4,IPv6 pair"
        );
        return Ok(given.to_vec());
    }
    service_cidr
        .split(',')
        .map(|c| {
            let base = c.trim().split('/').next().unwrap_or_default();
            let ip: IpAddr = base
                .parse()
                .with_context(|| format!("--service-cidr {service_cidr}: not a CIDR"))?;
            Ok(match ip {
                IpAddr::V4(a) => IpAddr::from((u32::from(a) + 10).to_be_bytes()),
                IpAddr::V6(a) => IpAddr::from((u128::from(a) + 10).to_be_bytes()),
            })
        })
        .collect()
}

async fn wait_healthy(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A client for a component's identity in `kubeconfig`: every request and watch on one HTTP/2
/// connection (`skiff_controllers::transport`), not one HTTP/1 connection per request in flight.
pub async fn kube_client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let config = kube_config(kubeconfig).await?;
    Ok(skiff_controllers::transport::Connection::new(&config)?.client(&config)?)
}

/// The client configuration in `kubeconfig`, with the read timeout every in-process client uses.
pub async fn kube_config(kubeconfig: &std::path::Path) -> Result<kube::Config> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    // kube's default is no read timeout: a connection that died silently would hold a watch (or
    // a request) forever. Watches get a bookmark at least every minute, so 90 s of silence
    // means the connection is gone; the watchers then start again from their last version.
    cfg.read_timeout = Some(std::time::Duration::from_secs(90));
    Ok(cfg)
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `--service-node-port-range` as `low-high`.
fn parse_port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s.split_once('-').with_context(|| {
        format!("--service-node-port-range {s:?}: expected LOW-HIGH, e.g. 30000-32767")
    })?;
    let (a, b): (u16, u16) = (
        a.trim()
            .parse()
            .with_context(|| format!("--service-node-port-range {s:?}"))?,
        b.trim()
            .parse()
            .with_context(|| format!("--service-node-port-range {s:?}"))?,
    );
    if a == 0 || a > b {
        anyhow::bail!("--service-node-port-range {s:?}: LOW must be between 1 and HIGH");
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_dns_defaults_to_the_tenth_address_of_each_range() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            cluster_dns(&[], "10.43.0.0/16").unwrap(),
            vec![ip("10.43.0.10")]
        );
        assert_eq!(
            cluster_dns(&[], "10.43.0.0/16,fd00:43::/112").unwrap(),
            vec![ip("10.43.0.10"), ip("fd00:43::a")]
        );
        let given = [ip("10.96.0.10"), ip("fd00:96::a")];
        assert_eq!(cluster_dns(&given, "10.43.0.0/16").unwrap(), given);
        assert!(cluster_dns(&[ip("10.0.0.1"), ip("10.0.0.2")], "10.43.0.0/16").is_err());
    }
}
