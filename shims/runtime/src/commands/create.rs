//! `create`: build the container from a bundle; its init blocks until `start`.
//!
//! The container's stdio are this process's stdio (the init is forked from it), which is how
//! `skiff-monitor` captures the container's output. On failure nothing is left behind: the
//! state directory `libcontainer` may have made is removed.

use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::exec::check_console;
use super::Globals;
use crate::bundle::Bundle;
use crate::sys::pty::ConsoleListener;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Path to the OCI bundle (directory holding config.json).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's init pid (host pid namespace) to this file.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Unix socket receiving the pty master when process.terminal is true.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Pass this many fds (after stdio) through to the container.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: i32,
    /// Use chroot instead of pivot_root (for ramfs roots).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility; no session keyring is created.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Container id (file name under --root).
    pub id: String,
}

/// `--systemd-cgroup` on a cgroup v1 host: a `slice:prefix:name` cgroups path becomes its
/// cgroupfs path (see `crate::systemd_cgroup`) and the v1 manager runs; returns the spec to
/// write and the systemd flag for libcontainer.
fn systemd_v1_path(
    bundle: &Bundle,
    adjusted: Option<oci_spec::runtime::Spec>,
    globals: &Globals,
) -> (Option<oci_spec::runtime::Spec>, bool) {
    if !globals.systemd_cgroup || !crate::systemd_cgroup::host_is_v1() {
        return (adjusted, globals.systemd_cgroup);
    }
    let spec = adjusted.clone().unwrap_or_else(|| bundle.spec.clone());
    let Some(mut linux) = spec.linux().clone() else {
        return (adjusted, false);
    };
    let path = linux
        .cgroups_path()
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    match crate::systemd_cgroup::to_cgroupfs(&path, &crate::systemd_cgroup::root()) {
        Some(fs_path) => {
            linux.set_cgroups_path(Some(PathBuf::from(fs_path)));
            let mut spec = spec;
            spec.set_linux(Some(linux));
            (Some(spec), false)
        }
        None => (adjusted, false),
    }
}

pub fn create(args: Args, globals: &Globals) -> Result<()> {
    build(&args, globals, true)?;
    Ok(())
}

/// Shared by `create` and `run`. `detach` is false only for a foreground `run`; then a
/// terminal container gets our own console listener (returned) instead of a caller's socket.
pub(super) fn build(
    args: &Args,
    globals: &Globals,
    detach: bool,
) -> Result<(Container, Option<ConsoleListener>)> {
    let id = args.id.as_str();
    let container_dir = globals.container_dir(id)?;
    if container_dir.exists() {
        bail!("container {id} already exists: delete it first or pick another id");
    }
    let bundle = Bundle::load(&args.bundle)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    check_console(detach, terminal, args.console_socket.is_some())?;
    let listener = if terminal && !detach {
        let path = globals
            .root_dir()?
            .join(format!("{id}@console-{}.sock", std::process::id()));
        Some(
            ConsoleListener::bind(&path)
                .with_context(|| format!("cannot listen on {}", path.display()))?,
        )
    } else {
        None
    };
    let console = args
        .console_socket
        .clone()
        .or_else(|| listener.as_ref().map(|l| l.path().to_path_buf()));

    // The spec goes to libcontainer in memory, adjusted where needed (see `Bundle`), so
    // libcontainer neither reads config.json again nor needs a shadow copy on disk; the state
    // names the caller's bundle.
    let (adjusted, systemd) = systemd_v1_path(&bundle, bundle.adjusted_spec()?, globals);
    let mut spec = match adjusted {
        Some(spec) => spec,
        None => bundle.spec.clone(),
    };
    if let Some(mut root) = spec.root().clone() {
        root.set_path(bundle.rootfs.clone());
        spec.set_root(Some(root));
    }

    let result = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_pid_file(args.pid_file.as_ref())
        .and_then(|b| b.with_root_path(&globals.root))
        .map(|b| {
            b.with_console_socket(console.as_ref())
                .with_preserved_fds(args.preserve_fds)
                .as_init(&bundle.dir)
                .with_spec(spec)
                .with_systemd(systemd)
                // libcontainer's check reads "detached" as "a console socket is expected";
                // runc's rules were applied above.
                .with_detach(terminal)
                .with_no_pivot(args.no_pivot)
        })
        .and_then(|b| b.build());

    let mut container = match result {
        Ok(container) => container,
        Err(err) => {
            // libcontainer removes what it made once the init was forked, but not for
            // errors before that (bad rootfs, spec validation): do it here.
            if container_dir.exists() {
                if let Err(clean) = fs::remove_dir_all(&container_dir) {
                    tracing::error!(?container_dir, %clean, "cannot remove state dir");
                }
            }
            return Err(err).with_context(|| format!("cannot create container {id}"));
        }
    };
    // libcontainer ignores per-mount propagation options: set them now, before `start`.
    let mut propagation = crate::sys::propagation::wanted(&bundle.spec);
    let pid = container.pid().map(|p| p.as_raw()).unwrap_or(0);
    if !propagation.is_empty() {
        if let Ok(info) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
            propagation = crate::sys::propagation::still_needed(&info, propagation);
        }
    }
    if !propagation.is_empty() {
        if let Err(err) = crate::sys::propagation::apply(pid, &propagation) {
            if let Err(clean) = container.delete(true) {
                tracing::error!(%clean, "cannot delete the half-made container");
            }
            return Err(err).with_context(|| format!("cannot create container {id}"));
        }
    }
    Ok((container, listener))
}
