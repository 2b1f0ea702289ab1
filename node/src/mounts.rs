//! The kubelet's privileged mount calls, and only them: tmpfs for secret volumes and
//! `emptyDir.medium: Memory`, and unmounting what is left under a pod's folder before it is
//! removed. Blocking syscalls: callers run them on the blocking pool.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mount points at or below `dir` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Whether `dir` itself is a mount point.
pub fn is_mount_point(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|p| p == dir)
}

/// Mounts a tmpfs on `dir` (created if missing) unless one is there; `size` in bytes caps it.
pub fn ensure_tmpfs(dir: &Path, size: Option<u64>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    let opts = match size {
        Some(s) => format!("mode=0755,size={s}"),
        None => "mode=0755".to_string(),
    };
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(io::Error::from)
}

/// Unmounts (lazily) every mount at or below `dir`.
pub fn unmount_all_under(dir: &Path) -> io::Result<()> {
    for m in mounts_under(dir) {
        umount2(&m, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    Ok(())
}
