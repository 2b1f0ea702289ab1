//! CRI node operations (run as root): container events, ReopenContainerLog with rotation,
//! UpdateContainerResources (cgroup limits change), the image's StopSignal, the pause process in
//! the pod cgroup, verbose sandbox info, pod metrics, and the monitor's RSS per container.
//! Bridge `skbr8`, 10.244.8.0/24.

use std::time::Duration;

use skiff_proto::cri;
use skiff_proto::cri::ContainerEventType as Ev;
use skiff_tests::cri_env::RuntimeClient;
use skiff_tests::cri_env::{pull_image, run_sandbox, start_container};
use skiff_tests::image::{Blob, MEDIA_CONFIG, MEDIA_MANIFEST};
use skiff_tests::{build_busybox_image, push, CriEnv, OciImage, Registry};

/// The busybox image with `StopSignal` set in its config.
fn with_stop_signal(base: &OciImage, signal: &str) -> OciImage {
    let mut cfg: serde_json::Value = serde_json::from_slice(&base.config.data).unwrap();
    cfg["config"]["StopSignal"] = serde_json::json!(signal);
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&cfg).unwrap());
    let layer = &base.layers[0];
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len()}],
    });
    OciImage {
        config,
        layers: base.layers.clone(),
        manifest: Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).unwrap()),
    }
}

