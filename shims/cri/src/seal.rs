//! The runtime binary as a sealed memfd bind-mounted in place (runc's `memfd-bind`,
//! CVE-2019-5736).
//!
//! skiff-runtime (like runc 1.1, crun and youki) must never let a container process reach its
//! binary for writing through `/proc/<pid>/exe`, so unless it already runs from a sealed memfd
//! it re-executes itself from a protected copy on every invocation (see
//! `shims/runtime/src/sys/sealed_exe.rs`): an exec of the whole binary per `create`, `run` or
//! `exec`. runc documents the alternative that needs no copy per call (its
//! `contrib/cmd/memfd-bind`): copy the binary once into a memfd, seal it against writes,
//! growth and shrinking, and bind-mount it over the path the runtime is executed from. The
//! runtime then finds `/proc/self/exe` sealed and skips the re-exec; the kernel refuses every
//! write to the file. One in-memory copy per server, whatever the number of containers.
//!
//! The CRI server does this at start when [`crate::CriConfig::seal_runtime`] is set (`skiff
//! server` and `skiff cri` do), at `<state_dir>/bin/<binary name>`, and uses that path as the
//! default handler's binary; it unmounts it when it stops. As with `memfd-bind`, the mount is
//! of the server's `/proc/<pid>/fd/<n>` link to the memfd, so it resolves only while the
//! server runs (and for those allowed to ptrace it: root); a killed server's stale mount is
//! cleared at the next start. A failure only logs: the runtime's own re-exec still protects
//! it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::{CriError, Result};

/// The seals runc's `memfd-bind` and skiff-runtime's `is_sealed` look for.
const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

fn sys_err(op: &'static str, target: &Path) -> impl FnOnce(nix::Error) -> CriError {
    let target = target.display().to_string();
    move |source| CriError::Sys { op, target, source }
}

/// Where the sealed copy of `binary` is mounted for a server with this state dir.
pub(crate) fn sealed_path(state_dir: &Path, binary: &Path) -> PathBuf {
    let name = binary
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "runtime".into());
    state_dir.join("bin").join(name)
}

/// A sealed memfd copy of a binary, bind-mounted at a path; the mount lives as long as this
/// (see [`bind_sealed_copy`]), and dropping it detaches the mount.
pub(crate) struct SealedCopy {
    at: PathBuf,
    /// The mount is of this process's `/proc/<pid>/fd/<n>` magic link to the memfd: the memfd
    /// cannot be bind-mounted itself (it lives on the kernel's internal mount, and binds across
    /// mount namespaces are refused), so as runc's `memfd-bind` we bind the link, which the
    /// kernel resolves only while this fd stays open in this process. After we are gone the
    /// path answers EINVAL until [`unbind`] (the next server's start) clears it.
    _memfd: File,
}

impl SealedCopy {
    pub(crate) fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for SealedCopy {
    fn drop(&mut self) {
        unbind(&self.at);
    }
}

/// Detaches every mount stacked on `path` (a bind of a magic link: `umount` of the path would
/// follow the link, so this goes through an `O_PATH|O_NOFOLLOW` fd, as `memfd-bind --cleanup`).
pub(crate) fn unbind(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(path)
    else {
        return;
    };
    let via = format!("/proc/self/fd/{}", f.as_raw_fd());
    while nix::mount::umount2(via.as_str(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// Copies `binary` into a memfd sealed against writes, growth and shrinking, and bind-mounts
/// it at `dst` (made if missing; whatever was mounted there before, e.g. by a server killed
/// without unmounting, is detached first). Blocking.
pub(crate) fn bind_sealed_copy(binary: &Path, dst: &Path) -> Result<SealedCopy> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = File::open(binary).map_err(CriError::io("opening", binary))?;
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).map_err(CriError::io("creating", dir))?;
    }
    unbind(dst);
    if std::fs::symlink_metadata(dst).is_err() {
        File::create(dst).map_err(CriError::io("creating", dst))?;
    }
    // SAFETY: a valid NUL-terminated name and valid flags; the fd is owned right after.
    let raw = unsafe {
        libc::memfd_create(
            c"skiff-runtime".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(sys_err("memfd_create for a sealed copy of", binary)(
            nix::Error::last(),
        ));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let memfd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    std::io::copy(&mut src, &mut &memfd).map_err(CriError::io("copying into a memfd", binary))?;
    // memfds are created 0777: executable, as the binary is.
    // SAFETY: F_ADD_SEALS on our own memfd with valid seal flags.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(sys_err("sealing the memfd copy of", binary)(
            nix::Error::last(),
        ));
    }
    let magic = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    let link = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(&magic)
        .map_err(CriError::io("opening the magic link of", binary))?;
    let via = PathBuf::from(format!("/proc/self/fd/{}", link.as_raw_fd()));
    mount(
        Some(&via),
        dst,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys_err("bind-mounting a sealed memfd copy onto", dst))?;
    Ok(SealedCopy {
        at: dst.to_path_buf(),
        _memfd: memfd,
    })
}

/// Whether the file at `path` is a memfd carrying our seals (what the runtime checks).
pub(crate) fn is_sealed(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    // SAFETY: F_GET_SEALS only reads the seals of a valid fd; EINVAL on non-memfds.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & SEALS == SEALS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_path_keeps_the_binary_name() {
        assert_eq!(
            sealed_path(
                Path::new("/var/lib/skiff/cri"),
                Path::new("/usr/bin/skiff-runtime")
            ),
            PathBuf::from("/var/lib/skiff/cri/bin/skiff-runtime")
        );
    }

    /// Needs root (mount): a sealed copy of /bin/true runs, refuses writes, and goes away.
    #[test]
    #[ignore]
    fn sealed_copy_runs_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let dst = sealed_path(dir.path(), Path::new("/bin/true"));
        let first = bind_sealed_copy(Path::new("/bin/true"), &dst).unwrap();
        assert!(is_sealed(&dst));
        assert!(std::process::Command::new(&dst).status().unwrap().success());
        // F_SEAL_WRITE: opening for writing may succeed; every write fails.
        if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&dst) {
            use std::io::Write;
            assert!(w.write_all(b"x").is_err());
        }
        // Again over the first (a restarted server): the old one is detached first.
        std::mem::forget(first);
        let second = bind_sealed_copy(Path::new("/bin/true"), &dst).unwrap();
        assert!(is_sealed(second.path()));
        drop(second);
        assert!(!is_sealed(&dst));
    }
}
