//! `skiff cri`: the CRI server alone, for a kubelet (ours or upstream's) or `crictl`.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct CriArgs {
    /// Unix socket to serve runtime.v1 on.
    #[arg(long, short = 'a', default_value = "/run/skiff/cri.sock")]
    pub address: PathBuf,
    /// State folder (sandboxes, containers, images).
    #[arg(long, default_value = "/var/lib/skiff/cri")]
    pub root: PathBuf,
    /// runc-compatible runtime binary (default: skiff-runtime next to skiff).
    #[arg(long)]
    pub runtime: Option<PathBuf>,
    /// The runtime's `--root`.
    #[arg(long, default_value = "/run/skiff/runtime")]
    pub runtime_root: PathBuf,
    /// skiff-monitor binary (default: next to skiff).
    #[arg(long)]
    pub monitor: Option<PathBuf>,
    /// CNI config folder (first *.conflist in lexical order).
    #[arg(long, default_value = "/var/lib/skiff/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin folder.
    #[arg(long, default_value = "/var/lib/skiff/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where sandbox network namespaces are mounted.
    #[arg(long, default_value = "/run/skiff/netns")]
    pub netns_dir: PathBuf,
    /// Registries (host:port) pulled over plain HTTP.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Registry hosts config, containerd's layout: `<dir>/<host>/hosts.toml` (mirrors, HTTP).
    #[arg(long, default_value = "/etc/skiff/certs.d")]
    pub registry_config_dir: PathBuf,
    /// Address of the streaming server (exec, attach, port-forward URLs); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub stream_address: String,
}

pub async fn run(args: CriArgs) -> Result<()> {
    let runtime_bin = match args.runtime {
        Some(p) => p,
        None => crate::server::sibling("skiff-runtime")?,
    };
    let monitor_bin = match args.monitor {
        Some(p) => p,
        None => crate::server::sibling("skiff-monitor")?,
    };
    let cfg = skiff_cri::CriConfig {
        socket: args.address,
        state_dir: args.root,
        runtime_bin,
        runtime_root: args.runtime_root,
        monitor_bin,
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dir: args.cni_bin_dir,
        netns_dir: args.netns_dir,
        insecure_registries: args.insecure_registries,
        registry_config_dir: args.registry_config_dir,
        stream_address: args.stream_address,
        ..Default::default()
    };
    skiff_cri::serve(cfg, crate::server::shutdown_signal())
        .await
        .context("CRI server")
}
