//! A standalone node for tests and benchmarks: `skiff cri` as a process of its own (temp root,
//! socket, CNI config on a bridge of the test's own with Skiff's plugins), and `skiff kubelet`
//! beside a [`ControlPlane`] on any CRI socket (Skiff's or containerd's). Every process is
//! stopped by PID when dropped; [`remove_cgroup_root`] kills what is left in a kubelet's cgroup
//! root and removes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::netns::delete_link;
use crate::{io_err, workspace_bin, HarnessError, Result};

/// A process the test started, stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        crate::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

/// Writes a bridge + host-local + portmap conflist for `bridge`/`subnet` into `conf_dir` and
/// links Skiff's plugins into `bin_dir` (or uses `SKIFF_TEST_CNI_BIN_DIR`); returns the bin dir.
pub fn write_cni(conf_dir: &Path, bin_dir: &Path, bridge: &str, subnet: &str) -> Result<PathBuf> {
    assert!(bridge.starts_with("sk"), "test links start with sk");
    std::fs::create_dir_all(conf_dir).map_err(io_err("creating CNI conf dir"))?;
    let ipam = conf_dir
        .parent()
        .unwrap_or(conf_dir)
        .join(format!("ipam-{bridge}"));
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": format!("{bridge}net"),
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(conf_dir.join("10-sktest.conflist"), conflist.to_string())
        .map_err(io_err("writing conflist"))?;
    if let Some(d) = std::env::var_os("SKIFF_TEST_CNI_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let cni = workspace_bin("skiff-cni");
    if !cni.exists() {
        return Err(HarnessError::Other(format!(
            "{} missing: cargo build --bin skiff-cni",
            cni.display()
        )));
    }
    std::fs::create_dir_all(bin_dir).map_err(io_err("creating CNI bin dir"))?;
    for name in ["bridge", "host-local", "loopback", "portmap"] {
        let link = bin_dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(&cni, &link).map_err(io_err("linking CNI plugin"))?;
        }
    }
    Ok(bin_dir.to_path_buf())
}

/// `skiff cri` as a process of its own.
pub struct SkiffCri {
    pub socket: PathBuf,
    pub bridge: String,
    proc: Option<Proc>,
    tmp: tempfile::TempDir,
}

impl SkiffCri {
    /// Starts `skiff cri` with pod network `bridge`/`subnet`, trusting `registry` over plain
    /// HTTP, and waits for its socket.
    pub fn start(bridge: &str, subnet: &str, registry: &str) -> Result<SkiffCri> {
        Self::start_with(bridge, subnet, registry, &[], &[], None)
    }

    /// [`SkiffCri::start`] with `extra` arguments for `skiff cri` (`--systemd-cgroup`), run
    /// through `wrapper` when given (a `systemd-run` prefix of
    /// [`crate::systemd_box::SystemdBox::service`]: then the server is the box's service, its
    /// log goes where the wrapper says and it ends with the box), its folder made in `in_dir`
    /// (a folder the box shares) instead of the temp dir.
    pub fn start_with(
        bridge: &str,
        subnet: &str,
        registry: &str,
        extra: &[&str],
        wrapper: &[String],
        in_dir: Option<&Path>,
    ) -> Result<SkiffCri> {
        let skiff = workspace_bin("skiff");
        for bin in ["skiff", "skiff-monitor", "skiff-runtime"] {
            let p = workspace_bin(bin);
            if !p.exists() {
                return Err(HarnessError::Other(format!(
                    "{} missing: cargo build --bin {bin}",
                    p.display()
                )));
            }
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix("sk-cri-proc-");
        let tmp = match in_dir {
            Some(d) => builder.tempdir_in(d),
            None => builder.tempdir(),
        }
        .map_err(io_err("creating temp dir"))?;
        let t = tmp.path();
        let bin_dir = write_cni(&t.join("net.d"), &t.join("cni-bin"), bridge, subnet)?;
        let config = t.join("cri.toml");
        std::fs::write(&config, "").map_err(io_err("writing cri.toml"))?;
        let socket = t.join("cri.sock");
        let log = std::fs::File::create(t.join("cri.log")).map_err(io_err("creating log"))?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&skiff);
                c
            }
            None => Command::new(&skiff),
        };
        let child = cmd
            .arg("cri")
            .arg("--address")
            .arg(&socket)
            .arg("--root")
            .arg(t.join("root"))
            .arg("--runtime-root")
            .arg(t.join("runtime"))
            .arg("--netns-dir")
            .arg(t.join("netns"))
            .arg("--cni-conf-dir")
            .arg(t.join("net.d"))
            .arg("--cni-bin-dir")
            .arg(&bin_dir)
            .arg("--registry-config-dir")
            .arg(t.join("certs.d"))
            .args(["--insecure-registry", registry])
            .arg("--config")
            .arg(&config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io_err("starting skiff cri"))?;
        let cri = SkiffCri {
            socket,
            bridge: bridge.to_string(),
            proc: Some(Proc(child)),
            tmp,
        };
        for _ in 0..300 {
            if cri.socket.exists() {
                return Ok(cri);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Other(format!(
            "skiff cri's socket did not appear within 30 s; log:\n{}",
            std::fs::read_to_string(cri.tmp.path().join("cri.log")).unwrap_or_default()
        )))
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(Proc::pid).unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The server's log (`cri.log` in [`SkiffCri::dir`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("cri.log")).unwrap_or_default()
    }
}

