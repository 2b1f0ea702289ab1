//! The monitor's event loop, shared by its two long-lived roles:
//! - the **pod monitor** (`pause --socket-dir DIR`): the sandbox's pause process (it holds the
//!   pod's net/ipc/uts namespaces) that also monitors every container of the pod. The CRI
//!   server asks it to create a container over `DIR/monitor.sock`; it runs the runtime's
//!   `create` back in the host's namespaces, stays the containers' parent (a child subreaper),
//!   holds their stdio, logs, attach sockets and writes their exit records.
//! - the one-container `container` role (pods whose pause holds a PID namespace): the same loop
//!   with one container and no socket, ending when the container is done.
//!
//! Everything runs in one `poll` over a signalfd (SIGCHLD, SIGUSR1, SIGTERM, SIGINT), the
//! control socket and its sessions, and each container's fds.
//!
//! Control protocol: a client connects to `monitor.sock`, writes the `container` role's flags
//! as NUL-separated strings (`--runtime\0BIN\0--runtime-root\0DIR\0...`), and shuts down its
//! write side; the monitor answers one line, `ok` (the runtime's `create` runs: wait for
//! `created` or `create-error` in the state dir as with the `container` role) or
//! `error <message>` (nothing was started), and closes.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::args::ContainerArgs;
use crate::container::{self, Container, Reaped};
use crate::{sys, timefmt};

/// Delay after the first activity since the last trim before the pages it touched are trimmed
/// again. Not pushed back by further activity, so a container that logs without pause still
/// gets its monitor trimmed every couple of seconds (only the hot loop's pages come back).
const TRIM_AFTER: Duration = Duration::from_secs(2);
/// A control request is a few hundred bytes of flags.
const MAX_REQUEST: usize = 64 * 1024;
const MAX_SESSIONS: usize = 16;

pub struct Pod {
    sfd: SignalFd,
    /// The control socket (pod monitor only).
    control: Option<UnixListener>,
    sessions: Vec<(UnixStream, Vec<u8>)>,
    containers: Vec<Container>,
    /// Children reaped while some `create` was running, not (yet) known as anyone's init.
    early: Vec<(Pid, WaitStatus, String)>,
    /// The host's net/ipc/uts namespaces, which the runtime must run in (pod monitor only).
    host_ns: Vec<OwnedFd>,
    /// When to drop clean file pages again (see `skiff_memtrim::trim_code_pages`).
    trim_at: Option<Instant>,
    /// SIGTERM/SIGINT seen (pod monitor): take no more containers, end when none is left.
    stopping: bool,
    /// The `container` role: end when the container is done.
    end_when_empty: bool,
    /// The bare pause this pod monitor forked (PID 1 of the pod's PID namespace): when it is
    /// gone the pod is being stopped.
    pause_child: Option<Pid>,
}

impl Pod {
    pub fn new(
        sfd: SignalFd,
        control: Option<UnixListener>,
        host_ns: Vec<OwnedFd>,
        end_when_empty: bool,
    ) -> Pod {
        Pod {
            sfd,
            control,
            sessions: Vec::new(),
            containers: Vec::new(),
            early: Vec::new(),
            host_ns,
            trim_at: Some(Instant::now()),
            stopping: false,
            end_when_empty,
            pause_child: None,
        }
    }

    pub fn set_pause_child(&mut self, pid: Option<Pid>) {
        self.pause_child = pid;
    }

    /// Take no more containers; end once the monitored ones are done.
    fn stop(&mut self) {
        self.stopping = true;
        self.control = None;
        self.sessions.clear();
    }

    /// Starts a container (its runtime `create`) in this process.
    pub fn add(&mut self, args: ContainerArgs) -> Result<(), String> {
        let prepared = container::prepare(args)?;
        let c = Container::start(prepared, std::process::id(), &self.host_ns)?;
        self.push(c);
        Ok(())
    }

    /// Monitors a container already started.
    pub fn push(&mut self, c: Container) {
        self.containers.push(c);
    }

