//! End-to-end CRI test (run as root): our CRI server on a temp socket and state dir, Skiff's CNI
//! plugins (bridge `skbr1`, 10.244.1.0/24), runtime and monitor, and a busybox image pushed to a
//! local docker-registry. Override the binaries with SKIFF_TEST_RUNTIME (e.g. /usr/sbin/runc),
//! SKIFF_TEST_MONITOR and SKIFF_TEST_CNI_BIN_DIR (e.g. /usr/lib/cni); see `skiff_tests::CriEnv`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::run_sandbox;
use skiff_tests::netns::{is_mounted, link_exists, links_on_bridge};
use skiff_tests::{build_busybox_image, push, CriEnv, Registry};

const BRIDGE: &str = "skbr1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_lifecycle() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=debug".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "cri_basic needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = build_busybox_image().unwrap();
    push(registry.addr(), "busybox:latest", &image)
        .await
        .unwrap();
    let mut env = CriEnv::start(BRIDGE, "10.244.1.0/24", registry.addr())
        .await
        .unwrap();
    let cfg = env.cfg.clone();
    let (mut rt, mut img) = env.clients().await.unwrap();

    // Version / Status.
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "skiff");
    assert_eq!(v.runtime_api_version, "v1");
    let status = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conds = status.status.unwrap().conditions;
    assert!(conds.iter().all(|c| c.status), "{conds:?}");

    // Images.
    let image_name = format!("{}/busybox:latest", registry.addr());
    let pulled = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pulled.image_ref, image.config.digest);
    let st = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image_name.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let st = st.image.expect("image known after pull");
    assert_eq!(st.repo_tags, vec![image_name.clone()]);
    assert_eq!(
        st.repo_digests,
        vec![format!(
            "{}/busybox@{}",
            registry.addr(),
            image.manifest.digest
        )]
    );
    let list = img
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

    let missing = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: format!("{}/sk-no-such-image:latest", registry.addr()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("pulling a missing image fails");
    assert!(missing.message().contains("not found"), "{missing:?}");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Sandbox.
    let log_dir = env.log_dir("skpod");
    let sb_config = env.sandbox_config("skpod");
    let sandbox_id = run_sandbox(&mut rt, &sb_config, "").await;
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
    assert_eq!(sbs.state, cri::PodSandboxState::SandboxReady as i32);
    let ip: Ipv4Addr = sbs
        .network
        .as_ref()
        .unwrap()
        .ip
        .parse()
        .expect("pod has an IPv4 address");
    assert_eq!(
        ip.octets()[..3],
        [10, 244, 1],
        "pod IP {ip} in 10.244.1.0/24"
    );
    assert_eq!(sbs.metadata.as_ref().unwrap().name, "skpod");
    assert_eq!(sbs.labels.get("app").map(String::as_str), Some("skpod"));
    assert_eq!(
        sbs.annotations.get("note").map(String::as_str),
        Some("skiff-test")
    );
    assert!(sbs.created_at > 0);
    let netns_file = cfg.netns_dir.join(&sandbox_id);
    assert!(
        is_mounted(&netns_file),
        "netns bind mount at {}",
        netns_file.display()
    );
    assert_eq!(links_on_bridge(BRIDGE).len(), 1, "one veth on {BRIDGE}");
    assert_eq!(env.ipam_reservations(), vec![ip.to_string()]);

    let filtered = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".to_string(), "skpod".to_string())]),
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.items.len(), 1);
    let none = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: HashMap::from([("app".to_string(), "other".to_string())]),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.items.is_empty());

    // Container.
    let ct_config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "skc".into(),
            attempt: 0,
        }),
        // By image id, as the kubelet does.
        image: Some(cri::ImageSpec {
            image: pulled.image_ref.clone(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["echo hello; sleep 3600".into()],
        envs: vec![cri::KeyValue {
            key: "SKTEST".into(),
            value: "1".into(),
        }],
        log_path: "skc/0.log".into(),
        labels: HashMap::from([("c".to_string(), "skc".to_string())]),
        ..Default::default()
    };
    let container_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(ct_config),
            sandbox_config: Some(sb_config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let cs = container_status(&mut rt, &container_id).await;
    assert_eq!(cs.state, cri::ContainerState::ContainerCreated as i32);
    rt.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap();
    let cs = container_status(&mut rt, &container_id).await;
    assert_eq!(
        cs.state,
        cri::ContainerState::ContainerRunning as i32,
        "{cs:?}"
    );
    assert!(cs.started_at > 0);
    assert_eq!(
        cs.image.as_ref().unwrap().image,
        image_name,
        "status shows the tag"
    );
    assert_eq!(cs.image_id, image.config.digest);
    assert_eq!(
        cs.image_ref,
        format!("{}/busybox@{}", registry.addr(), image.manifest.digest)
    );
    let log_path = log_dir.join("skc/0.log");
    assert_eq!(cs.log_path, log_path.display().to_string());

    let mut log = String::new();
    for _ in 0..250 {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("hello") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = log
        .lines()
        .find(|l| l.ends_with(" hello"))
        .unwrap_or_else(|| panic!("no hello in log: {log:?}"));
    let parts: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(parts.len(), 4, "CRI log line {line:?}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(parts[0]).is_ok(),
        "timestamp in {line:?}"
    );
    assert_eq!(&parts[1..], ["stdout", "F", "hello"]);

    let listed = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: sandbox_id.clone(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.containers.len(), 1);

    // ExecSync, when the runtime has runc's `exec` verb.
    let runtime_has_exec = std::process::Command::new(&cfg.runtime_bin)
        .args(["exec", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: container_id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo $SKTEST; echo err >&2; exit 7".into(),
            ],
            timeout: 10,
        })
        .await;
    if runtime_has_exec {
        let exec = exec.unwrap().into_inner();
        assert_eq!(
            (
                exec.stdout.as_slice(),
                exec.stderr.as_slice(),
                exec.exit_code
            ),
            (&b"1\n"[..], &b"err\n"[..], 7)
        );
    } else {
        eprintln!(
            "runtime {} has no exec verb: ExecSync returns an error",
            cfg.runtime_bin.display()
        );
        assert!(exec.is_err());
    }

    // Stats from cgroups, the writable layer and the pod's netns.
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: container_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.writable_layer.is_some());
    let all_stats = rt
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all_stats.stats.len(), 1);
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap()
        .linux
        .unwrap();
    assert_eq!(pod_stats.containers.len(), 1);
    assert!(pod_stats.process.unwrap().process_count.unwrap().value >= 1);
    assert_eq!(
        pod_stats.network.unwrap().default_interface.unwrap().name,
        "eth0"
    );

    // Restart the CRI server: state reloads from disk.
    drop((rt, img));
    env.restart().await.unwrap();
    let (mut rt, _img) = env.clients().await.unwrap();
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
    assert_eq!(sbs.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(sbs.network.unwrap().ip, ip.to_string());
    let cs = container_status(&mut rt, &container_id).await;
    assert_eq!(cs.state, cri::ContainerState::ContainerRunning as i32);

    // Stop: SIGTERM is ignored by sh as PID 1, so the timeout leads to SIGKILL (137), or 143.
    rt.stop_container(cri::StopContainerRequest {
        container_id: container_id.clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    let cs = container_status(&mut rt, &container_id).await;
    assert_eq!(cs.state, cri::ContainerState::ContainerExited as i32);
    assert!(
        cs.exit_code == 137 || cs.exit_code == 143,
        "exit code {}",
        cs.exit_code
    );
    assert_eq!(cs.reason, "Error");
    assert!(cs.finished_at >= cs.started_at);
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap();
    let gone = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed container is gone");
    assert_eq!(gone.code(), tonic::Code::NotFound);

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
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
    assert_eq!(sbs.state, cri::PodSandboxState::SandboxNotready as i32);
    // Stop is idempotent.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();

    assert!(!is_mounted(&netns_file), "netns still mounted");
    assert!(!netns_file.exists(), "netns file left behind");
    assert!(
        links_on_bridge(BRIDGE).is_empty(),
        "veth left on {BRIDGE}: {:?}",
        links_on_bridge(BRIDGE)
    );
    assert!(
        env.ipam_reservations().is_empty(),
        "IPAM reservation left behind"
    );
    let all = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.items.is_empty());
    assert!(std::fs::read_dir(cfg.state_dir.join("containers"))
        .unwrap()
        .next()
        .is_none());

    drop(rt);
    env.stop().await.unwrap();
    drop(env);
    assert!(!link_exists(BRIDGE));
}

async fn container_status(
    rt: &mut cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap()
    .into_inner()
    .status
    .unwrap()
}
