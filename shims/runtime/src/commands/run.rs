//! `run`: `create` + `start`, then (without `--detach`) wait for the init, forwarding signals,
//! delete the container (unless `--keep`) and exit with its status (128+N when killed by
//! signal N, as runc).
//!
//! The foreground teardown is lean: the init was our child and we reaped it, so the container
//! is known to be stopped, and [`remove_stopped`] removes its cgroup directories (found in one
//! read of `mountinfo`) and its state directory. `Container::delete` would build libcgroups'
//! manager first, which reads `mountinfo` and `/proc/self/cgroup` once per controller through
//! hardened procfs handles (two dozen reads, each with its own `fsopen`), to reach the same
//! `rmdir`s. Anything unusual (poststop hooks, a cgroup still busy, systemd or RDT) goes
//! through `Container::delete`.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use libcontainer::container::Container;

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
    /// Do not delete the container after it exits (as runc's `run --keep`; no effect with
    /// --detach).
    #[arg(long)]
    pub keep: bool,
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
    if !args.keep {
        remove_stopped(&mut container)
            .with_context(|| format!("cannot delete container {} after it exited", args.id))?;
    }
    status
}

/// Delete a container whose init we reaped: its cgroup directories, then its state directory.
/// Falls back to `Container::delete` (which kills what is left, retries and runs poststop
/// hooks) whenever the short path does not apply or a directory cannot be removed.
fn remove_stopped(container: &mut Container) -> Result<()> {
    let Ok(config) = container.spec() else {
        return Ok(container.delete(true)?);
    };
    let hooks = config
        .hooks
        .as_ref()
        .and_then(|h| h.poststop().as_ref())
        .is_some_and(|p| !p.is_empty());
    let simple = !hooks
        && !container.systemd()
        && container.intel_rdt_dir().is_none()
        && !config.cgroup_path.as_os_str().is_empty();
    let dirs = if simple {
        cgroup_dirs(&config.cgroup_path)
    } else {
        None
    };
    let removed = dirs.is_some_and(|dirs| {
        dirs.iter().all(|d| match fs::remove_dir(d) {
            Ok(()) => true,
            Err(err) => err.kind() == ErrorKind::NotFound,
        })
    });
    if !removed {
        return Ok(container.delete(true)?);
    }
    match fs::remove_dir_all(&container.root) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", container.root.display()))
        }
        _ => Ok(()),
    }
}

/// The directories libcgroups made for `cgroup_path`: under each cgroup v1 hierarchy of a
/// controller it manages (legacy and hybrid hosts), or under the unified root. `None` when
/// that cannot be told from one read of our `mountinfo`.
fn cgroup_dirs(cgroup_path: &Path) -> Option<Vec<PathBuf>> {
    use libcgroups::common::{get_cgroup_setup, CgroupSetup, DEFAULT_CGROUP_ROOT};
    let relative = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    match get_cgroup_setup().ok()? {
        CgroupSetup::Unified => Some(vec![Path::new(DEFAULT_CGROUP_ROOT).join(relative)]),
        CgroupSetup::Legacy | CgroupSetup::Hybrid => {
            let mounts = v1_controller_mounts(crate::bundle::own_mountinfo()?);
            (!mounts.is_empty()).then(|| mounts.iter().map(|m| m.join(relative)).collect())
        }
    }
}

/// Controllers libcgroups' v1 manager creates a directory for (its `CONTROLLERS`).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// Mount points of the cgroup v1 hierarchies carrying one of [`V1_CONTROLLERS`] (named in
/// their super options, e.g. `rw,cpu,cpuacct`), each once.
fn v1_controller_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(sep + 1) != Some(&"cgroup") {
            continue;
        }
        let (Some(mount_point), Some(options)) = (fields.get(4), fields.get(sep + 3)) else {
            continue;
        };
        if !options.split(',').any(|o| V1_CONTROLLERS.contains(&o)) {
            continue;
        }
        // mountinfo escapes space, tab, newline and backslash as octal.
        let mount_point = PathBuf::from(
            mount_point
                .replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\"),
        );
        if !out.contains(&mount_point) {
            out.push(mount_point);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::v1_controller_mounts;
    use std::path::PathBuf;

    #[test]
    fn v1_mounts_of_managed_controllers_only() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory
35 30 0:30 / /mnt/memory\\040copy rw - cgroup cgroup rw,memory
";
        assert_eq!(
            v1_controller_mounts(info),
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory",
                "/mnt/memory copy"
            ]
            .map(PathBuf::from)
        );
    }
}
