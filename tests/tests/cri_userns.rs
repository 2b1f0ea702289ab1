//! User namespaces for pods (`userns_options` mode POD, a kubelet's `hostUsers: false`) with an
//! idmapped rootfs and idmapped CRI mounts, and SupplementalGroupsPolicy (Strict / Merge) with
//! the groups reported in ContainerStatus `user`, against Skiff's CRI server (bridge `skbr31`,
//! 10.244.31.0/24). Needs root.
//!
//! Such a pod has one pod monitor (`skiff-monitor pause` on the host, the parent of every
//! container's init) and its child the pause (root of the pod's user namespace), with 1 and 3
//! containers, across a CRI server restart (exit codes kept and recorded).
//!
//! Skiff only: containerd 1.6 (the Debian peer of the other CRI suites) has neither feature;
//! it ignores `userns_options` and `supplemental_groups_policy` (both came with containerd 2.x
//! and runc 1.2), so there is nothing of it to compare with.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use skiff_proto::cri;
use skiff_tests::cri_env::{pull_image, RuntimeClient};
use skiff_tests::{build_busybox_image, push, with_layer, CriEnv, Registry};

/// Host ids of the test pod's user namespace: container 0-65535 -> host HOST_BASE-...
const HOST_BASE: u32 = 2_000_000;

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn map(container: u32, host: u32, length: u32) -> cri::IdMapping {
    cri::IdMapping {
        container_id: container,
        host_id: host,
        length,
    }
}

fn userns(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace {
        mode: mode as i32,
        uids: uids.clone(),
        gids: uids,
    }
}

