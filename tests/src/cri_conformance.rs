//! A CRI conformance suite after cri-tools' `critest` (pkg/validate): runtime info, image
//! management, sandbox and container lifecycle, exec (sync and streaming), logs, networking,
//! security context and resource updates. Written against the plain CRI client only, so the same
//! checks run against Skiff's server and against containerd; each check reports pass/fail.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use skiff_proto::cri;

use super::stream::WsClient;
use super::{ImageClient, RuntimeClient};

/// `base` with a label in its config: a distinct image id over the same layer.
pub fn relabel(base: &crate::OciImage, label: &str) -> crate::OciImage {
    use crate::image::{Blob, MEDIA_CONFIG, MEDIA_MANIFEST};
    let mut cfg: serde_json::Value = serde_json::from_slice(&base.config.data).expect("config");
    cfg["config"]["Labels"] = serde_json::json!({ "sk.variant": label });
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&cfg).expect("JSON"));
    let layer = &base.layers[0];
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len()}],
    });
    crate::OciImage {
        config,
        layers: base.layers.clone(),
        manifest: Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).expect("JSON")),
    }
}

/// A runtime under test.
pub struct Target {
    pub name: &'static str,
    pub rt: RuntimeClient,
    pub img: ImageClient,
    /// `host:port/repo:tag` of a busybox image the runtime can pull.
    pub image: String,
    /// A second busybox tag, pulled and removed by the image checks.
    pub scratch_image: String,
    /// Where pod log directories go.
    pub log_root: PathBuf,
    pub cgroup_parent: String,
    /// Pod subnet prefix (e.g. "10.244.10.").
    pub subnet_prefix: String,
}

impl Target {
    /// The CRI server of `env` (Skiff), subnet `<prefix>0/24`.
    pub async fn skiff(env: &super::CriEnv, image: &str, scratch: &str, prefix: &str) -> Target {
        let (rt, img) = env.clients().await.expect("CRI clients");
        Target {
            name: "skiff",
            rt,
            img,
            image: image.into(),
            scratch_image: scratch.into(),
            log_root: env.dir().join("logs"),
            cgroup_parent: env.cgroup_parent.clone(),
            subnet_prefix: prefix.into(),
        }
    }

    /// Debian's containerd of `ctd`, subnet `<prefix>0/24`.
    pub async fn containerd(
        ctd: &super::containerd::ContainerdEnv,
        image: &str,
        scratch: &str,
        prefix: &str,
    ) -> Target {
        let (rt, img) = ctd.clients().await.expect("containerd clients");
        Target {
            name: "containerd",
            rt,
            img,
            image: image.into(),
            scratch_image: scratch.into(),
            log_root: ctd.dir().join("logs"),
            cgroup_parent: ctd.cgroup_parent.clone(),
            subnet_prefix: prefix.into(),
        }
    }
}

/// Adds `<target>: <check>: <error>` for each failed check.
pub fn record_failures(failures: &mut Vec<String>, target: &str, results: Vec<(&str, Check)>) {
    for (name, r) in results {
        if let Err(e) = r {
            failures.push(format!("{target}: {name}: {e}"));
        }
    }
}

/// Prints the last error and warning lines of containerd's log when its half failed.
pub fn print_containerd_errors(ctd: &super::containerd::ContainerdEnv, failures: &[String]) {
    if !failures.iter().any(|f| f.starts_with("containerd")) {
        return;
    }
    let log = std::fs::read_to_string(ctd.dir().join("containerd.log")).unwrap_or_default();
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("level=error") || l.contains("level=warn"))
        .collect();
    eprintln!(
        "containerd log (errors):\n{}",
        tail[tail.len().saturating_sub(15)..].join("\n")
    );
}

pub type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn e<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |err| format!("{what}: {err}")
}

