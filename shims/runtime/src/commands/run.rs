//! `run`: `create` + `start`, then (without `--detach`) wait for the init, forwarding signals,
//! delete the container and exit with its status (128+N when killed by signal N, as runc).

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::create::{self, build};
use super::Globals;
use crate::sys::pty;

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
    let (mut container, listener) = build(&create_args, globals, args.detach)?;
    // The pty master arrives on our listener during create; take it before starting.
    let master = match &listener {
        Some(l) => match l.recv_master() {
            Ok(m) => Some(m),
            Err(err) => {
                let _ = container.delete(true);
                return Err(err).context("cannot receive the container's pty");
            }
        },
        None => None,
    };
    drop(listener);
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
    // Wait for the init (our child: libcontainer forks it as a sibling of its intermediate
    // process), forwarding signals and proxying the pty if there is one.
    let status = pty::proxy_and_wait(master, init).context("cannot wait for the container");
    container
        .delete(true)
        .with_context(|| format!("cannot delete container {} after it exited", args.id))?;
    status
}
