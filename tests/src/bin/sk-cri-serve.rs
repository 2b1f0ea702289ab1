//! A CRI server in a process of its own, for crash tests (kill -9 at any point, then start it
//! again on the same state): `sk-cri-serve KEY=VALUE...` with `socket`, `state`, `runtime`,
//! `runtime-root`, `monitor`, `cni-conf`, `cni-bin`, `netns`, `registry` (plain HTTP). Serves
//! until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};

fn main() -> Result<()> {
    let mut cfg = skiff_cri::CriConfig::default();
    for arg in std::env::args().skip(1) {
        let (k, v) = arg
            .split_once('=')
            .ok_or_else(|| anyhow!("expected KEY=VALUE, got {arg:?}"))?;
        let p = PathBuf::from(v);
        match k {
            "socket" => cfg.socket = p,
            "state" => cfg.state_dir = p,
            "runtime" => cfg.runtime_bin = p,
            "runtime-root" => cfg.runtime_root = p,
            "monitor" => cfg.monitor_bin = p,
            "cni-conf" => cfg.cni_conf_dir = p,
            "cni-bin" => cfg.cni_bin_dir = p,
            "netns" => cfg.netns_dir = p,
            "registry" => cfg.insecure_registries.push(v.to_string()),
            _ => bail!("unknown key {k:?}"),
        }
    }
    skiff_cri::ensure_tls_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        skiff_cri::serve(cfg, stop).await.context("CRI server")
    })
}