impl Target {
    pub fn sandbox_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "skconf".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_root.join(name).display().to_string(),
            labels: HashMap::from([("sk-conf".to_string(), name.to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn container(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: cmd.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            labels: HashMap::from([("sk-ct".to_string(), name.to_string())]),
            ..Default::default()
        }
    }

    pub async fn run_sandbox(
        &mut self,
        name: &str,
    ) -> Result<(String, cri::PodSandboxConfig), String> {
        let cfg = self.sandbox_config(name);
        let id = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(e("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        Ok((id, cfg))
    }

    /// RunPodSandbox with a config of the caller's (e.g. privileged, namespace options).
    pub async fn run_sandbox_with(
        &mut self,
        cfg: &cri::PodSandboxConfig,
    ) -> Result<String, String> {
        Ok(self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(e("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    pub async fn start_container(
        &mut self,
        sb: &str,
        sb_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<String, String> {
        let id = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.into(),
                config: Some(cfg),
                sandbox_config: Some(sb_cfg.clone()),
            })
            .await
            .map_err(e("CreateContainer"))?
            .into_inner()
            .container_id;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(e("StartContainer"))?;
        Ok(id)
    }

    pub async fn ct_status(&mut self, id: &str) -> Result<cri::ContainerStatus, String> {
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(e("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| "ContainerStatus without status".to_string())
    }

    pub async fn wait_ct(
        &mut self,
        id: &str,
        want: cri::ContainerState,
    ) -> Result<cri::ContainerStatus, String> {
        for _ in 0..300 {
            let s = self.ct_status(id).await?;
            if s.state == want as i32 {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Err(format!("container {id} never reached {want:?}"))
    }

    pub async fn teardown(&mut self, sb: &str) -> Check {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sb.into(),
            })
            .await
            .map_err(e("StopPodSandbox"))?;
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sb.into(),
            })
            .await
            .map_err(e("RemovePodSandbox"))?;
        Ok(())
    }

    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<cri::ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }
}

async fn runtime_info(t: &mut Target) -> Check {
    let v =
        t.rt.version(cri::VersionRequest::default())
            .await
            .map_err(e("Version"))?
            .into_inner();
    ensure!(
        v.runtime_api_version == "v1",
        "runtime_api_version {:?}",
        v.runtime_api_version
    );
    ensure!(
        !v.runtime_name.is_empty() && !v.runtime_version.is_empty(),
        "empty runtime name/version"
    );
    let s =
        t.rt.status(cri::StatusRequest { verbose: false })
            .await
            .map_err(e("Status"))?
            .into_inner();
    let conds = s.status.map(|s| s.conditions).unwrap_or_default();
    for want in ["RuntimeReady", "NetworkReady"] {
        ensure!(
            conds.iter().any(|c| c.r#type == want && c.status),
            "condition {want} not true: {conds:?}"
        );
    }
    Ok(())
}

async fn image_management(t: &mut Target) -> Check {
    let spec = |i: &str| cri::ImageSpec {
        image: i.into(),
        ..Default::default()
    };
    let id = t
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(spec(&t.scratch_image)),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(e("PullImage"))?
        .into_inner()
        .image_ref;
    let st = t
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(spec(&t.scratch_image)),
            verbose: false,
        })
        .await
        .map_err(e("ImageStatus"))?
        .into_inner()
        .image
        .ok_or("image not found after pull")?;
    ensure!(
        st.repo_tags.contains(&t.scratch_image),
        "repo tags {:?}",
        st.repo_tags
    );
    ensure!(
        !st.repo_digests.is_empty() && st.size > 0,
        "digests {:?} size {}",
        st.repo_digests,
        st.size
    );
    let by_id = t
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(spec(&id)),
            verbose: false,
        })
        .await
        .map_err(e("ImageStatus by id"))?
        .into_inner()
        .image;
    ensure!(by_id.is_some(), "ImageStatus by id {id} found nothing");
    let list = t
        .img
        .list_images(cri::ListImagesRequest::default())
        .await
        .map_err(e("ListImages"))?
        .into_inner()
        .images;
    ensure!(
        list.iter().any(|i| i.id == st.id),
        "ListImages misses {}",
        st.id
    );
    // Pull by digest.
    let by_digest = st.repo_digests[0].clone();
    t.img
        .pull_image(cri::PullImageRequest {
            image: Some(spec(&by_digest)),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map_err(e("PullImage by digest"))?;
    let fs = t
        .img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .map_err(e("ImageFsInfo"))?
        .into_inner();
    ensure!(!fs.image_filesystems.is_empty(), "ImageFsInfo empty");
    t.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(spec(&st.id)),
        })
        .await
        .map_err(e("RemoveImage"))?;
    let gone = t
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(spec(&t.scratch_image)),
            verbose: false,
        })
        .await
        .map_err(e("ImageStatus after remove"))?
        .into_inner()
        .image;
    ensure!(gone.is_none(), "image still there after RemoveImage");
    // Removing it again is fine.
    t.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(spec(&st.id)),
        })
        .await
        .map_err(e("RemoveImage twice"))?;
    Ok(())
}

