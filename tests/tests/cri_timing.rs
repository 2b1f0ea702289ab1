//! Rough CRI latencies (run as root; prints one line per figure): RunPodSandbox (incl. CNI),
//! CreateContainer+StartContainer, StopPodSandbox+RemovePodSandbox, medians over a few pods.
//! Bridge `skbr4`, 10.244.4.0/24. Not a benchmark gate: it asserts only that everything works.

use std::time::{Duration, Instant};

use skiff_proto::cri;
use skiff_tests::cri_env::{push_busybox, run_sandbox};
use skiff_tests::{CriEnv, Registry};

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_timings() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image_name = push_busybox(registry.addr(), "busybox:latest").await;
    let env = CriEnv::start("skbr4", "10.244.4.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    let t = Instant::now();
    let image_id = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    println!(
        "cri_pull_busybox_ms skiff={:.1}",
        t.elapsed().as_secs_f64() * 1000.0
    );

    let (mut run, mut create_start, mut teardown) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..7 {
        let name = format!("sktime{i}");
        let sb_config = env.sandbox_config(&name);
        let t = Instant::now();
        let sb = run_sandbox(&mut rt, &sb_config, "").await;
        run.push(t.elapsed());
        let t = Instant::now();
        let ct = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(CriEnv::shell_container("skc", &image_id, "sleep 3600")),
                sandbox_config: Some(sb_config),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest { container_id: ct })
            .await
            .unwrap();
        create_start.push(t.elapsed());
        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sb.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
            .await
            .unwrap();
        teardown.push(t.elapsed());
    }
    println!("cri_run_pod_sandbox_p50_ms skiff={:.1}", median(&mut run));
    println!(
        "cri_create_start_container_p50_ms skiff={:.1}",
        median(&mut create_start)
    );
    println!(
        "cri_stop_remove_pod_sandbox_p50_ms skiff={:.1}",
        median(&mut teardown)
    );
    assert!(env.ipam_reservations().is_empty());
}
