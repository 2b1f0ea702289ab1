//! `container`: the per-container monitor.
//!
//! Detaches, becomes a child subreaper, runs `<runtime> create` with stdout/stderr pipes, and
//! records the outcome in `<state-dir>/created` (`{"pid":N}`) or `<state-dir>/create-error`.
//! Then it copies the pipes (which the container init inherited) into the CRI log, reaps
//! children, and when the init exits writes `<state-dir>/exit` atomically and exits.
//! SIGUSR1 reopens the log file. Everything runs in one `poll` loop over the two pipes and a
//! signalfd.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::args::{ContainerArgs, StdinMode};
use crate::attach::Attach;
use crate::cri_log::{LineBuffer, LogFile};
use crate::{atomic, sys, timefmt};

/// How long the pipes may stay open after the init exited (a leftover process of a container
/// sharing the host pid namespace could hold them forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Cap on what the runtime may print during `create` (kept for `create-error`).
const MAX_CREATE_OUTPUT: usize = 64 * 1024;
/// Delay after the first activity since the last trim before the pages it touched are trimmed
/// again. Not pushed back by further activity, so a container that logs without pause still
/// gets its monitor trimmed every couple of seconds (only the hot loop's pages come back).
const TRIM_AFTER: Duration = Duration::from_secs(2);
/// Files that describe one run of the container; stale ones are removed before starting.
const OUTCOME_FILES: [&str; 5] = ["created", "create-error", "exit", "pid", "monitor.pid"];

pub fn run(args: ContainerArgs) -> Result<(), String> {
    // Everything that can be checked is checked before detaching, so the caller gets the error.
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    let state_dir = abs(&args.state_dir)?;
    let log_path = abs(&args.log_path)?;
    let runtime = abs(&args.runtime)?;
    let runtime_root = abs(&args.runtime_root)?;
    let bundle = abs(&args.bundle)?;
    fs::create_dir_all(&state_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", state_dir.display()))?;
    for f in OUTCOME_FILES {
        let _ = fs::remove_file(state_dir.join(f));
    }
    if let Some(parent) = log_path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create log dir {}: {e}", parent.display()))?;
    }
    let log = LogFile::open(&log_path)
        .map_err(|e| format!("cannot open log {}: {e}", log_path.display()))?;
    if !runtime.is_file() {
        return Err(format!(
            "runtime {} not found: pass --runtime with the skiff-runtime (or runc) path",
            runtime.display()
        ));
    }

    sys::daemonize()?;
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    let _ = std::env::set_current_dir("/");
    let _ = atomic::write_fast(
        &state_dir.join("monitor.pid"),
        std::process::id().to_string().as_bytes(),
    );
    // From here on, failures are reported through `create-error`: nobody sees our stderr.
    let fail = |msg: String| {
        let _ = atomic::write_fast(&state_dir.join("create-error"), msg.as_bytes());
        msg
    };
    sys::set_child_subreaper().map_err(fail)?;
    let set = sys::block_signals(&[Signal::SIGCHLD, Signal::SIGUSR1]).map_err(fail)?;
    let sfd = sys::signal_fd(&set).map_err(fail)?;

    let mut attach = if args.stdin != StdinMode::None || args.tty {
        Some(Attach::bind(&state_dir, args.stdin).map_err(fail)?)
    } else {
        None
    };
    // A tty container's pty master comes over a console socket during `create`. Socket paths
    // are short (108 bytes): it lives in the temp dir until the master arrived.
    let console_listener = if args.tty {
        let path = std::env::temp_dir().join(format!(
            "skiff-monitor-{}-{}.sock",
            std::process::id(),
            timefmt::now().replace([':', '.'], "")
        ));
        let l = UnixListener::bind(&path)
            .map_err(|e| fail(format!("console socket {}: {e}", path.display())))?;
        Some((l, path))
    } else {
        None
    };

    let pid_file = state_dir.join("pid");
    let mut cmd = Command::new(&runtime);
    sys::child_with_empty_sigmask(&mut cmd);
    cmd.arg("--root")
        .arg(&runtime_root)
        .arg("create")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--pid-file")
        .arg(&pid_file);
    if let Some((_, path)) = &console_listener {
        cmd.arg("--console-socket").arg(path);
    }
    // Without a tty the init inherits the runtime's stdio: a pipe for stdin when asked.
    let piped_stdin = args.stdin != StdinMode::None && !args.tty;
    let spawned = cmd
        .arg(&args.id)
        .stdin(if piped_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some((_, path)) = &console_listener {
                let _ = fs::remove_file(path);
            }
            return Err(fail(format!("cannot run {}: {e}", runtime.display())));
        }
    };
    if let (Some(a), Some(w)) = (attach.as_mut(), child.stdin.take()) {
        a.set_stdin(File::from(std::os::fd::OwnedFd::from(w)))
            .map_err(fail)?;
    }
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("runtime pipes missing".into()));
    };
    sys::set_nonblocking(out.as_fd()).map_err(fail)?;
    sys::set_nonblocking(err.as_fd()).map_err(fail)?;
    // `child` is reaped by our own waitpid loop, never by `Child::wait`.
    let runtime_pid = Pid::from_raw(child.id() as i32);

    let mut monitor = Monitor {
        state_dir,
        pid_file,
        log,
        sfd,
        stdout: Some(out),
        stderr: Some(err),
        out_buf: LineBuffer::new("stdout"),
        err_buf: LineBuffer::new("stderr"),
        records: Vec::new(),
        runtime_pid,
        create_output: Vec::new(),
        create_done: false,
        init_pid: None,
        oom: None,
        early_exits: Vec::new(),
        init_exit: None,
        trim_at: Some(Instant::now()),
        console_listener,
        console: None,
        attach,
    };
    let r = monitor.run();
    if let Some((_, path)) = monitor.console_listener.take() {
        let _ = fs::remove_file(path);
    }
    r
}

