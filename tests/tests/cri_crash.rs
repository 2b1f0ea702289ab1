//! kill -9 of the CRI server (its own process, `sk-cri-serve`) in the middle of RunPodSandbox
//! and of StopPodSandbox, at several points, then a restart on the same state: once the
//! sandboxes it lists are stopped and removed, no IP reservation, veth, netns mount, other
//! mount, cgroup or pause process is left. Bridge `skbr24`, 10.244.24.0/24; the network is
//! CNI 1.1.0 so the start-up GC runs. Run as root after `cargo build -p skiff-cni -p
//! skiff-runtime -p skiff-monitor` (cargo builds `sk-cri-serve` itself).

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::RuntimeClient;
use skiff_tests::netns::links_on_bridge;
use skiff_tests::{CriEnv, Registry};

/// The server process; killed with SIGKILL by its PID.
struct Server {
    child: Child,
}

impl Server {
    async fn start(env: &CriEnv) -> Server {
        let c = &env.cfg;
        let _ = std::fs::remove_file(&c.socket);
        // Cargo builds the package's binaries for its integration tests.
        let bin = Path::new(env!("CARGO_BIN_EXE_sk-cri-serve"));
        assert!(bin.exists(), "{} is missing", bin.display());
        let arg = |k: &str, p: &Path| format!("{k}={}", p.display());
        let server = Server {
            child: Command::new(bin)
                .arg(arg("socket", &c.socket))
                .arg(arg("state", &c.state_dir))
                .arg(arg("runtime", &c.runtime_bin))
                .arg(arg("runtime-root", &c.runtime_root))
                .arg(arg("monitor", &c.monitor_bin))
                .arg(arg("cni-conf", &c.cni_conf_dir))
                .arg(arg("cni-bin", &c.cni_bin_dir))
                .arg(arg("netns", &c.netns_dir))
                .spawn()
                .expect("starting sk-cri-serve"),
        };
        for _ in 0..500 {
            if c.socket.exists() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sk-cri-serve did not create {}", c.socket.display());
    }

    fn kill9(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// Connects, retrying while the socket file exists but does not accept yet (5 s at most).
async fn client(env: &CriEnv) -> RuntimeClient {
    let mut last = None;
    for _ in 0..250 {
        match env.clients().await {
            Ok((rt, _)) => return rt,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("connecting to {}: {last:?}", env.cfg.socket.display());
}

/// Stops and removes every sandbox the server lists.
async fn remove_all(rt: &mut RuntimeClient) {
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    for sb in items {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sb.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", sb.id));
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: sb.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", sb.id));
    }
}

/// What a sandbox leaves when it is not cleaned up; empty when nothing is left.
fn leftovers(env: &CriEnv) -> Vec<String> {
    let mut out = Vec::new();
    for ip in env.ipam_reservations() {
        out.push(format!("IP reservation {ip}"));
    }
    for l in links_on_bridge(&env.bridge) {
        out.push(format!("veth {l} on {}", env.bridge));
    }
    for e in std::fs::read_dir(&env.cfg.netns_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push(format!("netns file {}", e.path().display()));
    }
    let dir = env.dir().display().to_string();
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        if let Some(m) = l.split(' ').nth(4).filter(|m| m.starts_with(&dir)) {
            out.push(format!("mount {m}"));
        }
    }
    let parent = env.cgroup_parent.trim_start_matches('/');
    for ctrl in ["memory", "pids", "cpu"] {
        let d = Path::new("/sys/fs/cgroup").join(ctrl).join(parent);
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                out.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    for pid in pause_pids() {
        out.push(format!("pause process {pid}"));
    }
    out
}

/// Pause processes of this test's sandboxes (host names `skcrash*`).
fn pause_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_str()?.parse::<i32>().ok()?;
            let cmd = std::fs::read(p.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("skiff-monitor pause") && cmd.contains("skcrash")).then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leaks_after_kill_9_mid_run_and_stop_pod_sandbox() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let mut env = CriEnv::start("skbr24", "10.244.24.0/24", registry.addr())
        .await
        .unwrap();
    env.stop().await.unwrap();
    // CNI 1.1.0: the restart's GC runs too (our plugins speak it).
    let conf = std::fs::read_dir(&env.cfg.cni_conf_dir)
        .unwrap()
        .flatten()
        .next()
        .expect("the test conflist")
        .path();
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.clone()).unwrap();

    // Points in the call at which the server dies: from "before anything" to "after all"
    // (RunPodSandbox takes some tens of ms here: pause, cgroup, netns, CNI ADD, records).
    let mut rounds: Vec<(&str, u64)> = (0..=90).step_by(3).map(|d| ("RunPodSandbox", d)).collect();
    rounds.extend([0, 2, 5, 10, 20, 40, 80].map(|d| ("StopPodSandbox", d)));
    let mut failures = Vec::new();
    for (round, (phase, delay)) in rounds.iter().enumerate() {
        let delay = *delay;
        {
            let name = format!("skcrash{round}{}", &phase[..3].to_lowercase());
            let cfg = env.sandbox_config(&name);
            let server = Server::start(&env).await;
            let mut rt = client(&env).await;
            let call = if *phase == "RunPodSandbox" {
                let mut rt2 = rt.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let _ = rt2
                        .run_pod_sandbox(cri::RunPodSandboxRequest {
                            config: Some(cfg),
                            runtime_handler: String::new(),
                        })
                        .await;
                })
            } else {
                let id = skiff_tests::cri_env::run_sandbox(&mut rt, &cfg, "").await;
                let mut rt2 = rt.clone();
                tokio::spawn(async move {
                    let _ = rt2
                        .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                        .await;
                })
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            server.kill9();
            let _ = call.await;

            let server = Server::start(&env).await;
            let mut rt = client(&env).await;
            remove_all(&mut rt).await;
            let left = leftovers(&env);
            if !left.is_empty() {
                failures.push(format!("{phase} killed after {delay} ms: {left:?}"));
            }
            drop(server);
        }
    }
    // A failing run must not leave its pause processes behind either (they are ours: the
    // host names are this test's).
    for pid in pause_pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(failures.is_empty(), "leaks:\n{}", failures.join("\n"));
}
