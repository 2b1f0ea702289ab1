//! Privileged syscalls: mounts and signals. Kept small so every use is easy to audit.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{CriError, Result};

fn sys_err<'a>(op: &'static str, target: &'a Path) -> impl FnOnce(nix::Error) -> CriError + 'a {
    move |source| CriError::Sys {
        op,
        target: target.display().to_string(),
        source,
    }
}

/// Bind-mounts `src` onto the existing file or directory `dst`.
pub(crate) fn bind_mount(src: &Path, dst: &Path) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys_err("bind-mounting onto", dst))
}

/// Mounts an overlay filesystem on `target`. `lower` is top-most first.
pub(crate) fn mount_overlay(
    lower: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(sys_err("mounting overlay on", target))
}

/// Mounts a tmpfs for a pod's shared `/dev/shm`.
pub(crate) fn mount_shm(target: &Path) -> Result<()> {
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(sys_err("mounting shm tmpfs on", target))
}

/// Detaches the mount at `target`; "not mounted" and "not found" are fine.
pub(crate) fn unmount(target: &Path) -> Result<()> {
    loop {
        match umount2(target, MntFlags::MNT_DETACH) {
            // Stacked mounts: keep going until nothing is mounted there.
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(sys_err("unmounting", target)(e)),
        }
    }
}

/// Sends `sig` to `pid`; a process that is already gone is fine.
pub(crate) fn signal(pid: i32, sig: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(CriError::Sys {
            op: "signalling",
            target: format!("pid {pid}"),
            source,
        }),
    }
}

/// The start time (clock ticks since boot, field 22 of /proc/PID/stat) and state letter, or None
/// when the process does not exist. Used to tell our pause process from a reused PID.
pub(crate) fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // rest starts at field 3 (state); starttime is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// True while `pid` is alive (not a zombie) and still the process that started at `start_time`.
pub(crate) fn alive(pid: i32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some((st, state)) => st == start_time && state != 'Z' && state != 'X',
        None => false,
    }
}
