//! A private registry for pull-secret tests: Debian's `docker-registry` with htpasswd (basic)
//! authentication on a free 127.0.0.1 port, storage and password file in a temp dir, started
//! and stopped (by PID) by its handle. The password hash comes from `htpasswd -nbB`
//! (apache2-utils).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io_err, HarnessError, Result};

pub struct AuthRegistry {
    pub addr: String,
    pub user: String,
    pub password: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl AuthRegistry {
    /// Starts the registry; fails naming what is missing (`docker-registry`, `htpasswd`).
    pub fn start(user: &str, password: &str) -> Result<AuthRegistry> {
        let out = Command::new("htpasswd")
            .args(["-nbB", user, password])
            .output()
            .map_err(io_err(
                "running htpasswd (apt-get install apache2-utils; scripts/deps.sh)",
            ))?;
        if !out.status.success() {
            return Err(HarnessError::Other(format!(
                "htpasswd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("sk-authreg-")
            .tempdir()
            .map_err(io_err("creating registry dir"))?;
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, &out.stdout).map_err(io_err("writing htpasswd"))?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).map_err(io_err("creating registry data dir"))?;
        // A free port: bind :0, read it, let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io_err("finding a free port"))?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  htpasswd:\n    realm: sk-registry\n    path: {}\nhttp:\n  addr: {addr}\n",
                data.display(),
                htpasswd.display()
            ),
        )
        .map_err(io_err("writing registry config"))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(io_err("creating registry log"))?;
        let mut cmd = Command::new("/usr/bin/docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("dup log"))?)
            .stderr(log);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io_err(
            "starting /usr/bin/docker-registry (apt-get install docker-registry)",
        ))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !crate::registry::answers(&addr) {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                return Err(HarnessError::Other(format!(
                    "docker-registry exited ({status}): {log}"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Other(
                    "the authenticated docker-registry did not answer within 30s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(AuthRegistry {
            addr,
            user: user.into(),
            password: password.into(),
            child,
            dir,
        })
    }

    /// The registry's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        // Stop by PID: only the process this handle started.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
