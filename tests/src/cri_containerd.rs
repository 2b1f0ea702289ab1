//! Debian's containerd as a CRI peer under test: a private instance (temp root, state, socket,
//! CNI config on a bridge of its own with Skiff's CNI plugins, `hosts.toml` making the local
//! registry plain HTTP, a busybox-based sandbox image), stopped by PID. Its shims are found by
//! their `-address <our socket>` argument and killed on drop, and mounts under the temp dir are
//! detached.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_proto::cri;

use super::{ImageClient, RuntimeClient};
use crate::image::{Blob, OciImage, MEDIA_CONFIG, MEDIA_MANIFEST};
use crate::netns::delete_link;
use crate::{io_err, push, workspace_bin, HarnessError, Result};

pub struct ContainerdEnv {
    pub socket: PathBuf,
    pub bridge: String,
    /// cgroupfs parent given to sandboxes, removed on drop.
    pub cgroup_parent: String,
    child: Child,
    tmp: tempfile::TempDir,
}

/// busybox whose entrypoint sleeps forever: containerd's sandbox ("pause") image.
pub fn pause_image(base: &OciImage) -> OciImage {
    let mut cfg: serde_json::Value = serde_json::from_slice(&base.config.data).expect("config");
    cfg["config"]["Entrypoint"] = serde_json::json!(["/bin/sleep", "2147483647"]);
    cfg["config"]["Cmd"] = serde_json::Value::Null;
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&cfg).expect("JSON"));
    let layer = &base.layers[0];
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len()}],
    });
    OciImage {
        config,
        layers: base.layers.clone(),
        manifest: Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).expect("JSON")),
    }
}

/// Why containerd's shim cannot watch this host's OOM events, if it cannot: the shim loads a
/// container's cgroups from `/proc/<pid>/cgroup` and needs every v1 hierarchy listed there to be
/// mounted in its mount namespace ("cannot find cgroup mount destination" in containerd's log).
/// A hierarchy mounted only in another namespace (e.g. by a systemd in a box) and left behind
/// makes every later OOM kill a plain `Error`.
pub fn oom_watch_problem() -> Option<String> {
    let missing = unmounted_hierarchies();
    (!missing.is_empty()).then(|| {
        format!(
            "this host has cgroup v1 hierarchies mounted nowhere in this mount namespace ({}), so \
             containerd's shim cannot load container cgroups nor watch OOM events; a process that \
             mounted them elsewhere left them behind (reboot to clear)",
            missing.join(", ")
        )
    })
}

/// The controller sets (`net_cls,net_prio`, `name=x`) of the v1 hierarchies this process is
/// in that no mount in this namespace shows.
fn unmounted_hierarchies() -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = |sub: &str| {
        mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() >= 3
                && f[f.len() - 3] == "cgroup"
                && f[f.len() - 1].split(',').any(|o| o == sub)
        })
    };
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .filter(|subs| !subs.is_empty() && !subs.split(',').any(mounted))
        .map(String::from)
        .collect()
}

/// Hierarchies mounted under `/sys/fs/cgroup` for the running containerd instances of this
/// process: (instances, mount points made).
static ORPHAN_MOUNTS: std::sync::Mutex<(usize, Vec<PathBuf>)> =
    std::sync::Mutex::new((0, Vec::new()));

