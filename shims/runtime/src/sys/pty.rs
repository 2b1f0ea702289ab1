//! The foreground side of terminal containers: receive the pty master that the container's
//! process sends over a console socket, and proxy it to our own stdio until the process exits.
//!
//! With `--console-socket` the caller (containerd's shim, conmon) receives the master itself.
//! Without it, `run`/`exec` of a `terminal: true` process in the foreground behave like runc:
//! we listen on a private socket, hand its path to libcontainer, and become the proxy. The
//! socket is bound before the container is built, so libcontainer's `connect` completes on the
//! listen backlog and no helper thread is needed (threads and `clone` do not mix).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// A listening console socket in a directory we own; removed on drop.
pub struct ConsoleListener {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleListener {
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept the container's connection and take the pty master it sent (SCM_RIGHTS).
    pub fn recv_master(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept()?;
        let mut buf = [0u8; 4096];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed this fd in our table for us; nothing
                    // else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(io::Error::other(
            "the console socket message carried no pty fd",
        ))
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Puts our stdin terminal (if it is one) in raw mode; restores it on drop.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enter() -> Self {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        Self { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

fn copy_winsize(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ read/write one `winsize` through a valid pointer; failure
    // (e.g. stdin is not a terminal) leaves everything unchanged and is ignored.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Copy what is readable from `from` to `to`; `Ok(false)` at EOF (EIO on a pty master means
/// every slave fd was closed).
fn pump(from: RawFd, to: RawFd) -> io::Result<bool> {
    let mut buf = [0u8; 16 * 1024];
    let n = match nix::unistd::read(from, &mut buf) {
        Ok(0) | Err(Errno::EIO) => return Ok(false),
        Ok(n) => n,
        Err(Errno::EAGAIN | Errno::EINTR) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let mut done = 0;
    while done < n {
        // SAFETY: `to` is a valid open fd for the duration of the call; the slice is in bounds.
        let w = unsafe { libc::write(to, buf[done..n].as_ptr().cast(), n - done) };
        if w < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += w as usize;
    }
    Ok(true)
}

/// Signals forwarded to the process while we wait for it (as runc's signal handler does).
const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Proxy `master` <-> our stdio until `child` exits; return its exit code (128+N if killed by
/// signal N). `master` may be `None` (no terminal): then only wait and forward signals.
pub fn proxy_and_wait(master: Option<OwnedFd>, child: Pid) -> io::Result<i32> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGWINCH);
    for s in FORWARDED {
        mask.add(*s);
    }
    mask.thread_block()?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let _raw = master.as_ref().map(|_| RawMode::enter());
    let stdin = io::stdin();
    let stdout_fd = io::stdout().as_raw_fd();
    if let Some(m) = &master {
        copy_winsize(stdin.as_fd(), m.as_fd());
    }
    let mut stdin_open = master.is_some();
    let mut status: Option<i32> = None;
    loop {
        if status.is_none() {
            status = reap(child)?;
        }
        if status.is_some() && master.is_none() {
            break;
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(m) = &master {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            if stdin_open && status.is_none() {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .collect();
        if ready[0] {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => {
                        if let Some(m) = &master {
                            copy_winsize(stdin.as_fd(), m.as_fd());
                        }
                    }
                    sig => {
                        if let Err(err) = kill(child, sig) {
                            tracing::warn!(%err, ?sig, "cannot forward signal");
                        }
                    }
                }
            }
        }
        if let Some(m) = &master {
            if ready.get(1) == Some(&true) && !pump(m.as_raw_fd(), stdout_fd)? {
                // Every slave fd is closed: the output is complete.
                if status.is_none() {
                    status = Some(wait_blocking(child)?);
                }
                break;
            }
            if ready.get(2) == Some(&true) && !pump(stdin.as_raw_fd(), m.as_raw_fd())? {
                stdin_open = false;
            }
        }
    }
    Ok(status.unwrap_or(0))
}

fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Reap `child` if it has exited (other children, e.g. libcontainer's intermediate process,
/// are reaped and ignored).
fn reap(child: Pid) -> io::Result<Option<i32>> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(None),
            Ok(ws) if ws.pid() == Some(child) => {
                if let Some(code) = exit_code(ws) {
                    return Ok(Some(code));
                }
            }
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn wait_blocking(child: Pid) -> io::Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(ws) => {
                if let Some(code) = exit_code(ws) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
