//! One monitored container: the OCI runtime's `create` with stdout/stderr pipes, then the
//! container's output copied into its CRI log, its attach socket, and its exit record.
//!
//! The outcome of `create` goes to `<state-dir>/created` (`{"pid":N}`) or
//! `<state-dir>/create-error`; when the init exits and its pipes are drained, `<state-dir>/exit`
//! is written atomically. A [`Container`] does no waiting of its own: the process that owns it
//! (`pod.rs`: the pod monitor, or the one-container `container` role) polls its fds, reaps
//! children and hands each container what concerns it.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags};
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
/// Files that describe one run of the container; stale ones are removed before starting.
const OUTCOME_FILES: [&str; 5] = ["created", "create-error", "exit", "pid", "monitor.pid"];
/// One read from a container's pipe or pty (up to 16 per wake-up: a full 64 KiB pipe at 4 KiB).
const READ_BUF: usize = 4096;
/// Records buffers grown past this are given back after a write (a burst of output must not
/// keep its buffer for the container's life).
const KEEP_RECORDS: usize = 16 * 1024;

/// What was checked before anything started: absolute paths, the state dir (stale outcome files
/// removed) and the open log file.
pub struct Prepared {
    args: ContainerArgs,
    state_dir: PathBuf,
    runtime: PathBuf,
    runtime_root: PathBuf,
    bundle: PathBuf,
    log: LogFile,
}

/// Everything that can be checked without starting a process; errors go to the caller (the
/// `container` role's stderr, or the pod monitor's reply to the CRI server).
pub fn prepare(args: ContainerArgs) -> Result<Prepared, String> {
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
    Ok(Prepared {
        args,
        state_dir,
        runtime,
        runtime_root,
        bundle,
        log,
    })
}

impl Prepared {
    /// Records a failure that happened before the runtime ran in `create-error`.
    pub fn fail(&self, msg: String) -> String {
        let _ = atomic::write_fast(&self.state_dir.join("create-error"), msg.as_bytes());
        msg
    }
}

/// The `container` role: one container, in a detached process of its own (used for pods whose
/// pause holds a PID namespace, and by CRI servers that predate the pod monitor).
pub fn run(args: ContainerArgs) -> Result<(), String> {
    use nix::sys::signal::Signal;
    skiff_memtrim::limit_fault_around(crate::pause::FAULT_AROUND);
    // Everything that can be checked is checked before detaching, so the caller gets the error.
    let prepared = prepare(args)?;
    sys::daemonize()?;
    sys::stdio_to_dev_null(&[0, 1, 2])?;
    let _ = std::env::set_current_dir("/");
    // From here on, failures are reported through `create-error`: nobody sees our stderr.
    sys::set_child_subreaper().map_err(|e| prepared.fail(e))?;
    let set =
        sys::block_signals(&[Signal::SIGCHLD, Signal::SIGUSR1]).map_err(|e| prepared.fail(e))?;
    let sfd = sys::signal_fd(&set).map_err(|e| prepared.fail(e))?;
    let mut pod = crate::pod::Pod::new(sfd, None, Vec::new(), true);
    pod.push(Container::start(prepared, std::process::id(), &[])?);
    pod.run()
}

pub struct Container {
    pub id: String,
    state_dir: PathBuf,
    pid_file: PathBuf,
    log: LogFile,
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
    /// The init's wait status, when it was reaped, and the drain deadline.
    init_exit: Option<(WaitStatus, String, Instant)>,
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

/// Where one container's fds sit in the poll set.
#[derive(Default)]
pub struct Slots {
    stdout: Option<usize>,
    stderr: Option<usize>,
    console: Option<usize>,
    console_listener: Option<usize>,
    attach_listener: Option<usize>,
    sessions: Vec<(usize, usize)>,
    stdin: Option<usize>,
}

/// What `poll` found ready for one container.
#[derive(Default)]
pub struct Ready {
    stdout: bool,
    stderr: bool,
    console: bool,
    console_listener: bool,
    attach_listener: bool,
    sessions: Vec<usize>,
    stdin: bool,
}

impl Ready {
    pub fn any(&self) -> bool {
        self.stdout
            || self.stderr
            || self.console
            || self.console_listener
            || self.attach_listener
            || self.stdin
            || !self.sessions.is_empty()
    }
}

impl Slots {
    pub fn ready(&self, fds: &[PollFd<'_>]) -> Ready {
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds[i].revents())
                .is_some_and(|r| !r.is_empty())
        };
        Ready {
            stdout: ready(self.stdout),
            stderr: ready(self.stderr),
            console: ready(self.console),
            console_listener: ready(self.console_listener),
            attach_listener: ready(self.attach_listener),
            sessions: self
                .sessions
                .iter()
                .filter(|(_, fi)| ready(Some(*fi)))
                .map(|(i, _)| *i)
                .collect(),
            stdin: ready(self.stdin),
        }
    }
}

