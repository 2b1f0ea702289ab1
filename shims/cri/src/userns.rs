//! Privileged syscalls of user namespaces and idmapped mounts, kept apart so every use is easy
//! to audit: making a user namespace with given uid/gid maps (a short-lived forked child that
//! unshares and is then dropped; the pod's own is made by its pod monitor, `skiff-monitor
//! pause --uid-map`), and cloning a mount idmapped to a user namespace (`open_tree` +
//! `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use skiff_proto::cri;

use crate::error::{CriError, Result};

// <linux/mount.h>; defined here rather than taken from libc, whose exports of these vary.
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn sys_err(op: &'static str, target: &Path, source: nix::Error) -> CriError {
    CriError::Sys {
        op,
        target: target.display().to_string(),
        source,
    }
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| CriError::InvalidArgument(format!("path {} has a NUL byte", p.display())))
}

/// The text of `/proc/<pid>/{uid,gid}_map` for `maps`: `container host length` lines.
pub(crate) fn map_text(maps: &[cri::IdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.length))
        .collect()
}

/// A new user namespace with these uid and gid maps, as an fd (`/proc/<pid>/ns/user` of a child
/// that made it and is gone when this returns). setgroups stays allowed: the maps are written by
/// a privileged parent, and containers set their supplemental groups. Blocking (fork, waitpid):
/// call from a blocking thread.
pub(crate) fn new_userns(uids: &[cri::IdMapping], gids: &[cri::IdMapping]) -> Result<OwnedFd> {
    let here = Path::new("/proc/self/ns/user");
    let (ready_r, ready_w) =
        nix::unistd::pipe().map_err(|e| sys_err("making a pipe for", here, e))?;
    let (hold_r, hold_w) =
        nix::unistd::pipe().map_err(|e| sys_err("making a pipe for", here, e))?;
    // SAFETY: the child runs only async-signal-safe calls (unshare, write, read, _exit) on fds
    // it inherited, then exits without returning; the parent owns everything else.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys_err(
            "forking to make a user namespace",
            here,
            nix::Error::last(),
        ));
    }
    if pid == 0 {
        // SAFETY: raw syscalls on inherited fds in the forked child; it never returns.
        unsafe {
            // Our copies of the parent's ends: with the hold pipe's write end open here, the
            // read below would never see EOF.
            libc::close(hold_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                1
            };
            libc::write(ready_w.as_raw_fd(), (&ok as *const u8).cast(), 1);
            let mut b = 0u8;
            // Until the parent closes its end (or dies): EOF.
            libc::read(hold_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(hold_r);
    let child = nix::unistd::Pid::from_raw(pid);
    let result = (|| {
        let mut b = [1u8];
        let n = nix::unistd::read(ready_r.as_raw_fd(), &mut b)
            .map_err(|e| sys_err("waiting for the user namespace child", here, e))?;
        if n != 1 || b[0] != 0 {
            return Err(CriError::Sys {
                op: "unshare(CLONE_NEWUSER)",
                target: "a new user namespace".into(),
                source: nix::Error::EPERM,
            });
        }
        for (file, maps) in [("uid_map", uids), ("gid_map", gids)] {
            let p = format!("/proc/{pid}/{file}");
            std::fs::write(&p, map_text(maps)).map_err(|e| {
                CriError::InvalidArgument(format!(
                    "user namespace: the kernel refused {file} {:?}: {e}",
                    map_text(maps).trim_end()
                ))
            })?;
        }
        let ns = format!("/proc/{pid}/ns/user");
        std::fs::File::open(&ns)
            .map(OwnedFd::from)
            .map_err(CriError::io("opening", ns.as_str()))
    })();
    drop(hold_w);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// Opens a user namespace file (`/proc/<pid>/ns/user`).
pub(crate) fn open_userns(path: &Path) -> Result<OwnedFd> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(CriError::io("opening user namespace", path))
}

/// Clones the mount tree at `src` (with its sub-mounts when `recursive`), idmaps the clone to
/// user namespace `userns` (a file owned by host uid H shows as the uid H maps to in there, and
/// a process of the namespace writes host ids back) and attaches it at `dst` (an existing file
/// or directory). The filesystem must support idmapped mounts (ext4, xfs, btrfs, tmpfs... not
/// overlayfs itself on this kernel: EINVAL).
pub(crate) fn idmapped_clone(
    src: &Path,
    dst: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> Result<()> {
    let csrc = cpath(src)?;
    let cdst = cpath(dst)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree(2) with a valid NUL-terminated path; the returned fd is owned below.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, csrc.as_ptr(), flags) };
    if tree < 0 {
        return Err(sys_err("open_tree (clone)", src, nix::Error::last()));
    }
    // SAFETY: a fresh fd returned by open_tree, owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let mut at = libc::AT_EMPTY_PATH;
    if recursive {
        at |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr(2) on the detached tree with an empty path and a properly sized
    // struct mount_attr that lives across the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(sys_err(
            "mount_setattr (MOUNT_ATTR_IDMAP) of a clone of",
            src,
            nix::Error::last(),
        ));
    }
    // SAFETY: move_mount(2) of the detached tree fd onto a valid NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            cdst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(sys_err(
            "move_mount of an idmapped clone onto",
            dst,
            nix::Error::last(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_text_is_container_host_length() {
        let m = [cri::IdMapping {
            host_id: 100000,
            container_id: 0,
            length: 65536,
        }];
        assert_eq!(map_text(&m), "0 100000 65536\n");
    }
}
