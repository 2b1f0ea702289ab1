//! `pause`: the pod sandbox's namespace holder, and with `--socket-dir` the pod monitor.
//!
//! Unshares net, ipc and uts, sets the hostname, says `ready` on stdout and closes it, then
//! waits until SIGTERM or SIGINT, reaping any zombie handed to it meanwhile.
//! With `--pid-ns yes` it also unshares a PID namespace and forks: the child, PID 1 there, is
//! the pause; the parent says `ready <child pid>` and exits.
//! With `--socket-dir DIR` (and no PID namespace) it serves `DIR/monitor.sock` before saying
//! `ready`, and runs and monitors the pod's containers (`pod.rs`); it then ends after SIGTERM
//! once no container it monitors is left.
//! The loopback link is brought up by the CNI `loopback` plugin, not here.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sys::signal::Signal;

use crate::args::PauseArgs;
use crate::sys;

/// Code pages mapped per fault (see `skiff_memtrim::limit_fault_around`): the idle loop then
/// keeps only the pages it runs resident, not the kernel's 64 KiB around each.
pub const FAULT_AROUND: usize = 4 * 1024;

/// The pod monitor's control socket, in the `--socket-dir`.
pub const CONTROL_SOCKET: &str = "monitor.sock";

pub fn run(args: PauseArgs) -> Result<(), String> {
    skiff_memtrim::limit_fault_around(FAULT_AROUND);
    // Blocked before anything else so that a SIGTERM sent right after `ready` is not lost.
    let set = sys::block_signals(&[
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
    ])?;
    let socket_dir = args.socket_dir.as_deref().filter(|_| !args.pid_ns);
    // The runtime it starts for the containers runs in the host's namespaces, not the pod's.
    let host_ns = match socket_dir {
        Some(_) => sys::open_namespaces(&["net", "ipc", "uts"])?,
        None => Vec::new(),
    };
    sys::enter_sandbox_namespaces(&args.hostname, args.pid_ns)?;
    let ready = if args.pid_ns {
        match sys::fork_process()? {
            // The parent's work ends here: the caller tracks the child by the pid it prints.
            Some(child) => {
                let mut out = std::io::stdout().lock();
                out.write_all(format!("ready {child}\n").as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("write ready: {e}"))?;
                return Ok(());
            }
            None => None,
        }
    } else {
        Some(b"ready\n")
    };
    let control = match socket_dir {
        Some(dir) => {
            sys::set_child_subreaper()?;
            Some(bind_control(dir)?)
        }
        None => None,
    };
    if let Some(ready) = ready {
        let mut out = std::io::stdout().lock();
        out.write_all(ready)
            .and_then(|()| out.flush())
            .map_err(|e| format!("write ready: {e}"))?;
    }
    // Close stdin/stdout/stderr for good: nothing is written after `ready`, and a pipe kept
    // open would make the caller wait for EOF.
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    if let (Some(control), Some(dir)) = (control, socket_dir) {
        let _ = std::env::set_current_dir("/");
        let sfd = sys::signal_fd(&set)?;
        let mut pod = crate::pod::Pod::new(sfd, Some(control), host_ns, false);
        let r = pod.run();
        let _ = std::fs::remove_file(dir.join(CONTROL_SOCKET));
        return r;
    }
    skiff_memtrim::trim_code_pages();
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => return Ok(()),
            Ok(Signal::SIGCHLD) => while let Ok(Some(_)) = sys::reap_one() {},
            _ => {}
        }
    }
}

/// Binds `<dir>/monitor.sock` (through /proc/self/fd, so a long state path still fits in a
/// socket address), readable and writable by its owner only.
fn bind_control(dir: &Path) -> Result<UnixListener, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    let d = std::fs::File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(CONTROL_SOCKET));
    let path = format!("/proc/self/fd/{}/{CONTROL_SOCKET}", d.as_raw_fd());
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("binding {}/{CONTROL_SOCKET}: {e}", dir.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}/{CONTROL_SOCKET}: {e}", dir.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    Ok(listener)
}
