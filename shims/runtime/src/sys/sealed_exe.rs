//! Re-executing from a sealed in-memory copy of our own binary (CVE-2019-5736).
//!
//! `create`, `run` and `exec` fork processes that join the container's namespaces while still
//! running this binary. A process inside the container can then open `/proc/<pid>/exe` of such
//! a process and, once we exec the user's program, write through that handle into the *host's*
//! `skiff-runtime` file, taking over the next runtime invocation as root. The defence runc
//! (1.0-1.1), crun and youki use: copy the binary into a `memfd`, seal it against writes, grow,
//! shrink and further sealing, and re-execute from it, so `/proc/self/exe` names an immutable
//! anonymous file and the host binary is never reachable from the container.
//!
//! Copying ~7 MB per invocation costs ~7 ms of CPU and more wall time, so two cheaper forms of
//! the same guarantee come first:
//! - the binary already sits on a read-only mount (an admin bind-mounted it `ro`, as runc 1.2's
//!   `memfd-bind` does): a write through `/proc/<pid>/exe` fails with EROFS;
//! - otherwise, when the caller allows it, we enter a private mount namespace (slave of the
//!   host's), bind-mount our own binary read-only onto itself there and re-execute through
//!   that path. The container's processes are cloned from us, so their `/proc/<pid>/exe`
//!   resolves to that read-only mount, which they cannot reach to remount. Mounts made in our
//!   namespace no longer reach the host, so the caller allows this only for bundles without
//!   runtime-namespace hooks or shared rootfs/mount propagation (`allows_private_ns`).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// Whether `/proc/self/exe` already is a memfd carrying our seals (we are the re-executed copy).
fn is_sealed() -> io::Result<bool> {
    let exe = File::open("/proc/self/exe")?;
    // SAFETY: F_GET_SEALS only reads the seals of a valid fd we own; it fails with EINVAL on
    // files that are not memfds.
    let seals = unsafe { libc::fcntl(exe.as_raw_fd(), libc::F_GET_SEALS) };
    Ok(seals >= 0 && seals & SEALS == SEALS)
}

