//! The CRI benchmark behind `bench/cri/run.sh` (ignored by default; needs root and release
//! binaries): the same tonic CRI client drives Skiff (`skiff cri`, a separate process) and
//! Debian's containerd with runc, both on Skiff's CNI plugins, with the image pulled before:
//! RunPodSandbox; CreateContainer+StartContainer; StopPodSandbox+RemovePodSandbox (iterations
//! alternate between the two so machine noise hits both), daemon RSS idle and with 20 pods, and
//! the per-pod processes (Skiff: pause + monitor; containerd: shim + sandbox process).
//! Prints `cri_<figure> skiff=.. containerd=.. ratio=..` lines.
//!
//! Env: SKIFF_BENCH_BIN_DIR (release binaries: skiff, skiff-runtime, skiff-monitor),
//! SKIFF_TEST_CNI_BIN_DIR (CNI plugins for both), SKIFF_BENCH_ITERS (30), SKIFF_BENCH_PODS (20).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_proto::cri;
use skiff_tests::cri_env::containerd::ContainerdEnv;
use skiff_tests::cri_env::{ImageClient, RuntimeClient};
use skiff_tests::{build_busybox_image, push, Registry};

struct Skiff {
    child: std::process::Child,
    socket: PathBuf,
    bridge: String,
    cgroup_parent: String,
    tmp: tempfile::TempDir,
}

