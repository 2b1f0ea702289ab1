//! Per-mount propagation (`private`, `rslave`, `rshared`, ... in a mount's options).
//!
//! libcontainer 0.7 builds bind mounts with `open_tree(OPEN_TREE_CLONE)` + `move_mount` and
//! drops the propagation options (its option parser even clears `MS_REC` for them), so a
//! bind of a shared host mount stays a full peer of it whatever the spec says. After `create`
//! we enter the container's mount namespace from a forked child and set each mount's
//! propagation as runc does (`mount(NULL, dest, NULL, MS_SLAVE|MS_REC)` and so on).
//! Upstream: apply `MountAttr.propagation` in `mount_into_container`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

/// (container path, propagation flags) of every mount of `spec` that names a propagation.
pub fn wanted(spec: &Spec) -> Vec<(PathBuf, MsFlags)> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let mut flags = MsFlags::empty();
        for o in m.options().iter().flatten() {
            flags = match o.as_str() {
                "private" => MsFlags::MS_PRIVATE,
                "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                "slave" => MsFlags::MS_SLAVE,
                "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
                "shared" => MsFlags::MS_SHARED,
                "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
                "unbindable" => MsFlags::MS_UNBINDABLE,
                "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
                _ => continue,
            };
        }
        if !flags.is_empty() {
            out.push((m.destination().clone(), flags));
        }
    }
    out
}

/// Drops the `private` requests that are already true in the container (`mountinfo` is
/// `/proc/<init>/mountinfo`): a mount that, with everything mounted below it, is neither
/// shared nor a slave. Then nothing needs a helper process in the common case (sources on
/// private mounts).
pub fn still_needed(mountinfo: &str, wanted: Vec<(PathBuf, MsFlags)>) -> Vec<(PathBuf, MsFlags)> {
    // (mount point, propagates) of every mount the container sees.
    let mounts: Vec<(PathBuf, bool)> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let point = PathBuf::from(f.get(4)?);
            let propagates = f
                .get(6..sep)?
                .iter()
                .any(|o| o.starts_with("shared:") || o.starts_with("master:"));
            Some((point, propagates))
        })
        .collect();
    wanted
        .into_iter()
        .filter(|(dest, flags)| {
            if !flags.contains(MsFlags::MS_PRIVATE) {
                return true;
            }
            let under: Vec<&(PathBuf, bool)> =
                mounts.iter().filter(|(p, _)| p.starts_with(dest)).collect();
            // Not found (an unusual path): set it to be sure.
            under.is_empty() || under.iter().any(|(_, propagates)| *propagates)
        })
        .collect()
}

/// Sets the propagation of `mounts` inside the mount namespace of `pid` (the container's
/// init, waiting for `start`). Runs in a forked child: setns(CLONE_NEWNS) needs a
/// single-threaded caller and changes the caller's root.
pub fn apply(pid: i32, mounts: &[(PathBuf, MsFlags)]) -> Result<()> {
    if mounts.is_empty() {
        return Ok(());
    }
    let ns_path = format!("/proc/{pid}/ns/mnt");
    let ns = std::fs::File::open(&ns_path).with_context(|| format!("cannot open {ns_path}"))?;
    let (rd, wr) = nix::unistd::pipe().context("pipe")?;
    // SAFETY: the child only makes raw syscalls (setns, mount, write, _exit) on memory prepared
    // before the fork; it allocates nothing and never returns into the parent's code.
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            let code = child(&ns, mounts, &wr);
            // SAFETY: _exit ends the forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(wr);
            let mut msg = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(rd), &mut msg);
            let status = nix::sys::wait::waitpid(child, None).context("waitpid")?;
            if !matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)) {
                if msg.is_empty() {
                    bail!("setting mount propagation: helper ended with {status:?}");
                }
                bail!("setting mount propagation: {msg}");
            }
            Ok(())
        }
    }
}

fn child(ns: &std::fs::File, mounts: &[(PathBuf, MsFlags)], out: &std::os::fd::OwnedFd) -> i32 {
    let report = |m: &str| {
        let _ = nix::unistd::write(out, m.as_bytes());
        1
    };
    if let Err(e) = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS) {
        return report(&format!("setns(CLONE_NEWNS) of the container: {e}"));
    }
    for (dest, flags) in mounts {
        if let Err(e) = nix::mount::mount(
            None::<&str>,
            dest.as_path(),
            None::<&str>,
            *flags,
            None::<&str>,
        ) {
            return report(&format!(
                "mount(NULL, {}, {}): {e}",
                Path::new(dest).display(),
                describe(*flags)
            ));
        }
    }
    0
}

fn describe(flags: MsFlags) -> &'static str {
    let rec = flags.contains(MsFlags::MS_REC);
    match (
        flags.contains(MsFlags::MS_PRIVATE),
        flags.contains(MsFlags::MS_SLAVE),
        flags.contains(MsFlags::MS_SHARED),
        rec,
    ) {
        (true, _, _, true) => "MS_PRIVATE|MS_REC",
        (true, _, _, false) => "MS_PRIVATE",
        (_, true, _, true) => "MS_SLAVE|MS_REC",
        (_, true, _, false) => "MS_SLAVE",
        (_, _, true, true) => "MS_SHARED|MS_REC",
        (_, _, true, false) => "MS_SHARED",
        _ if rec => "MS_UNBINDABLE|MS_REC",
        _ => "MS_UNBINDABLE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_requests_already_true_are_dropped() {
        let info = "90 80 0:40 / /etc/hosts rw - ext4 /dev/vda rw\n\
                    91 80 0:41 / /mnt/h rw shared:3 - tmpfs t rw\n\
                    92 80 0:42 / /mnt/p rw - tmpfs t rw\n\
                    93 92 0:43 / /mnt/p/sub rw master:7 - tmpfs t rw\n";
        let rp = MsFlags::MS_PRIVATE | MsFlags::MS_REC;
        let wanted = vec![
            (PathBuf::from("/etc/hosts"), rp),
            (PathBuf::from("/mnt/h"), rp),
            (PathBuf::from("/mnt/p"), rp),
            (PathBuf::from("/mnt/s"), MsFlags::MS_SLAVE | MsFlags::MS_REC),
        ];
        let left: Vec<PathBuf> = still_needed(info, wanted)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(left, ["/mnt/h", "/mnt/p", "/mnt/s"].map(PathBuf::from));
    }

    #[test]
    fn propagation_options_are_read() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/a","type":"bind","source":"/x","options":["rbind","rslave","ro"]},
                {"destination":"/b","type":"bind","source":"/y","options":["rbind","rw"]},
                {"destination":"/c","type":"bind","source":"/z","options":["rbind","rshared"]}]}"#,
        )
        .unwrap();
        let w = wanted(&spec);
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0],
            (PathBuf::from("/a"), MsFlags::MS_SLAVE | MsFlags::MS_REC)
        );
        assert_eq!(w[1].1, MsFlags::MS_SHARED | MsFlags::MS_REC);
    }
}