struct Monitor {
    state_dir: PathBuf,
    pid_file: PathBuf,
    log: LogFile,
    sfd: SignalFd,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out_buf: LineBuffer,
    err_buf: LineBuffer,
    /// Formatted log records waiting to be written.
    records: Vec<u8>,
    runtime_pid: Pid,
    /// What the runtime printed while `create` ran.
    create_output: Vec<u8>,
    create_done: bool,
    init_pid: Option<Pid>,
    /// The container's memory cgroup OOM counter file and its count when `create` returned.
    oom: Option<(PathBuf, u64)>,
    /// Children reaped before we knew the init's pid.
    early_exits: Vec<(Pid, WaitStatus, String)>,
    /// The init's wait status, when it was reaped, and the drain deadline.
    init_exit: Option<(WaitStatus, String, Instant)>,
    /// When to drop clean file pages again (see `skiff_memtrim::trim_code_pages`): set at the first
    /// activity after a trim, so the monitor returns to its minimal RSS within TRIM_AFTER.
    trim_at: Option<Instant>,
    /// tty: where the runtime sends the pty master (and the socket's path).
    console_listener: Option<(UnixListener, PathBuf)>,
    /// tty: the pty master; the container's output is read from it like stdout.
    console: Option<File>,
    /// The attach socket (stdin and terminal size), when the container has stdin or a tty.
    attach: Option<Attach>,
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
    Console,
}

/// What `poll` found ready.
#[derive(Default)]
struct Ready {
    signals: bool,
    stdout: bool,
    stderr: bool,
    console: bool,
    console_listener: bool,
    attach_listener: bool,
    sessions: Vec<usize>,
    stdin: bool,
}

impl Ready {
    fn any(&self) -> bool {
        self.signals
            || self.stdout
            || self.stderr
            || self.console
            || self.console_listener
            || self.attach_listener
            || self.stdin
            || !self.sessions.is_empty()
    }
}

