//! End to end: `skiff server` driven only by the installed `kubectl` (1.32), as a user would.
//! Needs root, Debian's docker-registry and busybox-static, and the workspace binaries built
//! (`cargo build --workspace --bins`).

use skiff_tests::{build_busybox_image, netns, push, workspace_bin, Registry};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "sk-node";
const IPAM_DIR: &str = "/var/lib/cni/networks/skiff";

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    created_bridge: bool,
    /// The pod network's nftables table, if this test's server made it.
    created_nft_table: bool,
    /// The service proxy's default table (`ip skiff-proxy`), if this test's server made it.
    created_proxy_table: bool,
    /// The cluster DNS address (10.43.0.10) on `lo`, if this test's server put it there (kernels
    /// without dummy links).
    created_dns_address: bool,
    created_dns_link: bool,
    /// Pod cgroup roots (`/sys/fs/cgroup/<controller>/kubepods`) this test's server made.
    created_cgroups: Vec<PathBuf>,
}

fn nft_table_exists() -> bool {
    table_exists("inet", "skiff-cni")
}

fn table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `lo` holds the default cluster DNS address.
fn lo_has_dns_address() -> bool {
    Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("10.43.0.10/32"))
}

/// `/sys/fs/cgroup/<controller>/kubepods` for every v1 controller that does not have it yet.
fn missing_pod_cgroup_roots() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("kubepods"))
                .filter(|p| {
                    p.parent().is_some_and(|c| c.join("cgroup.procs").exists()) && !p.exists()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes an (empty of processes) cgroup tree, children first.
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

impl Server {
    fn start() -> Server {
        let dir = tempfile::Builder::new().prefix("sk-e2e").tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let created_bridge = !netns::link_exists("cni0");
        let created_nft_table = !nft_table_exists();
        let created_proxy_table = !table_exists("ip", "skiff-proxy");
        let created_dns_address = !lo_has_dns_address();
        let created_dns_link = !netns::link_exists("skiff-dns");
        let created_cgroups = missing_pod_cgroup_roots();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(workspace_bin("skiff"))
            .args(["server", "--node-ip", "127.0.0.1", "--node-name", NODE])
            .arg("--https-listen-port")
            .arg(skiff_tests::free_port().to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--pod-log-dir")
            .arg(dir.path().join("pods"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .args(["--eviction-hard", skiff_tests::TEST_EVICTION_HARD])
            .env("SKIFF_LOG", "info,skiff_node=debug,skiff_cri=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff server");
        Server {
            child,
            dir,
            kubeconfig,
            created_bridge,
            created_nft_table,
            created_proxy_table,
            created_dns_address,
            created_dns_link,
            created_cgroups,
        }
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed: {err}\n{}", self.log_tail());
        out
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(60);
        format!("--- server log (tail) ---\n{}", lines[from..].join("\n"))
    }

    fn jsonpath(&self, pod: &str, path: &str) -> String {
        self.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
            .1
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // If an assertion failed midway, let the kubelet tear the pods down first.
        if self.kubeconfig.exists() {
            let _ = self.kubectl(&["delete", "pods", "--all", "--timeout=60s"]);
        }
        // Stop only what we started, by PID.
        skiff_tests::stop_child(&mut self.child, Duration::from_secs(20));
        if self.created_bridge {
            netns::delete_link("cni0");
        }
        if self.created_nft_table {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", "skiff-cni"])
                .status();
        }
        if self.created_proxy_table {
            let _ = Command::new(workspace_bin("skiff"))
                .args(["proxy", "--cleanup", "--nftables-table", "skiff-proxy"])
                .status();
        }
        if self.created_dns_link {
            netns::delete_link("skiff-dns");
        }
        if self.created_dns_address && lo_has_dns_address() {
            let _ = Command::new("ip")
                .args(["addr", "del", "10.43.0.10/32", "dev", "lo"])
                .status();
        }
        for root in &self.created_cgroups {
            remove_cgroup_tree(root);
        }
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

#[test]
fn kubectl_drives_a_pod_through_every_layer() {
    let registry = Registry::shared().expect("start docker-registry");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = build_busybox_image().expect("build busybox image");
    rt.block_on(push(registry.addr(), "busybox:latest", &image))
        .expect("push busybox");
    let image_ref = format!("{}/busybox:latest", registry.addr());

    let s = Server::start();
    s.wait_for("the kubeconfig", Duration::from_secs(60), || {
        s.kubeconfig.exists()
    });
    // The node registers and turns Ready.
    s.wait_for("node Ready", Duration::from_secs(90), || {
        let (ok, out, _) = s.kubectl(&["get", "nodes"]);
        ok && out
            .lines()
            .any(|l| l.starts_with(NODE) && l.contains(" Ready"))
    });

    // A pod through API server, scheduler, kubelet, CRI, CNI, runtime and monitor.
    s.kubectl_ok(&[
        "run",
        "sk-hello",
        &format!("--image={image_ref}"),
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hello; sleep 3600",
    ]);
    s.wait_for("sk-hello Running", Duration::from_secs(120), || {
        s.jsonpath("sk-hello", "{.status.phase}") == "Running"
    });
    let ip = s.jsonpath("sk-hello", "{.status.podIP}");
    assert!(
        ip.starts_with("10.42.0."),
        "pod IP {ip:?} not in 10.42.0.0/24"
    );
    let ip_file = Path::new(IPAM_DIR).join(&ip);
    assert!(
        ip_file.exists(),
        "host-local allocation {ip_file:?} missing"
    );
    assert!(
        !netns::links_on_bridge("cni0").is_empty(),
        "no veth on cni0"
    );
    let run_dir = s.dir.path().join("run");
    let netns_dir = run_dir.join("netns");
    assert_eq!(
        std::fs::read_dir(&netns_dir)
            .map(|d| d.count())
            .unwrap_or(0),
        1,
        "one sandbox netns expected in {netns_dir:?}"
    );
    s.wait_for("logs to say hello", Duration::from_secs(30), || {
        let (ok, out, _) = s.kubectl(&["logs", "sk-hello"]);
        ok && out.trim() == "hello"
    });
    let wide = s.kubectl_ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines().any(|l| l.starts_with("sk-hello")
            && l.contains("Running")
            && l.contains(&ip)
            && l.contains(NODE)),
        "unexpected `get pods -o wide`:\n{wide}"
    );
    eprintln!(
        "$ kubectl get nodes -o wide\n{}",
        s.kubectl_ok(&["get", "nodes", "-o", "wide"])
    );
    eprintln!("$ kubectl get pods -o wide\n{wide}");
    let describe = s.kubectl_ok(&["describe", "pod", "sk-hello"]);
    eprintln!("$ kubectl describe pod sk-hello\n{describe}");
    assert!(describe.contains("Status:           Running") || describe.contains("Running"));
    assert!(describe.contains(&ip), "describe lacks the IP:\n{describe}");
    for event in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(
            describe.contains(event),
            "describe lacks the {event} event:\n{describe}"
        );
    }

    // Deleting the pod stops the container and frees every resource it held.
    s.kubectl_ok(&["delete", "pod", "sk-hello", "--timeout=90s"]);
    assert!(!ip_file.exists(), "IP {ip} still allocated after delete");
    assert!(
        netns::links_on_bridge("cni0").is_empty(),
        "veth left on cni0"
    );
    assert_eq!(
        std::fs::read_dir(&netns_dir)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "sandbox netns left behind"
    );
    let runtime_root = run_dir.join("runtime");
    let containers: Vec<_> = std::fs::read_dir(&runtime_root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        containers.is_empty(),
        "containers still known to the runtime: {containers:?}"
    );
    let data_dir = s.dir.path().join("data");
    // The server's own sealed copy of skiff-runtime (mounted while it runs, see
    // shims/cri/src/seal.rs) is not a pod's.
    let sealed = data_dir.join("cri/bin/skiff-runtime").display().to_string();
    let left: Vec<String> = mounts_under(&data_dir)
        .into_iter()
        .filter(|m| m.split(' ').nth(4) != Some(sealed.as_str()))
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
    let left = mounts_under(&run_dir);
    assert!(left.is_empty(), "mounts left behind: {left:?}");

    // A missing image shows ErrImagePull / ImagePullBackOff.
    s.kubectl_ok(&[
        "run",
        "sk-noimage",
        &format!("--image={}/sk-does-not-exist:latest", registry.addr()),
        "--restart=Never",
    ]);
    s.wait_for("ErrImagePull", Duration::from_secs(60), || {
        let (_, out, _) = s.kubectl(&["get", "pods"]);
        out.lines().any(|l| {
            l.starts_with("sk-noimage")
                && (l.contains("ErrImagePull") || l.contains("ImagePullBackOff"))
        })
    });
    s.kubectl_ok(&["delete", "pod", "sk-noimage", "--timeout=60s"]);

    // Bad input: a pod with no containers is a 422 Invalid with a clear message.
    let bad = s.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sk-bad\nspec:\n  containers: []\n",
    )
    .unwrap();
    let (ok, _, err) = s.kubectl(&["apply", "-f", bad.to_str().unwrap(), "-v=6"]);
    assert!(!ok, "apply of an invalid pod succeeded");
    assert!(err.contains("422"), "no 422 in:\n{err}");
    assert!(
        err.contains("spec.containers: Required value"),
        "unclear error:\n{err}"
    );
}
