//! `skiff scheduler`: the scheduler alone, as kube-scheduler runs (a client of any API server).

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// kubeconfig of the scheduler's identity.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// A KubeSchedulerConfiguration file (kubescheduler.config.k8s.io/v1).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub async fn run(args: SchedulerArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => skiff_scheduler::config::SchedulerConfig::from_file(p)?,
        None => Default::default(),
    };
    let client = crate::server::kube_client(&args.kubeconfig)
        .await
        .with_context(|| format!("connecting with {}", args.kubeconfig.display()))?;
    skiff_scheduler::run_with(client, cfg, crate::server::shutdown_signal()).await?;
    Ok(())
}