fn with_userns(mut cfg: cri::PodSandboxConfig, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    cfg.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            userns_options: Some(u),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

fn bind(dest: &str, src: &Path, maps: Vec<cri::IdMapping>) -> cri::Mount {
    cri::Mount {
        container_path: dest.into(),
        host_path: src.display().to_string(),
        uid_mappings: maps.clone(),
        gid_mappings: maps,
        ..Default::default()
    }
}

struct T {
    rt: RuntimeClient,
    image: String,
}

impl T {
    fn container(
        &self,
        name: &str,
        sc: cri::LinuxContainerSecurityContext,
    ) -> cri::ContainerConfig {
        let mut c = CriEnv::shell_container(name, &self.image, "sleep 1000");
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        });
        c
    }

    async fn run_sandbox(&mut self, cfg: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    async fn create(
        &mut self,
        sb: &str,
        sb_cfg: &cri::PodSandboxConfig,
        c: cri::ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.into(),
                config: Some(c),
                sandbox_config: Some(sb_cfg.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn start(
        &mut self,
        sb: &str,
        sb_cfg: &cri::PodSandboxConfig,
        c: cri::ContainerConfig,
    ) -> Result<String, String> {
        let id = self
            .create(sb, sb_cfg, c)
            .await
            .map_err(|e| format!("CreateContainer: {e}"))?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| format!("StartContainer {id}: {e}"))?;
        Ok(id)
    }

    /// `sh -c script` in the container: (exit code, stdout + stderr).
    async fn sh(&mut self, id: &str, script: &str) -> Result<(i32, String), String> {
        let r = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 30,
            })
            .await
            .map_err(|e| format!("ExecSync {script:?}: {e}"))?
            .into_inner();
        Ok((
            r.exit_code,
            format!(
                "{}{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ),
        ))
    }

    /// Output of a script that must succeed.
    async fn out(&mut self, id: &str, script: &str) -> Result<String, String> {
        let (code, out) = self.sh(id, script).await?;
        ensure!(code == 0, "{script:?} exited {code}: {out}");
        Ok(out.trim().to_string())
    }

    async fn status(&mut self, id: &str) -> Result<cri::ContainerStatusResponse, String> {
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("ContainerStatus {id}: {e}"))
    }

    async fn user_of(&mut self, id: &str) -> Result<(i64, i64, Vec<i64>), String> {
        let s = self.status(id).await?.status.ok_or("no status")?;
        let u = s
            .user
            .and_then(|u| u.linux)
            .ok_or_else(|| format!("ContainerStatus of {id} has no user"))?;
        let mut groups = u.supplemental_groups;
        groups.sort_unstable();
        Ok((u.uid, u.gid, groups))
    }

    /// Stops and removes every sandbox (and so its containers).
    async fn remove_all(&mut self) -> Check {
        let items = self
            .rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map_err(|e| format!("ListPodSandbox: {e}"))?
            .into_inner()
            .items;
        for sb in items {
            for c in self
                .rt
                .list_containers(cri::ListContainersRequest {
                    filter: Some(cri::ContainerFilter {
                        pod_sandbox_id: sb.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(|e| format!("ListContainers: {e}"))?
                .into_inner()
                .containers
            {
                self.rt
                    .remove_container(cri::RemoveContainerRequest {
                        container_id: c.id.clone(),
                    })
                    .await
                    .map_err(|e| format!("RemoveContainer {}: {e}", c.id))?;
            }
            self.rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await
                .map_err(|e| format!("StopPodSandbox {}: {e}", sb.id))?;
            self.rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await
                .map_err(|e| format!("RemovePodSandbox {}: {e}", sb.id))?;
        }
        Ok(())
    }
}

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn uid_of(p: &Path) -> Result<u32, String> {
    std::fs::symlink_metadata(p)
        .map(|m| m.uid())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The parent pid of `pid` (from `/proc/<pid>/stat`).
fn ppid(pid: i32) -> Result<i32, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    stat.rsplit(") ")
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no ppid in /proc/{pid}/stat: {stat}"))
}

/// The children of `pid`, from every task's `children` list.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

fn link(path: String) -> Result<std::path::PathBuf, String> {
    std::fs::read_link(&path).map_err(|e| format!("{path}: {e}"))
}

/// The pid in a verbose PodSandboxStatus / ContainerStatus `info`.
fn info_pid(info: &std::collections::HashMap<String, String>) -> Result<i32, String> {
    info.get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|v| v["pid"].as_i64())
        .map(|p| p as i32)
        .ok_or_else(|| format!("no pid in verbose status info: {info:?}"))
}

/// The pod monitor of a container: the pid in its `monitor/monitor.pid`.
fn monitor_of(env: &CriEnv, id: &str) -> Result<i32, String> {
    let p = env
        .dir()
        .join("state/containers")
        .join(id)
        .join("monitor/monitor.pid");
    std::fs::read_to_string(&p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// One pod monitor for a user namespace pod: every container's `monitor.pid` is the same
/// process, which stays in the host's user namespace, is the parent of each container's init
/// and of the pause (root of the pod's user namespace, with its maps); the only process of
/// the monitor's binary among its children is that pause, whatever the container count.
/// Returns the monitor's pid.
async fn one_pod_monitor(t: &mut T, env: &CriEnv, sb: &str, ids: &[&str]) -> Result<i32, String> {
    let monitor = monitor_of(env, ids[0])?;
    for id in ids {
        let m = monitor_of(env, id)?;
        ensure!(
            m == monitor,
            "container {id} has monitor {m}, container {} has {monitor}",
            ids[0]
        );
        let init = info_pid(&t.status(id).await?.info)?;
        let parent = ppid(init)?;
        ensure!(
            parent == monitor,
            "the init {init} of {id} has parent {parent}, not the pod monitor {monitor}"
        );
    }
    let pause = info_pid(
        &t.rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: sb.into(),
                verbose: true,
            })
            .await
            .map_err(|e| format!("PodSandboxStatus: {e}"))?
            .into_inner()
            .info,
    )?;
    ensure!(
        ppid(pause)? == monitor,
        "the pause {pause} is not the pod monitor {monitor}'s child"
    );
    let exe = link(format!("/proc/{monitor}/exe"))?;
    ensure!(
        exe.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("skiff-monitor")),
        "the pod monitor {monitor} runs {}",
        exe.display()
    );
    // The pause exec'd the tiny pause once its maps were written: no container monitor and
    // no second copy of the monitor's pages.
    let monitors: Vec<i32> = children(monitor)
        .into_iter()
        .filter(|c| link(format!("/proc/{c}/exe")).is_ok_and(|e| e == exe))
        .collect();
    ensure!(
        monitors.is_empty(),
        "children of the pod monitor {monitor} running {}: {monitors:?} (want none: the pause {pause} runs the tiny pause) with {} containers",
        exe.display(),
        ids.len()
    );
    let pause_status =
        std::fs::read_to_string(format!("/proc/{pause}/status")).map_err(|e| e.to_string())?;
    let pause_rss: u64 = pause_status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for the pause {pause}"))?;
    ensure!(
        pause_rss <= 64,
        "the pause {pause} has {pause_rss} KiB RSS (the tiny pause owns ~12 KiB; a fork of the monitor ~200 KiB)"
    );
    let host_userns = link("/proc/self/ns/user".into())?;
    ensure!(
        link(format!("/proc/{monitor}/ns/user"))? == host_userns,
        "the pod monitor is not in the host's user namespace"
    );
    ensure!(
        link(format!("/proc/{pause}/ns/user"))? != host_userns,
        "the pause is in the host's user namespace"
    );
    let pause_map = words(
        &std::fs::read_to_string(format!("/proc/{pause}/uid_map")).map_err(|e| e.to_string())?,
    );
    ensure!(
        pause_map == format!("0 {HOST_BASE} 65536"),
        "uid_map of the pause: {pause_map}"
    );
    Ok(monitor)
}

/// Status advertises both features for the default handler.
async fn advertised(t: &mut T) -> Check {
    let s =
        t.rt.status(cri::StatusRequest { verbose: false })
            .await
            .map_err(|e| format!("Status: {e}"))?
            .into_inner();
    let default = s.runtime_handlers.iter().find(|h| h.name.is_empty());
    ensure!(
        default.is_some_and(|h| h.features.as_ref().is_some_and(|f| f.user_namespaces)),
        "Status does not advertise user namespaces: {:?}",
        s.runtime_handlers
    );
    ensure!(
        s.features
            .as_ref()
            .is_some_and(|f| f.supplemental_groups_policy),
        "Status does not advertise SupplementalGroupsPolicy: {:?}",
        s.features
    );
    Ok(())
}

/// Bad user namespace options: InvalidArgument naming the problem, and no sandbox left.
async fn bad_mappings(t: &mut T, env: &CriEnv) -> Check {
    let good = vec![map(0, HOST_BASE, 65536)];
    let cases = [
        (
            userns(cri::NamespaceMode::Node, good.clone()),
            "mode NODE cannot have mappings",
        ),
        (
            userns(
                cri::NamespaceMode::Pod,
                vec![
                    map(0, HOST_BASE, 1000),
                    map(1000, HOST_BASE + 100_000, 1000),
                ],
            ),
            "only one mapping line is supported, got 2",
        ),
        (
            userns(cri::NamespaceMode::Pod, vec![]),
            "needs uid and gid mappings",
        ),
        (
            userns(cri::NamespaceMode::Pod, vec![map(0, HOST_BASE, 0)]),
            "length 0",
        ),
        (
            userns(cri::NamespaceMode::Container, vec![]),
            "CONTAINER is not supported",
        ),
    ];
    for (u, want) in cases {
        let cfg = with_userns(env.sandbox_config("skusbad"), u.clone());
        match t.run_sandbox(&cfg).await {
            Ok(id) => return Err(format!("RunPodSandbox with {u:?} succeeded ({id})")),
            Err(s) => ensure!(
                s.code() == tonic::Code::InvalidArgument && s.message().contains(want),
                "RunPodSandbox with {u:?}: want InvalidArgument {want:?}, got {s:?}"
            ),
        }
    }
    let left =
        t.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map_err(|e| format!("ListPodSandbox: {e}"))?
            .into_inner()
            .items;
    ensure!(left.is_empty(), "refused sandboxes were kept: {left:?}");
    Ok(())
}

/// A pod in a user namespace: root inside is HOST_BASE outside; the rootfs shows the image's
/// owners; a plain hostPath mount gets files of the mapped uid, an idmapped one files of the
/// container's ids.
async fn pod_userns(t: &mut T, env: &CriEnv) -> Check {
    let maps = vec![map(0, HOST_BASE, 65536)];
    let u = userns(cri::NamespaceMode::Pod, maps.clone());
    let sb_cfg = with_userns(env.sandbox_config("skusns"), u.clone());
    let sb = t
        .run_sandbox(&sb_cfg)
        .await
        .map_err(|e| format!("RunPodSandbox in a user namespace: {e}"))?;

    let plain = env.dir().join("skplain");
    let idm = env.dir().join("skidm");
    for d in [&plain, &idm] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    // Writable by anyone: the container's root is HOST_BASE out here.
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    std::fs::write(idm.join("hostfile"), "x").map_err(|e| e.to_string())?;

    let sc = cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            userns_options: Some(u.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut c = t.container("skusmain", sc.clone());
    c.mounts = vec![
        bind("/mnt/plain", &plain, vec![]),
        bind("/mnt/idm", &idm, maps.clone()),
    ];
    let id = t.start(&sb, &sb_cfg, c).await?;

    let uid = t.out(&id, "id -u").await?;
    ensure!(uid == "0", "id -u in the user namespace: {uid}");
    let map_text = words(&t.out(&id, "cat /proc/self/uid_map").await?);
    ensure!(
        map_text == format!("0 {HOST_BASE} 65536"),
        "/proc/self/uid_map: {map_text}"
    );
    let gid_map = words(&t.out(&id, "cat /proc/self/gid_map").await?);
    ensure!(
        gid_map == format!("0 {HOST_BASE} 65536"),
        "/proc/self/gid_map: {gid_map}"
    );
    // The init's ids on the host are the mapped ones.
    let info = t.status(&id).await?.info;
    let pid = info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|v| v["pid"].as_i64())
        .ok_or_else(|| format!("no pid in verbose ContainerStatus: {info:?}"))?;
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let host_uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(words)
        .unwrap_or_default();
    ensure!(
        host_uid == format!("Uid: {HOST_BASE} {HOST_BASE} {HOST_BASE} {HOST_BASE}"),
        "the container's init on the host: {host_uid}"
    );

    // Idmapped lower layers: the image's owners as they are in the image; the upper dir is the
    // pod root's, so root may write, and its files are the mapped root's on the host.
    let owners = t
        .out(
            &id,
            "stat -c %u:%g /etc/passwd; stat -c %u:%g /home/skowned",
        )
        .await?;
    ensure!(
        words(&owners) == "0:0 1000:1000",
        "owners in the idmapped rootfs (want 0:0 and 1000:1000): {owners}"
    );
    t.out(&id, "echo hi > /skrootfile && mkdir /skrootdir")
        .await?;
    let upper = env.dir().join("state/containers").join(&id).join("fs");
    let on_disk = uid_of(&upper.join("skrootfile"))?;
    ensure!(
        on_disk == HOST_BASE,
        "a file root made in the rootfs is stored with uid {on_disk}, not {HOST_BASE} (the mapped root)"
    );

    // A plain hostPath mount: files of the mapped uid.
    t.out(&id, "touch /mnt/plain/skfile").await?;
    let owner = uid_of(&plain.join("skfile"))?;
    ensure!(
        owner == HOST_BASE,
        "a file the container made in a plain hostPath mount is owned by {owner} on the host, not {HOST_BASE}"
    );
    // An idmapped one: host root's files are root's inside, and root's files stay host root's.
    let hostfile = t.out(&id, "stat -c %u /mnt/idm/hostfile").await?;
    ensure!(
        hostfile == "0",
        "a host root file in the idmapped mount shows uid {hostfile}"
    );
    t.out(&id, "touch /mnt/idm/skfile").await?;
    let owner = uid_of(&idm.join("skfile"))?;
    ensure!(
        owner == 0,
        "a file the container made in an idmapped mount is owned by {owner} on the host, not 0"
    );

    let (u_uid, u_gid, _) = t.user_of(&id).await?;
    ensure!(
        (u_uid, u_gid) == (0, 0),
        "ContainerStatus user: uid {u_uid} gid {u_gid}"
    );
    one_pod_monitor(t, env, &sb, &[&id])
        .await
        .map_err(|e| format!("one container: {e}"))?;

    // Refused containers: other mappings than the sandbox's, overlapping mount mappings.
    let mut other = sc.clone();
    other.namespace_options.as_mut().expect("ns").userns_options = Some(userns(
        cri::NamespaceMode::Pod,
        vec![map(0, HOST_BASE + 65536, 65536)],
    ));
    match t
        .create(&sb, &sb_cfg, t.container("skusother", other))
        .await
    {
        Ok(id) => {
            return Err(format!(
                "a container with other mappings was created ({id})"
            ))
        }
        Err(s) => ensure!(
            s.code() == tonic::Code::InvalidArgument && s.message().contains("differ from sandbox"),
            "container with other mappings: {s:?}"
        ),
    }
    let mut c = t.container("skusoverlap", sc.clone());
    c.mounts = vec![bind(
        "/mnt/x",
        &idm,
        vec![map(0, HOST_BASE, 1000), map(500, HOST_BASE + 5000, 1000)],
    )];
    match t.create(&sb, &sb_cfg, c).await {
        Ok(id) => {
            return Err(format!(
                "a mount with overlapping mappings was accepted ({id})"
            ))
        }
        Err(s) => ensure!(
            s.code() == tonic::Code::InvalidArgument
                && s.message()
                    .contains("overlap: container ids 0-999 and 500-1499"),
            "mount with overlapping mappings: {s:?}"
        ),
    }
    Ok(())
}

/// A user namespace pod of three containers (one sleeps, one exits 7 at once, one exits 3
/// when asked), still one pod monitor; what `after_restart_three` checks after a restart.
struct ThreeContainers {
    sb: String,
    sb_cfg: cri::PodSandboxConfig,
    sc: cri::LinuxContainerSecurityContext,
    monitor: i32,
    sleeper: String,
    quitter: String,
    waiter: String,
}

async fn wait_exit_code(t: &mut T, id: &str) -> Result<i32, String> {
    for _ in 0..900 {
        let s = t.status(id).await?.status.ok_or("no status")?;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(s.exit_code);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(format!("container {id} did not exit within 90 s"))
}

async fn three_containers(t: &mut T, env: &CriEnv) -> Result<ThreeContainers, String> {
    let u = userns(cri::NamespaceMode::Pod, vec![map(0, HOST_BASE, 65536)]);
    let sb_cfg = with_userns(env.sandbox_config("skus3"), u.clone());
    let sb = t
        .run_sandbox(&sb_cfg)
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let sc = cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Pod as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            userns_options: Some(u),
            ..Default::default()
        }),
        ..Default::default()
    };
    let with = |t: &T, name: &str, script: &str| {
        let mut c = t.container(name, sc.clone());
        c.args = vec![script.into()];
        c
    };
    let sleeper = t
        .start(&sb, &sb_cfg, with(t, "sksleep", "sleep 1000"))
        .await?;
    let quitter = t.start(&sb, &sb_cfg, with(t, "skquit", "exit 7")).await?;
    let waiter = t
        .start(
            &sb,
            &sb_cfg,
            with(
                t,
                "skwait",
                "until [ -e /tmp/skgo ]; do sleep 0.1; done; exit 3",
            ),
        )
        .await?;
    let code = wait_exit_code(t, &quitter).await?;
    ensure!(code == 7, "the quitting container exited {code}, not 7");
    let monitor = one_pod_monitor(t, env, &sb, &[&sleeper, &waiter])
        .await
        .map_err(|e| format!("three containers: {e}"))?;
    ensure!(
        monitor_of(env, &quitter)? == monitor,
        "the quitting container had another monitor"
    );
    let out = words(&t.out(&sleeper, "id -u; cat /proc/self/uid_map").await?);
    ensure!(
        out == format!("0 0 {HOST_BASE} 65536"),
        "id -u and uid_map in the three-container pod: {out}"
    );
    Ok(ThreeContainers {
        sb,
        sb_cfg,
        sc,
        monitor,
        sleeper,
        quitter,
        waiter,
    })
}

