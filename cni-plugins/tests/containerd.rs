//! Our plugins under Debian's containerd (1.6, CRI plugin): containerd runs with a temp
//! root/state/socket in a scratch netns (`skctdh`, entered with nsenter; so the bridge and our nftables table live
//! there), its CNI `bin_dir` pointing at our plugins, and is driven by the project's CRI client.
//! A pod sandbox (image: a one-layer busybox "pause" imported with `ctr`) must get its address
//! from our host-local, its masquerade and port-mapping rules from our bridge/portmap, and lose
//! all of them again on StopPodSandbox/RemovePodSandbox. containerd is stopped by PID.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{our_plugins, sh, Ns};
use serde_json::json;
use skiff_proto::cri;

const NETNS: &str = "skctdh";
const CGROUP_PARENT: &str = "/skcnictd";

/// containerd started by us; stopped by PID (SIGTERM, then SIGKILL) on drop, with the shims it
/// started (found by our unique socket path in their command line).
struct Containerd {
    child: Child,
    root: PathBuf,
}

impl Containerd {
    fn shim_pids(&self) -> Vec<i32> {
        let needle = self.root.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("containerd-shim") && c.contains(&needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let shims = self.shim_pids();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for s in shims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Mounts containerd left under our root (only after a failure).
        let root = self.root.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mine: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        mine.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mine {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        // runc leaves the (empty) parent cgroups behind.
        for ctrl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = ctrl.path().join(CGROUP_PARENT.trim_start_matches('/'));
            if d.is_dir() {
                for sub in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if sub.path().is_dir() {
                        let _ = std::fs::remove_dir(sub.path());
                    }
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn sha256_file(p: &Path) -> String {
    let (ok, out) = sh(&["sha256sum", &p.display().to_string()]);
    assert!(ok, "sha256sum: {out}");
    out.split_whitespace().next().unwrap().to_string()
}

/// An OCI image layout tar (`pause.tar`) whose only layer is /bin/busybox and whose entrypoint
/// sleeps: enough for a pod sandbox.
fn pause_image(dir: &Path, name: &str) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = dir.join("layer.tar");
    let (ok, out) = sh(&[
        "tar",
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "-C",
        &rootfs.display().to_string(),
        "-cf",
        &layer.display().to_string(),
        "bin",
    ]);
    assert!(ok, "tar: {out}");
    let put = |p: &Path| -> (String, u64) {
        let d = sha256_file(p);
        std::fs::copy(p, blobs.join(&d)).unwrap();
        (d, std::fs::metadata(p).unwrap().len())
    };
    let (layer_d, layer_n) = put(&layer);
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "100000"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_d}")]},
    });
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let (cfg_d, cfg_n) = put(&cfg);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{cfg_d}"), "size": cfg_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_d}"), "size": layer_n}],
    });
    let man = dir.join("manifest.json");
    std::fs::write(&man, manifest.to_string()).unwrap();
    let (man_d, man_n) = put(&man);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{man_d}"), "size": man_n,
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": "sk"}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let tarball = dir.join("pause.tar");
    let (ok, out) = sh(&[
        "tar",
        "-C",
        &layout.display().to_string(),
        "-cf",
        &tarball.display().to_string(),
        "oci-layout",
        "index.json",
        "blobs",
    ]);
    assert!(ok, "tar: {out}");
    tarball
}

fn allocations(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect()
}

#[test]
fn containerd_runs_a_sandbox_on_our_plugins() {
    require_root!();
    let (Some(containerd), Some(ctr)) = (tool("containerd"), tool("ctr")) else {
        panic!("missing prerequisite: containerd/ctr not installed (apt-get install containerd)");
    };
    if tool("containerd-shim-runc-v2").is_none() || tool("runc").is_none() {
        panic!("missing prerequisite: containerd-shim-runc-v2 or runc missing");
    }
    let host = Ns::new(NETNS);
    let (ok, out) = sh(&["ip", "-n", NETNS, "link", "set", "lo", "up"]);
    assert!(ok, "{out}");
    let plugins = our_plugins();
    let tmp = tempfile::Builder::new().prefix("skctd").tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let sock = root.join("ctd.sock");
    let ipam = root.join("ipam");
    let netd = root.join("net.d");
    std::fs::create_dir_all(&netd).unwrap();
    let image = "docker.io/skiff/pause:sk";
    std::fs::write(
        netd.join("10-skctd.conflist"),
        json!({
            "cniVersion": "1.0.0",
            "name": "skctdnet",
            "plugins": [
                {"type": "bridge", "bridge": "skbrctd", "isGateway": true, "ipMasq": true,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.81.0/24"}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": ipam}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let cfg = root.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{netd}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
            root = root.display(),
            sock = sock.display(),
            bin = plugins.path().display(),
            netd = netd.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(root.join("containerd.log")).unwrap();
    // nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts from runc.
    let child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{NETNS}"))
        .arg(&containerd)
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let ctd = Containerd {
        child,
        root: root.clone(),
    };
    let logs = || std::fs::read_to_string(root.join("containerd.log")).unwrap_or_default();
    let t = Instant::now();
    while !sock.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "containerd did not come up:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let tarball = pause_image(&root.join("img"), image);
    let out = Command::new(&ctr)
        .arg("--address")
        .arg(&sock)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr images import: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ip, pod_id) = rt.block_on(async {
        let (mut rts, _img) = skiff_cri::client::connect(&sock).await.expect("connect");
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "skctdpod".into(),
                uid: "skctdpod-uid".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "skctdpod".into(),
            log_directory: root.join("logs").display().to_string(),
            port_mappings: vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 18080,
                host_ip: String::new(),
            }],
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: CGROUP_PARENT.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let run = rts
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await;
        let id = match run {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!("RunPodSandbox: {e}\ncontainerd log:\n{}", logs()),
        };
        let st = rts
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner();
        let ip = st
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        (ip, id)
    });
    assert!(ip.starts_with("10.244.81."), "sandbox IP {ip:?}");
    // host-local recorded it for the sandbox, our rules carry the sandbox id.
    let owner = std::fs::read_to_string(ipam.join("skctdnet").join(&ip)).unwrap();
    assert!(owner.starts_with(&pod_id), "{owner}");
    let (_, rules) = host.exec(&["nft", "list", "table", "inet", "skiff-cni"]);
    assert!(
        rules.contains(&format!(
            "skiff-cni bridge net=skctdnet id={pod_id} if=eth0"
        )),
        "{rules}"
    );
    assert!(rules.contains("tcp dport 18080"), "{rules}");
    assert!(rules.contains(&format!("dnat ip to {ip}:80")), "{rules}");

    rt.block_on(async {
        let (mut rts, _img) = skiff_cri::client::connect(&sock).await.expect("connect");
        rts.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
        rts.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("RemovePodSandbox");
    });
    assert!(
        allocations(&ipam.join("skctdnet")).is_empty(),
        "address not released"
    );
    let (_, rules) = host.exec(&["nft", "list", "table", "inet", "skiff-cni"]);
    assert!(!rules.contains("comment"), "rules left: {rules}");
    drop(ctd);
}
