//! A CRI server under test: temp socket, state, runtime root, netns dir and CNI conf dir (a bridge
//! network of its own), served in-process by `skiff_cri::serve`. Binaries default to the workspace's
//! (`target/debug/skiff-runtime`, `skiff-monitor`, `skiff-cni` linked as the CNI plugins) and can be
//! swapped with SKIFF_TEST_RUNTIME, SKIFF_TEST_MONITOR, SKIFF_TEST_CNI_BIN_DIR.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skiff_cri::CriConfig;
use skiff_proto::cri;
use skiff_proto::cri::image_service_client::ImageServiceClient;
use skiff_proto::cri::runtime_service_client::RuntimeServiceClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::netns::delete_link;

/// WebSocket and SPDY clients of the streaming server (Exec/Attach/PortForward URLs).
#[path = "cri_stream.rs"]
pub mod stream;

/// An in-memory registry with auth, image indexes and stallable blobs, for pull tests.
#[path = "cri_fake_registry.rs"]
pub mod fake_registry;

/// Debian's containerd as a CRI peer (private instance, stopped by PID).
#[path = "cri_containerd.rs"]
pub mod containerd;

/// critest-like checks over the plain CRI client, for any runtime.
#[path = "cri_conformance.rs"]
pub mod conformance;

/// Security-context checks (privileged, capabilities, seccomp, namespaces) for any runtime.
#[path = "cri_security.rs"]
pub mod security;
use crate::{io_err, workspace_bin, HarnessError, Result};

pub type RuntimeClient = RuntimeServiceClient<Channel>;
pub type ImageClient = ImageServiceClient<Channel>;

struct Server {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), skiff_cri::CriError>>,
}

pub struct CriEnv {
    pub cfg: CriConfig,
    /// Network name of the conflist, bridge and host-local data dir.
    pub network: String,
    pub bridge: String,
    pub ipam_dir: PathBuf,
    /// cgroupfs parent given to sandboxes (`/sk<random>`), removed on Drop.
    pub cgroup_parent: String,
    server: Option<Server>,
    tmp: tempfile::TempDir,
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// Pulls `image` (panics with the server's message on failure).
pub async fn pull_image(img: &mut ImageClient, image: &str) {
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("pulling {image}: {e}"));
}

/// Builds the busybox test image, pushes it to `registry` as `name` (`repo:tag`) and returns
/// the reference to pull.
pub async fn push_busybox(registry: &str, name: &str) -> String {
    let image = crate::build_busybox_image().expect("busybox test image");
    crate::push(registry, name, &image)
        .await
        .unwrap_or_else(|e| panic!("pushing {name}: {e}"));
    format!("{registry}/{name}")
}

/// RunPodSandbox with `config` on runtime `handler` ("" = default); returns the sandbox id.
pub async fn run_sandbox(
    rt: &mut RuntimeClient,
    config: &cri::PodSandboxConfig,
    handler: &str,
) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox (runtime handler {handler:?}): {e}"))
    .into_inner()
    .pod_sandbox_id
}

/// CreateContainer + StartContainer in sandbox `sandbox_id`; returns the container id.
pub async fn start_container(
    rt: &mut RuntimeClient,
    sandbox_id: &str,
    sandbox_config: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
    id
}