/// Mounts hierarchies nothing on the host has mounted (left by a process that mounted them in a
/// namespace of its own) at `/sys/fs/cgroup/<controllers>`, as a systemd host has them, so that
/// containerd's shim can load container cgroups and watch OOM events; undone by
/// [`release_orphan_hierarchies`] when the last containerd of this process stops.
fn mount_orphan_hierarchies() {
    let mut g = ORPHAN_MOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    g.0 += 1;
    if g.0 > 1 {
        return;
    }
    for subs in unmounted_hierarchies() {
        let dir = PathBuf::from("/sys/fs/cgroup").join(&subs);
        if dir.exists() || std::fs::create_dir(&dir).is_err() {
            continue;
        }
        let data = if subs.starts_with("name=") {
            format!("none,{subs}")
        } else {
            subs.clone()
        };
        match nix::mount::mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        ) {
            Ok(()) => {
                eprintln!("containerd env: mounted the unmounted hierarchy {subs} at {dir:?}");
                g.1.push(dir);
            }
            Err(e) => {
                eprintln!("containerd env: mounting hierarchy {subs}: {e}");
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

fn release_orphan_hierarchies() {
    let mut g = ORPHAN_MOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    g.0 = g.0.saturating_sub(1);
    if g.0 > 0 {
        return;
    }
    for dir in std::mem::take(&mut g.1) {
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl ContainerdEnv {
    /// True when containerd and its runc shim are installed.
    pub fn available() -> bool {
        which("containerd").is_some() && which("containerd-shim-runc-v2").is_some()
    }

    /// Starts containerd with pod network `bridge`/`subnet` and `registry` (plain HTTP), after
    /// pushing its sandbox image there as `skpause:ctd`.
    pub async fn start(
        bridge: &str,
        subnet: &str,
        registry: &str,
        base: &OciImage,
    ) -> Result<ContainerdEnv> {
        assert!(bridge.starts_with("sk"), "test links start with sk");
        let bin = which("containerd")
            .ok_or_else(|| HarnessError::Other("containerd is not installed".into()))?;
        push(registry, "skpause:ctd", &pause_image(base)).await?;
        let tmp = tempfile::Builder::new()
            .prefix("sk-ctd-")
            .tempdir()
            .map_err(io_err("creating temp dir"))?;
        let t = tmp.path();
        let conf_dir = t.join("net.d");
        let bin_dir = t.join("cni-bin");
        let certs = t.join("certs.d").join(registry);
        for d in [&conf_dir, &bin_dir, &certs] {
            std::fs::create_dir_all(d).map_err(io_err("creating dir"))?;
        }
        let cni = workspace_bin("skiff-cni");
        let cni_src = std::env::var_os("SKIFF_TEST_CNI_BIN_DIR").map(PathBuf::from);
        for name in ["bridge", "host-local", "loopback", "portmap"] {
            let src = cni_src
                .as_ref()
                .map(|d| d.join(name))
                .unwrap_or_else(|| cni.clone());
            std::os::unix::fs::symlink(&src, bin_dir.join(name))
                .map_err(io_err("linking CNI plugin"))?;
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0", "name": format!("{bridge}net"),
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": t.join("ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(conf_dir.join("10-sktest.conflist"), conflist.to_string())
            .map_err(io_err("writing conflist"))?;
        std::fs::write(
            certs.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
        )
        .map_err(io_err("writing hosts.toml"))?;
        let socket = t.join("ctd.sock");
        let cfg = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{registry}/skpause:ctd"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # Like Skiff's own clamp: this host may not lower oom_score_adj below the daemon's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            root = t.join("root").display(),
            state = t.join("state").display(),
            sock = socket.display(),
            bin_dir = bin_dir.display(),
            conf_dir = conf_dir.display(),
            certs = t.join("certs.d").display(),
            runc_root = t.join("runc").display(),
        );
        let cfg_path = t.join("config.toml");
        std::fs::write(&cfg_path, cfg).map_err(io_err("writing containerd config"))?;
        let log =
            std::fs::File::create(t.join("containerd.log")).map_err(io_err("creating log"))?;
        mount_orphan_hierarchies();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                release_orphan_hierarchies();
                io_err("starting containerd")(e)
            })?;
        let cgroup_parent = format!(
            "/skctd{}",
            &t.file_name().unwrap_or_default().to_string_lossy()[7..]
        );
        let env = ContainerdEnv {
            socket,
            bridge: bridge.to_string(),
            cgroup_parent,
            child,
            tmp,
        };
        for _ in 0..100 {
            if let Ok((mut rt, _)) = env.clients().await {
                if rt.version(cri::VersionRequest::default()).await.is_ok() {
                    return Ok(env);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HarnessError::Other(format!(
            "containerd did not answer within 10s; log: {}",
            std::fs::read_to_string(env.tmp.path().join("containerd.log")).unwrap_or_default()
        )))
    }

    pub async fn clients(&self) -> Result<(RuntimeClient, ImageClient)> {
        skiff_cri::client::connect(&self.socket)
            .await
            .map_err(|e| HarnessError::Other(e.to_string()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.tmp.path()
    }

    /// PIDs of the shims this containerd started.
    pub fn shim_pids(&self) -> Vec<i32> {
        let needle = self.socket.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let s = String::from_utf8_lossy(&c);
                        s.contains("containerd-shim") && s.contains(&needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for ContainerdEnv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.shim_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
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
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        delete_link(&self.bridge);
        let parent = self.cgroup_parent.trim_start_matches('/').to_string();
        for _ in 0..50 {
            let mut left = false;
            for c in std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let d = c.path().join(&parent);
                for ch in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if ch.path().is_dir() {
                        let _ = std::fs::remove_dir(ch.path());
                    }
                }
                let _ = std::fs::remove_dir(&d);
                left |= d.exists();
            }
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        release_orphan_hierarchies();
    }
}
