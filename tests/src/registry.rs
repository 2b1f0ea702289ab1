//! A local OCI registry: Debian's `docker-registry` on 127.0.0.1:5000, storage in a temp dir.
//!
//! [`Registry::shared`] hands out one registry per process (an `Arc` kept through a `Weak`, so it
//! stops when the last user drops it); when something already answers on the address (another test
//! process started it) that one is used and not stopped. A lock file serialises the start.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::{io_err, HarnessError, Result};

/// The registry address tests use.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5000";
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const LOCK_FILE: &str = "/tmp/skiff-test-registry.lock";
/// Every test process that uses a registry another process started holds a shared flock(2) on
/// this file while it does; the starter takes it exclusively before it stops the registry, so a
/// registry is never stopped under another test process's pulls.
const USERS_FILE: &str = "/tmp/skiff-test-registry.users";

pub struct Registry {
    addr: String,
    child: Option<Child>,
    _storage: Option<tempfile::TempDir>,
    /// A user's shared lock on [`USERS_FILE`] (only when another process started the registry).
    _user: Option<FileLock>,
}

static SHARED: Mutex<Weak<Registry>> = Mutex::new(Weak::new());

/// True when `GET /v2/` on `addr` answers 200 or 401.
pub fn answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &addr.parse().expect("valid socket address"),
        Duration::from_millis(300),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 401")
}

/// Spawns `cmd` from one helper thread that never ends (so a child's PDEATHSIG means "the
/// process died", not "the calling test finished").
fn spawn_from_process_thread(cmd: Command) -> std::io::Result<std::process::Child> {
    type Job = (
        Command,
        std::sync::mpsc::Sender<std::io::Result<std::process::Child>>,
    );
    static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);
    let mut slot = SPAWNER.lock().expect("spawner slot poisoned");
    let jobs = slot.get_or_insert_with(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        tx
    });
    let (reply, answer) = std::sync::mpsc::channel();
    jobs.send((cmd, reply))
        .map_err(|_| std::io::Error::other("registry spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("registry spawner thread is gone"))?
}

/// An exclusive flock(2) held until dropped (closing the file releases it).
struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    fn take(path: &str) -> Result<FileLock> {
        Self::take_as(path, libc::LOCK_EX)
    }

    fn take_as(path: &str, op: libc::c_int) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err(format!("opening {path}")))?;
        // SAFETY: flock(2) on a descriptor we own for the whole call.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc != 0 {
            return Err(io_err(format!("locking {path}"))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FileLock(f))
    }
}

impl Registry {
    /// The process-wide registry, started on first use.
    pub fn shared() -> Result<Arc<Registry>> {
        let mut slot = SHARED.lock().expect("registry slot poisoned");
        if let Some(r) = slot.upgrade() {
            return Ok(r);
        }
        let r = Arc::new(Registry::start()?);
        *slot = Arc::downgrade(&r);
        Ok(r)
    }

    /// A handle on the registry that already answers, if one does.
    fn reuse() -> Result<Option<Registry>> {
        // The shared lock first: a registry that answers after it is taken stays up.
        let user = FileLock::take_as(USERS_FILE, libc::LOCK_SH)?;
        Ok(answers(REGISTRY_ADDR).then(|| Registry {
            addr: REGISTRY_ADDR.into(),
            child: None,
            _storage: None,
            _user: Some(user),
        }))
    }

    /// Starts `docker-registry` on 127.0.0.1:5000 unless something already answers there.
    pub fn start() -> Result<Registry> {
        if let Some(r) = Self::reuse()? {
            return Ok(r);
        }
        let _lock = FileLock::take(LOCK_FILE)?;
        if let Some(r) = Self::reuse()? {
            return Ok(r);
        }
        let storage = tempfile::Builder::new()
            .prefix("sk-registry-")
            .tempdir()
            .map_err(io_err("creating registry storage dir"))?;
        let config = storage.path().join("config.yml");
        let data: PathBuf = storage.path().join("data");
        std::fs::create_dir_all(&data).map_err(io_err("creating registry data dir"))?;
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {REGISTRY_ADDR}\n",
                data.display()
            ),
        )
        .map_err(io_err("writing registry config"))?;
        let log = std::fs::File::create(storage.path().join("registry.log"))
            .map_err(io_err("creating registry log"))?;
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("dup log"))?)
            .stderr(log);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child, so the
        // registry dies with the test process even if it aborts.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        // PDEATHSIG fires when the *thread* that forked the child ends: spawned from a test's
        // thread, the registry died with the first test of a binary while others still used
        // it. A thread that lives as long as the process does the spawning.
        let mut child = spawn_from_process_thread(cmd).map_err(io_err(format!(
            "starting {REGISTRY_BIN} (apt-get install docker-registry)"
        )))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(REGISTRY_ADDR) {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(storage.path().join("registry.log"))
                    .unwrap_or_default();
                return Err(HarnessError::Other(format!(
                    "docker-registry exited ({status}): {log}"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Other(
                    "docker-registry did not answer GET /v2/ within 20s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Registry {
            addr: REGISTRY_ADDR.into(),
            child: Some(child),
            _storage: Some(storage),
            _user: None,
        })
    }

    /// `host:port` of the registry.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True when this handle started (and will stop) the registry process.
    pub fn owned(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // Wait until no other test process uses it (they hold shared locks).
            let _all_gone = FileLock::take(USERS_FILE);
            // Stop by PID: only the process we started.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}
