//! A `skiff server --disable-agent` of the test's own (temp data dir, free port), stopped by PID
//! when dropped, and the clients that talk to it the way users do: the installed `kubectl`
//! (any version from the Google Cloud SDK's bin folder) and `curl`-like raw HTTPS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ControlPlane {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
}

/// Output of one kubectl run.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Path of `kubectl.<version>` beside the installed kubectl (Google Cloud SDK layout), or
/// `kubectl` itself for `None`. Panics with what is missing.
pub fn kubectl_bin(version: Option<&str>) -> PathBuf {
    let which = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v kubectl)\""])
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&which.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "kubectl is not on PATH: these tests drive the API server with the installed kubectl 1.32"
    );
    let path = PathBuf::from(path);
    match version {
        None => path,
        Some(v) => {
            let p = path
                .parent()
                .expect("kubectl has a folder")
                .join(format!("kubectl.{v}"));
            assert!(
                p.exists(),
                "{} is missing: the spot checks need kubectl {v} from the Google Cloud SDK's bin folder",
                p.display()
            );
            p
        }
    }
}

impl ControlPlane {
    /// Starts the control plane and waits until it answers.
    pub fn start() -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sk-cp")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let bin = crate::workspace_bin("skiff");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build --bin skiff)",
            bin.display()
        );
        let child = Command::new(bin)
            .args(["server", "--disable-agent", "--node-name", "sk-node"])
            .args(["--bind-address", "127.0.0.1", "--node-ip", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff server");
        let cp = ControlPlane {
            child,
            dir,
            port,
            kubeconfig,
        };
        let start = Instant::now();
        loop {
            if cp.kubeconfig.exists() && cp.kubectl(&["get", "--raw", "/readyz"]).ok {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "skiff server did not become ready in 30 s\n{}",
                cp.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cp
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the installed kubectl (1.32).
    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_with(&kubectl_bin(None), args, None, &[])
    }

    /// Runs a kubectl binary with optional stdin and extra environment.
    pub fn kubectl_with(
        &self,
        bin: &Path,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> Out {
        let mut cmd = Command::new(bin);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(input.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("kubectl output");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and fails the test with its stderr and the server log when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.ok,
            "kubectl {} failed:\n{}\n{}",
            args.join(" "),
            o.stderr,
            self.log_tail()
        );
        o.stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            !o.ok,
            "kubectl {} should have failed, printed:\n{}",
            args.join(" "),
            o.stdout
        );
        o.stderr
    }

    /// `kubectl apply -f -` (or any `-f -` command) with a manifest on stdin.
    pub fn with_stdin(&self, args: &[&str], manifest: &str) -> Out {
        self.kubectl_with(&kubectl_bin(None), args, Some(manifest), &[])
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!("--- server log (tail) ---\n{}", lines[from..].join("\n"))
    }

    /// Client certificate, key and CA of the admin kubeconfig, as PEM files in the temp dir
    /// (for curl, Python and raw HTTPS clients).
    pub fn admin_pems(&self) -> (PathBuf, PathBuf, PathBuf) {
        let tls = self.dir.path().join("data/tls");
        (
            tls.join("client-admin.crt"),
            tls.join("client-admin.key"),
            tls.join("ca.crt"),
        )
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        crate::stop_child(&mut self.child, Duration::from_secs(10));
    }
}
