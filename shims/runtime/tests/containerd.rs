//! `skiff-runtime` as containerd's runc: a private Debian `containerd` (temp root, state and
//! socket; stopped by PID) whose runc runtime has `BinaryName` set to our binary, driven through
//! the CRI by the project's own client. The busybox image is imported with `ctr` from an OCI
//! archive built here, so no registry is involved. Pods use the host network (no CNI). Skipped
//! without root, containerd or ctr.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use skiff_proto::cri;
use skiff_tests::image::{busybox_layer_tar, sha256, Blob, MEDIA_CONFIG, MEDIA_MANIFEST};

const RUNTIME: &str = env!("CARGO_BIN_EXE_skiff-runtime");
const IMAGE: &str = "docker.io/library/skbusybox:1";

/// containerd plus everything it made; torn down (by PID, then unmount, then rm) on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
    cgroup_parent: String,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd: stop the ones serving our namespace by their pid files.
        if let Ok(entries) = glob_shim_pids(&self.dir) {
            for pid in entries {
                // SAFETY: plain kill(2) on a pid we read from our own shim's pid file.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let dir = self.dir.display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        for ctrl in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = ctrl.path().join(&self.cgroup_parent);
            if let Ok(children) = fs::read_dir(&parent) {
                for c in children.flatten() {
                    if c.path().is_dir() {
                        let _ = fs::remove_dir(c.path());
                    }
                }
            }
            let _ = fs::remove_dir(&parent);
        }
    }
}

/// Pids of containerd-shim-runc-v2 processes under our state dir (from their `shim.pid`).
fn glob_shim_pids(dir: &Path) -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    let tasks = dir.join("state/io.containerd.runtime.v2.task");
    for ns in fs::read_dir(tasks)?.flatten() {
        for task in fs::read_dir(ns.path())?.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("shim.pid")) {
                if let Ok(pid) = text.trim().parse() {
                    pids.push(pid);
                }
            }
        }
    }
    Ok(pids)
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An OCI archive (image layout tar) of the busybox image whose default command sleeps, so
/// it also serves as the sandbox ("pause") image.
fn image_archive(path: &Path) {
    let layer = Blob::new(
        "application/vnd.oci.image.layer.v1.tar",
        busybox_layer_tar().unwrap(),
    );
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sleep", "1000000"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer.data)]},
    });
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len()}],
    });
    let manifest = Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST, "digest": manifest.digest, "size": manifest.data.len(),
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "1"},
        }],
    });
    let mut tar = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &serde_json::to_vec(&index).unwrap());
    for b in [&layer, &config, &manifest] {
        let hex = b.digest.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), &b.data);
    }
    tar.finish().unwrap();
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/ctd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNTIME}"
        Root = "{d}/skiff-root"
        SystemdCgroup = false
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_a_pod_through_skiff_runtime() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 || !have("containerd") || !have("ctr") {
        panic!("missing prerequisite: needs root, containerd and ctr");
    }
    let me = std::process::id();
    let dir = std::env::temp_dir().join(format!("skctd-rt-{me}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("net.d")).unwrap();
    fs::create_dir_all(dir.join("logs")).unwrap();
    fs::write(dir.join("config.toml"), config_toml(&dir)).unwrap();
    let sock = dir.join("ctd.sock");
    let log = fs::File::create(dir.join("containerd.log")).unwrap();
    let ctd = Containerd {
        child: Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        dir: dir.clone(),
        cgroup_parent: format!("sk-ctd-{me}"),
    };

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut rt, _img) = loop {
        if sock.exists() {
            if let Ok(c) = skiff_cri::client::connect(&sock).await {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "containerd did not start: {}",
            tail(&dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let archive = dir.join("image.tar");
    image_archive(&archive);
    let import = Command::new("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(import.status.success(), "ctr import: {import:?}");

    let pod_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "skpod".into(),
            uid: format!("sk-uid-{me}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: dir.join("logs").display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}", ctd.cgroup_parent),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", tail(&dir)))
        .into_inner()
        .pod_sandbox_id;

    let created = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "skctr".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sh".into()],
                args: vec![
                    "-c".into(),
                    "echo hello-from-skiff-runtime; exec sleep 1000".into(),
                ],
                log_path: "skctr.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", tail(&dir)));
    let ctr = created.into_inner().container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", tail(&dir)));

    let status = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);

    // The shim really used skiff-runtime: our state root holds both containers, and our
    // `state` reads them (the shim passes --root <Root>/<namespace>).
    let our_root = dir.join("skiff-root/k8s.io");
    let st = Command::new(RUNTIME)
        .arg("--root")
        .arg(&our_root)
        .args(["state", &ctr])
        .output()
        .unwrap();
    assert!(st.status.success(), "skiff-runtime state: {st:?}");
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["status"], "running");
    assert!(our_root.join(&pod).join("state.json").exists());

    // ExecSync goes through `skiff-runtime exec --process ... --detach --pid-file ...`.
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo exec-ok; exit 3".into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", tail(&dir)))
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "exec-ok\n");
    assert_eq!(exec.exit_code, 3);

    // UpdateContainerResources goes through `skiff-runtime update --resources -`.
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: ctr.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 48 << 20,
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", tail(&dir)));
    let pid = st["pid"].as_i64().unwrap();
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mem_path = cg
        .lines()
        .find_map(|l| {
            l.strip_prefix(|c: char| c.is_ascii_digit())
                .and_then(|l| l.strip_prefix(":memory:"))
        })
        .unwrap()
        .to_owned();
    let limit = fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{mem_path}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(limit.trim(), (48u64 << 20).to_string());

    // The container's stdout reached the CRI log.
    let log_file = dir.join("logs/skctr.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(&log_file).unwrap_or_default();
        if text.contains("stdout F hello-from-skiff-runtime") {
            break;
        }
        assert!(Instant::now() < deadline, "log: {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    rt.stop_container(cri::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 2,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", tail(&dir)));
    let status = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.state, cri::ContainerState::ContainerExited as i32);
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", tail(&dir)));
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    // Everything the runtime made is gone: state dirs and the containers' cgroups.
    let left: Vec<_> = fs::read_dir(&our_root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "state left in {}: {left:?}",
        our_root.display()
    );
    let parent = format!("/sys/fs/cgroup/memory/{}", ctd.cgroup_parent);
    let children: Vec<_> = fs::read_dir(&parent)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        children.is_empty(),
        "cgroups left under {parent}: {children:?}"
    );
    drop(ctd);
}

fn tail(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
