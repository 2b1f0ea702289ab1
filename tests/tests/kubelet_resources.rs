//! Per-container `LinuxContainerResources` from the kubelet to the CRI, checked on the host:
//! `skiff kubelet` beside a `skiff server --disable-agent`, once over Skiff's CRI server (bridge
//! `skbr46`, 10.244.46.0/24) and once over Debian's containerd 1.6 + runc (bridge `skbr47`,
//! 10.244.47.0/24). For a Guaranteed, a Burstable and a BestEffort pod the container's own
//! cgroup (found from `/proc/<pid>/cgroup` of its process) has upstream's `cpu.shares`,
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us` and `memory.limit_in_bytes` (v2: `cpu.weight`,
//! `cpu.max`, `memory.max`), and `/proc/<pid>/oom_score_adj` is upstream's score (-997 raised to
//! the runtime's own score where this host refuses lower values, as both runtimes clamp);
//! a container over its memory limit is OOMKilled and restarted (`lastState.terminated.reason:
//! OOMKilled`, exit code 137). Needs root, docker-registry, busybox-static, kubectl and Debian's
//! containerd; builds on `cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use skiff_tests::cri_env::containerd::ContainerdEnv;
use skiff_tests::standalone::{start_kubelet, CgroupRoot, KubeletNode as Node, SkiffCri};
use skiff_tests::Registry;
use std::path::{Path, PathBuf};

const CG: &str = "/sys/fs/cgroup";