impl Monitor {
    fn run(&mut self) -> Result<(), String> {
        loop {
            let now = Instant::now();
            if let Some((_, _, drain_until)) = &self.init_exit {
                let drained =
                    self.stdout.is_none() && self.stderr.is_none() && self.console.is_none();
                if drained || now >= *drain_until {
                    break;
                }
            }
            if self.trim_at.is_some_and(|t| t <= now) {
                skiff_memtrim::trim_code_pages();
                self.trim_at = None;
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            let ready = self.wait(timeout)?;
            if ready.any() && self.trim_at.is_none() {
                self.trim_at = Some(Instant::now() + TRIM_AFTER);
            }
            if ready.stdout {
                self.read_stream(Stream::Out);
            }
            if ready.stderr {
                self.read_stream(Stream::Err);
            }
            if ready.console_listener {
                self.receive_console();
            }
            if ready.console {
                self.read_stream(Stream::Console);
            }
            if let Some(a) = self.attach.as_mut() {
                if ready.attach_listener {
                    a.accept();
                }
                if !ready.sessions.is_empty() {
                    a.read_sessions(ready.sessions);
                }
                if ready.stdin || a.stdin_to_write().is_some() {
                    a.write_stdin();
                }
            }
            let sig_ready = ready.signals;
            if sig_ready {
                let (chld, usr1) = self.read_signals();
                if usr1 {
                    if let Err(e) = self.log.reopen() {
                        self.note(&format!("cannot reopen log: {e}"));
                    }
                }
                if chld && self.reap()? {
                    return Ok(()); // create failed: nothing to monitor
                }
            }
            self.flush_due_partials();
            self.write_records();
        }
        let ts = timefmt::now();
        self.out_buf.flush_partial(&ts, &mut self.records);
        self.err_buf.flush_partial(&ts, &mut self.records);
        self.write_records();
        if let Some((status, finished_at, _)) = self.init_exit.take() {
            self.write_exit(status, &finished_at);
        }
        Ok(())
    }

    /// The nearest time something must happen without I/O: a partial-line flush or the end of
    /// the drain.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.out_buf.deadline(),
            self.err_buf.deadline(),
            self.init_exit.as_ref().map(|(_, _, d)| *d),
            self.trim_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn wait(&self, timeout: Option<Duration>) -> Result<Ready, String> {
        let mut fds = Vec::with_capacity(8);
        fds.push(PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN));
        fn push<'a>(
            fds: &mut Vec<PollFd<'a>>,
            fd: std::os::fd::BorrowedFd<'a>,
            flags: PollFlags,
        ) -> usize {
            fds.push(PollFd::new(fd, flags));
            fds.len() - 1
        }
        let mut add = |fd, flags| push(&mut fds, fd, flags);
        let out_idx = self
            .stdout
            .as_ref()
            .map(|s| add(s.as_fd(), PollFlags::POLLIN));
        let err_idx = self
            .stderr
            .as_ref()
            .map(|s| add(s.as_fd(), PollFlags::POLLIN));
        let con_idx = self
            .console
            .as_ref()
            .map(|c| add(c.as_fd(), PollFlags::POLLIN));
        let conl_idx = self
            .console_listener
            .as_ref()
            .map(|(l, _)| add(l.as_fd(), PollFlags::POLLIN));
        let mut att_idx = None;
        let mut sess_idx = Vec::new();
        let mut stdin_idx = None;
        if let Some(a) = &self.attach {
            att_idx = Some(add(a.listener_fd(), PollFlags::POLLIN));
            for (i, fd) in a.readable_sessions() {
                sess_idx.push((i, add(fd, PollFlags::POLLIN)));
            }
            stdin_idx = a.stdin_to_write().map(|fd| add(fd, PollFlags::POLLOUT));
        }
        let timeout = match timeout {
            // Round up so a deadline is never polled for 0 ms repeatedly.
            Some(t) => {
                PollTimeout::try_from(t + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents())
                .is_some_and(|r| !r.is_empty())
        };
        Ok(Ready {
            signals: ready(Some(0)),
            stdout: ready(out_idx),
            stderr: ready(err_idx),
            console: ready(con_idx),
            console_listener: ready(conl_idx),
            attach_listener: ready(att_idx),
            sessions: sess_idx
                .into_iter()
                .filter(|(_, fi)| ready(Some(*fi)))
                .map(|(i, _)| i)
                .collect(),
            stdin: ready(stdin_idx),
        })
    }