/// After a CRI server restart: the same pod monitor runs, the exit code recorded before is
/// kept, a container that exits now gets its code, and a new container joins that monitor.
async fn after_restart_three(t: &mut T, env: &CriEnv, p: &ThreeContainers) -> Check {
    let code = wait_exit_code(t, &p.quitter).await?;
    ensure!(
        code == 7,
        "after the restart the quitter's exit code is {code}, not 7"
    );
    t.out(&p.waiter, "touch /tmp/skgo").await?;
    let code = wait_exit_code(t, &p.waiter).await?;
    ensure!(
        code == 3,
        "a container exiting after the restart: exit code {code}, not 3"
    );
    let c = t.container("sklate", p.sc.clone());
    let late = t.start(&p.sb, &p.sb_cfg, c).await?;
    let monitor = one_pod_monitor(t, env, &p.sb, &[&p.sleeper, &late]).await?;
    ensure!(
        monitor == p.monitor,
        "the pod monitor changed across the restart: {} -> {monitor}",
        p.monitor
    );
    Ok(())
}

/// Every running container still runs `id -u` as 0 with the pod's maps.
async fn after_restart(t: &mut T) -> Check {
    let cs =
        t.rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .map_err(|e| format!("ListContainers: {e}"))?
            .into_inner()
            .containers;
    ensure!(!cs.is_empty(), "no container listed after the restart");
    for c in cs
        .into_iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
    {
        let out = words(&t.out(&c.id, "id -u; cat /proc/self/uid_map").await?);
        ensure!(
            out == format!("0 0 {HOST_BASE} 65536"),
            "container {} after the restart: {out}",
            c.id
        );
    }
    Ok(())
}