fn v2() -> bool {
    nix::sys::statfs::statfs(CG)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

fn mem_total() -> i64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: i64 = m
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn oom_score_adj(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap_or_else(|e| panic!("oom_score_adj of {pid}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

/// The pid of the process whose command line is exactly `args`.
fn find_process(args: &[&str]) -> Option<u32> {
    let want: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
}

/// The folder of `pid`'s cgroup for `controller` (v1) or its unified cgroup (v2).
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in s.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let path = path.trim_start_matches('/');
        if v2() {
            if ctrls.is_empty() {
                return Path::new(CG).join(path);
            }
        } else if ctrls.split(',').any(|c| c == controller) {
            return Path::new(CG).join(controller).join(path);
        }
    }
    panic!("no {controller} cgroup for {pid}:\n{s}");
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("reading {}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

/// What the container's cgroup holds: (cpu shares or v2 weight, quota µs or None, period µs,
/// memory limit or None).
fn container_cgroup(pid: u32) -> (u64, Option<i64>, i64, Option<u64>) {
    let cpu = cgroup_dir(pid, "cpu");
    let mem = cgroup_dir(pid, "memory");
    if v2() {
        let max = read(&cpu, "cpu.max");
        let mut it = max.split_whitespace();
        let quota = it.next().and_then(|q| q.parse().ok());
        let period = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let weight = read(&cpu, "cpu.weight").parse().unwrap();
        let limit = read(&mem, "memory.max").parse().ok();
        (weight, quota, period, limit)
    } else {
        let shares = read(&cpu, "cpu.shares").parse().unwrap();
        let quota: i64 = read(&cpu, "cpu.cfs_quota_us").parse().unwrap();
        let period = read(&cpu, "cpu.cfs_period_us").parse().unwrap();
        let limit: u64 = read(&mem, "memory.limit_in_bytes").parse().unwrap();
        (
            shares,
            Some(quota).filter(|q| *q > 0),
            period,
            Some(limit).filter(|l| *l < (1u64 << 62)),
        )
    }
}

fn want_shares(shares: u64) -> u64 {
    if v2() {
        1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
    } else {
        shares
    }
}

/// The scenario on one runtime; `runtime_pid` is the process whose oom_score_adj bounds the
/// containers' (the CRI daemon: Skiff's CRI server, containerd).
fn check_resources(
    runtime: &'static str,
    socket: &Path,
    busybox: &str,
    cgroup_root: &str,
    runtime_pid: u32,
) {
    let cp = ControlPlane::start();
    let dir = cp.dir().join("sk-res");
    let name = format!("sk-res-{runtime}-{}", std::process::id());
    let kubelet = start_kubelet(&cp, socket, &name, cgroup_root, &dir);
    let n = Node {
        runtime,
        cp: &cp,
        name: name.clone(),
        dir,
    };
    n.wait_for("the node to be Ready", || {
        cp.kubectl(&[
            "get",
            "node",
            &n.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .stdout
            == "True"
    });
    // Unique command lines, so the test finds its own container processes.
    let tag = format!("{}", 700_000 + std::process::id() % 100_000);
    let args = |k: &str| vec!["sleep".to_string(), format!("{tag}{k}")];
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-res-g}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {busybox}
    command: ["sleep", "{tag}1"]
    resources: {{limits: {{cpu: 250m, memory: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-res-b}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {busybox}
    command: ["sleep", "{tag}2"]
    resources: {{requests: {{cpu: 100m, memory: 128Mi}}, limits: {{cpu: 500m}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-res-be}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {busybox}
    command: ["sleep", "{tag}3"]
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-res-oom}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 1
  restartPolicy: Always
  containers:
  - name: main
    image: {busybox}
    command: ["sh", "-c", "sleep 2; exec dd if=/dev/zero of=/dev/null bs=48M count=1"]
    resources: {{limits: {{cpu: 100m, memory: 16Mi}}}}
"#
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "{runtime}: apply: {}", o.stderr);
    for p in ["sk-res-g", "sk-res-b", "sk-res-be"] {
        n.wait_for(&format!("{p} Running"), || {
            n.get(p, "{.status.phase}") == "Running"
        });
    }
    let pid = |k: &str| {
        let a = args(k);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut found = None;
        n.wait_for(&format!("the process {a:?}"), || {
            found = find_process(&a);
            found.is_some()
        });
        found.unwrap()
    };
    let floor = oom_score_adj(runtime_pid);
    eprintln!("{runtime}: the runtime's own oom_score_adj is {floor}");

    // Guaranteed: shares 256 (250m), quota 25 ms per 100 ms, 64Mi, -997 (clamped).
    let g = pid("1");
    let (shares, quota, period, limit) = container_cgroup(g);
    assert_eq!(
        shares,
        want_shares(256),
        "{runtime}: Guaranteed cpu shares\n{}",
        n.kubelet_log()
    );
    assert_eq!(quota, Some(25_000), "{runtime}: Guaranteed cfs quota");
    assert_eq!(period, 100_000, "{runtime}: cfs period");
    assert_eq!(limit, Some(64 << 20), "{runtime}: Guaranteed memory limit");
    assert_eq!(
        oom_score_adj(g),
        (-997i64).max(floor),
        "{runtime}: Guaranteed oom_score_adj"
    );

    // Burstable: shares from the request (102), quota from the limit, no memory limit, score
    // 1000 - 1000 * request / capacity.
    let b = pid("2");
    let (shares, quota, _, limit) = container_cgroup(b);
    assert_eq!(shares, want_shares(102), "{runtime}: Burstable cpu shares");
    assert_eq!(quota, Some(50_000), "{runtime}: Burstable cfs quota");
    assert_eq!(limit, None, "{runtime}: Burstable memory limit");
    let want = (1000 - 1000 * (128i64 << 20) / mem_total()).clamp(3, 999);
    assert_eq!(
        oom_score_adj(b),
        want.max(floor),
        "{runtime}: Burstable oom_score_adj"
    );

    // BestEffort: shares 2, no quota, no limit, 1000.
    let be = pid("3");
    let (shares, quota, _, limit) = container_cgroup(be);
    assert_eq!(shares, want_shares(2), "{runtime}: BestEffort cpu shares");
    assert_eq!(quota, None, "{runtime}: BestEffort cfs quota");
    assert_eq!(limit, None, "{runtime}: BestEffort memory limit");
    assert_eq!(
        oom_score_adj(be),
        1000,
        "{runtime}: BestEffort oom_score_adj"
    );

    // Over its memory limit: OOMKilled, exit 137, and restarted (restartPolicy Always).
    let what = match skiff_tests::cri_env::containerd::oom_watch_problem() {
        Some(p) if runtime == "containerd" => format!("sk-res-oom OOMKilled and restarted ({p})"),
        _ => "sk-res-oom OOMKilled and restarted".to_string(),
    };
    n.wait_for(&what, || {
        n.get(
            "sk-res-oom",
            "{.status.containerStatuses[0].lastState.terminated.reason}",
        ) == "OOMKilled"
            && n.get("sk-res-oom", "{.status.containerStatuses[0].restartCount}")
                .parse::<u32>()
                .is_ok_and(|r| r >= 1)
    });
    assert_eq!(
        n.get(
            "sk-res-oom",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "137",
        "{runtime}: exit code of an OOM kill"
    );

    let o = cp.kubectl(&[
        "delete",
        "pod",
        "sk-res-g",
        "sk-res-b",
        "sk-res-be",
        "sk-res-oom",
        "--wait=true",
        "--timeout=90s",
    ]);
    assert!(o.ok, "{runtime}: delete: {}", o.stderr);
    drop(kubelet);
    cp.kubectl(&["delete", "node", &name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_resources_on_skiff_cri() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let busybox = skiff_tests::cri_env::push_busybox(registry.addr(), "sk-busybox:latest").await;
    let cgroups = CgroupRoot(format!("/skres{}", std::process::id()));
    let cri = SkiffCri::start("skbr46", "10.244.46.0/24", registry.addr())
        .expect("skiff cri (cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni)");
    let (socket, pid) = (cri.socket.clone(), cri.pid());
    let root = cgroups.0.clone();
    tokio::task::spawn_blocking(move || {
        check_resources("skiff", &socket, &busybox, &root, pid);
    })
    .await
    .unwrap();
    drop(cri);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_resources_on_containerd() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    assert!(
        ContainerdEnv::available(),
        "containerd and containerd-shim-runc-v2 must be installed (Debian's containerd package)"
    );
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = skiff_tests::build_busybox_image().expect("busybox image");
    skiff_tests::push(registry.addr(), "sk-busybox:latest", &image)
        .await
        .expect("push busybox");
    let busybox = format!("{}/sk-busybox:latest", registry.addr());
    let cgroups = CgroupRoot(format!("/skresctd{}", std::process::id()));
    let ctd = ContainerdEnv::start("skbr47", "10.244.47.0/24", registry.addr(), &image)
        .await
        .expect("containerd");
    let (socket, pid) = (ctd.socket.clone(), ctd.pid());
    let root = cgroups.0.clone();
    tokio::task::spawn_blocking(move || {
        check_resources("containerd", &socket, &busybox, &root, pid);
    })
    .await
    .unwrap();
    drop(ctd);
}