/// What a reaped child meant for a container.
pub enum Reaped {
    /// Not this container's child.
    NotOurs,
    /// This container's `create` or init; the container goes on.
    Handled,
    /// `create` failed: `create-error` is written and the container is done.
    CreateFailed,
}

impl Container {
    /// Runs `<runtime> create` for a prepared container. `monitor_pid` is written to
    /// `<state-dir>/monitor.pid`; `host_ns` (the pod monitor's) are the namespaces the runtime
    /// must run in (the pod monitor itself lives in the pod's). Failures are also written to
    /// `create-error`.
    pub fn start(p: Prepared, monitor_pid: u32, host_ns: &[OwnedFd]) -> Result<Container, String> {
        let Prepared {
            args,
            state_dir,
            runtime,
            runtime_root,
            bundle,
            log,
        } = p;
        let _ = atomic::write_fast(
            &state_dir.join("monitor.pid"),
            monitor_pid.to_string().as_bytes(),
        );
        let fail = |msg: String| {
            let _ = atomic::write_fast(&state_dir.join("create-error"), msg.as_bytes());
            msg
        };
        let mut attach = if args.stdin != StdinMode::None || args.tty {
            Some(Attach::bind(&state_dir, args.stdin).map_err(fail)?)
        } else {
            None
        };
        // A tty container's pty master comes over a console socket during `create`. Socket
        // paths are short (108 bytes): it lives in the temp dir until the master arrived.
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
        let remove_console = |cl: &Option<(UnixListener, PathBuf)>| {
            if let Some((_, path)) = cl {
                let _ = fs::remove_file(path);
            }
        };

        let pid_file = state_dir.join("pid");
        let mut cmd = Command::new(&runtime);
        sys::child_with_empty_sigmask(&mut cmd);
        if !host_ns.is_empty() {
            sys::child_in_namespaces(&mut cmd, host_ns.iter().map(AsRawFd::as_raw_fd).collect());
        }
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
                remove_console(&console_listener);
                return Err(fail(format!("cannot run {}: {e}", runtime.display())));
            }
        };
        // `child` is reaped by the owner's waitpid loop, never by `Child::wait`.
        let runtime_pid = Pid::from_raw(child.id() as i32);
        let mut setup = || -> Result<(ChildStdout, ChildStderr), String> {
            if let (Some(a), Some(w)) = (attach.as_mut(), child.stdin.take()) {
                a.set_stdin(File::from(OwnedFd::from(w)))?;
            }
            let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
                return Err("runtime pipes missing".into());
            };
            sys::set_nonblocking(out.as_fd())?;
            sys::set_nonblocking(err.as_fd())?;
            Ok((out, err))
        };
        let (out, err) = match setup() {
            Ok(p) => p,
            Err(e) => {
                // The runtime is reaped by the owner's loop like any stray child.
                let _ = nix::sys::signal::kill(runtime_pid, nix::sys::signal::Signal::SIGKILL);
                remove_console(&console_listener);
                return Err(fail(e));
            }
        };
        Ok(Container {
            id: args.id,
            state_dir,
            pid_file,
            log,
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
            init_exit: None,
            console_listener,
            console: None,
            attach,
        })
    }

    /// `create` has not returned yet (children reaped now may be this container's init).
    pub fn creating(&self) -> bool {
        !self.create_done
    }

    /// The init exited and its output is drained (or the drain timed out): time to `finish`.
    pub fn done(&self, now: Instant) -> bool {
        match &self.init_exit {
            Some((_, _, drain_until)) => {
                let drained =
                    self.stdout.is_none() && self.stderr.is_none() && self.console.is_none();
                drained || now >= *drain_until
            }
            None => false,
        }
    }

    /// The nearest time something must happen without I/O: a partial-line flush or the end of
    /// the drain.
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.out_buf.deadline(),
            self.err_buf.deadline(),
            self.init_exit.as_ref().map(|(_, _, d)| *d),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Adds this container's fds to the poll set.
    pub fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> Slots {
        let mut add = |fd, flags| {
            fds.push(PollFd::new(fd, flags));
            fds.len() - 1
        };
        let mut s = Slots {
            stdout: self
                .stdout
                .as_ref()
                .map(|f| add(f.as_fd(), PollFlags::POLLIN)),
            stderr: self
                .stderr
                .as_ref()
                .map(|f| add(f.as_fd(), PollFlags::POLLIN)),
            console: self
                .console
                .as_ref()
                .map(|f| add(f.as_fd(), PollFlags::POLLIN)),
            console_listener: self
                .console_listener
                .as_ref()
                .map(|(l, _)| add(l.as_fd(), PollFlags::POLLIN)),
            ..Slots::default()
        };
        if let Some(a) = &self.attach {
            s.attach_listener = Some(add(a.listener_fd(), PollFlags::POLLIN));
            for (i, fd) in a.readable_sessions() {
                s.sessions.push((i, add(fd, PollFlags::POLLIN)));
            }
            s.stdin = a.stdin_to_write().map(|fd| add(fd, PollFlags::POLLOUT));
        }
        s
    }

    /// Handles what `poll` found ready.
    pub fn handle(&mut self, ready: Ready) {
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
    }

    /// Writes what is due: partial lines held too long, and the formatted records.
    pub fn flush(&mut self) {
        let now = Instant::now();
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if due(self.out_buf.deadline()) || due(self.err_buf.deadline()) {
            let ts = timefmt::stamp();
            let ts = ts.as_bytes();
            if due(self.out_buf.deadline()) {
                self.out_buf.flush_partial(ts, &mut self.records);
            }
            if due(self.err_buf.deadline()) {
                self.err_buf.flush_partial(ts, &mut self.records);
            }
        }
        self.write_records();
    }

    /// SIGUSR1: open the log path again (the kubelet rotated the file).
    pub fn reopen_log(&mut self) {
        if let Err(e) = self.log.reopen() {
            self.note(&format!("cannot reopen log: {e}"));
        }
    }

    /// A child was reaped: is it this container's `create` or init?
    /// `early` holds children reaped while some `create` was running (the init can be
    /// reparented to us, and die, before the runtime itself exits).
    pub fn reaped(
        &mut self,
        pid: Pid,
        status: WaitStatus,
        finished_at: &str,
        early: &mut Vec<(Pid, WaitStatus, String)>,
    ) -> Reaped {
        if pid == self.runtime_pid && !self.create_done {
            if self.create_finished(status, early) {
                return Reaped::CreateFailed;
            }
            Reaped::Handled
        } else if Some(pid) == self.init_pid && self.init_exit.is_none() {
            self.init_exited(status, finished_at.to_owned());
            Reaped::Handled
        } else {
            Reaped::NotOurs
        }
    }

    /// The init exited and was drained: flush the last pieces and write `exit`.
    pub fn finish(mut self) {
        let ts = timefmt::stamp();
        self.out_buf.flush_partial(ts.as_bytes(), &mut self.records);
        self.err_buf.flush_partial(ts.as_bytes(), &mut self.records);
        self.write_records();
        if let Some((status, finished_at, _)) = self.init_exit.take() {
            self.write_exit(status, &finished_at);
        }
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

    /// Read what is available (until EAGAIN, at most a few buffers so the other streams and
    /// the signals get their turn). EOF closes the stream. The buffer is small: every stack
    /// page it ever touched stays resident for the pod's life.
    fn read_stream(&mut self, which: Stream) {
        let mut buf = [0u8; READ_BUF];
        for _ in 0..16 {
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
                    let ts = timefmt::stamp();
                    let ts = ts.as_bytes();
                    match which {
                        Stream::Out => {
                            self.stdout = None;
                            self.out_buf.flush_partial(ts, &mut self.records);
                        }
                        Stream::Err => {
                            self.stderr = None;
                            self.err_buf.flush_partial(ts, &mut self.records);
                        }
                        Stream::Console => {
                            self.console = None;
                            self.out_buf.flush_partial(ts, &mut self.records);
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
        let ts = timefmt::stamp();
        let ts = ts.as_bytes();
        let now = Instant::now();
        match which {
            Stream::Out | Stream::Console => self.out_buf.push(data, ts, now, &mut self.records),
            Stream::Err => self.err_buf.push(data, ts, now, &mut self.records),
        }
    }

    fn write_records(&mut self) {
        if let Err(e) = self.log.write(&self.records) {
            // Dropping log lines is better than dying: the exit code still gets recorded.
            self.note(&format!("cannot write log: {e}"));
        }
        self.records.clear();
        if self.records.capacity() > KEEP_RECORDS {
            self.records = Vec::new();
        }
    }

    /// `create` returned: publish `created` or `create-error`. True when it failed.
    fn create_finished(
        &mut self,
        status: WaitStatus,
        early: &mut Vec<(Pid, WaitStatus, String)>,
    ) -> bool {
        // Whatever the runtime wrote before exiting is already in the pipes.
        self.read_stream(Stream::Out);
        self.read_stream(Stream::Err);
        self.create_done = true;
        let output = String::from_utf8_lossy(&self.create_output)
            .trim()
            .to_owned();
        self.create_output = Vec::new();
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
                    if let Some(i) = early.iter().position(|(p, _, _)| *p == pid) {
                        let (_, st, at) = early.swap_remove(i);
                        self.init_exited(st, at);
                    }
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

impl Drop for Container {
    fn drop(&mut self) {
        if let Some((_, path)) = self.console_listener.take() {
            let _ = fs::remove_file(path);
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