async fn sandbox_lifecycle(t: &mut Target) -> Check {
    let (sb, _) = t.run_sandbox("sksblife").await?;
    let st =
        t.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sb.clone(),
            verbose: false,
        })
        .await
        .map_err(e("PodSandboxStatus"))?
        .into_inner()
        .status
        .ok_or("no status")?;
    ensure!(
        st.state == cri::PodSandboxState::SandboxReady as i32,
        "state {}",
        st.state
    );
    let ip = st.network.map(|n| n.ip).unwrap_or_default();
    ensure!(
        ip.starts_with(&t.subnet_prefix),
        "pod IP {ip:?} not in {}",
        t.subnet_prefix
    );
    let list = |f: cri::PodSandboxFilter| cri::ListPodSandboxRequest { filter: Some(f) };
    let by_label =
        t.rt.list_pod_sandbox(list(cri::PodSandboxFilter {
            label_selector: HashMap::from([("sk-conf".to_string(), "sksblife".to_string())]),
            ..Default::default()
        }))
        .await
        .map_err(e("ListPodSandbox"))?
        .into_inner()
        .items;
    ensure!(
        by_label.len() == 1 && by_label[0].id == sb,
        "label filter gave {by_label:?}"
    );
    t.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .map_err(e("StopPodSandbox"))?;
    let not_ready =
        t.rt.list_pod_sandbox(list(cri::PodSandboxFilter {
            id: sb.clone(),
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }))
        .await
        .map_err(e("ListPodSandbox"))?
        .into_inner()
        .items;
    ensure!(not_ready.len() == 1, "stopped sandbox not listed NOTREADY");
    t.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .map_err(e("RemovePodSandbox"))?;
    let gone =
        t.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sb,
            verbose: false,
        })
        .await;
    ensure!(
        matches!(&gone, Err(s) if s.code() == tonic::Code::NotFound),
        "status after remove: {gone:?}"
    );
    Ok(())
}

async fn container_lifecycle(t: &mut Target) -> Check {
    let (sb, sb_cfg) = t.run_sandbox("skctlife").await?;
    let id =
        t.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sb.clone(),
            config: Some(t.container(
                "skctlife",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 7' TERM; touch /tmp/sk-trap-set; while true; do sleep 0.1; done",
                ],
            )),
            sandbox_config: Some(sb_cfg.clone()),
        })
        .await
        .map_err(e("CreateContainer"))?
        .into_inner()
        .container_id;
    let s = t.ct_status(&id).await?;
    ensure!(
        s.state == cri::ContainerState::ContainerCreated as i32,
        "after create: {}",
        s.state
    );
    t.rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(e("StartContainer"))?;
    let s = t.ct_status(&id).await?;
    ensure!(
        s.state == cri::ContainerState::ContainerRunning as i32 && s.started_at > 0,
        "after start: {s:?}"
    );
    let listed =
        t.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: sb.clone(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(e("ListContainers"))?
        .into_inner()
        .containers;
    ensure!(
        listed.len() == 1 && listed[0].id == id,
        "running filter gave {listed:?}"
    );
    // The shell is the container's PID 1: a SIGTERM that comes before its trap is set is
    // dropped by the kernel (no handler, PID 1), and the stop would end in SIGKILL. Wait for it.
    let mut trap_set = false;
    for _ in 0..300 {
        let r =
            t.rt.exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["test".into(), "-e".into(), "/tmp/sk-trap-set".into()],
                timeout: 10,
            })
            .await
            .map_err(e("ExecSync"))?
            .into_inner();
        if r.exit_code == 0 {
            trap_set = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    ensure!(trap_set, "the container's shell never set its TERM trap");
    t.rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .map_err(e("StopContainer"))?;
    let s = t.wait_ct(&id, cri::ContainerState::ContainerExited).await?;
    ensure!(
        s.exit_code == 7 && s.finished_at >= s.started_at,
        "exit {s:?}"
    );
    t.rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .map_err(e("RemoveContainer"))?;
    let gone =
        t.rt.container_status(cri::ContainerStatusRequest {
            container_id: id,
            verbose: false,
        })
        .await;
    ensure!(
        matches!(&gone, Err(s) if s.code() == tonic::Code::NotFound),
        "status after remove: {gone:?}"
    );
    t.teardown(&sb).await
}