    pub fn run(&mut self) -> Result<(), String> {
        loop {
            let now = Instant::now();
            let mut i = 0;
            while i < self.containers.len() {
                if self.containers[i].done(now) {
                    self.containers.swap_remove(i).finish();
                } else {
                    i += 1;
                }
            }
            if self.containers.is_empty() && (self.end_when_empty || self.stopping) {
                return Ok(());
            }
            if self.trim_at.is_some_and(|t| t <= now) {
                skiff_memtrim::trim_heap();
                skiff_memtrim::trim_code_pages();
                self.trim_at = None;
            }
            let deadline = self
                .containers
                .iter()
                .filter_map(Container::deadline)
                .chain(self.trim_at)
                .min();
            let timeout = match deadline.map(|d| d.saturating_duration_since(now)) {
                // Round up so a deadline is never polled for 0 ms repeatedly.
                Some(t) => PollTimeout::try_from(t + Duration::from_micros(999))
                    .unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };

            let mut fds = Vec::with_capacity(4 + 3 * self.containers.len());
            fds.push(PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN));
            let control_idx = self.control.as_ref().map(|l| {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let session_start = fds.len();
            for (s, _) in &self.sessions {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            let slots: Vec<_> = self
                .containers
                .iter()
                .map(|c| c.poll_fds(&mut fds))
                .collect();
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let is_ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let signals = is_ready(0);
            let control = control_idx.is_some_and(is_ready);
            let sessions: Vec<usize> = (0..self.sessions.len())
                .filter(|i| is_ready(session_start + i))
                .collect();
            let ready: Vec<_> = slots.iter().map(|s| s.ready(&fds)).collect();
            drop(fds);

            let mut active = signals || control || !sessions.is_empty();
            for (c, r) in self.containers.iter_mut().zip(ready) {
                active |= r.any();
                c.handle(r);
            }
            if active && self.trim_at.is_none() {
                self.trim_at = Some(Instant::now() + TRIM_AFTER);
            }
            if control {
                self.accept();
            }
            if !sessions.is_empty() {
                self.read_sessions(sessions);
            }
            if signals {
                self.signals();
            }
            for c in &mut self.containers {
                c.flush();
            }
        }
    }

    fn signals(&mut self) {
        let (mut chld, mut usr1) = (false, false);
        while let Ok(Some(info)) = self.sfd.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => chld = true,
                libc::SIGUSR1 => usr1 = true,
                libc::SIGTERM | libc::SIGINT => self.stop(),
                _ => {}
            }
        }
        if usr1 {
            // ReopenContainerLog: reopening a log that was not rotated is harmless.
            for c in &mut self.containers {
                c.reopen_log();
            }
        }
        if chld {
            self.reap();
        }
    }

    /// Reap every exited child and hand it to the container it belongs to.
    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = sys::reap_one() {
            let at = timefmt::now();
            if Some(pid) == self.pause_child {
                self.pause_child = None;
                self.stop();
                continue;
            }
            let (mut handled, mut failed) = (false, None);
            for (i, c) in self.containers.iter_mut().enumerate() {
                match c.reaped(pid, status, &at, &mut self.early) {
                    Reaped::NotOurs => continue,
                    Reaped::Handled => handled = true,
                    Reaped::CreateFailed => (handled, failed) = (true, Some(i)),
                }
                break;
            }
            if let Some(i) = failed {
                self.containers.swap_remove(i); // nothing to monitor
            }
            if !handled && self.containers.iter().any(Container::creating) {
                self.early.push((pid, status, at));
            }
        }
        if !self.containers.iter().any(Container::creating) {
            self.early.clear();
        }
    }

    fn accept(&mut self) {
        let Some(l) = &self.control else { return };
        while let Ok((s, _)) = l.accept() {
            if self.sessions.len() >= MAX_SESSIONS || s.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees the connection close
            }
            self.sessions.push((s, Vec::new()));
        }
    }

    /// Reads the ready sessions; a complete request (EOF) is answered and the session closed.
    fn read_sessions(&mut self, mut ready: Vec<usize>) {
        ready.sort_unstable_by(|a, b| b.cmp(a));
        for i in ready {
            let mut chunk = [0u8; 4096];
            let complete = loop {
                let (s, buf) = &mut self.sessions[i];
                match s.read(&mut chunk) {
                    Ok(0) => break Some(true),
                    Ok(n) if buf.len() + n > MAX_REQUEST => break Some(false),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                    Err(_) => break Some(false),
                }
            };
            let Some(ok) = complete else { continue };
            let (mut s, buf) = self.sessions.swap_remove(i);
            if !ok {
                continue;
            }
            let reply = match self.request(&buf) {
                Ok(()) => "ok\n".to_owned(),
                Err(e) => format!("error {}\n", e.replace('\n', " ")),
            };
            // A fresh socket's buffer takes a line: this does not block for long.
            let _ = s.set_nonblocking(false);
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = s.write_all(reply.as_bytes());
        }
    }

    fn request(&mut self, buf: &[u8]) -> Result<(), String> {
        if self.stopping {
            return Err("the pod monitor is stopping".into());
        }
        let text = std::str::from_utf8(buf).map_err(|_| "request is not UTF-8".to_owned())?;
        let argv: Vec<String> = text
            .split('\0')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let args = ContainerArgs::parse(&argv)?;
        if self.containers.iter().any(|c| c.id == args.id) {
            return Err(format!("container {} is already monitored", args.id));
        }
        self.add(args)
    }
}
