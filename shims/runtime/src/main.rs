//! `skiff-runtime`: Skiff's runc-compatible OCI runtime CLI.
//!
//! A thin binary over youki's `libcontainer`: parse the runc command line, set up logging to
//! `--log`, dispatch to one module per verb (`commands/`), and print any error as one line on
//! stderr (and in the log) with exit status 1. The command line and the `state` JSON follow runc,
//! so the CRI server (and containerd) can drive it like runc. See `docs/node-contracts.md`.

mod bundle;
mod commands;
mod logging;
mod sys;
mod systemd_cgroup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default state root, one directory per container (`docs/node-contracts.md`).
const DEFAULT_ROOT: &str = "/run/skiff/runtime";

#[derive(Parser, Debug)]
#[command(
    name = "skiff-runtime",
    version,
    about = "Skiff's runc-compatible OCI runtime (youki libcontainer)"
)]
struct Cli {
    /// Directory holding the state of the containers.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Append the runtime's log lines (and its final error) to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the `--log` lines, as runc: logrus-like `text` or `json`.
    #[arg(long, global = true, default_value = "text")]
    log_format: logging::LogFormat,
    /// Log debug messages too.
    #[arg(long, global = true)]
    debug: bool,
    /// Manage cgroups through systemd (for runc compatibility; only meaningful on a
    /// systemd host with cgroup v2, ignored by the cgroup v1 manager).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (checkpoint/restore is not supported).
    #[arg(long, global = true, hide = true)]
    criu: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a container from a bundle; its init waits for `start`.
    Create(commands::create::Args),
    /// Start a created container's user process.
    Start(commands::start::Args),
    /// Print the state of a container as runc's JSON.
    State(commands::state::Args),
    /// Send a signal to a container's init (or all its processes with --all).
    Kill(commands::kill::Args),
    /// Delete a stopped (or created, or with --force any) container.
    Delete(commands::delete::Args),
    /// Create and start a container, then wait for it unless --detach.
    Run(commands::run::Args),
    /// List the containers under --root.
    List(commands::list::Args),
    /// Run a new process in a running container.
    Exec(commands::exec::Args),
    /// List the processes of a container.
    Ps(commands::ps::Args),
    /// Freeze every process of a container.
    Pause(commands::pause::Args),
    /// Thaw a paused container.
    Resume(commands::pause::Args),
    /// Change the cgroup limits of a container.
    Update(commands::update::Args),
    /// Write a default config.json into a bundle.
    Spec(commands::spec::Args),
    /// Print the features of this runtime as OCI features JSON.
    Features,
    /// Print cgroup statistics events of a container.
    Events(commands::events::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These verbs fork processes that join the container while still running this binary:
    // make sure those cannot write to it first (CVE-2019-5736, see sys::sealed_exe).
    let seal = match &cli.command {
        Command::Create(a) => Some(Some(a.bundle.as_path())),
        Command::Run(a) => Some(Some(a.bundle.as_path())),
        // An exec'd process joins the container's own mount namespace.
        Command::Exec(_) => Some(None),
        _ => None,
    };
    if let Some(bundle) = seal {
        // The bundle is read only if the kernel cannot make a detached read-only mount.
        let allow_private_ns = || bundle.is_none_or(bundle_allows_private_ns);
        if let Err(err) = sys::sealed_exe::ensure_sealed(allow_private_ns) {
            eprintln!(
                "skiff-runtime: cannot re-execute from a sealed copy of /proc/self/exe: {err}"
            );
            return ExitCode::FAILURE;
        }
    }
    let level = if cli.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let logger = match logging::init(cli.log.as_deref(), cli.log_format, level) {
        Ok(logger) => logger,
        Err(err) => {
            eprintln!("skiff-runtime: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let globals = commands::Globals {
        root: cli.root,
        systemd_cgroup: cli.systemd_cgroup,
    };
    let is_exec = matches!(cli.command, Command::Exec(_));
    let result = match cli.command {
        Command::Create(args) => commands::create::create(args, &globals).map(|()| 0),
        Command::Start(args) => commands::start::start(args, &globals).map(|()| 0),
        Command::State(args) => commands::state::state(args, &globals).map(|()| 0),
        Command::Kill(args) => commands::kill::kill(args, &globals).map(|()| 0),
        Command::Delete(args) => commands::delete::delete(args, &globals).map(|()| 0),
        Command::Run(args) => commands::run::run(args, &globals),
        Command::List(args) => commands::list::list(args, &globals).map(|()| 0),
        // runc exits 255 when exec itself fails (1 is a valid exit code of the process).
        Command::Exec(args) => commands::exec::exec(args, &globals),
        Command::Ps(args) => commands::ps::ps(args, &globals).map(|()| 0),
        Command::Pause(args) => commands::pause::pause(args, &globals).map(|()| 0),
        Command::Resume(args) => commands::pause::resume(args, &globals).map(|()| 0),
        Command::Update(args) => commands::update::update(args, &globals).map(|()| 0),
        Command::Spec(args) => commands::spec::spec(args).map(|()| 0),
        Command::Features => commands::features::features().map(|()| 0),
        Command::Events(args) => commands::events::events(args, &globals).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(err) => {
            // `{:#}` joins the whole cause chain with ": "; newlines from any source are
            // flattened so the caller always gets exactly one line.
            let line = format!("{err:#}").replace('\n', " ");
            logger.error(&line);
            eprintln!("skiff-runtime: {line}");
            // runc exits 255 when `exec` itself fails (1 may be the process's own status).
            if is_exec {
                ExitCode::from(255)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn bundle_allows_private_ns(bundle: &std::path::Path) -> bool {
    std::fs::read(bundle.join("config.json"))
        .map(|c| sys::sealed_exe::allows_private_ns(&c))
        .unwrap_or(false)
}