async fn exec_and_logs(t: &mut Target) -> Check {
    let (sb, sb_cfg) = t.run_sandbox("skexec").await?;
    let cfg = t.container(
        "skexec",
        &["sh", "-c", "echo line-out; echo line-err >&2; sleep 1000"],
    );
    let id = t.start_container(&sb, &sb_cfg, cfg).await?;
    let r = t
        .exec_sync(&id, &["sh", "-c", "echo hello; echo oops >&2; exit 3"], 10)
        .await
        .map_err(e("ExecSync"))?;
    ensure!(
        r.stdout == b"hello\n" && r.stderr == b"oops\n" && r.exit_code == 3,
        "ExecSync gave {r:?}"
    );
    let timed = t.exec_sync(&id, &["sleep", "10"], 1).await;
    ensure!(
        matches!(&timed, Err(s) if s.code() == tonic::Code::DeadlineExceeded),
        "ExecSync past its timeout: {timed:?}"
    );
    // ... and the timed-out process is killed, not left running in the container.
    let mut left = true;
    for _ in 0..40 {
        let ps = t
            .exec_sync(
                &id,
                &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
                10,
            )
            .await
            .map_err(e("ExecSync ps"))?;
        left = String::from_utf8_lossy(&ps.stdout).contains("sleep 10 ");
        if !left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(!left, "the timed-out exec process still runs");
    // Streaming exec over WebSocket.
    let url =
        t.rt.exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "streamed".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .await
        .map_err(e("Exec"))?
        .into_inner()
        .url;
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .map_err(e("websocket"))?
        .map_err(|r| format!("websocket refused: {r:?}"))?;
    let got = ws.collect().await.map_err(e("websocket read"))?;
    ensure!(
        got.get(&1).map(Vec::as_slice) == Some(&b"streamed\n"[..]),
        "streamed stdout {got:?}"
    );
    // Logs in the CRI format.
    let s = t.ct_status(&id).await?;
    let path = if s.log_path.starts_with('/') {
        PathBuf::from(&s.log_path)
    } else {
        t.log_root.join("skexec").join(&s.log_path)
    };
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains("line-err") && log.contains("line-out") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    ensure!(
        log.lines().any(|l| l.ends_with(" stdout F line-out"))
            && log.lines().any(|l| l.ends_with(" stderr F line-err")),
        "log {path:?}: {log:?}"
    );
    let ts = log.split(' ').next().unwrap_or("");
    let rfc3339 = ts.len() >= 20
        && ts.as_bytes()[4] == b'-'
        && ts.as_bytes()[10] == b'T'
        && (ts.ends_with('Z') || ts[19..].contains('+') || ts[19..].contains('-'));
    ensure!(rfc3339, "log timestamp {ts:?}");
    t.teardown(&sb).await
}

async fn attach_stdin(t: &mut Target) -> Check {
    let (sb, sb_cfg) = t.run_sandbox("skattach").await?;
    let mut cfg = t.container(
        "skattach",
        &["sh", "-c", "read l; echo \"got:$l\"; sleep 1000"],
    );
    cfg.stdin = true;
    cfg.stdin_once = true;
    let id = t.start_container(&sb, &sb_cfg, cfg).await?;
    let url =
        t.rt.attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .map_err(e("Attach"))?
        .into_inner()
        .url;
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .map_err(e("websocket"))?
        .map_err(|r| format!("websocket refused: {r:?}"))?;
    ws.send(0, b"hello\n").await.map_err(e("websocket send"))?;
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.contains("got:hello") && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await {
            Ok(Ok(Some((1, d)))) => out.push_str(&String::from_utf8_lossy(&d)),
            Ok(Ok(Some(_))) => {}
            other => return Err(format!("attach ended: {other:?}; stdout {out:?}")),
        }
    }
    ensure!(out.contains("got:hello"), "attach stdout {out:?}");
    drop(ws);
    t.teardown(&sb).await
}