/// A user namespace pod that shares its PID namespace: the pause (PID 1) and the containers
/// are in the pod's user namespace.
async fn pod_userns_shared_pid(t: &mut T, env: &CriEnv) -> Check {
    let u = userns(cri::NamespaceMode::Pod, vec![map(0, HOST_BASE, 65536)]);
    let mut sb_cfg = with_userns(env.sandbox_config("skuspid"), u.clone());
    let opts = |o: &mut Option<cri::NamespaceOption>| {
        if let Some(o) = o.as_mut() {
            o.pid = cri::NamespaceMode::Pod as i32;
        }
    };
    opts(
        &mut sb_cfg
            .linux
            .as_mut()
            .expect("linux")
            .security_context
            .as_mut()
            .expect("sc")
            .namespace_options,
    );
    let sb = t
        .run_sandbox(&sb_cfg)
        .await
        .map_err(|e| format!("RunPodSandbox (user namespace, pid POD): {e}"))?;
    let mut sc = cri::LinuxContainerSecurityContext {
        namespace_options: sb_cfg
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone()),
        ..Default::default()
    };
    opts(&mut sc.namespace_options);
    let id = t.start(&sb, &sb_cfg, t.container("skuspid", sc)).await?;
    let out = t
        .out(
            &id,
            "id -u; cat /proc/1/uid_map; cat /proc/1/cmdline | tr '\\0' ' '",
        )
        .await?;
    ensure!(
        words(&out).starts_with(&format!("0 0 {HOST_BASE} 65536 ")) && out.contains("pause"),
        "pid POD in a user namespace: id -u, PID 1's uid_map and command line: {out:?}"
    );
    Ok(())
}

