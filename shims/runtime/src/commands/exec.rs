//! `exec`: run another process in a running container, as runc does it.
//!
//! The process is either read from `--process` (an OCI `process` object, what containerd's
//! shim and our CRI server pass) or built from the container's own `process` with the inline
//! arguments and flags applied on top (user, cwd, env, terminal, capabilities), as runc's
//! `getProcess` does. Either way libcontainer gets a complete process file, because its inline
//! path starts from an empty process (no user, cwd, rlimits or terminal of the container).
//! Without `--detach` we wait for the process and exit with its status (128+N for signal N),
//! proxying a pty to our stdio when it has a terminal and no `--console-socket` was given.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use oci_spec::runtime::{Capability, Process};

use super::{load_container, Globals};
use crate::sys::pty::{self, ConsoleListener};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Unix socket receiving the pty master when the process has a terminal.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Working directory of the process (absolute, inside the container).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE); may be repeated.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID] to run the process as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gid; may be repeated.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Path to a process.json (OCI `process` object); replaces the inline arguments.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process started.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's host pid to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (no SELinux here).
    #[arg(long)]
    pub process_label: Option<String>,
    /// AppArmor profile for the process.
    #[arg(long)]
    pub apparmor: Option<String>,
    /// Set no_new_privileges for the process.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability (CAP_...); may be repeated.
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Pass this many fds (after stdio) through to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Sub-cgroup (cgroup v2) or controller:path list to run the process in.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Allow exec in a paused container.
    #[arg(long)]
    pub ignore_paused: bool,
    /// Container id.
    pub id: String,
    /// Command and arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn exec(args: Args, globals: &Globals) -> Result<i32> {
    let container = load_container(globals, &args.id)?;
    let process = match &args.process {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("cannot read process file {}", path.display()))?;
            serde_json::from_slice::<Process>(&text).with_context(|| {
                format!(
                    "cannot parse {}: it must be an OCI process object",
                    path.display()
                )
            })?
        }
        None => inline_process(&args, &container)?,
    };
    let process = crate::bundle::nnp_false_as_unset(process);
    let terminal = process.terminal().unwrap_or(false);
    check_console(args.detach, terminal, args.console_socket.is_some())?;

    let dir = globals.container_dir(&args.id)?;
    let me = std::process::id();
    let process_file = dir.join(format!("exec-{me}.json"));
    std::fs::write(&process_file, serde_json::to_vec(&process)?)
        .with_context(|| format!("cannot write {}", process_file.display()))?;
    // Foreground with a terminal and no caller socket: we receive the master ourselves.
    let listener = if terminal && !args.detach && args.console_socket.is_none() {
        Some(ConsoleListener::bind(&dir.join(format!("exec-{me}.sock")))?)
    } else {
        None
    };
    let console = args
        .console_socket
        .clone()
        .or_else(|| listener.as_ref().map(|l| l.path().to_path_buf()));

    let result = ContainerBuilder::new(args.id.clone(), SyscallType::default())
        .with_root_path(&globals.root)
        .and_then(|b| b.with_pid_file(args.pid_file.as_ref()))
        .and_then(|b| {
            b.with_console_socket(console.as_ref())
                .with_preserved_fds(args.preserve_fds)
                .as_tenant()
                // libcontainer's own terminal check is runc's, with "detached" meaning "a
                // console socket is expected"; ours was done above.
                .with_detach(terminal)
                .with_process(Some(&process_file))
                .with_ignore_paused(args.ignore_paused)
                .with_sub_cgroup(args.cgroup.clone())
                .with_process_label(args.process_label.clone())
                .build()
        });
    let _ = std::fs::remove_file(&process_file);
    let pid = result.with_context(|| format!("cannot exec in container {}", args.id))?;
    if args.detach {
        return Ok(0);
    }
    let master = match &listener {
        Some(l) => Some(l.recv_master().context("cannot receive the exec's pty")?),
        None => None,
    };
    drop(listener);
    pty::proxy_and_wait(master, pid).context("cannot wait for the exec'd process")
}

/// runc's rules for `--console-socket` versus `--detach` and `terminal`.
pub fn check_console(detach: bool, terminal: bool, has_socket: bool) -> Result<()> {
    if detach && terminal && !has_socket {
        bail!("cannot allocate tty if runtime will detach without setting console socket: pass --console-socket");
    }
    if has_socket && !(detach && terminal) {
        bail!("cannot use console socket if runtime will not detach or allocate tty: drop --console-socket");
    }
    Ok(())
}

/// The container's process with the command line's changes, as runc's `getProcess`.
fn inline_process(args: &Args, container: &libcontainer::container::Container) -> Result<Process> {
    if args.command.is_empty() {
        bail!("exec needs a command (or --process FILE)");
    }
    let spec = oci_spec::runtime::Spec::load(container.bundle().join("config.json"))
        .with_context(|| format!("cannot load config.json of container {}", container.id()))?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        if !cwd.is_absolute() {
            bail!("--cwd {} must be an absolute path", cwd.display());
        }
        p.set_cwd(cwd.clone());
    }
    if !args.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for kv in &args.env {
            let key = kv.split('=').next().unwrap_or(kv);
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(kv.clone());
        }
        p.set_env(Some(env));
    }
    if let Some(user) = &args.user {
        let mut u = p.user().clone();
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user.as_str(), None),
        };
        u.set_uid(
            uid.parse()
                .with_context(|| format!("--user {user}: uid must be a number"))?,
        );
        if let Some(gid) = gid {
            u.set_gid(
                gid.parse()
                    .with_context(|| format!("--user {user}: gid must be a number"))?,
            );
        }
        p.set_user(u);
    }
    if !args.additional_gids.is_empty() {
        let mut u = p.user().clone();
        u.set_additional_gids(Some(args.additional_gids.clone()));
        p.set_user(u);
    }
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = &args.apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if !args.cap.is_empty() {
        let extra: HashSet<Capability> = args
            .cap
            .iter()
            .map(|c| {
                c.parse::<Capability>().map_err(|_| {
                    anyhow::anyhow!("unknown capability {c:?}: use names like CAP_NET_ADMIN")
                })
            })
            .collect::<Result<_>>()?;
        let mut caps = p.capabilities().clone().unwrap_or_default();
        let add = |set: &Option<HashSet<Capability>>| -> Option<HashSet<Capability>> {
            Some(
                set.clone()
                    .unwrap_or_default()
                    .union(&extra)
                    .copied()
                    .collect(),
            )
        };
        caps.set_bounding(add(caps.bounding()));
        caps.set_effective(add(caps.effective()));
        caps.set_permitted(add(caps.permitted()));
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::check_console;

    #[test]
    fn console_rules_follow_runc() {
        assert!(check_console(true, true, true).is_ok());
        assert!(check_console(true, true, false).is_err());
        assert!(check_console(false, true, true).is_err());
        assert!(check_console(true, false, true).is_err());
        assert!(check_console(false, true, false).is_ok());
        assert!(check_console(false, false, false).is_ok());
    }
}