async fn networking(t: &mut Target) -> Check {
    let (sb, sb_cfg) = t.run_sandbox("sknet").await?;
    let cfg = t.container(
        "sknet",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo sk-net-ok > /www/index.html && httpd -f -p 8080 -h /www",
        ],
    );
    let _id = t.start_container(&sb, &sb_cfg, cfg).await?;
    let ip =
        t.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sb.clone(),
            verbose: false,
        })
        .await
        .map_err(e("PodSandboxStatus"))?
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(format!("{ip}:8080")),
        )
        .await
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf)).await;
            body = String::from_utf8_lossy(&buf).to_string();
            if body.contains("sk-net-ok") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        body.contains("sk-net-ok"),
        "HTTP to the pod at {ip}:8080 gave {body:?}"
    );
    // Port-forward over WebSocket.
    let url =
        t.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sb.clone(),
            port: vec![8080],
        })
        .await
        .map_err(e("PortForward"))?
        .into_inner()
        .url;
    let mut ws = WsClient::connect(&format!("{url}?port=8080"), &["v4.channel.k8s.io"])
        .await
        .map_err(e("websocket"))?
        .map_err(|r| format!("websocket refused: {r:?}"))?;
    ws.send(0, b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .map_err(e("ws send"))?;
    let mut data = Vec::new();
    while let Ok(Ok(Some((ch, d)))) = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await
    {
        // Skip the two port prefixes; keep data-channel bytes.
        if ch == 0 && !(data.is_empty() && d == 8080u16.to_le_bytes()) {
            data.extend(d);
        }
        if String::from_utf8_lossy(&data).contains("sk-net-ok") {
            break;
        }
    }
    ensure!(
        String::from_utf8_lossy(&data).contains("sk-net-ok"),
        "port-forward gave {:?}",
        String::from_utf8_lossy(&data)
    );
    t.teardown(&sb).await
}

async fn security_context(t: &mut Target) -> Check {
    let (sb, sb_cfg) = t.run_sandbox("sksec").await?;
    let mut cfg = t.container("sksec", &["sleep", "1000"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 65534 }),
            readonly_rootfs: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = t.start_container(&sb, &sb_cfg, cfg).await?;
    let r = t
        .exec_sync(&id, &["id", "-u"], 10)
        .await
        .map_err(e("ExecSync id"))?;
    ensure!(r.stdout == b"65534\n", "id -u gave {r:?}");
    let r = t
        .exec_sync(&id, &["touch", "/sk-ro-test"], 10)
        .await
        .map_err(e("ExecSync touch"))?;
    ensure!(r.exit_code != 0, "writing to a read-only rootfs succeeded");
    let r = t
        .exec_sync(&id, &["hostname"], 10)
        .await
        .map_err(e("ExecSync hostname"))?;
    ensure!(r.stdout == b"sksec\n", "hostname gave {r:?}");
    t.teardown(&sb).await
}

async fn resource_updates(t: &mut Target) -> Check {
    let (sb, sb_cfg) = t.run_sandbox("skres").await?;
    let mut cfg = t.container("skres", &["sleep", "1000"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = t.start_container(&sb, &sb_cfg, cfg).await?;
    let file =
        |ctrl: &str, name: &str| format!("/sys/fs/cgroup/{ctrl}{}/{id}/{name}", t.cgroup_parent);
    let read = |p: String| {
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{p}: {e}"))
    };
    ensure!(
        read(file("memory", "memory.limit_in_bytes"))? == (64u64 << 20).to_string(),
        "initial memory limit"
    );
    ensure!(
        read(file("cpu", "cpu.shares"))? == "512",
        "initial cpu shares"
    );
    t.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            cpu_shares: 1024,
            cpu_quota: 20000,
            cpu_period: 100000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map_err(e("UpdateContainerResources"))?;
    ensure!(
        read(file("memory", "memory.limit_in_bytes"))? == (128u64 << 20).to_string(),
        "updated memory limit"
    );
    ensure!(
        read(file("cpu", "cpu.shares"))? == "1024",
        "updated cpu shares"
    );
    ensure!(
        read(file("cpu", "cpu.cfs_quota_us"))? == "20000",
        "updated cpu quota"
    );
    t.teardown(&sb).await
}

/// Runs every check; returns (check, outcome) in order.
pub async fn run(t: &mut Target) -> Vec<(&'static str, Check)> {
    let mut out = Vec::new();
    out.push(("runtime info", runtime_info(t).await));
    out.push(("image management", image_management(t).await));
    out.push(("sandbox lifecycle", sandbox_lifecycle(t).await));
    out.push(("container lifecycle", container_lifecycle(t).await));
    out.push(("exec sync, streaming exec, logs", exec_and_logs(t).await));
    out.push(("attach with stdin", attach_stdin(t).await));
    out.push(("networking, port-forward", networking(t).await));
    out.push(("security context", security_context(t).await));
    out.push(("resource updates", resource_updates(t).await));
    for (name, r) in &out {
        match r {
            Ok(()) => eprintln!("[{}] PASS {name}", t.name),
            Err(e) => eprintln!("[{}] FAIL {name}: {e}", t.name),
        }
    }
    out
}