/// Whether our binary sits on a read-only mount: a write through `/proc/<pid>/exe` then fails
/// with EROFS (the path resolves to that very mount, which the container cannot remount), so
/// no copy is needed. This is the cheap deployment runc 1.2's `memfd-bind` aims at: bind-mount
/// the runtime read-only once at boot instead of copying ~7 MB into a memfd per invocation.
fn on_read_only_mount(exe: &File) -> bool {
    nix::sys::statfs::fstatfs(exe)
        .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Bind-mount our binary read-only onto itself in a new private mount namespace and
/// re-execute through it. Returns only on failure (the caller then falls back to the copy).
fn reexec_from_ro_bind(argv: &[&CStr], envp: &[&CStr]) -> io::Result<()> {
    use nix::mount::{mount, MsFlags};
    let path = std::fs::read_link("/proc/self/exe")?;
    if !path.is_file() {
        return Err(io::Error::other("our binary's path no longer names it"));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    mount(
        Some(&path),
        &path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        &path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )?;
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    Err(nix::unistd::execve(&cpath, argv, envp).unwrap_err().into())
}

/// Re-execute from a read-only clone of our binary's mount that is attached to no mount
/// namespace: `open_tree(OPEN_TREE_CLONE)` of the binary, `mount_setattr(MOUNT_ATTR_RDONLY)`
/// on that clone, then `execveat` through it. Nothing changes in any namespace (unlike the
/// private-namespace bind below, it suits every bundle, hooks and shared propagation
/// included), and there is no namespace to copy now or tear down at exit. The clone is
/// dissolved when exec closes its fd; our image keeps it alive, unmounted, so nothing can
/// reach it to remount it (crun's bind + lazy umount gives the same). Returns only on
/// failure, e.g. ENOSYS before Linux 5.12 (the caller then falls back).
fn reexec_from_detached_ro_mount(argv: &[&CStr], envp: &[&CStr]) -> io::Result<()> {
    let path = std::fs::read_link("/proc/self/exe")?;
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open_tree takes a valid C path and flags; it returns a new fd or -1.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd (checked above) that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size_of::<mount_attr>()` bytes from a valid pointer; the
    // empty path with AT_EMPTY_PATH names the mount behind `tree`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The path could have been replaced since we started: exec only the very file we run.
    let ours = File::open("/proc/self/exe")?.metadata()?;
    let clone = nix::sys::stat::fstat(tree.as_raw_fd())?;
    if clone.st_dev != ours.dev() || clone.st_ino != ours.ino() {
        return Err(io::Error::other("our binary's path no longer names it"));
    }
    // Held until we return (only if exec fails); see `hand_off_dissolve`.
    let _helper = hand_off_dissolve(&tree);
    let argv_p: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_p: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: both arrays are null-terminated and point into CStrs that outlive the call;
    // execveat only returns on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            tree.as_raw_fd(),
            c"".as_ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    Err(io::Error::last_os_error())
}

/// The detached clone is dissolved when the last fd of `tree` is closed, and dissolving waits
/// for an RCU grace period (0.05-10 ms on a busy VM). Left to exec (which closes `tree`, being
/// close-on-exec), that wait would hold up the whole command. A forked helper keeps a copy,
/// waits until we have exec'd (EOF on a pipe whose write end is close-on-exec in us), then
/// closes it and exits: the wait happens beside our work. Returns the write end, which the
/// caller keeps until exec (dropped if exec fails, which releases the helper too); `None` if
/// no helper could be made (exec then dissolves the clone itself, as before).
fn hand_off_dissolve(tree: &OwnedFd) -> Option<OwnedFd> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    // SAFETY: skiff-runtime is single-threaded when it seals itself (first thing `main` does),
    // and the child only makes async-signal-safe calls (close, read, _exit).
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: raw fds we own in this process; `_exit` never returns.
            unsafe {
                libc::close(write_end.as_raw_fd());
                let mut byte = 0u8;
                loop {
                    let n = libc::read(read_end.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
                    if n < 0 && *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    break;
                }
                libc::close(tree.as_raw_fd());
                libc::_exit(0)
            }
        }
        pid if pid > 0 => Some(write_end),
        _ => None,
    }
}

/// Make sure no process we fork can write to our binary: returns at once if we already run
/// from a sealed memfd or a read-only mount; otherwise re-executes (same argv and environment)
/// from a read-only detached clone of the binary's mount; where the kernel cannot make one
/// (before 5.12), from a read-only bind mount in a private mount namespace when
/// `allow_private_ns()` says the bundle allows it, else from a sealed memfd copy. Never
/// returns on success of a re-exec.
pub fn ensure_sealed(allow_private_ns: impl FnOnce() -> bool) -> io::Result<()> {
    if is_sealed()? {
        return Ok(());
    }
    let exe = File::open("/proc/self/exe")?;
    if on_read_only_mount(&exe) {
        return Ok(());
    }
    let (args, env) = argv_envp()?;
    let argv: Vec<&CStr> = args.iter().map(CString::as_c_str).collect();
    let envp: Vec<&CStr> = env.iter().map(CString::as_c_str).collect();
    if let Err(err) = reexec_from_detached_ro_mount(&argv, &envp) {
        tracing::debug!(%err, "detached read-only mount re-exec failed");
    }
    if allow_private_ns() {
        if let Err(err) = reexec_from_ro_bind(&argv, &envp) {
            // Still in our original image; the namespace (if made) is harmless: copy instead.
            tracing::debug!(%err, "read-only bind re-exec failed; using a sealed memfd copy");
        }
    }
    let size = exe.metadata()?.len();
    // SAFETY: the name is a valid C string; the flags are valid memfd_create flags. The fd is
    // owned by `memfd` right after the check.
    let raw = unsafe {
        libc::memfd_create(
            c"skiff-runtime".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut copied: u64 = 0;
    while copied < size {
        // SAFETY: both fds are valid for the duration of the call; a null offset pointer means
        // "use and advance the file offset of `exe`".
        let n = unsafe {
            libc::sendfile(
                memfd.as_raw_fd(),
                exe.as_raw_fd(),
                std::ptr::null_mut(),
                (size - copied) as usize,
            )
        };
        match n {
            n if n < 0 => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            0 => break,
            n => copied += n as u64,
        }
    }
    if copied != size {
        return Err(io::Error::other(format!(
            "copied {copied} of {size} bytes of /proc/self/exe"
        )));
    }
    // SAFETY: F_ADD_SEALS on our own memfd with valid seal flags.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // fexecve only returns on failure. The memfd is close-on-exec, which is fine for an ELF
    // image (the kernel holds its own reference once the image is mapped).
    let err = nix::unistd::fexecve(memfd.as_raw_fd(), &argv, &envp).unwrap_err();
    Err(io::Error::from(err))
}

fn argv_envp() -> io::Result<(Vec<CString>, Vec<CString>)> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(io::Error::other)
        })
        .collect::<io::Result<_>>()?;
    Ok((args, env))
}

/// Whether a bundle's `config.json` (raw JSON) can run with the runtime in a private mount
/// namespace: no hooks that run in the runtime's namespace (prestart, createRuntime,
/// poststart, poststop) and no shared propagation (rootfs or any mount) that should reach the
/// host. Unreadable or unparsable configs say no (the copy is always correct).
pub fn allows_private_ns(config: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(config) else {
        return false;
    };
    let runtime_hooks = ["prestart", "createRuntime", "poststart", "poststop"];
    if runtime_hooks
        .iter()
        .any(|h| v["hooks"][h].as_array().is_some_and(|a| !a.is_empty()))
    {
        return false;
    }
    let shared = |s: &str| s == "shared" || s == "rshared";
    if v["linux"]["rootfsPropagation"].as_str().is_some_and(shared) {
        return false;
    }
    !v["mounts"].as_array().is_some_and(|mounts| {
        mounts.iter().any(|m| {
            m["options"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x.as_str().is_some_and(shared)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::allows_private_ns;

    #[test]
    fn private_ns_only_without_host_visible_effects() {
        assert!(allows_private_ns(
            br#"{"mounts":[{"options":["rbind","rprivate"]}]}"#
        ));
        assert!(allows_private_ns(
            br#"{"hooks":{"startContainer":[{"path":"/x"}]}}"#
        ));
        assert!(!allows_private_ns(
            br#"{"hooks":{"prestart":[{"path":"/x"}]}}"#
        ));
        assert!(!allows_private_ns(
            br#"{"linux":{"rootfsPropagation":"rshared"}}"#
        ));
        assert!(!allows_private_ns(
            br#"{"mounts":[{"options":["rbind","rshared"]}]}"#
        ));
        assert!(!allows_private_ns(b"not json"));
    }
}
