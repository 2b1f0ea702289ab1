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
    /// Address of this node as the cluster sees it (default: the host's default-route address).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Name of this node (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where the admin kubeconfig is written.
    #[arg(long, default_value = "/etc/skiff/skiff.yaml")]
    pub write_kubeconfig: PathBuf,
    /// Pod network; this node gets its first /24.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Service network.
    #[arg(long, default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// Cluster DNS address handed to pods.
    #[arg(long, default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// Run only the control plane (no kubelet, no CRI server on this host).
    #[arg(long)]
    pub disable_agent: bool,
    /// etcd endpoints for HA (e.g. http://127.0.0.1:2379); the embedded store when unset.
    #[arg(long)]
    pub datastore_endpoint: Option<String>,
}

fn host_name() -> String {
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
    let node_name = args.node_name.clone().unwrap_or_else(host_name);
    let node_ip = args.node_ip.unwrap_or_else(default_ip);
    let advertise = SocketAddr::new(node_ip, args.https_listen_port);
    let mut sans = vec![
        "kubernetes".to_string(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "localhost".into(),
        "127.0.0.1".into(),
        node_name.clone(),
        node_ip.to_string(),
    ];
    sans.dedup();
    let kubelet_sans = vec![
        node_name.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
        node_ip.to_string(),
    ];
    let pki = Pki::ensure(&args.data_dir.join("tls"), &node_name, &sans, &kubelet_sans)
        .context("setting up the cluster PKI")?;
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&args.data_dir.join("db/state.redb"))
            .context("opening the embedded store")?,
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
    let api_cfg = ApiServerConfig {
        listen: SocketAddr::new(args.bind_address, args.https_listen_port),
        advertise,
        pki: pki.clone(),
    };
    let api = tokio::spawn(skiff_apiserver::serve(api_cfg, store.clone(), stopped()));
    wait_healthy(args.https_listen_port).await;
    println!(
        "skiff server is up. Point kubectl at it with:\n  export KUBECONFIG={}",
        args.write_kubeconfig.display()
    );

    let admin_client = kube_client(&args.write_kubeconfig).await?;
    let sched = tokio::spawn(skiff_scheduler::run(admin_client, stopped()));

    tokio::select! {
        r = api => { r?.context("API server")?; }
        r = sched => { r?.context("scheduler")?; }
        _ = shutdown_signal() => { tracing::info!("shutting down"); }
    }
    let _ = stop_tx.send(true);
    Ok(())
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

pub async fn kube_client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
