//! Every process-level syscall the monitor makes, each in one small named function.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, sethostname, setsid, ForkResult, Pid};

/// Block `signals` for this (single-threaded) process; they are then read from a signalfd or
/// `sigwait`. Children started with `std::process::Command` get an empty mask back.
pub fn block_signals(signals: &[Signal]) -> Result<SigSet, String> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;
    Ok(set)
}

/// A non-blocking, close-on-exec signalfd for an already blocked set.
pub fn signal_fd(set: &SigSet) -> Result<SignalFd, String> {
    SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Detach from the caller: fork (the parent exits 0 at once), then start a new session so the
/// caller's death or terminal cannot reach us. Returns in the child only.
pub fn daemonize() -> Result<(), String> {
    // SAFETY: the process is single-threaded here (no threads are ever started), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().map_err(|e| format!("setsid: {e}"))?;
    Ok(())
}

/// Orphaned descendants (the container init, once `create` returns) become our children.
pub fn set_child_subreaper() -> Result<(), String> {
    prctl::set_child_subreaper(true).map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER): {e}"))
}

/// Point fds 0, 1, 2 (as listed) at /dev/null.
pub fn stdio_to_dev_null(fds: &[i32]) -> Result<(), String> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    for &fd in fds {
        dup2(null.as_raw_fd(), fd).map_err(|e| format!("dup2 /dev/null to {fd}: {e}"))?;
    }
    Ok(())
}

/// New network, IPC and UTS namespaces for the pod sandbox (and a PID namespace for the
/// children of the caller when `pid`), and its hostname.
pub fn enter_sandbox_namespaces(hostname: &str, pid: bool) -> Result<(), String> {
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    if pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    unshare(flags).map_err(|e| format!("unshare({flags:?}): {e} (needs CAP_SYS_ADMIN)"))?;
    sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))
}

/// fork(2): `Ok(None)` in the child, `Ok(Some(pid))` in the parent. Only for a single-threaded
/// caller (the pause process is).
pub fn fork_process() -> Result<Option<Pid>, String> {
    // SAFETY: the pause process is single-threaded (no async runtime, no threads started), so
    // the child may run any code after fork.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(None),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Some(child)),
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Reap one exited child without blocking. `Ok(None)` when none is ready (or none exist).
pub fn reap_one() -> Result<Option<(Pid, WaitStatus)>, String> {
    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => Ok(None),
        Ok(status) => Ok(status.pid().map(|p| (p, status))),
        Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(format!("waitpid: {e}")),
    }
}

/// Put an fd into non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| format!("F_GETFL: {e}"))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(|e| format!("F_SETFL: {e}"))?;
    Ok(())
}

