//! More CRI behaviour (run as root): exit codes and reasons, cleanup after a failed
//! RunPodSandbox / CreateContainer, gzip layers, image removal. Bridge `skbr2`, 10.244.2.0/24.

use skiff_proto::cri;
use skiff_tests::cri_env::wait_exited;
use skiff_tests::cri_env::{run_sandbox, start_container};
use skiff_tests::image::build_busybox_image_with;
use skiff_tests::netns::links_on_bridge;
use skiff_tests::{push, CriEnv, Registry};

fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|m| m.starts_with(&d))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_exit_codes_failures_and_images() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=info".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let gz = build_busybox_image_with(true).unwrap();
    push(registry.addr(), "skbusybox:gz", &gz).await.unwrap();
    let env = CriEnv::start("skbr2", "10.244.2.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    let image = format!("{}/skbusybox:gz", registry.addr());

    // A gzip layer pulls and unpacks; pulling twice is a no-op that keeps one image.
    for _ in 0..2 {
        let r = img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.image_ref, gz.config.digest);
    }
    assert_eq!(
        img.list_images(cri::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .len(),
        1
    );

    let sb_config = env.sandbox_config("skpod2");
    let sandbox_id = run_sandbox(&mut rt, &sb_config, "").await;

    // Exit codes and reasons; the image's Cmd (`sh`) is replaced by command; env reaches the process.
    let mut ok_cfg = CriEnv::shell_container(
        "skok",
        &image,
        "test \"$SKV\" = 42 && cat /etc/hostname && id -u && echo pod-shm > /dev/shm/skx",
    );
    ok_cfg.envs = vec![cri::KeyValue {
        key: "SKV".into(),
        value: "42".into(),
    }];
    let bad_cfg = CriEnv::shell_container("skbad", &image, "exit 3");
    let mut ids = Vec::new();
    for cfg in [ok_cfg, bad_cfg] {
        let id = start_container(&mut rt, &sandbox_id, &sb_config, cfg).await;
        ids.push(id);
    }
    let ok = wait_exited(&mut rt, &ids[0]).await;
    assert_eq!(
        (ok.exit_code, ok.reason.as_str()),
        (0, "Completed"),
        "{ok:?}"
    );
    assert!(ok.finished_at >= ok.started_at && ok.started_at > 0);
    let log = std::fs::read_to_string(&ok.log_path).unwrap();
    assert!(
        log.contains(" stdout F skpod2\n"),
        "hostname in log: {log:?}"
    );
    assert!(log.contains(" stdout F 0\n"), "uid 0 in log: {log:?}");
    // /dev/shm is shared by the pod's containers.
    let shm_id = start_container(
        &mut rt,
        &sandbox_id,
        &sb_config,
        CriEnv::shell_container("skshm", &image, "cat /dev/shm/skx"),
    )
    .await;
    let shm = wait_exited(&mut rt, &shm_id).await;
    assert_eq!(shm.exit_code, 0);
    assert!(std::fs::read_to_string(&shm.log_path)
        .unwrap()
        .contains(" stdout F pod-shm\n"));
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: shm_id,
    })
    .await
    .unwrap();
    let bad = wait_exited(&mut rt, &ids[1]).await;
    assert_eq!((bad.exit_code, bad.reason.as_str()), (3, "Error"));
    let exited = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exited.containers.len(), 2);
    // Starting an exited container is refused.
    let again = rt
        .start_container(cri::StartContainerRequest {
            container_id: ids[1].clone(),
        })
        .await;
    assert!(again.is_err());

    // A failed CreateContainer (unknown user) leaves no record, dir or mount behind.
    let mut bad_user = CriEnv::shell_container("skuser", &image, "true");
    bad_user.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "sk-no-such-user".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(bad_user),
            sandbox_config: Some(sb_config.clone()),
        })
        .await
        .expect_err("unknown user fails");
    assert!(err.message().contains("sk-no-such-user"), "{err:?}");
    let containers_dir = env.cfg.state_dir.join("containers");
    assert_eq!(std::fs::read_dir(&containers_dir).unwrap().count(), 2);
    assert_eq!(
        mounts_under(&containers_dir).len(),
        2,
        "only the two containers' rootfs stay mounted"
    );
    // An image that is not there is NotFound.
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(CriEnv::shell_container(
                "skmissing",
                "sk-not-pulled:latest",
                "true",
            )),
            sandbox_config: Some(sb_config.clone()),
        })
        .await
        .expect_err("image not pulled");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // RemovePodSandbox removes the containers too (no explicit StopPodSandbox first).
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_dir(&containers_dir).unwrap().count(), 0);
    assert!(
        mounts_under(env.dir()).is_empty(),
        "mounts left: {:?}",
        mounts_under(env.dir())
    );
    assert!(links_on_bridge("skbr2").is_empty());
    assert!(env.ipam_reservations().is_empty());

    // A failed RunPodSandbox (CNI plugin missing) cleans up pause, netns and state.
    let conflist = env.cfg.cni_conf_dir.join("10-sktest.conflist");
    let good = std::fs::read_to_string(&conflist).unwrap();
    std::fs::write(
        &conflist,
        good.replace("\"portmap\"", "\"sk-no-such-plugin\""),
    )
    .unwrap();
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(env.sandbox_config("skpod3")),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("missing plugin fails");
    assert!(err.message().contains("sk-no-such-plugin"), "{err:?}");
    assert_eq!(
        std::fs::read_dir(env.cfg.state_dir.join("sandboxes"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(std::fs::read_dir(&env.cfg.netns_dir).unwrap().count(), 0);
    assert!(mounts_under(env.dir()).is_empty());
    assert!(
        links_on_bridge("skbr2").is_empty(),
        "veth of the failed sandbox removed"
    );
    assert!(
        env.ipam_reservations().is_empty(),
        "IP of the failed sandbox released"
    );
    std::fs::write(&conflist, good).unwrap();

    // A host-network pod: no CNI, no netns mount, the host's hostname.
    let mut host_cfg = env.sandbox_config("skhost");
    host_cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let host_sb = run_sandbox(&mut rt, &host_cfg, "").await;
    assert_eq!(std::fs::read_dir(&env.cfg.netns_dir).unwrap().count(), 0);
    assert!(links_on_bridge("skbr2").is_empty());
    let host_ct = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: host_sb.clone(),
            config: Some(CriEnv::shell_container(
                "skh",
                &image,
                "cat /etc/hostname; hostname",
            )),
            sandbox_config: Some(host_cfg),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: host_ct.clone(),
    })
    .await
    .unwrap();
    let hs = wait_exited(&mut rt, &host_ct).await;
    assert_eq!(hs.exit_code, 0);
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let log = std::fs::read_to_string(&hs.log_path).unwrap();
    assert_eq!(
        log.matches(&format!(" stdout F {host_name}\n")).count(),
        2,
        "{log:?}"
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: host_sb,
    })
    .await
    .unwrap();
    assert!(mounts_under(env.dir()).is_empty());

    // RemoveImage drops the record and its snapshot.
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
    let st = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image,
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.image.is_none());
    let snaps = env.cfg.state_dir.join("images/snapshots");
    assert_eq!(std::fs::read_dir(snaps).unwrap().count(), 0);
}
