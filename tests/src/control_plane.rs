//! A `skiff server --disable-agent` of the test's own (temp data dir, free port), stopped by PID
//! when dropped, and the clients that talk to it the way users do: the installed `kubectl`
//! (any version from the Google Cloud SDK's bin folder) and `curl`-like raw HTTPS.
//!
//! [`ControlPlane::start_cluster`] starts the whole single-node cluster instead (kubelet, CRI
//! server, CNI) so pods really run. Each such cluster takes a slot (a lock file under
//! `/run/lock`) that gives it its own bridge `sk<slot>br`, pod range `10.244.<slot>.0/24`,
//! service range `10.43.<slot>.0/24` and cgroup root `/sk<slot>`, so several can run on one host
//! at once (tests in parallel, or several developers); all of it is removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ControlPlane {
    child: Child,
    /// The `skiff server` command line, for [`ControlPlane::kill_and_restart`].
    args: Vec<std::ffi::OsString>,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    /// Set for a whole cluster (kubelet + CRI): what it holds on the host.
    pub agent: Option<Agent>,
}

/// The host resources of a cluster started by [`ControlPlane::start_cluster`].
pub struct Agent {
    /// Slot number (100-199): picks the names and ranges below.
    pub slot: u16,
    /// The node's name, `sk-node-<slot>`.
    pub node: String,
    /// The pod network's bridge.
    pub bridge: String,
    /// Pod range of the node.
    pub pod_cidr: String,
    /// Service range (the `kubernetes` Service has its first address; DNS is `.10`).
    pub service_cidr: String,
    /// The IPv6 pod and service ranges of a dual-stack cluster
    /// ([`ControlPlane::start_cluster_dual_stack`]): `fd00:10:244:<slot>::/64`,
    /// `fd00:10:43:<slot>::/112`.
    pub dual_stack: Option<(String, String)>,
    /// Cgroup root of the pods (`/sys/fs/cgroup/<controller><cgroup_root>/kubepods/...`).
    pub cgroup_root: String,
    /// `<registry>/sk-busybox:latest`, built from Debian's busybox-static and pushed.
    pub busybox: String,
    /// The service proxy's nftables table (`ip sk<slot>proxy`).
    pub proxy_table: String,
    /// The dummy interface holding the cluster DNS address (`sk<slot>dns`).
    pub dns_link: String,
    /// The node's resolver for names outside the cluster: `127.0.53.<slot-100>` port 53 (the
    /// server's `--resolv-conf` names it); a test that forwards starts a server there.
    pub dns_upstream: std::net::Ipv4Addr,
    created_nft_table: bool,
    _registry: std::sync::Arc<crate::Registry>,
    _lock: std::fs::File,
}

/// Takes the first free cluster slot: an exclusive `flock` on `/run/lock/sk-cluster-<n>.lock`,
/// held while the returned file is open (the kernel drops it if the test dies).
fn take_slot() -> (u16, std::fs::File) {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all("/run/lock").expect("create /run/lock");
    for n in 100..200u16 {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("/run/lock/sk-cluster-{n}.lock"))
            .expect("open a cluster slot lock file");
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return (n, f);
        }
    }
    panic!("all 100 test cluster slots (/run/lock/sk-cluster-100..199.lock) are taken");
}

/// Whether another test cluster on this host holds its slot now.
fn other_slots_held(mine: u16) -> bool {
    use std::os::fd::AsRawFd;
    (100..200u16).filter(|n| *n != mine).any(|n| {
        let Ok(f) = std::fs::File::open(format!("/run/lock/sk-cluster-{n}.lock")) else {
            return false;
        };
        // SAFETY: as in take_slot; a shared, non-blocking probe released when `f` closes.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
    })
}

fn nft_table_exists() -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", "skiff-cni"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes the cluster DNS address (`.10` of the service range) from lo, where a kernel
/// without dummy links has it.
fn remove_dns_address(service_cidr: &str) {
    let dns = format!("{}.10/32", service_cidr.trim_end_matches(".0/24"));
    remove_lo_address(&dns);
}

/// Removes the IPv6 cluster DNS address of a dual-stack cluster (the tenth of its IPv6
/// service range, `fd00:10:43:<slot>::a`) from lo.
fn remove_dns_address6(dual_stack: &Option<(String, String)>) {
    if let Some((_, s6)) = dual_stack {
        remove_lo_address(&format!("{}a/128", s6.trim_end_matches("/112")));
    }
}

