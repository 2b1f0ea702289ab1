//! `skiff controller-manager`: the controllers alone, as kube-controller-manager runs (a client
//! of any API server; `skiff server --disable-controller-manager` leaves them to it).

use anyhow::{Context, Result};
use clap::{ArgAction, Args};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ControllerManagerArgs {
    /// kubeconfig of the controllers' identity (`skiff server` writes one to
    /// `<data-dir>/server/controller.kubeconfig`).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Take the `kube-system/kube-controller-manager` Lease before running the controllers, so
    /// that only one of several controller managers acts (`--leader-elect=false`: run at once).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", require_equals = true)]
    pub leader_elect: bool,
    /// PEM CA certificate the CSR signer issues certificates with (with
    /// --cluster-signing-key-file); unset: approved CSRs stay unsigned.
    #[arg(long, requires = "cluster_signing_key_file")]
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// PEM private key of --cluster-signing-cert-file.
    #[arg(long, requires = "cluster_signing_cert_file")]
    pub cluster_signing_key_file: Option<PathBuf>,
    /// Folder the local-path provisioner (StorageClass `local-path`) makes volumes in (k3s's
    /// flag name).
    #[arg(long, default_value = "/var/lib/skiff/storage")]
    pub default_local_storage_path: PathBuf,
}

pub async fn run(args: ControllerManagerArgs) -> Result<()> {
    if let (Some(cert), Some(key)) = (
        &args.cluster_signing_cert_file,
        &args.cluster_signing_key_file,
    ) {
        // Refuse unreadable files at start rather than on the first CSR.
        for f in [cert, key] {
            std::fs::metadata(f).with_context(|| format!("reading {}", f.display()))?;
        }
        skiff_controllers::certificates::set_signing_files(cert.clone(), key.clone());
    }
    skiff_controllers::storage::set_storage_dir(args.default_local_storage_path.clone());
    skiff_controllers::leader::set_leader_elect(args.leader_elect);
    let config = crate::server::kube_config(&args.kubeconfig)
        .await
        .with_context(|| format!("connecting with {}", args.kubeconfig.display()))?;
    let trim = tokio::spawn(trim_when_idle(SWEEP_REGROWTH_KIB));
    let r = skiff_controllers::run(config, crate::server::shutdown_signal()).await;
    trim.abort();
    r?;
    tracing::info!("controller manager stopped");
    Ok(())
}

/// RSS regrowth (KiB) worth another trim in the controller manager: the garbage collector's
/// sweep every 15 s brings back ~2.5 MiB of code and ~0.6 MiB of heap (bench/README.md,
/// 2026-12-07), under [`REGROWTH_KIB`]; without a trim after it, that code stays resident
/// between sweeps. The trim costs a few milliseconds of CPU per sweep.
const SWEEP_REGROWTH_KIB: u64 = 2 << 10;

/// RSS growth (KiB) over the settled size that is worth another trim, for a process with
/// steady periodic work (a kubelet with pods, ~1% of a core).
pub(crate) const REGROWTH_KIB: u64 = 4 << 10;

/// After a burst of work, once the process has been idle (under 1% of a core) for 2 s, hands
/// freed heap and start-up code pages back to the kernel, as `skiff scheduler` does: glibc
/// keeps freed memory otherwise, so the RSS would stay at the burst's peak.
///
/// The first idle moment trims (start-up is over). After that, a trim happens only when the
/// RSS has grown by `regrowth_kib` ([`REGROWTH_KIB`] for most) over what it settled at one
/// quiet period after the last trim: a process with steady periodic work (a kubelet with pods,
/// ~1% of a core) would otherwise trim at every dip and pay for its hot code faulting back in
/// each time.
pub(crate) async fn trim_when_idle(regrowth_kib: u64) {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(2);
    let mut last = cpu_ticks().await;
    // None: trim at the next idle moment; Some(None): measure the settled RSS at the next
    // idle moment; Some(Some(kib)): the settled RSS.
    let mut settled: Option<Option<u64>> = None;
    loop {
        tokio::time::sleep(PERIOD).await;
        let now = cpu_ticks().await;
        // More than 2 ticks (1/100 s) in 2 s is over 1% of a core.
        let busy = now.saturating_sub(last) > 2;
        last = now;
        if busy {
            continue;
        }
        let rss = rss_kib().await;
        let due = match settled {
            None => true,
            Some(None) => {
                settled = Some(Some(rss));
                false
            }
            Some(Some(base)) => rss >= base + regrowth_kib,
        };
        if due {
            let _ = tokio::task::spawn_blocking(|| {
                skiff_memtrim::trim_heap();
                skiff_memtrim::trim_code_pages();
            })
            .await;
            settled = Some(None);
            // The trim's own CPU time is not work.
            last = cpu_ticks().await;
        }
    }
}

/// Resident set size of this process in KiB (`/proc/self/statm`, second field, in pages).
async fn rss_kib() -> u64 {
    let statm = tokio::fs::read_to_string("/proc/self/statm")
        .await
        .unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// User + system CPU time of this process so far, in clock ticks (`/proc/self/stat`).
async fn cpu_ticks() -> u64 {
    let stat = tokio::fs::read_to_string("/proc/self/stat")
        .await
        .unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses: utime and stime
    // are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}
