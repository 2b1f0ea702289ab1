//! Running an nf_tables transaction in a short-lived forked child whose exit we do not wait for.
//!
//! Why: when a netfilter netlink socket is released right after a commit, the kernel waits for
//! the transaction's deferred cleanup (an RCU grace period, ~10 ms on a busy 2-core machine)
//! before `close()` — or process exit — returns. That wait would be most of a plugin's run time.
//! The child commits, sends the answer through a pipe, closes the pipe and only then releases the
//! socket, so the plugin continues as soon as the answer arrives. The child has no stdio (it
//! cannot hold a runtime's stdout pipe open) and dies with us (`PR_SET_PDEATHSIG`).
//!
//! Forking is only done while this process has a single thread; otherwise the work runs here.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::{fork, getpid, getppid, pipe, ForkResult};

use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{Nft, NftError};

fn threads() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .and_then(|v| v.trim().parse().ok())
        })
}

/// True when only this thread is left. A thread just joined may still be counted for a few
/// microseconds (the kernel wakes the joiner before it unlinks the thread), so look a few times.
fn single_threaded() -> bool {
    for _ in 0..20 {
        match threads() {
            Some(1) => return true,
            Some(_) => std::thread::sleep(std::time::Duration::from_micros(50)),
            None => return false,
        }
    }
    false
}

fn encode(r: &Result<usize, NftError>) -> String {
    match r {
        Ok(n) => format!("O{n}"),
        Err(e) => format!("E{}\n{e}", e.errno().unwrap_or(0)),
    }
}

fn decode(s: &str) -> Result<usize, NftError> {
    if let Some(n) = s.strip_prefix('O') {
        return n.trim().parse().map_err(|_| NftError::Remote {
            msg: format!("nftables worker sent a malformed answer: {s:?}"),
            errno: None,
        });
    }
    let body = s.strip_prefix('E').unwrap_or("");
    let (code, msg) = body.split_once('\n').unwrap_or(("0", body));
    let code: i32 = code.parse().unwrap_or(0);
    Err(NftError::Remote {
        msg: if msg.is_empty() {
            "the nftables worker process died without an answer".to_string()
        } else {
            msg.to_string()
        },
        errno: (code != 0).then_some(code),
    })
}

/// nf_tables work started by [`spawn`]: finished already, or running in a child.
pub enum Pending {
    Done(Result<usize, NftError>),
    Child {
        pid: nix::unistd::Pid,
        answer: std::fs::File,
    },
}

impl Pending {
    /// The work's result (waits for the child's answer, not for its exit).
    pub fn wait(self) -> Result<usize, NftError> {
        match self {
            Pending::Done(r) => r,
            Pending::Child { pid, mut answer } => {
                let mut s = String::new();
                let _ = answer.read_to_string(&mut s);
                // Reap it if it is already gone; otherwise init does after we exit.
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                decode(&s)
            }
        }
    }
}

/// Runs `f` on a fresh nf_tables socket in a detached child (see the module docs), or here
/// when threads exist (or `SKIFF_CNI_NO_DETACH` is set).
pub fn run<F>(f: F) -> Result<usize, NftError>
where
    F: FnOnce(&mut Nft) -> Result<usize, NftError>,
{
    spawn(f).wait()
}

