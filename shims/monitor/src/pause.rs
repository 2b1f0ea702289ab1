//! `pause`: the pod sandbox's namespace holder.
//!
//! Unshares net, ipc and uts, sets the hostname, says `ready` on stdout and closes it, then
//! sleeps in `sigwait` until SIGTERM or SIGINT, reaping any zombie handed to it meanwhile.
//! With `--pid-ns yes` it also unshares a PID namespace and forks: the child, PID 1 there, is
//! the pause; the parent says `ready <child pid>` and exits.
//! The loopback link is brought up by the CNI `loopback` plugin, not here.

use std::io::Write;

use nix::sys::signal::Signal;

use crate::args::PauseArgs;
use crate::sys;

pub fn run(args: PauseArgs) -> Result<(), String> {
    // Blocked before anything else so that a SIGTERM sent right after `ready` is not lost.
    let set = sys::block_signals(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD])?;
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
    if let Some(ready) = ready {
        let mut out = std::io::stdout().lock();
        out.write_all(ready)
            .and_then(|()| out.flush())
            .map_err(|e| format!("write ready: {e}"))?;
    }
    // Close stdin/stdout/stderr for good: nothing is written after `ready`, and a pipe kept
    // open would make the caller wait for EOF.
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    skiff_memtrim::trim_code_pages();
    loop {
        match set.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => return Ok(()),
            Ok(_) => while let Ok(Some(_)) = sys::reap_one() {},
            Err(_) => {}
        }
    }
}
