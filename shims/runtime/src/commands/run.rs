//! `run`: `create` + `start`, then (without `--detach`) wait for the init, forwarding signals,
//! delete the container and exit with its status (128+N when killed by signal N, as runc).

use std::path::PathBuf;

use anyhow::{Context, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::create::{self, build};
use super::Globals;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Path to the OCI bundle.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Return once started; the container is left for `delete`.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the init pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket receiving the pty master when process.terminal is true.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Pass this many fds (after stdio) through to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Use chroot instead of pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Container id.
    pub id: String,
}

pub fn run(args: Args, globals: &Globals) -> Result<i32> {
    let create_args = create::Args {
        bundle: args.bundle,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
        preserve_fds: args.preserve_fds,
        no_pivot: args.no_pivot,
        no_new_keyring: args.no_new_keyring,
        id: args.id.clone(),
    };
    let mut container = build(&create_args, globals, args.detach)?;
    if let Err(err) = container.start() {
        let _ = container.delete(true);
        return Err(err).with_context(|| format!("cannot start container {}", args.id));
    }
    if args.detach {
        return Ok(0);
    }
    let init = container
        .pid()
        .with_context(|| format!("container {} has no init pid in its state", args.id))?;
    let status = wait_foreground(init);
    container
        .delete(true)
        .with_context(|| format!("cannot delete container {} after it exited", args.id))?;
    status
}

/// Wait for `init` (our child: libcontainer forks it as a sibling of its intermediate
/// process), forwarding every other signal to it.
fn wait_foreground(init: Pid) -> Result<i32> {
    let all = SigSet::all();
    all.thread_block().context("cannot block signals")?;
    loop {
        // Reap first: the init may have exited before the signals were blocked, and a
        // SIGCHLD sent then was discarded.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == init => return Ok(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => return Ok(128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(err) => return Err(err).context("waitpid failed"),
            }
        }
        match all.wait().context("sigwait failed")? {
            Signal::SIGCHLD | Signal::SIGURG | Signal::SIGWINCH => {}
            sig => {
                if let Err(err) = kill(init, sig) {
                    tracing::warn!(%err, ?sig, "cannot forward signal to the container init");
                }
            }
        }
    }
}