    /// tty: the runtime connected to the console socket; take the pty master it sends.
    fn receive_console(&mut self) {
        let Some((listener, path)) = self.console_listener.take() else {
            return;
        };
        let _ = fs::remove_file(&path);
        let master = listener
            .accept()
            .map_err(|e| format!("accepting on the console socket: {e}"))
            .and_then(|(conn, _)| sys::recv_fd(conn.as_fd()));
        let master = match master {
            Ok(fd) => File::from(fd),
            Err(e) => {
                self.note(&e);
                return;
            }
        };
        if let Err(e) = sys::set_nonblocking(master.as_fd()) {
            self.note(&e);
        }
        if let Some(a) = self.attach.as_mut() {
            if let Ok(dup) = master.try_clone() {
                a.set_console(dup);
            }
            if let Ok(dup) = master.try_clone() {
                if let Err(e) = a.set_stdin(dup) {
                    self.note(&e);
                }
            }
        }
        self.console = Some(master);
    }

    /// Read what is available (until EAGAIN, at most a few buffers so the other stream and
    /// the signals get their turn). EOF closes the stream.
    fn read_stream(&mut self, which: Stream) {
        let mut buf = [0u8; 32 * 1024];
        for _ in 0..8 {
            let result = match which {
                Stream::Out => self.stdout.as_mut().map(|s| s.read(&mut buf)),
                Stream::Err => self.stderr.as_mut().map(|s| s.read(&mut buf)),
                Stream::Console => self.console.as_mut().map(|s| s.read(&mut buf)),
            };
            // A pty master reads EIO once the container side is closed: that is its EOF.
            let eof = match &result {
                Some(Ok(0)) => true,
                Some(Err(e)) => e.raw_os_error() == Some(libc::EIO),
                _ => false,
            };
            match result {
                None => return,
                Some(_) if eof => {
                    let ts = timefmt::now();
                    match which {
                        Stream::Out => {
                            self.stdout = None;
                            self.out_buf.flush_partial(&ts, &mut self.records);
                        }
                        Stream::Err => {
                            self.stderr = None;
                            self.err_buf.flush_partial(&ts, &mut self.records);
                        }
                        Stream::Console => {
                            self.console = None;
                            self.out_buf.flush_partial(&ts, &mut self.records);
                        }
                    }
                    return;
                }
                Some(Ok(n)) => self.consume(which, &buf[..n]),
                Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                Some(Err(_)) => return, // EAGAIN (or a broken pipe: poll reports HUP next)
            }
        }
    }

    fn consume(&mut self, which: Stream, data: &[u8]) {
        if !self.create_done {
            // Only the runtime writes before `create` returns (the init waits for `start`).
            let room = MAX_CREATE_OUTPUT.saturating_sub(self.create_output.len());
            self.create_output
                .extend_from_slice(&data[..data.len().min(room)]);
            return;
        }
        let ts = timefmt::now();
        let now = Instant::now();
        match which {
            Stream::Out | Stream::Console => self.out_buf.push(data, &ts, now, &mut self.records),
            Stream::Err => self.err_buf.push(data, &ts, now, &mut self.records),
        }
    }

    fn flush_due_partials(&mut self) {
        let now = Instant::now();
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if due(self.out_buf.deadline()) || due(self.err_buf.deadline()) {
            let ts = timefmt::now();
            if due(self.out_buf.deadline()) {
                self.out_buf.flush_partial(&ts, &mut self.records);
            }
            if due(self.err_buf.deadline()) {
                self.err_buf.flush_partial(&ts, &mut self.records);
            }
        }
    }

    fn write_records(&mut self) {
        if let Err(e) = self.log.write(&self.records) {
            // Dropping log lines is better than dying: the exit code still gets recorded.
            self.records.clear();
            self.note(&format!("cannot write log: {e}"));
        }
        self.records.clear();
    }

    /// Drain the signalfd; returns (SIGCHLD seen, SIGUSR1 seen).
    fn read_signals(&mut self) -> (bool, bool) {
        let (mut chld, mut usr1) = (false, false);
        while let Ok(Some(info)) = self.sfd.read_signal() {
            match info.ssi_signo as i32 {
                libc::SIGCHLD => chld = true,
                libc::SIGUSR1 => usr1 = true,
                _ => {}
            }
        }
        (chld, usr1)
    }