impl Skiff {
    async fn start(bin_dir: &Path, cni_bin: &Path, bridge: &str, subnet: &str) -> Skiff {
        let tmp = tempfile::Builder::new()
            .prefix("sk-bench-")
            .tempdir()
            .unwrap();
        let t = tmp.path();
        let conf = t.join("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": format!("{bridge}net"),
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": t.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(conf.join("10-skbench.conflist"), conflist.to_string()).unwrap();
        let socket = t.join("cri.sock");
        let child = std::process::Command::new(bin_dir.join("skiff"))
            .arg("cri")
            .arg("--address")
            .arg(&socket)
            .arg("--root")
            .arg(t.join("state"))
            .arg("--runtime")
            .arg(bin_dir.join("skiff-runtime"))
            .arg("--runtime-root")
            .arg(t.join("runtime"))
            .arg("--monitor")
            .arg(bin_dir.join("skiff-monitor"))
            .arg("--cni-conf-dir")
            .arg(&conf)
            .arg("--cni-bin-dir")
            .arg(cni_bin)
            .arg("--netns-dir")
            .arg(t.join("netns"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(t.join("cri.log")).unwrap())
            .spawn()
            .unwrap();
        let cgroup_parent = format!("/skbench{}", &t.file_name().unwrap().to_string_lossy()[9..]);
        let s = Skiff {
            child,
            socket,
            bridge: bridge.into(),
            cgroup_parent,
            tmp,
        };
        for _ in 0..300 {
            if let Ok((mut rt, _)) = skiff_cri::client::connect(&s.socket).await {
                if rt.version(cri::VersionRequest::default()).await.is_ok() {
                    return s;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "skiff cri did not start: {}",
            std::fs::read_to_string(s.tmp.path().join("cri.log")).unwrap_or_default()
        );
    }
}

impl Drop for Skiff {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        skiff_tests::netns::delete_link(&self.bridge);
        let parent = self.cgroup_parent.trim_start_matches('/').to_string();
        for c in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(c.path().join(&parent));
        }
    }
}

fn mem_kib(pid: i32) -> (u64, u64) {
    let roll = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| {
        roll.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    };
    (get("Rss:"), get("Pss:"))
}

struct Side {
    name: &'static str,
    rt: RuntimeClient,
    img: ImageClient,
    image: String,
    cgroup_parent: String,
    log_root: PathBuf,
    times: HashMap<&'static str, Vec<f64>>,
    /// Pods made from now on get this user namespace (`hostUsers: false`; Skiff only).
    userns: Option<cri::UserNamespace>,
}

impl Side {
    fn sandbox_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "skbench".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_root.join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: self
                    .userns
                    .clone()
                    .map(|u| cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            network: cri::NamespaceMode::Pod as i32,
                            pid: cri::NamespaceMode::Container as i32,
                            ipc: cri::NamespaceMode::Pod as i32,
                            userns_options: Some(u),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// One pod with one `sleep` container; returns (sandbox id, container id).
    async fn start_pod(&mut self, name: &str, record: bool) -> (String, String) {
        let (sb, mut cts) = self.start_pod_with(name, 1, false, record).await;
        (sb, cts.remove(0))
    }

    /// One pod with `n` `sleep` containers (with `logging`, each prints a line every 100 ms);
    /// returns (sandbox id, container ids).
    async fn start_pod_with(
        &mut self,
        name: &str,
        n: usize,
        logging: bool,
        record: bool,
    ) -> (String, Vec<String>) {
        let command: Vec<String> = if logging {
            ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]
                .map(String::from)
                .to_vec()
        } else {
            vec!["sleep".into(), "100000".into()]
        };
        let cfg = self.sandbox_config(name);
        let t0 = Instant::now();
        let sb = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: RunPodSandbox: {e}", self.name))
            .into_inner()
            .pod_sandbox_id;
        let t1 = Instant::now();
        let mut cts = Vec::new();
        for i in 0..n {
            let cname = if i == 0 {
                "sleeper".to_owned()
            } else {
                format!("sleeper{i}")
            };
            let ct = self
                .rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sb.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata {
                            name: cname.clone(),
                            attempt: 0,
                        }),
                        image: Some(cri::ImageSpec {
                            image: self.image.clone(),
                            ..Default::default()
                        }),
                        command: command.clone(),
                        log_path: format!("{cname}.log"),
                        ..Default::default()
                    }),
                    sandbox_config: Some(cfg.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("{}: CreateContainer: {e}", self.name))
                .into_inner()
                .container_id;
            self.rt
                .start_container(cri::StartContainerRequest {
                    container_id: ct.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{}: StartContainer: {e}", self.name));
            cts.push(ct);
        }
        let t2 = Instant::now();
        if record {
            self.times
                .entry("run_pod_sandbox")
                .or_default()
                .push((t1 - t0).as_secs_f64() * 1e3);
            self.times
                .entry("create_start_container")
                .or_default()
                .push((t2 - t1).as_secs_f64() * 1e3);
            self.times
                .entry("pod_and_container_start")
                .or_default()
                .push((t2 - t0).as_secs_f64() * 1e3);
        }
        (sb, cts)
    }

    async fn stop_pod(&mut self, sb: &str, record: bool) {
        let t0 = Instant::now();
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sb.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: StopPodSandbox: {e}", self.name));
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sb.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: RemovePodSandbox: {e}", self.name));
        if record {
            self.times
                .entry("stop_remove_pod")
                .or_default()
                .push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }

    async fn sandbox_pid(&mut self, sb: &str) -> i32 {
        let info = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sb.into(),
                verbose: true,
            })
            .await
            .unwrap()
            .into_inner()
            .info;
        let v: serde_json::Value =
            serde_json::from_str(info.get("info").map(String::as_str).unwrap_or("{}"))
                .unwrap_or_default();
        v["pid"].as_i64().unwrap_or(0) as i32
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return 0.0;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn line(name: &str, skiff: f64, containerd: f64) {
    let ratio = if containerd > 0.0 {
        skiff / containerd
    } else {
        0.0
    };
    println!("cri_{name} skiff={skiff:.2} containerd={containerd:.2} ratio={ratio:.2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run bench/cri/run.sh"]
async fn cri_bench_skiff_vs_containerd() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    assert!(
        ContainerdEnv::available(),
        "containerd and containerd-shim-runc-v2 are needed"
    );
    skiff_tests::cri_env::init_tls();
    let bin_dir = PathBuf::from(std::env::var("SKIFF_BENCH_BIN_DIR").expect("SKIFF_BENCH_BIN_DIR"));
    let cni_bin =
        PathBuf::from(std::env::var("SKIFF_TEST_CNI_BIN_DIR").expect("SKIFF_TEST_CNI_BIN_DIR"));
    let iters: usize = std::env::var("SKIFF_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let pods: usize = std::env::var("SKIFF_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);

    let registry = Registry::shared().expect("local registry");
    let image = build_busybox_image().unwrap();
    push(registry.addr(), "skbusybox:bench", &image)
        .await
        .unwrap();
    let image_name = format!("{}/skbusybox:bench", registry.addr());

    let skiff = Skiff::start(&bin_dir, &cni_bin, "skbr12", "10.244.12.0/24").await;
    let ctd = ContainerdEnv::start("skbr13", "10.244.13.0/24", registry.addr(), &image)
        .await
        .unwrap();
    let (rt, img) = skiff_cri::client::connect(&skiff.socket).await.unwrap();
    let mut s = Side {
        name: "skiff",
        rt,
        img,
        image: image_name.clone(),
        cgroup_parent: skiff.cgroup_parent.clone(),
        log_root: skiff.tmp.path().join("logs"),
        times: HashMap::new(),
        userns: None,
    };
    let (rt, img) = ctd.clients().await.unwrap();
    let mut c = Side {
        name: "containerd",
        rt,
        img,
        image: image_name.clone(),
        cgroup_parent: ctd.cgroup_parent.clone(),
        log_root: ctd.dir().join("logs"),
        times: HashMap::new(),
        userns: None,
    };
    for side in [&mut s, &mut c] {
        side.img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image_name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Warm-up pod each (containerd pulls its sandbox image here), not recorded.
    for side in [&mut s, &mut c] {
        let (sb, _) = side.start_pod("skwarm", false).await;
        side.stop_pod(&sb, false).await;
    }
    // Right after the calls, before `skiff cri` trims (what a busy node sees).
    let (s_hot, _) = mem_kib(skiff.child.id() as i32);
    let (c_hot, _) = mem_kib(ctd.pid() as i32);
    // Idle: 5 s without a call (`skiff cri` trims after 2 s of quiet; containerd does nothing).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let skiff_pid = skiff.child.id() as i32;
    let ctd_pid = ctd.pid() as i32;
    let (s_idle, _) = mem_kib(skiff_pid);
    let (c_idle, _) = mem_kib(ctd_pid);
    if let Ok(dir) = std::env::var("SKIFF_BENCH_SMAPS_DIR") {
        for (n, pid) in [("skiff", skiff_pid), ("containerd", ctd_pid)] {
            let _ = std::fs::copy(
                format!("/proc/{pid}/smaps"),
                format!("{dir}/{n}-idle.smaps"),
            );
        }
        let _ = std::fs::write(format!("{dir}/skiff.pid"), skiff_pid.to_string());
        if let Ok(secs) = std::env::var("SKIFF_BENCH_HOLD_SECS") {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(0)));
        }
    }

    for i in 0..iters {
        for side in [&mut s, &mut c] {
            let (sb, _) = side.start_pod(&format!("skb{i}"), true).await;
            side.stop_pod(&sb, true).await;
        }
    }

    // 20 pods at once: daemon memory and the per-pod processes.
    let mut s_pods = Vec::new();
    let mut c_pods = Vec::new();
    for i in 0..pods {
        s_pods.push(s.start_pod_with(&format!("skm{i}"), 1, false, false).await);
        c_pods.push(c.start_pod_with(&format!("skm{i}"), 1, false, false).await);
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // monitors trim after 2 s
    let (s_busy, _) = mem_kib(skiff_pid);
    let (c_busy, _) = mem_kib(ctd_pid);
    let s_per = skiff_pod_mem(&mut s, &skiff, &s_pods).await;
    let c_per = containerd_pod_mem(&mut c, &ctd, &c_pods).await;
    for (sb, _) in s_pods.clone() {
        s.stop_pod(&sb, false).await;
    }
    for (sb, _) in c_pods.clone() {
        c.stop_pod(&sb, false).await;
    }

    // Per-pod processes by container count: a few pods of 1, 3 and 10 containers at a time,
    // silent, then logging a line every 100 ms.
    let mut by_count = Vec::new();
    for (n, logging) in [
        (1usize, false),
        (3, false),
        (10, false),
        (1, true),
        (10, true),
    ] {
        let k = 3;
        let mut s_pods = Vec::new();
        let mut c_pods = Vec::new();
        for i in 0..k {
            let name = format!("skn{n}{}x{i}", if logging { "l" } else { "" });
            s_pods.push(s.start_pod_with(&name, n, logging, false).await);
            c_pods.push(c.start_pod_with(&name, n, logging, false).await);
        }
        tokio::time::sleep(Duration::from_secs(4)).await; // monitors trim after 2 s
        let s_mem = skiff_pod_mem(&mut s, &skiff, &s_pods).await;
        let c_mem = containerd_pod_mem(&mut c, &ctd, &c_pods).await;
        let label = format!("{n}c{}", if logging { "_logging" } else { "" });
        by_count.push((label, k, s_mem, c_mem));
        for (sb, _) in s_pods {
            s.stop_pod(&sb, false).await;
        }
        for (sb, _) in c_pods {
            c.stop_pod(&sb, false).await;
        }
    }

    // Skiff only (containerd 1.6 has no user namespaces): pods with a user namespace (one pod
    // monitor on the host plus the pause it cloned into the namespace), 1 and 3 `sleep`
    // containers; the containerd figure printed beside is its plain pod of as many containers.
    // The pod's root must be able to search down to the bundles (containerd keeps 0711 too).
    std::fs::set_permissions(skiff.tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let maps = vec![cri::IdMapping {
        container_id: 0,
        host_id: 2_000_000,
        length: 65536,
    }];
    s.userns = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: maps.clone(),
        gids: maps,
    });
    let mut userns_by_count = Vec::new();
    for n in [1usize, 3] {
        let k = 3;
        let mut s_pods = Vec::new();
        for i in 0..k {
            s_pods.push(
                s.start_pod_with(&format!("sku{n}x{i}"), n, false, false)
                    .await,
            );
        }
        tokio::time::sleep(Duration::from_secs(4)).await; // monitors trim after 2 s
        userns_by_count.push((n, k, skiff_pod_mem(&mut s, &skiff, &s_pods).await));
        for (sb, _) in s_pods {
            s.stop_pod(&sb, false).await;
        }
    }
    s.userns = None;

    println!(
        "# {iters} iterations, {pods} pods; times in ms, memory in KiB (RSS; PSS where named)"
    );
    for (key, label) in [
        ("run_pod_sandbox", "run_pod_sandbox"),
        ("create_start_container", "create_start_container"),
        ("pod_and_container_start", "sandbox_container_start"),
        ("stop_remove_pod", "stop_remove_pod"),
    ] {
        for (p, pn) in [(0.5, "p50"), (0.9, "p90")] {
            line(
                &format!("{label}_{pn}_ms"),
                pct(&s.times[key], p),
                pct(&c.times[key], p),
            );
        }
    }
    line("daemon_after_calls_rss_kib", s_hot as f64, c_hot as f64);
    line("daemon_idle_rss_kib", s_idle as f64, c_idle as f64);
    line(
        &format!("daemon_{pods}pods_rss_kib"),
        s_busy as f64,
        c_busy as f64,
    );
    let n = pods as f64;
    line("per_pod_rss_kib", s_per.0 as f64 / n, c_per.0 as f64 / n);
    line("per_pod_pss_kib", s_per.1 as f64 / n, c_per.1 as f64 / n);
    for (label, k, s_mem, c_mem) in &by_count {
        let k = *k as f64;
        line(
            &format!("per_pod_{label}_rss_kib"),
            s_mem.0 as f64 / k,
            c_mem.0 as f64 / k,
        );
        line(
            &format!("per_pod_{label}_pss_kib"),
            s_mem.1 as f64 / k,
            c_mem.1 as f64 / k,
        );
    }
    for (n, k, s_mem) in userns_by_count {
        let label = format!("{n}c");
        let c_plain = by_count
            .iter()
            .find(|b| b.0 == label)
            .map(|b| b.3 .0 as f64 / b.1 as f64)
            .unwrap_or(f64::NAN);
        line(
            &format!("per_pod_userns_{label}_rss_kib"),
            s_mem.0 as f64 / k as f64,
            c_plain,
        );
        // The pause is a fork of the pod monitor: RSS counts the pages they still share twice.
        let c_plain_pss = by_count
            .iter()
            .find(|b| b.0 == label)
            .map(|b| b.3 .1 as f64 / b.1 as f64)
            .unwrap_or(f64::NAN);
        line(
            &format!("per_pod_userns_{label}_pss_kib"),
            s_mem.1 as f64 / k as f64,
            c_plain_pss,
        );
    }
}

/// (RSS, PSS) summed over Skiff's per-pod processes of `pods`: each pause (the pod monitor)
/// and every distinct container monitor (`monitor.pid`; the pause itself for pod-monitored
/// containers), each process counted once.
async fn skiff_pod_mem(s: &mut Side, skiff: &Skiff, pods: &[(String, Vec<String>)]) -> (u64, u64) {
    let mut pids = std::collections::BTreeSet::new();
    for (sb, cts) in pods {
        pids.insert(s.sandbox_pid(sb).await);
        for ct in cts {
            let mon: i32 = std::fs::read_to_string(
                skiff
                    .tmp
                    .path()
                    .join("state/containers")
                    .join(ct)
                    .join("monitor/monitor.pid"),
            )
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
            pids.insert(mon);
        }
    }
    sum_mem(pids.into_iter().filter(|p| *p > 0))
}

/// (RSS, PSS) summed over containerd's per-pod processes: each sandbox (pause) process and
/// every shim (only `pods` run while this is measured).
async fn containerd_pod_mem(
    c: &mut Side,
    ctd: &ContainerdEnv,
    pods: &[(String, Vec<String>)],
) -> (u64, u64) {
    let mut pids = std::collections::BTreeSet::new();
    for (sb, _) in pods {
        pids.insert(c.sandbox_pid(sb).await);
    }
    pids.extend(ctd.shim_pids());
    sum_mem(pids.into_iter().filter(|p| *p > 0))
}

fn sum_mem(pids: impl Iterator<Item = i32>) -> (u64, u64) {
    pids.map(mem_kib)
        .fold((0, 0), |(r, p), (r2, p2)| (r + r2, p + p2))
}