/// Polls ContainerStatus until the container has exited (10 s at most), returning that status.
pub async fn wait_exited(rt: &mut RuntimeClient, id: &str) -> cri::ContainerStatus {
    for _ in 0..500 {
        let s = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("container {id} did not exit");
}

/// Installs the process-wide rustls provider (ring) that registry clients need; call it first
/// in a test that pushes images before starting a [`CriEnv`].
pub fn init_tls() {
    skiff_cri::ensure_tls_provider();
}

impl CriEnv {
    /// Starts a CRI server whose pod network is bridge `bridge` (name starting with `sk`) with
    /// `subnet` (inside 10.244.0.0/16), trusting `registry` over plain HTTP.
    pub async fn start(bridge: &str, subnet: &str, registry: &str) -> Result<CriEnv> {
        assert!(bridge.starts_with("sk"), "test links start with sk");
        let tmp = tempfile::Builder::new()
            .prefix("sk-cri-")
            .tempdir()
            .map_err(io_err("creating temp dir"))?;
        let t = tmp.path();
        let network = format!("{bridge}net");
        let conf_dir = t.join("net.d");
        let ipam_dir = t.join("ipam");
        std::fs::create_dir_all(&conf_dir).map_err(io_err("creating conf dir"))?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": network,
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam_dir}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(conf_dir.join("10-sktest.conflist"), conflist.to_string())
            .map_err(io_err("writing conflist"))?;
        let cni_bin_dir = match std::env::var_os("SKIFF_TEST_CNI_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let dir = t.join("cni-bin");
                std::fs::create_dir_all(&dir).map_err(io_err("creating cni bin dir"))?;
                let bin = workspace_bin("skiff-cni");
                if !bin.exists() {
                    return Err(HarnessError::Other(
                        "build the plugins first: cargo build -p skiff-cni".into(),
                    ));
                }
                for name in ["bridge", "host-local", "loopback", "portmap"] {
                    std::os::unix::fs::symlink(&bin, dir.join(name))
                        .map_err(io_err("linking CNI plugin"))?;
                }
                dir
            }
        };
        let cfg = CriConfig {
            socket: t.join("cri.sock"),
            state_dir: t.join("state"),
            runtime_bin: env_path("SKIFF_TEST_RUNTIME", workspace_bin("skiff-runtime")),
            runtime_root: t.join("runtime"),
            monitor_bin: env_path("SKIFF_TEST_MONITOR", workspace_bin("skiff-monitor")),
            cni_conf_dir: conf_dir,
            cni_bin_dir,
            netns_dir: t.join("netns"),
            insecure_registries: vec![registry.to_string()],
            registry_config_dir: t.join("certs.d"),
            ..Default::default()
        };
        let cgroup_parent = format!(
            "/sk{}",
            &tmp.path().file_name().unwrap_or_default().to_string_lossy()[7..]
        );
        let mut env = CriEnv {
            cfg,
            network,
            bridge: bridge.to_string(),
            ipam_dir,
            cgroup_parent,
            server: None,
            tmp,
        };
        env.serve().await?;
        Ok(env)
    }

    async fn serve(&mut self) -> Result<()> {
        let socket = self.cfg.socket.clone();
        let _ = std::fs::remove_file(&socket);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(skiff_cri::serve(self.cfg.clone(), async {
            let _ = rx.await;
        }));
        for _ in 0..500 {
            if socket.exists() {
                self.server = Some(Server { stop: tx, task });
                return Ok(());
            }
            if task.is_finished() {
                let r = task.await.map_err(|e| HarnessError::Other(e.to_string()))?;
                return Err(HarnessError::Other(format!("CRI server exited: {r:?}")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(HarnessError::Other(
            "CRI socket did not appear within 5s".into(),
        ))
    }

    /// Stops the server (graceful) and starts it again on the same state.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.serve().await
    }

    /// Stops the server gracefully.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(s) = self.server.take() {
            let _ = s.stop.send(());
            s.task
                .await
                .map_err(|e| HarnessError::Other(e.to_string()))?
                .map_err(|e| HarnessError::Other(e.to_string()))?;
        }
        Ok(())
    }

    pub async fn clients(&self) -> Result<(RuntimeClient, ImageClient)> {
        skiff_cri::client::connect(&self.cfg.socket)
            .await
            .map_err(|e| HarnessError::Other(e.to_string()))
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Host-local's reservations (file names that are IPv4 addresses).
    pub fn ipam_reservations(&self) -> Vec<String> {
        std::fs::read_dir(self.ipam_dir.join(&self.network))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The kubelet-style log directory of pod `name`.
    pub fn log_dir(&self, name: &str) -> PathBuf {
        self.tmp
            .path()
            .join("logs")
            .join(format!("default_{name}_{name}-uid"))
    }

    /// A pod sandbox config as the kubelet would send it.
    pub fn sandbox_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_dir(name).display().to_string(),
            labels: HashMap::from([("app".to_string(), name.to_string())]),
            annotations: HashMap::from([("note".to_string(), "skiff-test".to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container config running `script` with `sh -c` in `image`.
    pub fn shell_container(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            log_path: format!("{name}/0.log"),
            ..Default::default()
        }
    }
}

/// PIDs recorded in the server's state (`pause_pid` of sandboxes, `pid` of containers) that still
/// run a process of ours (their command line names skiff-monitor, or they live in our cgroup parent).
fn recorded_pids(state: &Path, kind: &str, file: &str, key: &str) -> Vec<i32> {
    std::fs::read_dir(state.join(kind))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read(e.path().join(file)).ok())
                .filter_map(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
                .filter_map(|v| v.get(key).and_then(serde_json::Value::as_i64))
                .filter(|p| *p > 0)
                .map(|p| p as i32)
                .collect()
        })
        .unwrap_or_default()
}

impl CriEnv {
    /// Best-effort cleanup after a failed test: kills the recorded containers and pause processes
    /// and unmounts everything under the temp dir, deepest first.
    fn force_cleanup(&self) {
        let state = &self.cfg.state_dir;
        let in_our_cgroup = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|c| c.contains(&self.cgroup_parent))
                .unwrap_or(false)
        };
        let is_pause = |pid: i32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("skiff-monitor"))
                .unwrap_or(false)
        };
        for pid in recorded_pids(state, "containers", "container.json", "pid") {
            if in_our_cgroup(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for pid in recorded_pids(state, "sandboxes", "sandbox.json", "pause_pid") {
            if is_pause(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
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
    }
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = s.stop.send(());
        }
        self.force_cleanup();
        delete_link(&self.bridge);
        // The cgroup parent and whatever container cgroups a runtime left in it (processes were
        // killed above; give them a moment to go).
        let parent = self.cgroup_parent.trim_start_matches('/').to_string();
        for _ in 0..50 {
            let mut left = false;
            if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
                for c in rd.flatten() {
                    let dir = c.path().join(&parent);
                    if let Ok(children) = std::fs::read_dir(&dir) {
                        for ch in children.flatten().filter(|e| e.path().is_dir()) {
                            let _ = std::fs::remove_dir(ch.path());
                        }
                    }
                    let _ = std::fs::remove_dir(&dir);
                    left |= dir.exists();
                }
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
