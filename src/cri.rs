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
    /// CNI config folder (first *.conflist in lexical order); containerd's and CRI-O's default.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin folder; containerd's and CRI-O's default.
    #[arg(long, default_value = "/opt/cni/bin")]
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
    /// CRI config file (TOML: `[runtimes.<handler>]` with `binary` and `root`). Read when it
    /// exists; the default needs not exist.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The systemd cgroup driver (containerd's `SystemdCgroup = true`): pod cgroup parents are
    /// systemd slices, containers go into `cri-skiff-<id>.scope` below them; pair it with
    /// `skiff kubelet --cgroup-driver=systemd` (also `systemd_cgroup = true` in --config).
    #[arg(long)]
    pub systemd_cgroup: bool,
}

/// `skiff cni-config`: installs the default pod network for a standalone `skiff cri`.
#[derive(Args, Debug, Clone)]
pub struct CniConfigArgs {
    /// Folder the conflist is written to.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub dir: PathBuf,
    /// Pod subnet (host-local ranges).
    #[arg(long, default_value = "10.88.0.0/16")]
    pub subnet: String,
    /// Bridge the pods attach to.
    #[arg(long, default_value = "cni0")]
    pub bridge: String,
    /// Also install Skiff's plugins (bridge, host-local, loopback, portmap) into this folder.
    #[arg(long)]
    pub install_plugins: Option<PathBuf>,
}

/// Writes `<dir>/10-skiff-bridge.conflist` (refusing to overwrite one) and, if asked, links the
/// plugins.
pub fn cni_config(args: CniConfigArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let path = args.dir.join(skiff_cri::DEFAULT_CONFLIST_NAME);
    if path.exists() {
        anyhow::bail!(
            "{} exists: remove it first to write the default",
            path.display()
        );
    }
    let conflist = skiff_cri::default_bridge_conflist(&args.bridge, &args.subnet);
    std::fs::write(&path, serde_json::to_vec_pretty(&conflist)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if let Some(bin) = args.install_plugins {
        skiff_cni::install(&bin, &crate::server::sibling("skiff-cni")?)
            .with_context(|| format!("installing the CNI plugins into {}", bin.display()))?;
        println!(
            "installed bridge, host-local, loopback, portmap into {}",
            bin.display()
        );
    }
    Ok(())
}

/// Where the CRI config file is looked for.
pub const DEFAULT_CONFIG: &str = "/etc/skiff/cri.toml";

/// Adds the fetch helper, the runc/crun handlers found on PATH and those of the config file.
pub fn finish_config(
    mut cfg: skiff_cri::CriConfig,
    file: &std::path::Path,
) -> Result<skiff_cri::CriConfig> {
    cfg.fetch_helper = Some(vec![
        std::env::current_exe()
            .context("locating the skiff binary")?
            .into_os_string(),
        "cri-fetch".into(),
    ]);
    cfg = cfg.with_default_handlers();
    if file.exists() || file != std::path::Path::new(DEFAULT_CONFIG) {
        cfg = cfg.load_file(file)?;
    }
    Ok(cfg)
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
        // runc's memfd-bind: no sealing re-exec per runtime call (shims/cri/src/seal.rs).
        seal_runtime: true,
        ..Default::default()
    };
    let mut cfg = finish_config(cfg, &args.config)?;
    cfg.trim_when_idle = true;
    if args.systemd_cgroup {
        cfg.systemd_cgroup = true;
    }
    skiff_cri::serve(cfg, crate::server::shutdown_signal())
        .await
        .context("CRI server")
}