/// The set-up of the standalone-kubelet suites on Skiff's CRI: needs root; pushes busybox to
/// the shared local registry; starts `skiff cri` on `bridge`/`subnet` (see [`SkiffCri`]) and a
/// control plane without a node; then runs `scenario(control plane, CRI, busybox image, cgroup
/// root)` off the async workers, the cgroup root being `/<cgroup_prefix><test pid>` (removed
/// afterwards with what is left in it).
pub async fn with_skiff_cri_node(
    bridge: &'static str,
    subnet: &'static str,
    cgroup_prefix: &str,
    scenario: impl FnOnce(&ControlPlane, &SkiffCri, &str, &str) + Send + 'static,
) {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    crate::cri_env::init_tls();
    let registry = crate::Registry::shared().expect("local registry");
    let busybox = crate::cri_env::push_busybox(registry.addr(), "sk-busybox:latest").await;
    let cgroups = CgroupRoot(format!("/{cgroup_prefix}{}", std::process::id()));
    let cri = SkiffCri::start(bridge, subnet, registry.addr())
        .expect("skiff cri (cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni)");
    let root = cgroups.0.clone();
    tokio::task::spawn_blocking(move || {
        let cp = ControlPlane::start();
        scenario(&cp, &cri, &busybox, &root);
        drop(cri);
    })
    .await
    .unwrap();
    drop(cgroups);
}

impl Drop for SkiffCri {
    fn drop(&mut self) {
        drop(self.proc.take());
        let dir = self.tmp.path().to_string_lossy().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(
                m.as_str(),
                // NOFOLLOW: the sealed runtime copy is a bind of a /proc fd link.
                nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
            );
        }
        delete_link(&self.bridge);
    }
}

/// Shared test hosts run with little free disk: upstream's default disk thresholds (nodefs 10%,
/// imagefs 15%) would put the node under DiskPressure, and admission would reject every pod.
/// The same relaxed thresholds as [`crate::TEST_EVICTION_HARD`], in the config file's form.
pub const EVICTION_HARD: &str = "evictionHard:\n  memory.available: 100Mi\n  nodefs.available: 1%\n  imagefs.available: 1%\n  nodefs.inodesFree: 1%\n";

/// `skiff kubelet` beside `cp` on the CRI at `socket`: node `name`, pods under `cgroup_root`,
/// state and logs in `dir` (`kubelet.log`), the control plane's serving certificate and CA, a
/// KubeletConfiguration with `podLogsDir` in `dir`, node IP 127.0.0.1, :10250 on a free port.
pub fn start_kubelet(
    cp: &ControlPlane,
    socket: &Path,
    name: &str,
    cgroup_root: &str,
    dir: &Path,
) -> Proc {
    let child = kubelet_command(cp, socket, name, cgroup_root, dir, "", &[])
        .spawn()
        .expect("start skiff kubelet");
    Proc(child)
}