    /// Reap every exited child. Returns true when the monitor should stop now (create failed).
    fn reap(&mut self) -> Result<bool, String> {
        while let Some((pid, status)) = sys::reap_one()? {
            let finished_at = timefmt::now();
            if pid == self.runtime_pid {
                if self.create_finished(status) {
                    return Ok(true);
                }
            } else if Some(pid) == self.init_pid {
                self.init_exited(status, finished_at);
            } else if self.init_pid.is_none() {
                self.early_exits.push((pid, status, finished_at));
            }
        }
        Ok(false)
    }

    /// `create` returned: publish `created` or `create-error`. True when it failed.
    fn create_finished(&mut self, status: WaitStatus) -> bool {
        // Whatever the runtime wrote before exiting is already in the pipes.
        self.read_stream(Stream::Out);
        self.read_stream(Stream::Err);
        self.create_done = true;
        let output = String::from_utf8_lossy(&self.create_output)
            .trim()
            .to_owned();
        let failure = match status {
            WaitStatus::Exited(_, 0) => match read_pid(&self.pid_file) {
                Ok(pid) => {
                    self.init_pid = Some(pid);
                    self.oom = skiff_oom::counter_file(pid.as_raw()).map(|f| {
                        let n = skiff_oom::kills(&f);
                        (f, n)
                    });
                    let json = format!("{{\"pid\":{pid}}}");
                    if let Err(e) =
                        atomic::write_fast(&self.state_dir.join("created"), json.as_bytes())
                    {
                        self.note(&format!("cannot write created: {e}"));
                    }
                    if let Some(i) = self.early_exits.iter().position(|(p, _, _)| *p == pid) {
                        let (_, st, at) = self.early_exits.swap_remove(i);
                        self.init_exited(st, at);
                    }
                    self.early_exits.clear();
                    None
                }
                Err(e) => Some(format!("runtime create succeeded but {e}")),
            },
            WaitStatus::Exited(_, code) if output.is_empty() => {
                Some(format!("runtime create exited with status {code}"))
            }
            WaitStatus::Signaled(_, sig, _) if output.is_empty() => {
                Some(format!("runtime create was killed by {sig}"))
            }
            _ => Some(output.clone()),
        };
        match failure {
            Some(msg) => {
                let msg = if msg.is_empty() { output } else { msg };
                let _ = atomic::write_fast(&self.state_dir.join("create-error"), msg.as_bytes());
                true
            }
            None => false,
        }
    }

    fn init_exited(&mut self, status: WaitStatus, finished_at: String) {
        self.init_exit = Some((status, finished_at, Instant::now() + DRAIN_TIMEOUT));
    }

    fn write_exit(&self, status: WaitStatus, finished_at: &str) {
        let (code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        let signal = signal.map_or("null".to_owned(), |s| s.to_string());
        // The kernel counts the kill before the process is gone, so the count is final here.
        let oom_killed = self
            .oom
            .as_ref()
            .is_some_and(|(f, before)| skiff_oom::kills(f) > *before);
        let json = format!(
            "{{\"exit_code\":{code},\"signal\":{signal},\"finished_at\":\"{finished_at}\",\"oom_killed\":{oom_killed}}}"
        );
        if let Err(e) = atomic::write(&self.state_dir.join("exit"), json.as_bytes()) {
            self.note(&format!("cannot write exit: {e}"));
        }
    }

    /// Our stderr is /dev/null: problems go to `<state-dir>/monitor.log`.
    fn note(&self, msg: &str) {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.join("monitor.log"))
        {
            let _ = writeln!(f, "{} {msg}", timefmt::now());
        }
    }
}

fn read_pid(path: &Path) -> Result<Pid, String> {
    let text = fs::read_to_string(path)
        .map_err(|e| format!("its pid file {} is unreadable: {e}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| format!("its pid file {} holds {text:?}", path.display()))
}