/// An idmapped mount in a pod without a user namespace (its own namespace for the idmap): a
/// host root file shows as the host id its mapping gives uid 0.
async fn idmapped_mount_alone(t: &mut T, env: &CriEnv) -> Check {
    let sb_cfg = env.sandbox_config("skusidm");
    let sb = t
        .run_sandbox(&sb_cfg)
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let idm = env.dir().join("skidm2");
    std::fs::create_dir_all(&idm).map_err(|e| e.to_string())?;
    std::fs::write(idm.join("hostfile"), "x").map_err(|e| e.to_string())?;
    let mut c = t.container("skusidm", Default::default());
    c.mounts = vec![bind("/mnt/idm", &idm, vec![map(0, HOST_BASE, 65536)])];
    let id = t.start(&sb, &sb_cfg, c).await?;
    let owner = t.out(&id, "stat -c %u /mnt/idm/hostfile").await?;
    ensure!(
        owner == HOST_BASE.to_string(),
        "a host root file in an idmapped mount (0 -> {HOST_BASE}) shows uid {owner}"
    );
    Ok(())
}

/// SupplementalGroupsPolicy: Merge adds the image's groups of the user, Strict does not; the
/// process's groups and ContainerStatus `user` agree.
async fn supplemental_groups(t: &mut T, env: &CriEnv) -> Check {
    let sb_cfg = env.sandbox_config("skusgroups");
    let sb = t
        .run_sandbox(&sb_cfg)
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    for (policy, want) in [
        (
            cri::SupplementalGroupsPolicy::Merge,
            vec![3000, 4000, 50000],
        ),
        (cri::SupplementalGroupsPolicy::Strict, vec![3000, 4000]),
    ] {
        let name = format!("skgroups{}", policy.as_str_name().to_lowercase());
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 3000 }),
            supplemental_groups: vec![4000],
            supplemental_groups_policy: policy as i32,
            ..Default::default()
        };
        let id = t.start(&sb, &sb_cfg, t.container(&name, sc)).await?;
        let ids = t.out(&id, "id -u; id -g; id -G").await?;
        let mut lines = ids.lines();
        let (u, g) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
        let mut groups: Vec<i64> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        ensure!(
            (u, g) == ("1000", "3000") && groups == want,
            "{policy:?}: id in the container: {ids:?}, want groups {want:?}"
        );
        let (s_uid, s_gid, s_groups) = t.user_of(&id).await?;
        ensure!(
            (s_uid, s_gid) == (1000, 3000) && s_groups == want,
            "{policy:?}: ContainerStatus user: uid {s_uid} gid {s_gid} groups {s_groups:?}, want {want:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_userns_and_supplemental_groups() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=warn".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    for bin in ["skiff-runtime", "skiff-monitor"] {
        assert!(
            skiff_tests::workspace_bin(bin).exists(),
            "{bin} is not built: cargo build -p skiff-runtime -p skiff-monitor -p skiff-cni"
        );
    }
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let base = build_busybox_image().unwrap();
    let image = with_layer(
        &base,
        &[
            (
                "etc/passwd",
                0o644,
                0,
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nskuser:x:1000:1000::/home:/bin/sh\n",
            ),
            (
                "etc/group",
                0o644,
                0,
                b"root:x:0:\nnobody:x:65534:\nskuser:x:1000:\nskextra:x:50000:skuser\n",
            ),
            ("home/skowned", 0o644, 1000, b"x"),
        ],
    )
    .unwrap();
    push(registry.addr(), "skuserns:1", &image).await.unwrap();
    let image_name = format!("{}/skuserns:1", registry.addr());

    let mut env = CriEnv::start("skbr31", "10.244.31.0/24", registry.addr())
        .await
        .unwrap();
    // The temp dir is 0700; the pod's root (an unmapped "other" to host-owned folders) must be
    // able to search down to the container bundles, as containerd's 0711 state dirs allow.
    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let (rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image_name).await;
    let mut t = T {
        rt,
        image: image_name,
    };

    let mut failures = Vec::new();
    if let Err(e) = advertised(&mut t).await {
        failures.push(format!("advertised: {e}"));
    }
    if let Err(e) = bad_mappings(&mut t, &env).await {
        failures.push(format!("bad mappings: {e}"));
    }
    if let Err(e) = pod_userns(&mut t, &env).await {
        failures.push(format!("pod user namespace: {e}"));
    }
    let three = three_containers(&mut t, &env).await;
    if let Err(e) = &three {
        failures.push(format!("pod user namespace, three containers: {e}"));
    }
    // A restarted server still execs into the pod's user namespace, and removes the container
    // with its idmapped mount (checked at the end).
    env.restart().await.unwrap();
    t.rt = env.clients().await.unwrap().0;
    if let Err(e) = after_restart(&mut t).await {
        failures.push(format!("after a restart: {e}"));
    }
    if let Ok(three) = &three {
        if let Err(e) = after_restart_three(&mut t, &env, three).await {
            failures.push(format!("three containers after a restart: {e}"));
        }
    }
    if let Err(e) = t.remove_all().await {
        failures.push(format!("cleanup: {e}"));
    }
    if let Err(e) = pod_userns_shared_pid(&mut t, &env).await {
        failures.push(format!(
            "pod user namespace with a shared PID namespace: {e}"
        ));
    }
    if let Err(e) = t.remove_all().await {
        failures.push(format!("cleanup: {e}"));
    }
    if let Err(e) = idmapped_mount_alone(&mut t, &env).await {
        failures.push(format!("idmapped mount without a user namespace: {e}"));
    }
    if let Err(e) = supplemental_groups(&mut t, &env).await {
        failures.push(format!("supplemental groups: {e}"));
    }
    if let Err(e) = t.remove_all().await {
        failures.push(format!("cleanup: {e}"));
    }
    // Nothing idmapped is left mounted once the containers are gone.
    let dir = env.dir().display().to_string();
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&dir) && l.contains("/idmap/"))
        .map(String::from)
        .collect();
    if !left.is_empty() {
        failures.push(format!("idmapped mounts left: {left:?}"));
    }
    env.stop().await.unwrap();
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}
