//! Privileged syscalls: mounts and signals. Kept small so every use is easy to audit.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{CriError, Result};

fn sys_err<'a>(op: &'static str, target: &'a Path) -> impl FnOnce(nix::Error) -> CriError + 'a {
    move |source| CriError::Sys {
        op,
        target: target.display().to_string(),
        source,
    }
}

/// Bind-mounts `src` onto the existing file or directory `dst`.
pub(crate) fn bind_mount(src: &Path, dst: &Path) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys_err("bind-mounting onto", dst))
}

/// Mounts an overlay filesystem on `target`. `lower` is top-most first.
pub(crate) fn mount_overlay(
    lower: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<()> {
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(sys_err("mounting overlay on", target))
}

/// Mounts a tmpfs for a pod's shared `/dev/shm`.
pub(crate) fn mount_shm(target: &Path) -> Result<()> {
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(sys_err("mounting shm tmpfs on", target))
}

/// Detaches the mount at `target`; "not mounted" and "not found" are fine.
pub(crate) fn unmount(target: &Path) -> Result<()> {
    loop {
        match umount2(target, MntFlags::MNT_DETACH) {
            // Stacked mounts: keep going until nothing is mounted there.
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(e) => return Err(sys_err("unmounting", target)(e)),
        }
    }
}

/// The mount holding `path` in our mount table (`/proc/self/mountinfo`): its mount point and
/// whether it is shared / a slave.
fn mount_of(path: &Path) -> Result<(std::path::PathBuf, bool, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(CriError::io("reading", "/proc/self/mountinfo"))?;
    let mut best: Option<(std::path::PathBuf, bool, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || sep < 6 {
            continue;
        }
        // Octal escapes (\040 for a space) as the kernel writes them.
        let point = std::path::PathBuf::from(unescape_mountinfo(fields[4]));
        if !path.starts_with(&point) {
            continue;
        }
        let optional = &fields[6..sep];
        let shared = optional.iter().any(|f| f.starts_with("shared:"));
        let slave = optional.iter().any(|f| f.starts_with("master:"));
        // The longest mount point wins; among equals the last listed (the top of a stack).
        if best
            .as_ref()
            .is_none_or(|(b, _, _)| point.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some((point, shared, slave));
        }
    }
    best.ok_or_else(|| {
        CriError::FailedPrecondition(format!(
            "no mount holds {} in /proc/self/mountinfo",
            path.display()
        ))
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes sure mounts made on the host under `path` reach a container's bind of it (and, for
/// bidirectional mounts, mounts made in the container reach the host): the mount holding
/// `path` must be shared (or, when `slave_ok`, a slave). If it is neither, `path` itself
/// becomes a shared mount point: made shared if it already is a mount point, else bound onto
/// itself first (as the kubelet does for its root dir). Returns whether it changed anything.
pub(crate) fn ensure_shared(path: &Path, slave_ok: bool) -> Result<bool> {
    let path = std::fs::canonicalize(path).map_err(CriError::io("resolving mount source", path))?;
    let (point, shared, slave) = mount_of(&path)?;
    if shared || (slave_ok && slave) {
        return Ok(false);
    }
    if point != path {
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys_err(
            "bind-mounting onto itself (to make it shared)",
            &path,
        ))?;
    }
    mount(
        None::<&str>,
        &path,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(sys_err("making shared (MS_SHARED)", &path))?;
    tracing::info!(path = %path.display(), "made the mount source a shared mount");
    Ok(true)
}

/// PIDs of `<monitor> pause ... --sandbox <id>` processes (from /proc/*/cmdline).
pub(crate) fn pause_pids_of(monitor: &Path, sandbox_id: &str) -> Vec<i32> {
    let want_bin = monitor.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_pause = args.first() == Some(&want_bin) && args.get(1) == Some(&&b"pause"[..]);
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"--sandbox" && w[1] == sandbox_id.as_bytes());
            (is_pause && ours).then_some(pid)
        })
        .collect()
}

/// Sends `sig` to `pid`; a process that is already gone is fine.
pub(crate) fn signal(pid: i32, sig: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(CriError::Sys {
            op: "signalling",
            target: format!("pid {pid}"),
            source,
        }),
    }
}

/// The start time (clock ticks since boot, field 22 of /proc/PID/stat) and state letter, or None
/// when the process does not exist. Used to tell our pause process from a reused PID.
pub(crate) fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // rest starts at field 3 (state); starttime is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// True while `pid` is alive (not a zombie) and still the process that started at `start_time`.
pub(crate) fn alive(pid: i32, start_time: u64) -> bool {
    match proc_stat(pid) {
        Some((st, state)) => st == start_time && state != 'Z' && state != 'X',
        None => false,
    }
}

/// Receives one file descriptor passed with SCM_RIGHTS on a connected unix socket (the pty
/// master an OCI runtime sends to `--console-socket`). Blocking.
pub(crate) fn recv_fd(
    sock: &std::os::unix::net::UnixStream,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut it = fds.into_iter();
            if let Some(fd) = it.next() {
                for extra in it {
                    // SAFETY: `extra` was just received and is owned by nobody else.
                    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(extra) });
                }
                // SAFETY: the kernel installed `fd` in our table for us; we are its only owner.
                return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other(
        "the runtime sent no file descriptor on the console socket",
    ))
}

/// Sets the window size of a terminal (TIOCSWINSZ on the pty master).
pub(crate) fn set_winsize(
    fd: std::os::fd::BorrowedFd<'_>,
    cols: u16,
    rows: u16,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to `addr` from inside the network namespace at `netns` (a `/proc/<pid>/ns/net` or
/// bind-mounted nsfs path). Runs on a fresh thread that enters the namespace and then ends, so no
/// other code ever runs in the wrong namespace; the socket keeps its namespace.
pub(crate) fn connect_in_netns(
    netns: &Path,
    addr: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
    })
    .join()
    .map_err(|_| std::io::Error::other("netns connect thread panicked"))?
}

/// Puts `fd` in non-blocking mode (for `tokio::io::unix::AsyncFd`).
pub(crate) fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Caps glibc's malloc arenas at 2: every thread that allocates would otherwise get an arena of
/// its own (the blocking pool's unpack and console threads come and go), each holding freed
/// memory. Process-wide allocator tuning; a no-op on other C libraries.
pub(crate) fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; it is called once at start-up.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Milliseconds since the epoch of the last CRI call that finished.
static LAST_CALL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Notes that a CRI call just finished (see [`IdleTrim`]).
pub(crate) fn note_call() {
    LAST_CALL_MS.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
}

/// Gives memory back once the server has been idle for a while: freed heap, and clean code
/// pages (what pulls, start-up and rare verbs touched); the next call faults back what it runs,
/// from the page cache. Only for a standalone daemon (`CriConfig::trim_when_idle`).
#[derive(Default)]
pub(crate) struct IdleTrim {
    trimmed_at_ms: u64,
}

impl IdleTrim {
    /// Call periodically; trims when no call finished for `idle` and none since the last trim.
    pub(crate) fn tick(&mut self, idle: std::time::Duration) {
        let last = LAST_CALL_MS.load(std::sync::atomic::Ordering::Relaxed);
        let now = now_ms();
        if self.trimmed_at_ms > last || now.saturating_sub(last) < idle.as_millis() as u64 {
            return;
        }
        skiff_memtrim::trim_heap();
        skiff_memtrim::trim_code_pages();
        self.trimmed_at_ms = now;
    }
}

/// Makes a child started with `cmd` get SIGKILL when the thread that started it exits (the
/// server dying with a helper in flight must not leave the helper running).
pub(crate) fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
