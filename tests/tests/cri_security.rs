//! Security contexts, seccomp and namespace modes (`cri_env::security`) against Skiff's CRI
//! server (bridge `skbr20`, 10.244.20.0/24) and Debian's containerd 1.6 with runc (bridge
//! `skbr21`, 10.244.21.0/24) in the same test: both must pass every check. Needs root and
//! containerd; fails saying what is missing otherwise. `SKIFF_TEST_CHECKS=seccomp,pid` runs only
//! the checks whose names contain one of those words.

use skiff_proto::cri;
use skiff_tests::cri_env::conformance::{print_containerd_errors, record_failures, Target};
use skiff_tests::cri_env::containerd::ContainerdEnv;
use skiff_tests::cri_env::security::run;
use skiff_tests::{build_busybox_image, push, CriEnv, Registry};

async fn pull(t: &mut Target) {
    t.img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: t.image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("[{}] pulling {}: {e}", t.name, t.image));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_security_skiff_and_containerd() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=warn".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    assert!(
        ContainerdEnv::available(),
        "containerd and containerd-shim-runc-v2 are not installed: run `bash scripts/deps.sh test`"
    );
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = build_busybox_image().unwrap();
    push(registry.addr(), "skbusybox:sec", &image)
        .await
        .unwrap();
    let image_name = format!("{}/skbusybox:sec", registry.addr());
    let mut failures = Vec::new();

    {
        let env = CriEnv::start("skbr20", "10.244.20.0/24", registry.addr())
            .await
            .unwrap();
        let mut t = Target::skiff(&env, &image_name, &image_name, "10.244.20.").await;
        pull(&mut t).await;
        record_failures(&mut failures, "skiff", run(&mut t).await);
    }

    {
        let ctd = ContainerdEnv::start("skbr21", "10.244.21.0/24", registry.addr(), &image)
            .await
            .unwrap();
        let mut t = Target::containerd(&ctd, &image_name, &image_name, "10.244.21.").await;
        pull(&mut t).await;
        record_failures(&mut failures, "containerd", run(&mut t).await);
        print_containerd_errors(&ctd, &failures);
    }
    assert!(
        failures.is_empty(),
        "security failures:\n{}",
        failures.join("\n")
    );
}

/// `skiff-runtime events` (no `--stats`) prints `{"type":"oom","id":ID}` when the kernel
/// OOM-kills a process of the container. Skiff only (bridge `skbr22`, 10.244.22.0/24).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_events_report_oom() {
    use skiff_tests::cri_env::{pull_image, push_busybox, run_sandbox, start_container};
    use std::io::BufRead;
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = push_busybox(registry.addr(), "skbusybox:secev").await;
    let env = CriEnv::start("skbr22", "10.244.22.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image).await;
    let sb_cfg = env.sandbox_config("skoomev");
    let sb = run_sandbox(&mut rt, &sb_cfg, "").await;
    // Waits for /tmp/go, then grows past its 32 MiB limit.
    let script = format!(
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; {}",
        skiff_tests::cri_env::security::OOM_SCRIPT
    );
    let mut cfg = CriEnv::shell_container("skoomev", &image, &script);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = start_container(&mut rt, &sb, &sb_cfg, cfg).await;

    let mut events = std::process::Command::new(&env.cfg.runtime_bin)
        .arg("--root")
        .arg(&env.cfg.runtime_root)
        .args(["events", "--interval", "1s", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting skiff-runtime events");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = events.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first stats event: `events` runs and has read the OOM counter.
    let first = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a first event");
    assert!(first.contains("\"stats\""), "{first}");
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["touch".into(), "/tmp/go".into()],
        timeout: 10,
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut oom = false;
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        if line.contains("\"type\":\"oom\"") {
            oom = true;
            assert!(line.contains(&id), "{line}");
            break;
        }
        got.push(line);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(events.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = events.wait();
    let _ = reader.join();
    let status = skiff_tests::cri_env::wait_exited(&mut rt, &id).await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
        .await
        .unwrap();
    assert!(oom, "no oom event; got {got:?}");
    assert_eq!(
        (status.exit_code, status.reason.as_str()),
        (137, "OOMKilled")
    );
}
