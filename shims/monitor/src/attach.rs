//! The container's stdin and terminal, for the CRI server's Attach.
//!
//! A unix socket `<state-dir>/attach` takes any number of sessions. Each sends frames:
//! `[kind: u8][len: u16 big-endian][payload]`, kind 0 = bytes for the container's stdin,
//! kind 1 = terminal size (`cols: u16, rows: u16`, big-endian). Input goes to the stdin pipe (or
//! the pty master for a tty container) without blocking the monitor: it is buffered, and
//! sessions are not read while the buffer is full. With `--stdin once` the container's stdin is
//! closed when the first session ends (after its input was delivered).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::args::StdinMode;

/// Frame kinds.
pub const DATA: u8 = 0;
pub const RESIZE: u8 = 1;
/// Sessions are not read while this much input waits for the container.
const MAX_PENDING: usize = 256 * 1024;
const MAX_SESSIONS: usize = 16;

pub struct Attach {
    listener: UnixListener,
    sessions: Vec<Session>,
    /// Where input goes: the stdin pipe's write end or a dup of the pty master.
    stdin: Option<File>,
    /// The pty master, for resizes.
    console: Option<File>,
    pending: Vec<u8>,
    mode: StdinMode,
    /// `--stdin once`: the first session ended; close stdin once `pending` is delivered.
    close_when_flushed: bool,
}

struct Session {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Attach {
    /// Binds `<dir>/attach` (through /proc/self/fd, so a long state path still fits in a
    /// socket address).
    pub fn bind(dir: &Path, mode: StdinMode) -> Result<Attach, String> {
        let d = File::open(dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(dir.join("attach"));
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}/attach", d.as_raw_fd());
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("binding {}/attach: {e}", dir.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("attach socket: {e}"))?;
        Ok(Attach {
            listener,
            sessions: Vec::new(),
            stdin: None,
            console: None,
            pending: Vec::new(),
            mode,
            close_when_flushed: false,
        })
    }

    /// The write end of the container's stdin (pipe or pty master), when it has one.
    pub fn set_stdin(&mut self, f: File) -> Result<(), String> {
        if self.mode == StdinMode::None {
            return Ok(());
        }
        crate::sys::set_nonblocking(f.as_fd())?;
        self.stdin = Some(f);
        Ok(())
    }

    /// The pty master (a dup), for resize frames.
    pub fn set_console(&mut self, f: File) {
        self.console = Some(f);
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Sessions to read from now (none while the input buffer is full).
    pub fn readable_sessions(&self) -> impl Iterator<Item = (usize, BorrowedFd<'_>)> {
        let open = self.pending.len() < MAX_PENDING;
        self.sessions
            .iter()
            .enumerate()
            .filter(move |_| open)
            .map(|(i, s)| (i, s.stream.as_fd()))
    }

    /// The stdin fd when there is input waiting for it.
    pub fn stdin_to_write(&self) -> Option<BorrowedFd<'_>> {
        self.stdin
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|f| f.as_fd())
    }

    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.sessions.len() >= MAX_SESSIONS || stream.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees the connection close
            }
            self.sessions.push(Session {
                stream,
                buf: Vec::new(),
            });
        }
    }

    /// Reads the sessions whose index is in `ready` (highest first, so removal keeps the
    /// others' indexes valid).
    pub fn read_sessions(&mut self, mut ready: Vec<usize>) {
        ready.sort_unstable_by(|a, b| b.cmp(a));
        for i in ready {
            let mut chunk = [0u8; 4096];
            let closed = loop {
                match self.sessions[i].stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => {
                        self.sessions[i].buf.extend_from_slice(&chunk[..n]);
                        if self.sessions[i].buf.len() >= MAX_PENDING {
                            break false;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let buf = std::mem::take(&mut self.sessions[i].buf);
            let rest = self.frames(&buf);
            self.sessions[i].buf = buf[rest..].to_vec();
            if closed {
                self.sessions.swap_remove(i);
                if self.mode == StdinMode::Once {
                    self.close_when_flushed = true;
                    self.maybe_close();
                }
            }
        }
    }

    /// Applies the complete frames at the start of `buf`; returns how many bytes they took.
    fn frames(&mut self, buf: &[u8]) -> usize {
        let mut at = 0;
        while buf.len() - at >= 3 {
            let kind = buf[at];
            let len = u16::from_be_bytes([buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() - at - 3 < len {
                break;
            }
            let payload = &buf[at + 3..at + 3 + len];
            match kind {
                DATA if self.stdin.is_some() && !self.close_when_flushed => {
                    self.pending.extend_from_slice(payload)
                }
                RESIZE if payload.len() == 4 => {
                    if let Some(c) = &self.console {
                        let cols = u16::from_be_bytes([payload[0], payload[1]]);
                        let rows = u16::from_be_bytes([payload[2], payload[3]]);
                        let _ = crate::sys::set_winsize(c.as_fd(), cols, rows);
                    }
                }
                _ => {} // input without a stdin, or an unknown kind: dropped
            }
            at += 3 + len;
        }
        at
    }

    /// Writes waiting input to the container's stdin until it would block.
    pub fn write_stdin(&mut self) {
        while let (Some(f), false) = (self.stdin.as_mut(), self.pending.is_empty()) {
            match f.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    // The container closed its stdin (or exited): nothing more can go in.
                    self.stdin = None;
                    self.pending.clear();
                }
            }
        }
        self.maybe_close();
    }

    fn maybe_close(&mut self) {
        if self.close_when_flushed && self.pending.is_empty() {
            self.stdin = None; // the container reads EOF (for a pipe)
        }
    }
}