/// Starts `f` like [`run`] and returns at once, so the caller can work meanwhile; the fork
/// happens now, while the process is single-threaded.
pub fn spawn<F>(f: F) -> Pending
where
    F: FnOnce(&mut Nft) -> Result<usize, NftError>,
{
    let here = |f: F| Pending::Done(Nft::open().and_then(|mut n| f(&mut n)));
    if std::env::var_os("SKIFF_CNI_NO_DETACH").is_some() || !single_threaded() {
        return here(f);
    }
    let (r, w) = match pipe() {
        Ok(p) => p,
        Err(_) => return here(f),
    };
    let parent = getpid();
    // SAFETY: this process has a single thread (checked above), so the child starts from a
    // consistent copy of every lock, including the allocator's; it only runs `f` and `_exit`s.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(r);
            // SAFETY: prctl and the dup2/open calls below only affect this child process.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            }
            if getppid() != parent {
                // SAFETY: leaving the child without running the parent's destructors.
                unsafe { libc::_exit(1) };
            }
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in 0..3 {
                    // SAFETY: replaces our copies of stdio with /dev/null; both fds are valid.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            // The socket must outlive the answer: it is released by _exit, not before.
            let mut nft = Nft::open();
            let answer = encode(&match nft.as_mut() {
                Ok(n) => f(n),
                Err(e) => Err(NftError::Remote {
                    msg: e.to_string(),
                    errno: e.errno(),
                }),
            });
            let mut w = std::fs::File::from(w);
            let _ = w.write_all(answer.as_bytes());
            drop(w);
            std::mem::forget(nft);
            // SAFETY: ends the child at once; its nf_tables socket is released here, off the
            // parent's critical path.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            Pending::Child {
                pid: child,
                answer: std::fs::File::from(r),
            }
        }
        Err(_) => {
            drop((r, w));
            here(f)
        }
    }
}

/// Deletes link `index` (of this namespace) from a detached child and returns as soon as the
/// link is gone from the namespace — not when the kernel has finished tearing it down (a veth's
/// teardown waits for RCU grace periods, ~15-20 ms here, most of it after the link is
/// unlisted). Falls back to a plain synchronous delete when threads exist.
pub fn delete_link(index: u32) -> Result<(), NetlinkError> {
    let sync = || match Netlink::open()?.del_link(index) {
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        r => r,
    };
    if std::env::var_os("SKIFF_CNI_NO_DETACH").is_some() || !single_threaded() {
        return sync();
    }
    let Ok((r, w)) = pipe() else {
        return sync();
    };
    let parent = getpid();
    // SAFETY: single-threaded (checked above); the child only deletes the link and `_exit`s.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(r);
            // SAFETY: prctl/dup2 only affect this child.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            }
            if getppid() != parent {
                // SAFETY: ends the child without the parent's destructors.
                unsafe { libc::_exit(1) };
            }
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in 0..3 {
                    // SAFETY: replaces our copies of stdio with /dev/null.
                    unsafe { libc::dup2(null.as_raw_fd(), fd) };
                }
            }
            let answer = match sync() {
                Ok(()) => "O".to_string(),
                Err(e) => format!("E{}\n{e}", e.errno().unwrap_or(0)),
            };
            let mut w = std::fs::File::from(w);
            let _ = w.write_all(answer.as_bytes());
            drop(w);
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            let mut nl = Netlink::open()?;
            let mut rf = std::fs::File::from(r);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if nl.link_by_index(index)?.is_none() {
                    let _ = waitpid(child, Some(WaitPidFlag::WNOHANG));
                    return Ok(());
                }
                let mut pfd = libc::pollfd {
                    fd: rf.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for a descriptor we own, 1 ms timeout.
                let ready = unsafe { libc::poll(&mut pfd, 1, 1) };
                if ready > 0 {
                    // The child finished (or died): its answer decides.
                    let mut s = String::new();
                    let _ = rf.read_to_string(&mut s);
                    let _ = waitpid(child, None);
                    return match s.strip_prefix('E') {
                        None if s == "O" => Ok(()),
                        None => sync(),
                        Some(body) => {
                            let (code, msg) = body.split_once('\n').unwrap_or(("0", body));
                            Err(NetlinkError::Request {
                                op: msg.to_string(),
                                source: std::io::Error::from_raw_os_error(
                                    code.parse().unwrap_or(libc::EIO),
                                ),
                            })
                        }
                    };
                }
                if std::time::Instant::now() > deadline {
                    let _ = waitpid(child, None);
                    return sync();
                }
            }
        }
        Err(_) => {
            drop((r, w));
            sync()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_roundtrip() {
        assert_eq!(decode(&encode(&Ok(3))).unwrap(), 3);
        let e = decode("E2\nnftables: x failed").unwrap_err();
        assert_eq!(e.errno(), Some(2));
        assert_eq!(e.to_string(), "nftables: x failed");
        assert!(decode("").is_err());
    }
}
