//! `skiff`: one binary for the whole distribution (like k3s). Thin: parse flags, set up logging,
//! call the libraries, map errors once.

mod controller_manager;
mod cri;
mod gc_flags;
mod kubelet;
mod notify;
mod proxy;
mod scheduler;
mod server;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: a Kubernetes distribution in one binary"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `skiff_cri=debug,info`.
    #[arg(long, global = true, env = "SKIFF_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a single-node cluster: API server on the embedded store, scheduler, and the node
    /// (kubelet + CRI server + CNI).
    Server(Box<server::ServerArgs>),
    /// Run only the scheduler against an API server (kube-scheduler's job).
    Scheduler(scheduler::SchedulerArgs),
    /// Run only the controllers against an API server (kube-controller-manager's job).
    ControllerManager(controller_manager::ControllerManagerArgs),
    /// Run only the kubelet (upstream's flag names; `--config` reads a KubeletConfiguration).
    Kubelet(Box<kubelet::KubeletArgs>),
    /// Run only the CRI server (runtime.v1 on a unix socket).
    Cri(cri::CriArgs),
    /// Run only the service proxy (kube-proxy's job) or remove its rules (`--cleanup`).
    Proxy(proxy::ProxyArgs),
    /// Install a default bridge pod network for `skiff cri` (`/etc/cni/net.d/10-skiff-bridge.conflist`).
    CniConfig(cri::CniConfigArgs),
    /// Internal: one image fetch for the CRI server (request on stdin, reply on stdout).
    #[command(hide = true)]
    CriFetch,
}

/// Code mapped per page fault in the controller manager and the scheduler until their first idle
/// trim, which then keeps a mapping boundary around each page in use
/// (`skiff_memtrim::limit_fault_around`).
const FAULT_AROUND: usize = 16 * 1024;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Several TLS users (API server, kube client, registry client) share one crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if matches!(
        cli.cmd,
        Cmd::Scheduler(_) | Cmd::ControllerManager(_) | Cmd::Kubelet(_)
    ) {
        // Cache-holding clients: before any thread starts, so every allocation shares them.
        skiff_memtrim::limit_arenas(2);
    } else if matches!(cli.cmd, Cmd::Proxy(_)) {
        // One arena: the proxy's caches, its syncs' programs and the DNS index share one heap,
        // so memory a sync frees is reused by the next instead of pinning a second arena's
        // pages (1,000 Services x 10 endpoints: 20.9 -> 17.1 MiB settled, bench/README.md);
        // the DNS workers allocate nothing per cached answer, so they do not contend for it.
        skiff_memtrim::limit_arenas(1);
    }
    if matches!(cli.cmd, Cmd::Scheduler(_) | Cmd::ControllerManager(_)) {
        // Idle most of their life after a burst, with periodic work (the controllers' sweeps)
        // touching scattered code: after each idle trim only the pages that work runs come
        // back, not the kernel's 64 KiB around each (bench/README.md, 2026-12-07).
        skiff_memtrim::limit_fault_around(FAULT_AROUND);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = match cli.cmd {
        Cmd::Scheduler(args) => rt.block_on(scheduler::run(args)),
        Cmd::ControllerManager(args) => rt.block_on(controller_manager::run(args)),
        Cmd::Kubelet(args) => rt.block_on(kubelet::run(*args)),
        Cmd::Server(args) => rt.block_on(server::run(*args)),
        Cmd::Cri(args) => rt.block_on(cri::run(args)),
        Cmd::Proxy(args) => rt.block_on(proxy::run(args)),
        Cmd::CniConfig(args) => cri::cni_config(args),
        Cmd::CriFetch => Ok(rt.block_on(skiff_cri::serve_fetch(
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        ))?),
    };
    // A blocking task still running (a read of a stuck filesystem, a D-Bus socket) must not
    // keep the process alive after a shutdown signal: dropping the runtime would wait for it.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}
