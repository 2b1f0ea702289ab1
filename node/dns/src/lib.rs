//! Skiff's cluster DNS, served by the node agent (the job CoreDNS's `kubernetes` plugin does):
//! names of Services and pods under the cluster domain from Services and EndpointSlices watched
//! through the API, everything else forwarded to the node's resolvers (`resolv.conf`), with a
//! cache (positive and negative). DNS messages are parsed and written with `hickory-proto`.
//!
//! Placement (see docs/services.md): the agent puts the cluster DNS address on a dummy
//! interface of the host and listens there on UDP and TCP port 53, so pods reach it through
//! their default route without DNAT (like NodeLocal DNSCache); the `kube-dns` Service in
//! `kube-system` has that address as ClusterIP and as its only endpoint.

pub mod index;
pub mod link;
mod server;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Patch, PatchParams};
use kube::Api;
pub use skiff_proxy::informers::Informers;

pub use server::{handle_query, Server};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster DNS address {0}: {1}")]
    Link(IpAddr, String),
    #[error("the informers stopped")]
    Stopped,
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The cluster DNS address (the kube-dns Service's ClusterIP).
    pub address: IpAddr,
    /// The other family's address on a dual-stack cluster (`--cluster-dns=<v4>,<v6>`): the
    /// kube-dns Service's second ClusterIP, served alike.
    pub secondary: Option<IpAddr>,
    pub port: u16,
    pub cluster_domain: String,
    /// The node's resolver config; its nameservers get every other name.
    pub resolv_conf: PathBuf,
    /// The dummy interface the address is put on (`None`: it is there already).
    pub interface: Option<String>,
    /// Node name, for the kube-dns endpoint.
    pub node_name: String,
    /// Create the kube-dns Service and its Endpoints.
    pub manage_service: bool,
    /// UDP worker threads per address, all receiving on its one socket (default:
    /// [`default_udp_workers`]).
    pub udp_workers: usize,
}

/// One UDP worker per four CPUs (at least one, at most four). One worker answers 300,000+
/// queries/s with its batches; a second one on a small node costs more in wake-ups and
/// smaller batches than it adds (2-core VM: 2.8 us of server CPU per query with one worker,
/// 4.5 us with two; bench/README.md, 2026-12-07), and the DNS shares the node with its pods.
pub fn default_udp_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .div_ceil(4)
        .clamp(1, 4)
}

impl DnsConfig {
    pub fn new(address: IpAddr, node_name: &str) -> Self {
        DnsConfig {
            address,
            secondary: None,
            port: 53,
            cluster_domain: "cluster.local".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            interface: Some("skiff-dns".into()),
            node_name: node_name.into(),
            manage_service: true,
            udp_workers: default_udp_workers(),
        }
    }
}

impl DnsConfig {
    /// The addresses served: the primary one, then the secondary.
    pub fn addresses(&self) -> Vec<IpAddr> {
        std::iter::once(self.address)
            .chain(self.secondary)
            .collect()
    }
}

