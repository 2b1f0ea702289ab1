//! `skiff proxy`: the service proxy alone (kube-proxy's job and flag names), for a node whose
//! kubelet runs elsewhere or to remove the proxy's rules (`--cleanup`); with `--cluster-dns`
//! the same process also serves the cluster DNS, both on one pair of Service and
//! EndpointSlice caches.

use anyhow::{Context, Result};
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Kubeconfig of the proxy's API identity.
    #[arg(long, default_value = "/etc/skiff/skiff.yaml")]
    pub kubeconfig: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The pod network: traffic to a ClusterIP from outside it is masqueraded.
    #[arg(long)]
    pub cluster_cidr: Option<String>,
    /// Host addresses NodePorts answer on: CIDRs (`10.0.0.0/8,::1/128`) or `primary` (the
    /// node's addresses); default every local address, 127.0.0.1 included.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Remove the proxy's nftables table and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// The nftables table (family ip) the proxy owns.
    #[arg(long, default_value = skiff_proxy::DEFAULT_TABLE)]
    pub nftables_table: String,
    /// Node addresses for `type: LoadBalancer` when the Node object lists none.
    #[arg(long)]
    pub bind_address: Option<IpAddr>,
    /// Also serve the cluster DNS on this address (one, or an IPv4,IPv6 pair; the kubelet's
    /// flag): what `skiff server` runs beside the proxy, here in the same process.
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain of the DNS names (with `--cluster-dns`).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Resolver config whose nameservers get the names the cluster DNS does not own.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Dummy interface that holds the cluster DNS address on this host.
    #[arg(long, default_value = "skiff-dns")]
    pub cluster_dns_interface: String,
}

pub async fn run(args: ProxyArgs) -> Result<()> {
    if args.cleanup {
        skiff_proxy::cleanup(&args.nftables_table)
            .with_context(|| format!("removing nftables tables ip/ip6 {}", args.nftables_table))?;
        return Ok(());
    }
    skiff_proxy::nodeport::parse(&args.nodeport_addresses)?;
    let node = args
        .hostname_override
        .clone()
        .unwrap_or_else(crate::server::host_name);
    let mut cfg = skiff_proxy::ProxyConfig::new(&node);
    cfg.table = args.nftables_table.clone();
    cfg.cluster_cidr = args.cluster_cidr.clone();
    cfg.nodeport_addresses = args.nodeport_addresses.clone();
    cfg.node_ips = args.bind_address.into_iter().collect();
    let dns = if args.cluster_dns.is_empty() {
        None
    } else {
        let ips = crate::server::cluster_dns(&args.cluster_dns, "")?;
        let mut dcfg = skiff_dns::DnsConfig::new(ips[0], &node);
        dcfg.secondary = ips.get(1).copied();
        dcfg.cluster_domain = args.cluster_domain.clone();
        dcfg.resolv_conf = args.resolv_conf.clone();
        dcfg.interface = Some(args.cluster_dns_interface.clone());
        Some(dcfg)
    };
    let client = crate::server::kube_client(&args.kubeconfig).await?;
    // One pair of watches and caches for both (slim objects: see skiff_proxy::informers).
    let informers = skiff_proxy::informers::Informers::spawn(&client);
    let trim = tokio::spawn(crate::controller_manager::trim_when_idle(
        crate::controller_manager::REGROWTH_KIB,
    ));
    let proxy = skiff_proxy::run_with(
        client.clone(),
        cfg,
        informers.clone(),
        crate::server::shutdown_signal(),
    );
    let r = match dns {
        None => proxy.await.map_err(anyhow::Error::from),
        Some(dcfg) => {
            let dns =
                skiff_dns::run_with(client, dcfg, informers, crate::server::shutdown_signal());
            // Both stop on the signal; the DNS then takes its address off the host.
            let (p, d) = tokio::join!(proxy, dns);
            p.context("service proxy").and(d.context("cluster DNS"))
        }
    };
    trim.abort();
    r
}
