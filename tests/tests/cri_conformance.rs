//! The CRI conformance suite (`cri_env::conformance`, after critest's validations) against
//! Skiff's CRI server (bridge `skbr10`, 10.244.10.0/24) and against Debian's containerd with
//! runc and Skiff's CNI plugins (bridge `skbr11`, 10.244.11.0/24): both must pass every check.
//! Run as root; containerd's half is skipped with a note when it is not installed.

use skiff_tests::cri_env::conformance::{run, Target};
use skiff_tests::cri_env::containerd::ContainerdEnv;
use skiff_tests::{build_busybox_image, push, CriEnv, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_conformance_skiff_and_containerd() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=warn".into()))
        .with_test_writer()
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = build_busybox_image().unwrap();
    push(registry.addr(), "skbusybox:conf", &image)
        .await
        .unwrap();
    let scratch_image = skiff_tests::cri_env::conformance::relabel(&image, "scratch");
    push(registry.addr(), "skbusybox:scratch", &scratch_image)
        .await
        .unwrap();
    let image_name = format!("{}/skbusybox:conf", registry.addr());
    let scratch = format!("{}/skbusybox:scratch", registry.addr());
    let mut failures = Vec::new();

    {
        let env = CriEnv::start("skbr10", "10.244.10.0/24", registry.addr())
            .await
            .unwrap();
        let (rt, img) = env.clients().await.unwrap();
        let mut t = Target {
            name: "skiff",
            rt,
            img,
            image: image_name.clone(),
            scratch_image: scratch.clone(),
            log_root: env.dir().join("logs"),
            cgroup_parent: env.cgroup_parent.clone(),
            subnet_prefix: "10.244.10.".into(),
        };
        // The image checks remove the scratch image; the lifecycle checks need the main one.
        let _ = t
            .img
            .pull_image(skiff_proto::cri::PullImageRequest {
                image: Some(skiff_proto::cri::ImageSpec {
                    image: image_name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        for (name, r) in run(&mut t).await {
            if let Err(e) = r {
                failures.push(format!("skiff: {name}: {e}"));
            }
        }
    }

    if ContainerdEnv::available() {
        let ctd = ContainerdEnv::start("skbr11", "10.244.11.0/24", registry.addr(), &image)
            .await
            .unwrap();
        let (rt, img) = ctd.clients().await.unwrap();
        let mut t = Target {
            name: "containerd",
            rt,
            img,
            image: image_name.clone(),
            scratch_image: scratch.clone(),
            log_root: ctd.dir().join("logs"),
            cgroup_parent: ctd.cgroup_parent.clone(),
            subnet_prefix: "10.244.11.".into(),
        };
        t.img
            .pull_image(skiff_proto::cri::PullImageRequest {
                image: Some(skiff_proto::cri::ImageSpec {
                    image: image_name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        for (name, r) in run(&mut t).await {
            if let Err(e) = r {
                failures.push(format!("containerd: {name}: {e}"));
            }
        }
        if failures.iter().any(|f| f.starts_with("containerd")) {
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
    } else {
        failures.push(
            "containerd: containerd and containerd-shim-runc-v2 must be installed (Debian's containerd package) for the side-by-side half of this test".into(),
        );
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}