fn remove_lo_address(addr: &str) {
    let _ = Command::new("ip")
        .args(["addr", "del", addr, "dev", "lo"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes a cgroup folder and the (empty) folders under it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Output of one kubectl run.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
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
        Self::launch(None)
    }

    /// [`ControlPlane::start`] with extra `skiff server` flags.
    pub fn start_with_args(extra: &[&str]) -> ControlPlane {
        Self::launch_with(None, extra)
    }

    /// Starts a whole single-node cluster (API server, scheduler, controllers, kubelet, CRI
    /// server, CNI) in its own slot, pushes the busybox test image to the local registry, and
    /// waits until the node is Ready. Needs root, Debian's docker-registry and busybox-static.
    pub fn start_cluster() -> ControlPlane {
        Self::start_cluster_with(&[])
    }

    /// [`ControlPlane::start_cluster`] with extra `skiff server` flags (e.g.
    /// `--pod-manifest-path DIR`).
    pub fn start_cluster_with(extra: &[&str]) -> ControlPlane {
        Self::start_cluster_opts(extra, false)
    }

    /// [`ControlPlane::start_cluster_with`] on dual-stack ranges: `--cluster-cidr` and
    /// `--service-cidr` get an IPv6 range after the IPv4 one (see [`Agent::dual_stack`]).
    pub fn start_cluster_dual_stack(extra: &[&str]) -> ControlPlane {
        Self::start_cluster_opts(extra, true)
    }

    fn start_cluster_opts(extra: &[&str], dual: bool) -> ControlPlane {
        assert!(
            nix::unistd::geteuid().is_root(),
            "a whole test cluster needs root (namespaces, cgroups, bridges)"
        );
        let registry = crate::Registry::shared().expect("start the local docker-registry");
        let image = crate::build_busybox_image().expect("build the busybox test image");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(crate::push(registry.addr(), "sk-busybox:latest", &image))
            .expect("push busybox to the local registry");
        let busybox = format!("{}/sk-busybox:latest", registry.addr());
        let (slot, lock) = take_slot();
        let agent = Agent {
            slot,
            node: format!("sk-node-{slot}"),
            bridge: format!("sk{slot}br"),
            pod_cidr: format!("10.244.{slot}.0/24"),
            service_cidr: format!("10.43.{slot}.0/24"),
            dual_stack: dual.then(|| {
                (
                    format!("fd00:10:244:{slot}::/64"),
                    format!("fd00:10:43:{slot}::/112"),
                )
            }),
            cgroup_root: format!("/sk{slot}"),
            busybox,
            proxy_table: format!("sk{slot}proxy"),
            dns_link: format!("sk{slot}dns"),
            dns_upstream: std::net::Ipv4Addr::new(127, 0, 53, (slot - 100) as u8),
            created_nft_table: !nft_table_exists(),
            _registry: registry,
            _lock: lock,
        };
        // Leftovers of a test that died in this slot.
        crate::netns::delete_link(&agent.bridge);
        crate::netns::delete_link(&agent.dns_link);
        remove_dns_address(&agent.service_cidr);
        remove_dns_address6(&agent.dual_stack);
        let _ = Command::new(crate::workspace_bin("skiff"))
            .args(["proxy", "--cleanup", "--nftables-table", &agent.proxy_table])
            .status();
        let cp = Self::launch_with(Some(agent), extra);
        let node = cp
            .agent
            .as_ref()
            .map(|a| a.node.clone())
            .unwrap_or_default();
        cp.wait_for("the node to turn Ready", Duration::from_secs(90), || {
            cp.kubectl(&[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
                == "True"
        });
        cp
    }

    fn launch(agent: Option<Agent>) -> ControlPlane {
        Self::launch_with(agent, &[])
    }

    fn launch_with(agent: Option<Agent>, extra: &[&str]) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("sk-cp")
            .tempdir()
            .expect("temp dir");
        let port = crate::free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let bin = crate::workspace_bin("skiff");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build --bin skiff)",
            bin.display()
        );
        let mut cmd = Command::new(&bin);
        cmd.arg("server");
        let mut envs = Vec::new();
        match &agent {
            None => {
                cmd.args(["--disable-agent", "--node-name", "sk-node"]);
            }
            Some(a) => {
                let svc_base = a.service_cidr.trim_end_matches(".0/24");
                if !extra.contains(&"--eviction-hard") {
                    cmd.args(["--eviction-hard", crate::TEST_EVICTION_HARD]);
                }
                // A dual-stack cluster's DNS has an address in each service range (the
                // tenth, as the IPv4 one).
                let (pods, services, dns) = match &a.dual_stack {
                    Some((p6, s6)) => (
                        format!("{},{p6}", a.pod_cidr),
                        format!("{},{s6}", a.service_cidr),
                        format!("{svc_base}.10,{}a", s6.trim_end_matches("/112")),
                    ),
                    None => (
                        a.pod_cidr.clone(),
                        a.service_cidr.clone(),
                        format!("{svc_base}.10"),
                    ),
                };
                cmd.args(["--node-name", &a.node, "--cni-bridge", &a.bridge])
                    .args(["--cluster-cidr", &pods])
                    .args(["--service-cidr", &services])
                    .args(["--cluster-dns", &dns])
                    .args(["--cgroup-root", &a.cgroup_root])
                    .args(["--nftables-table", &a.proxy_table])
                    .args(["--cluster-dns-interface", &a.dns_link])
                    .arg("--resolv-conf")
                    .arg({
                        let p = dir.path().join("resolv.conf");
                        std::fs::write(&p, format!("nameserver {}\n", a.dns_upstream))
                            .expect("write resolv.conf");
                        p
                    })
                    .arg("--kubelet-port")
                    .arg(crate::free_port().to_string())
                    .arg("--pod-log-dir")
                    .arg(dir.path().join("pods"));
                envs.push((
                    "SKIFF_LOG".to_string(),
                    std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()),
                ));
            }
        }
        // A test may give its own --node-ip (a dual-stack pair).
        if !extra.contains(&"--node-ip") {
            cmd.args(["--node-ip", "127.0.0.1"]);
        }
        cmd.args(["--bind-address", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .args(extra);
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
        let child = Self::spawn_server(&args, &envs, log);
        let cp = ControlPlane {
            child,
            args,
            envs,
            dir,
            port,
            kubeconfig,
            agent,
        };
        cp.wait_ready();
        cp
    }

    fn spawn_server(
        args: &[std::ffi::OsString],
        envs: &[(String, String)],
        log: std::fs::File,
    ) -> Child {
        Command::new(crate::workspace_bin("skiff"))
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff server")
    }

    /// Changes the value of `flag` on the `skiff server` command line (as given last) for the
    /// next [`ControlPlane::kill_and_restart`]; panics when the flag is not there.
    pub fn set_server_flag(&mut self, flag: &str, value: &str) {
        let at = self
            .args
            .iter()
            .rposition(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} is not on the server command line"));
        self.args[at + 1] = value.into();
    }

    /// Kills `skiff server` with SIGKILL (no cleanup of any kind), then starts it again with the
    /// same flags on the same data dir, and waits until the API answers (appending to the same
    /// log). The pods' containers outlive the kill, as they would a crash.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        self.child = Self::spawn_server(&self.args, &self.envs, log);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let cp = self;
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

    /// The embedded CRI server's socket of a whole cluster (`<dir>/run/cri.sock`).
    pub fn cri_socket(&self) -> PathBuf {
        self.dir.path().join("run").join("cri.sock")
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
        let keep = std::env::var("SKIFF_TEST_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        let from = lines.len().saturating_sub(keep);
        format!(
            "{}--- server log (tail) ---\n{}",
            warnings_summary(&lines),
            lines[from..].join("\n")
        )
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

/// The distinct WARN/ERROR messages of a server log (first time seen and count), so that a
/// failure report shows what went wrong before the tail scrolls it away.
fn warnings_summary(lines: &[&str]) -> String {
    let mut seen: Vec<(String, &str, usize)> = Vec::new();
    for l in lines {
        let Some(pos) = l.find(" WARN ").or_else(|| l.find(" ERROR ")) else {
            continue;
        };
        // The message without its fields: up to the first `key=` pair, at most 100 chars.
        let body = &l[pos..];
        let key: String = body
            .split(" error=")
            .next()
            .unwrap_or(body)
            .chars()
            .take(100)
            .collect();
        match seen.iter_mut().find(|(k, _, _)| *k == key) {
            Some(e) => e.2 += 1,
            None => seen.push((key, l, 1)),
        }
    }
    if seen.is_empty() {
        return String::new();
    }
    let mut out = String::from("--- server warnings (first of each, with count) ---\n");
    for (_, first, n) in seen.iter().take(20) {
        let line: String = first.chars().take(300).collect();
        out.push_str(&format!("{n}x {line}\n"));
    }
    out
}

/// What a stopped cluster may leave when its pods were not all torn down in time (a test that
/// failed midway, a kill -9 test): processes its server started that still run in its folder
/// (container monitors and their containers, found by the folder in their command line), then
/// mounts under the folder (container rootfs, netns, tmpfs volumes), deepest first.
fn reap_leftovers(dir: &Path, cgroup_root: &str) {
    let needle = dir.to_string_lossy().into_owned();
    // Pause and container processes name no folder of ours but live in our cgroup tree.
    let cgroup_prefix = format!("{}/", cgroup_root.trim_end_matches('/'));
    let in_our_cgroups = |pid: &Path| {
        std::fs::read_to_string(pid.join("cgroup"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path.starts_with(&cgroup_prefix))
    };
    let me = std::process::id();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == me {
                continue;
            }
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) || in_our_cgroups(&p.path()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&needle))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(
            m.as_str(),
            // NOFOLLOW: the sealed runtime copy is a bind of a /proc fd link.
            nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
        );
    }
}

impl ControlPlane {
    /// Copies the server log to `$SKIFF_TEST_SAVE_LOGS/<port>.log` when that variable is set
    /// (the temp dir goes away with the cluster).
    fn save_log(&self) {
        if let Some(dest) = std::env::var_os("SKIFF_TEST_SAVE_LOGS") {
            let dest = PathBuf::from(dest);
            let _ = std::fs::create_dir_all(&dest);
            let _ = std::fs::copy(
                self.dir.path().join("server.log"),
                dest.join(format!("{}.log", self.port)),
            );
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let Some(agent) = &self.agent else {
            crate::stop_child(&mut self.child, Duration::from_secs(10));
            return;
        };
        // Workloads first, so that no controller recreates a pod while they are torn down.
        let _ = self.kubectl(&[
            "delete",
            "daemonsets,statefulsets,deployments,replicasets,replicationcontrollers,jobs,cronjobs",
            "--all",
            "--all-namespaces",
            "--wait=false",
        ]);
        // Let the kubelet tear the pods down first (containers, IPs, cgroups), then stop.
        let _ = self.kubectl(&[
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=1",
            "--timeout=60s",
        ]);
        crate::stop_child(&mut self.child, Duration::from_secs(20));
        self.save_log();
        reap_leftovers(self.dir.path(), &agent.cgroup_root);
        crate::netns::delete_link(&agent.bridge);
        crate::netns::delete_link(&agent.dns_link);
        // Kernels without dummy links get the DNS address on lo.
        remove_dns_address(&agent.service_cidr);
        remove_dns_address6(&agent.dual_stack);
        let _ = Command::new(crate::workspace_bin("skiff"))
            .args(["proxy", "--cleanup", "--nftables-table", &agent.proxy_table])
            .status();
        let _ = std::fs::remove_dir_all(format!("/var/lib/cni/networks/skiff-{}", agent.bridge));
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                remove_cgroup_tree(&c.path().join(agent.cgroup_root.trim_start_matches('/')));
            }
        }
        // Rules the CNI plugins made for pods of this slot that were not torn down (a pod
        // killed with the server): found by their comment, removed by handle.
        remove_cni_rules(&format!("net=skiff-{} ", agent.bridge));
        if agent.created_nft_table && !other_slots_held(agent.slot) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", "skiff-cni"])
                .status();
        }
    }
}

/// Deletes the rules of `inet skiff-cni` whose comment contains `tag` (best effort: nothing is
/// done when `nft` is missing or cannot list the table).
fn remove_cni_rules(tag: &str) {
    let Ok(out) = Command::new("nft")
        .args(["-j", "list", "table", "inet", "skiff-cni"])
        .output()
    else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let r = &item["rule"];
        let (Some(chain), Some(handle), Some(comment)) = (
            r["chain"].as_str(),
            r["handle"].as_u64(),
            r["comment"].as_str(),
        ) else {
            continue;
        };
        if comment.contains(tag) {
            let _ = Command::new("nft")
                .args(["delete", "rule", "inet", "skiff-cni", chain, "handle"])
                .arg(handle.to_string())
                .status();
        }
    }
}
