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
//! With `--uid-map`/`--gid-map` (a pod user namespace; needs `--socket-dir`) the pod monitor
//! stays in all of the host's namespaces and clones the pause into a new user namespace
//! together with the pod's net/ipc/uts (and pid) namespaces, which that user namespace then
//! owns; the monitor writes the child's `uid_map`/`gid_map` (as runc's parent does for its
//! init), and the child becomes root there and holds them (`userns_pause`).
//! A forked pause child (either case) then exec's the tiny pause (`tiny_pause.rs`), so that it
//! stops sharing the monitor's pages (RSS counted them twice).
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
    if let (Some(maps), Some(dir)) = (&args.userns, socket_dir) {
        let Some(child) = userns_pause(&args.hostname, args.pid_ns, maps)? else {
            // The pause, in the pod's namespaces.
            return hold_exec(set);
        };
        // The pod monitor never left the host's namespaces: nothing to return to.
        return serve(dir, Some(child), Vec::new(), set);
    }
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
                return hold_exec(set);
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
    let Some(dir) = socket_dir else {
        say_ready("ready\n")?;
        return hold(set);
    };
    serve(dir, pause_child, host_ns, set)
}

/// The pod monitor: serves `<dir>/monitor.sock` and monitors the pod's containers, whose
/// runtimes it starts in the namespaces `host_ns` (empty: its own). `ready <pause pid>` when
/// the pause is a child of ours, else `ready`.
fn serve(
    dir: &Path,
    pause_child: Option<nix::unistd::Pid>,
    host_ns: Vec<std::os::fd::OwnedFd>,
    set: nix::sys::signal::SigSet,
) -> Result<(), String> {
    let ready = match pause_child {
        Some(child) => format!("ready {child}\n"),
        None => "ready\n".to_owned(),
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

/// Clones the pause into the pod's user namespace and its net/ipc/uts (and pid) namespaces
/// (`sys::clone_into_userns`), writes its maps from here, and lets it become root there.
/// `Ok(None)` in the pause (ready to hold), `Ok(Some(pid))` here once the pause is ready; an
/// error names what failed, on either side.
fn userns_pause(
    hostname: &str,
    pid_ns: bool,
    maps: &crate::args::UsernsMaps,
) -> Result<Option<nix::unistd::Pid>, String> {
    use std::io::Read;
    // go: the maps are written; status: the pause says `ok` or what failed.
    let (go_r, go_w) = sys::pipe()?;
    let (status_r, status_w) = sys::pipe()?;
    let Some(child) = sys::clone_into_userns(pid_ns)? else {
        drop((go_w, status_r));
        let mut go = [0u8; 1];
        let r = match std::fs::File::from(go_r).read(&mut go) {
            Ok(1) => sys::become_userns_root(hostname)
                // After the uid change, which clears it: the pause dies with the monitor.
                .and_then(|()| sys::die_with_parent()),
            _ => Err("the pod monitor gave up before writing the maps".into()),
        };
        let mut status = std::fs::File::from(status_w);
        match r {
            Ok(()) => {
                let _ = status.write_all(b"ok");
                return Ok(None);
            }
            Err(e) => {
                let _ = status.write_all(e.as_bytes());
                // SAFETY: _exit(2) ends the child at once, running no destructor or atexit
                // handler of the parent's copied state.
                unsafe { libc::_exit(1) }
            }
        }
    };
    drop((go_r, status_w));
    let fail = |e: String| {
        sys::kill(child);
        sys::reap(child);
        Err(e)
    };
    if let Err(e) = sys::write_id_maps(child, &maps.uid_map, &maps.gid_map) {
        return fail(e);
    }
    if let Err(e) = std::fs::File::from(go_w).write_all(b"1") {
        return fail(format!("starting the pause in the user namespace: {e}"));
    }
    let mut status = String::new();
    let _ = std::fs::File::from(status_r).read_to_string(&mut status);
    match status.as_str() {
        "ok" => Ok(Some(child)),
        "" => fail("the pause ended before it was ready in the user namespace".into()),
        e => fail(format!("the pause in the user namespace: {e}")),
    }
}

fn say_ready(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("write ready: {e}"))
}

/// The bare pause of a forked child: exec's the tiny pause (`tiny_pause.rs`), which owns
/// two pages instead of sharing every page of this copy of the monitor; where that cannot
/// run, holds here (`hold`), as before.
fn hold_exec(set: nix::sys::signal::SigSet) -> Result<(), String> {
    // Before the exec: the tiny pause must not keep the caller's pipes open.
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    #[cfg(target_arch = "x86_64")]
    {
        // Only returns on failure; stderr is gone by now, so the fallback is silent.
        let _ = crate::tiny_pause::exec();
    }
    hold(set)
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
