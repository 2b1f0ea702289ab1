//! `skiff proxy`: the service proxy alone (kube-proxy's job and flag names), for a node whose
//! kubelet runs elsewhere or to remove the proxy's rules (`--cleanup`).

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
    let client = crate::server::kube_client(&args.kubeconfig).await?;
    tokio::select! {
        r = skiff_proxy::run(client, cfg, crate::server::shutdown_signal()) => r?,
    }
    Ok(())
}
