//! CRI crash recovery (run as root): the pod monitor (the pause process, which monitors the
//! pod's containers) and a container process die behind the server's back, and the server
//! restarts: statuses say so and cleanup still works.
//! Bridge `skbr3`, 10.244.3.0/24.

use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::{pull_image, push_busybox, run_sandbox};
use skiff_tests::netns::links_on_bridge;
use skiff_tests::{CriEnv, Registry};

/// PIDs whose command line contains every one of `needles`.
fn pids_with(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            needles.iter().all(|n| cmd.contains(n))
        })
        .collect()
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_recovers_after_crashes() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image_name = push_busybox(registry.addr(), "busybox:latest").await;
    let mut env = CriEnv::start("skbr3", "10.244.3.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image_name).await;
    let sb_config = env.sandbox_config("skpod4");
    let sandbox_id = run_sandbox(&mut rt, &sb_config, "").await;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(CriEnv::shell_container(
                "sksleep",
                &image_name,
                "sleep 3600",
            )),
            sandbox_config: Some(sb_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let verbose = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let pid = info["pid"].as_i64().unwrap() as i32;
    assert!(pid > 0);

    // Crash: the pod monitor (the pause, which also monitors the pod's containers) first, so
    // nobody records the exit, then the container process.
    drop((rt, img));
    env.stop().await.unwrap();
    assert!(
        pids_with(&["skiff-monitor", "container", &id]).is_empty(),
        "no per-container monitor: the pod monitor has the container"
    );
    let pod_monitor = pids_with(&["skiff-monitor", "pause", "skpod4"]);
    assert_eq!(pod_monitor.len(), 1, "one pod monitor process");
    let recorded = std::fs::read_to_string(
        env.cfg
            .state_dir
            .join("containers")
            .join(&id)
            .join("monitor/monitor.pid"),
    )
    .unwrap();
    assert_eq!(recorded.trim(), pod_monitor[0].to_string());
    kill(pod_monitor[0]);
    kill(pid);
    tokio::time::sleep(Duration::from_millis(200)).await;

    env.restart().await.unwrap();
    let (mut rt, _img) = env.clients().await.unwrap();
    let cs = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(cs.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(cs.exit_code, 255);
    let sbs = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        sbs.state,
        cri::PodSandboxState::SandboxNotready as i32,
        "pause is dead"
    );

    // The kubelet's cleanup still works: CNI DEL through the kept netns mount, then removal.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await
    .unwrap();
    assert!(links_on_bridge("skbr3").is_empty());
    assert!(env.ipam_reservations().is_empty());
    assert_eq!(std::fs::read_dir(&env.cfg.netns_dir).unwrap().count(), 0);
    let containers = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(containers.containers.is_empty());
}

/// A test that fails half-way leaves nothing behind: `CriEnv`'s Drop kills the recorded
/// processes, unmounts the temp dir's mounts and deletes the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_env_cleans_up_after_an_abandoned_pod() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image_name = push_busybox(registry.addr(), "busybox:latest").await;
    let env = CriEnv::start("skbr5", "10.244.5.0/24", registry.addr())
        .await
        .unwrap();
    let dir = env.dir().to_path_buf();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image_name).await;
    let sb_config = env.sandbox_config("skgone");
    let sb = run_sandbox(&mut rt, &sb_config, "").await;
    let ct = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sb,
            config: Some(CriEnv::shell_container("skgone", &image_name, "sleep 3600")),
            sandbox_config: Some(sb_config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: ct.clone(),
    })
    .await
    .unwrap();
    drop((rt, img));
    drop(env);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        pids_with(&["skiff-monitor", "pause", "skgone"]).is_empty(),
        "pause killed"
    );
    assert!(pids_with(&["sleep", "3600"]).iter().all(|p| {
        !std::fs::read_to_string(format!("/proc/{p}/cgroup"))
            .unwrap_or_default()
            .contains(&ct)
    }));
    let d = dir.to_string_lossy().to_string();
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&d),
        "mounts left under {d}"
    );
    assert!(!skiff_tests::netns::link_exists("skbr5"));
}