/// Makes `cmd`'s child start with an empty signal mask: the monitor blocks SIGCHLD and SIGUSR1
/// for its signalfd, and a blocked mask survives fork and exec, so without this the container
/// (which the runtime starts from our child) would never see SIGUSR1 or SIGCHLD.
pub fn child_with_empty_sigmask(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls sigemptyset and
    // sigprocmask, which are async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            if libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Receives one file descriptor (SCM_RIGHTS) on a connected unix socket: the pty master a
/// runtime sends on its `--console-socket`.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 1024];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("recvmsg on the console socket: {e}"))?;
    for c in msg
        .cmsgs()
        .map_err(|e| format!("console socket message: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us (SCM_RIGHTS); nothing
                // else owns it.
                return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err("the runtime sent no pty master on the console socket".into())
}

/// Sets a pty's window size (TIOCSWINSZ), for attach sessions' resize events.
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> Result<(), String> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r != 0 {
        return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens `/proc/self/ns/<kind>` for each kind (close-on-exec), to return to these namespaces
/// later (`child_in_namespaces`).
pub fn open_namespaces(kinds: &[&str]) -> Result<Vec<std::os::fd::OwnedFd>, String> {
    kinds
        .iter()
        .map(|k| {
            File::open(format!("/proc/self/ns/{k}"))
                .map(std::os::fd::OwnedFd::from)
                .map_err(|e| format!("open /proc/self/ns/{k}: {e}"))
        })
        .collect()
}

/// Makes `cmd`'s child enter the namespaces `fds` refer to (from `open_namespaces`) before it
/// execs: the pod monitor lives in the pod's net/ipc/uts namespaces, the runtime it starts must
/// not.
pub fn child_in_namespaces(cmd: &mut std::process::Command, fds: Vec<std::os::fd::RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which is
    // async-signal-safe; it reads the fd list allocated before the fork and frees nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::setns(fd, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// The pod's bare pause (PID 1 of the pod's PID namespace) is killed when the pod monitor, its
/// parent, dies.
pub fn die_with_parent() -> Result<(), String> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))
}

/// Children forked from now on start in the PID namespace `fd` refers to (the caller's own,
/// after an `unshare(CLONE_NEWPID)` made them start in a new one).
pub fn set_pid_ns_for_children(fd: &std::os::fd::OwnedFd) -> Result<(), String> {
    // SAFETY: setns(2) on a namespace fd we own; it changes only this process's namespace for
    // future children.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
        return Err(format!(
            "setns(CLONE_NEWPID) back to the host's: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// clone(2) into new user, network, IPC and UTS namespaces (and PID with `pid`), fork-like
/// (same stack, copied memory): `Ok(None)` in the child, `Ok(Some(pid))` in the parent. The
/// user namespace is made first, so it owns the others (as runc's init, `clone(2)` says so
/// for flags given together); the child has every capability in it but no uid or gid there
/// until the parent writes its maps (`write_id_maps`).
///
/// Only for a single-threaded caller (the pause process is). The child must keep to plain
/// syscalls and code that needs no thread id from the C library (a raw clone does not update
/// glibc's cached one): `become_userns_root`, then the pause's `sigwait` loop.
pub fn clone_into_userns(pid: bool) -> Result<Option<Pid>, String> {
    let mut flags =
        libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if pid {
        flags |= libc::CLONE_NEWPID;
    }
    // SAFETY: clone(2) without CLONE_VM and with a null stack behaves as fork(2): the child
    // gets a copy of our memory and continues on its copy of this stack. We are
    // single-threaded, so no lock is held by another thread in the copy.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        0 => Ok(None),
        n if n > 0 => Ok(Some(Pid::from_raw(n as i32))),
        _ => Err(format!(
            "clone(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS{}): {} (needs CAP_SYS_ADMIN)",
            if pid { "|CLONE_NEWPID" } else { "" },
            Errno::last()
        )),
    }
}

/// Writes the uid and gid maps of `child`'s user namespace (from the parent, which holds
/// CAP_SETUID/CAP_SETGID over it; `setgroups` stays allowed, as containers set groups).
pub fn write_id_maps(child: Pid, uid_map: &str, gid_map: &str) -> Result<(), String> {
    for (file, text) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, text).map_err(|e| {
            format!(
                "user namespace: the kernel refused {file} {:?}: {e}",
                text.trim_end().replace('\n', ",")
            )
        })?;
    }
    Ok(())
}

/// In the child of `clone_into_userns`, once its maps are written: become root of the user
/// namespace (gid and uid 0 there, no supplemental groups), so the namespaces it holds are
/// its own, and set the pod's hostname in its new UTS namespace.
pub fn become_userns_root(hostname: &str) -> Result<(), String> {
    // SAFETY: plain syscalls; the group list is null with length 0.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(format!(
                "setgroups in the user namespace: {}",
                Errno::last()
            ));
        }
        if libc::setresgid(0, 0, 0) != 0 {
            return Err(format!(
                "setresgid(0) in the user namespace: {}",
                Errno::last()
            ));
        }
        if libc::setresuid(0, 0, 0) != 0 {
            return Err(format!(
                "setresuid(0) in the user namespace: {}",
                Errno::last()
            ));
        }
    }
    sethostname(hostname).map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
    // The uid change made us non-dumpable, and, never having exec'd, our memory still belongs
    // to the host's user namespace: the runtime's processes, once in the pod's user namespace,
    // could then not open our /proc/<pid>/ns/* to join the pod (EACCES). A pause exec'd as the
    // namespace's root is dumpable; so are we (we hold nothing the pod's root may not see).
    // SAFETY: PR_SET_DUMPABLE with a plain integer argument.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) } != 0 {
        return Err(format!("prctl(PR_SET_DUMPABLE): {}", Errno::last()));
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe2: {e}"))
}

/// Waits for `pid` (a child) to end, discarding its status.
pub fn reap(pid: Pid) {
    let _ = waitpid(pid, None);
}

/// SIGKILL to `pid`.
pub fn kill(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
}
