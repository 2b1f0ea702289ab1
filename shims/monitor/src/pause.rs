//! `pause`: the pod sandbox's namespace holder, and with `--socket-dir` the pod monitor.
//!
//! Unshares net, ipc and uts, sets the hostname, says `ready` on stdout and closes it, then
//! waits until SIGTERM or SIGINT, reaping any zombie handed to it meanwhile.
//! With `--pid-ns yes` it also unshares a PID namespace and forks: the child, PID 1 there, is
//! the pause; the parent says `ready <child pid>` and exits.
//! With `--socket-dir DIR` it serves `DIR/monitor.sock` before saying `ready`, and runs and
//! monitors the pod's containers (`pod.rs`); it then ends after SIGTERM once no container it
//! monitors is left. With both, the parent stays as the pod monitor (back in the host's PID
//! namespace for its children) and the child is a bare pause that dies with it; the pod
//! monitor ends when its pause is gone and no container is left.
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
    let socket_dir = args.socket_dir.as_deref();
    // The runtime it starts for the containers runs in the host's namespaces, not the pod's.
    let (host_ns, host_pid_ns) = match socket_dir {
        Some(_) => (
            sys::open_namespaces(&["net", "ipc", "uts"])?,
            sys::open_namespaces(&["pid"])?.pop(),
        ),
        None => (Vec::new(), None),
    };
    sys::enter_sandbox_namespaces(&args.hostname, args.pid_ns)?;
    let mut pause_child = None;
    if args.pid_ns {
        match sys::fork_process()? {
            // The child is PID 1 of the pod's PID namespace: a bare pause (which the pod
            // monitor's death kills).
            None => {
                drop((host_ns, host_pid_ns));
                if socket_dir.is_some() {
                    sys::die_with_parent()?;
                }
                return hold(set);
            }
            // Without a pod monitor the parent's work ends here: the caller tracks the child by
            // the pid it prints.
            Some(child) if socket_dir.is_none() => return say_ready(&format!("ready {child}\n")),
            // The pod monitor: its own children (the runtimes) go back to the host's PID
            // namespace.
            Some(child) => {
                if let Some(fd) = &host_pid_ns {
                    sys::set_pid_ns_for_children(fd)?;
                }
                pause_child = Some(child);
            }
        }
    }
    let ready = match pause_child {
        Some(child) => format!("ready {child}\n"),
        None => "ready\n".to_owned(),
    };
    let Some(dir) = socket_dir else {
        say_ready(&ready)?;
        return hold(set);
    };
    sys::set_child_subreaper()?;
    let control = bind_control(dir)?;
    say_ready(&ready)?;
    // Close stdin/stdout/stderr for good: nothing is written after `ready`, and a pipe kept
    // open would make the caller wait for EOF.
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    let _ = std::env::set_current_dir("/");
    let sfd = sys::signal_fd(&set)?;
    let mut pod = crate::pod::Pod::new(sfd, Some(control), host_ns, false);
    pod.set_pause_child(pause_child);
    let r = pod.run();
    let _ = std::fs::remove_file(dir.join(CONTROL_SOCKET));
    r
}

fn say_ready(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("write ready: {e}"))
}

/// The bare pause: holds the namespaces until SIGTERM or SIGINT, reaping what it inherits.
fn hold(set: nix::sys::signal::SigSet) -> Result<(), String> {
    // Close stdin/stdout/stderr for good: nothing is written after `ready`, and a pipe kept
    // open would make the caller wait for EOF.
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    skiff_memtrim::trim_heap();
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