async fn wait_state(
    rt: &mut RuntimeClient,
    id: &str,
    want: cri::ContainerState,
) -> cri::ContainerStatus {
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
        if s.state == want as i32 {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("container {id} never reached {want:?}");
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_events_logs_resources_stop_signal_metrics() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=info".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let base = build_busybox_image().unwrap();
    let image = with_stop_signal(&base, "SIGUSR1");
    push(registry.addr(), "skbusybox:stopsig", &image)
        .await
        .unwrap();
    let env = CriEnv::start("skbr8", "10.244.8.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    let image_name = format!("{}/skbusybox:stopsig", registry.addr());
    pull_image(&mut img, &image_name).await;

    // Events: subscribe first.
    let mut events = rt
        .get_container_events(cri::GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    let sb_config = env.sandbox_config("skops");
    let sandbox_id = run_sandbox(&mut rt, &sb_config, "").await;

    // The pause process sits in <cgroup parent>/<sandbox id>.
    let info = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    assert_eq!(info["processStatus"], "running", "{info}");
    assert_eq!(info["config"]["metadata"]["name"], "skops");
    assert!(info["cniResult"]["ips"].is_array(), "{info}");
    let pause_pid = info["pid"].as_i64().unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{pause_pid}/cgroup")).unwrap();
    let want = format!("{}/{}", env.cgroup_parent, sandbox_id);
    assert!(
        cg.lines()
            .any(|l| l.contains(":memory:") && l.ends_with(&want)),
        "pause cgroups {cg}"
    );

    // A container that logs a line every 100 ms and exits 42 on SIGUSR1 (the image's StopSignal).
    let script = "trap 'echo got-usr1; exit 42' USR1; i=0; \
                  while true; do echo line$i; i=$((i+1)); sleep 0.1; done";
    let mut cfg = CriEnv::shell_container("skopsct", &image_name, script);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ct = start_container(&mut rt, &sandbox_id, &sb_config, cfg).await;
    let status = wait_state(&mut rt, &ct, cri::ContainerState::ContainerRunning).await;
    let log_path = std::path::PathBuf::from(&status.log_path);

    // UpdateContainerResources: the new memory limit lands in the cgroup and in the status.
    let mem_file = format!(
        "/sys/fs/cgroup/memory{}/{}/{}/memory.limit_in_bytes",
        env.cgroup_parent, "", ct
    )
    .replace("//", "/");
    assert_eq!(
        std::fs::read_to_string(&mem_file).unwrap().trim(),
        (64u64 << 20).to_string()
    );
    rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: ct.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&mem_file).unwrap().trim(),
        (96u64 << 20).to_string()
    );
    let quota = mem_file
        .replace("/memory/", "/cpu/")
        .replace("memory.limit_in_bytes", "cpu.cfs_quota_us");
    assert_eq!(std::fs::read_to_string(&quota).unwrap().trim(), "50000");
    let s = wait_state(&mut rt, &ct, cri::ContainerState::ContainerRunning).await;
    assert_eq!(
        s.resources.unwrap().linux.unwrap().memory_limit_in_bytes,
        96 << 20
    );

    // ReopenContainerLog: rename the log like the kubelet's rotation; new lines go to a new file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = log_path.with_extension("log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: ct.clone(),
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    let new = std::fs::read_to_string(&log_path).unwrap();
    assert!(old.contains(" stdout F line0"), "{old}");
    assert!(new.lines().count() >= 2, "new log {new:?}");
    let last_old = old
        .lines()
        .last()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_start_matches("line");
    let first_new = new
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_start_matches("line");
    assert_eq!(
        last_old.parse::<u64>().unwrap() + 1,
        first_new.parse::<u64>().unwrap(),
        "no line lost or repeated across the rotation"
    );

    // Monitor RSS (release builds stay under 1 MiB; debug builds carry more code).
    let monitor_pid: i32 = std::fs::read_to_string(
        env.cfg
            .state_dir
            .join("containers")
            .join(&ct)
            .join("monitor/monitor.pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await; // idle: code pages trimmed
    let rss = rss_kib(monitor_pid);
    eprintln!(
        "cri_monitor_rss_kib={rss} pause_rss_kib={}",
        rss_kib(pause_pid as i32)
    );
    assert!(rss > 0 && rss < 4096, "monitor RSS {rss} KiB");

    // Metrics.
    let descs = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    assert!(descs
        .iter()
        .any(|d| d.name == "container_memory_working_set_bytes"));
    let m = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pod = m
        .iter()
        .find(|p| p.pod_sandbox_id == sandbox_id)
        .expect("pod metrics");
    let cm = pod
        .container_metrics
        .iter()
        .find(|c| c.container_id == ct)
        .expect("container metrics");
    let limit = cm
        .metrics
        .iter()
        .find(|m| m.name == "container_spec_memory_limit_bytes")
        .unwrap();
    assert_eq!(limit.value.unwrap().value, 96 << 20);
    assert_eq!(limit.label_values.len(), 6);
    assert!(pod
        .metrics
        .iter()
        .any(|m| m.name == "container_network_receive_bytes_total"));

    // StopContainer sends the image's StopSignal (SIGUSR1): the trap exits 42 well before SIGKILL.
    let t0 = std::time::Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: ct.clone(),
        timeout: 30,
    })
    .await
    .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t0.elapsed()
    );
    let s = wait_state(&mut rt, &ct, cri::ContainerState::ContainerExited).await;
    assert_eq!(s.exit_code, 42, "{s:?}");

    rt.remove_container(cri::RemoveContainerRequest {
        container_id: ct.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    assert!(
        !std::path::Path::new(&format!(
            "/sys/fs/cgroup/memory{}/{}",
            env.cgroup_parent, sandbox_id
        ))
        .exists(),
        "sandbox cgroup removed at stop"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();

    // The event stream saw the whole life cycle, in order.
    let mut seen: Vec<(String, i32)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 8 && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.message()).await {
            Ok(Ok(Some(e))) => seen.push((e.container_id, e.container_event_type)),
            other => panic!("event stream ended: {other:?} after {seen:?}"),
        }
    }
    let of = |id: &str| -> Vec<i32> {
        seen.iter()
            .filter(|(i, _)| i == id)
            .map(|(_, t)| *t)
            .collect()
    };
    let all = [
        Ev::ContainerCreatedEvent,
        Ev::ContainerStartedEvent,
        Ev::ContainerStoppedEvent,
        Ev::ContainerDeletedEvent,
    ]
    .map(|e| e as i32)
    .to_vec();
    assert_eq!(of(&ct), all, "container events {seen:?}");
    assert_eq!(of(&sandbox_id), all, "sandbox events {seen:?}");
}