/// The command [`start_kubelet`] runs, with `extra_config` appended to the KubeletConfiguration
/// (YAML lines) and the kubelet run through `wrapper` (e.g. `nsenter ... --`) when not empty.
pub fn kubelet_command(
    cp: &ControlPlane,
    socket: &Path,
    name: &str,
    cgroup_root: &str,
    dir: &Path,
    extra_config: &str,
    wrapper: &[String],
) -> Command {
    std::fs::create_dir_all(dir).expect("kubelet dir");
    let skiff = workspace_bin("skiff");
    let tls = cp.dir().join("data/tls");
    let config = dir.join("kubelet.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDomain: cluster.local\npodLogsDir: {}\n{EVICTION_HARD}{extra_config}",
            dir.join("pods").display()
        ),
    )
    .expect("kubelet config");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&skiff);
            c
        }
        None => Command::new(&skiff),
    };
    cmd.arg("kubelet")
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .arg("--config")
        .arg(&config)
        .arg("--container-runtime-endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["--hostname-override", name, "--node-ip", "127.0.0.1"])
        .args([
            "--port",
            &crate::free_port().to_string(),
            "--healthz-port",
            "0",
        ])
        .args(["--cgroup-root", cgroup_root])
        .arg("--root-dir")
        .arg(dir.join("kubelet"))
        .arg("--tls-cert-file")
        .arg(tls.join("serving-kubelet.crt"))
        .arg("--tls-private-key-file")
        .arg(tls.join("serving-kubelet.key"))
        .arg("--client-ca-file")
        .arg(tls.join("ca.crt"))
        .env(
            "SKIFF_LOG",
            std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("kubelet.log")).expect("kubelet log"),
        ));
    cmd
}

/// A standalone kubelet under test (the kubelet_* suites): its runtime's name, the control plane,
/// the node name and the kubelet's folder (`kubelet.log`).
pub struct KubeletNode<'a> {
    pub runtime: &'static str,
    pub cp: &'a ControlPlane,
    pub name: String,
    pub dir: PathBuf,
}

impl KubeletNode<'_> {
    /// How long [`KubeletNode::wait_for`] waits.
    pub const WAIT: Duration = Duration::from_secs(90);

    /// The last 60 lines of the kubelet's log.
    pub fn kubelet_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("kubelet.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!(
            "--- kubelet log on {} (tail) ---\n{}",
            self.runtime,
            lines[from..].join("\n")
        )
    }

    /// Polls `f` until it holds; panics after [`KubeletNode::WAIT`] with the kubelet's log.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while start.elapsed() < Self::WAIT {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "{}: timed out after {:?} waiting for {what}\n{}",
            self.runtime,
            Self::WAIT,
            self.kubelet_log()
        );
    }

    /// `kubectl get pod <pod> -o jsonpath=<path>`.
    pub fn get(&self, pod: &str, path: &str) -> String {
        self.cp
            .kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
            .stdout
    }

    /// kubectl that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cp.kubectl(args);
        assert!(
            o.ok,
            "{}: kubectl {} failed:\n{}\n{}",
            self.runtime,
            args.join(" "),
            o.stderr,
            self.kubelet_log()
        );
        o.stdout
    }
}

/// Removes an empty cgroup tree, deepest first (a cgroup with processes stays).
pub fn remove_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Kills every process left in cgroup `root` (a test's kubelet cgroup root, so only what the
/// test started) and removes the folders, deepest first, in every hierarchy.
pub fn remove_cgroup_root(root: &str) {
    assert!(
        root.trim_start_matches('/').starts_with("sk"),
        "test cgroups start with sk"
    );
    fn pids(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids(&e.path(), out);
            }
        }
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|c| c.path().join(root.trim_start_matches('/')))
        .filter(|d| d.exists())
        .collect();
    let mut left = Vec::new();
    for d in &dirs {
        pids(d, &mut left);
    }
    left.sort();
    left.dedup();
    for pid in left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..50 {
        for d in &dirs {
            remove_cgroup_tree(d);
        }
        if dirs.iter().all(|d| !d.exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes a kubelet cgroup root when dropped (declare it before the runtime, so it goes last).
pub struct CgroupRoot(pub String);

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        remove_cgroup_root(&self.0);
    }
}