/// Nameservers of a resolv.conf (port 53), skipping `skip` (the cluster DNS itself).
pub fn upstreams(resolv_conf: &std::path::Path, skip: IpAddr) -> Vec<SocketAddr> {
    std::fs::read_to_string(resolv_conf)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .filter(|ip| *ip != skip)
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Creates or updates `kube-system/kube-dns` (ClusterIP = the DNS address, no selector) and
/// its Endpoints pointing at the address on this node, labelled as upstream so that
/// `kubectl cluster-info` lists it.
async fn ensure_service(client: &kube::Client, cfg: &DnsConfig) -> Result<(), DnsError> {
    let ssa = PatchParams::apply("skiff-dns").force();
    let svc: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let labels = serde_json::json!({
        "k8s-app": "kube-dns",
        "kubernetes.io/cluster-service": "true",
        "kubernetes.io/name": "CoreDNS",
    });
    let ports = serde_json::json!([
        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
    ]);
    let ips: Vec<String> = cfg.addresses().iter().map(|ip| ip.to_string()).collect();
    let mut spec = serde_json::json!({"clusterIP": ips[0], "ports": ports});
    if ips.len() == 2 {
        // Dual-stack: one ClusterIP per family, as k3s's CoreDNS Service
        // (ipFamilyPolicy PreferDualStack with the --cluster-dns pair).
        let fam = |ip: &IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        spec["clusterIPs"] = serde_json::json!(ips);
        spec["ipFamilyPolicy"] = serde_json::json!("PreferDualStack");
        spec["ipFamilies"] = serde_json::json!(cfg.addresses().iter().map(fam).collect::<Vec<_>>());
    }
    let s = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
        "spec": spec,
    });
    svc.patch("kube-dns", &ssa, &Patch::Apply(&s)).await?;
    let ep: Api<Endpoints> = Api::namespaced(client.clone(), "kube-system");
    let e = serde_json::json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
        "subsets": [{
            "addresses": ips.iter().map(|ip| serde_json::json!({"ip": ip, "nodeName": cfg.node_name})).collect::<Vec<_>>(),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        }],
    });
    ep.patch("kube-dns", &ssa, &Patch::Apply(&e)).await?;
    Ok(())
}

/// Serves cluster DNS until `stop`, with caches of its own.
pub async fn run(
    client: kube::Client,
    cfg: DnsConfig,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DnsError> {
    let informers = Informers::spawn(&client);
    run_with(client, cfg, informers, stop).await
}

/// Serves cluster DNS until `stop` from Service and EndpointSlice caches it may share (with
/// the service proxy of the same process: `skiff proxy --cluster-dns`).
pub async fn run_with(
    client: kube::Client,
    cfg: DnsConfig,
    informers: Informers,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), DnsError> {
    if let Some(ifname) = &cfg.interface {
        for ip in cfg.addresses() {
            link::ensure_address(ifname, ip)
                .await
                .map_err(|e| DnsError::Link(ip, e))?;
        }
    }
    let mut changed = informers.subscribe();
    let (svc_r, sl_r) = (informers.services.clone(), informers.slices.clone());
    let upstream: Vec<SocketAddr> = upstreams(&cfg.resolv_conf, cfg.address)
        .into_iter()
        .filter(|u| Some(u.ip()) != cfg.secondary)
        .collect();
    let server =
        Arc::new(Server::new(&cfg.cluster_domain, upstream).with_udp_workers(cfg.udp_workers));
    let mut tasks = Vec::new();
    for ip in cfg.addresses() {
        let addr = SocketAddr::new(ip, cfg.port);
        let (udp, tcp) = server.clone().listen(addr).await?;
        tracing::info!(%addr, domain = %cfg.cluster_domain, "cluster DNS listening");
        tasks.extend([udp, tcp]);
    }
    if cfg.manage_service {
        let client = client.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            loop {
                match ensure_service(&client, &cfg).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write the kube-dns Service; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        });
    }
    let rebuild = async {
        let _ = informers.wait_until_ready().await;
        loop {
            let idx = index::Index::build(&cfg.cluster_domain, &svc_r.state(), &sl_r.state());
            server.set_index(idx);
            if changed.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = rebuild => {}
    }
    for t in tasks {
        t.abort();
    }
    // A clean stop leaves nothing on the host: the dummy link goes (with its addresses), or the
    // addresses leave lo where the kernel has no dummy links. (After a crash they stay, and
    // the next start reuses them.)
    if let Some(ifname) = cfg.interface.clone() {
        let addrs = cfg.addresses();
        let removed = tokio::task::spawn_blocking(move || {
            addrs
                .into_iter()
                .map(|ip| link::remove(&ifname, ip).map_err(|e| DnsError::Link(ip, e)))
                .collect::<Result<Vec<()>, DnsError>>()
        })
        .await;
        match removed {
            Ok(Ok(_)) => tracing::info!("cluster DNS stopped; its address is removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove the cluster DNS address"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the cluster DNS address"),
        }
    }
    Ok(())
}
