//! The CRI conformance suite (`cri_env::conformance`, after critest's validations) against
//! Skiff's CRI server (bridge `skbr10`, 10.244.10.0/24) and against Debian's containerd with
//! runc and Skiff's CNI plugins (bridge `skbr11`, 10.244.11.0/24): both must pass every check.
//! Run as root; containerd's half is skipped with a note when it is not installed.

use skiff_tests::cri_env::conformance::{print_containerd_errors, record_failures, run, Target};
use skiff_tests::cri_env::containerd::ContainerdEnv;
use skiff_tests::cri_env::pull_image;
use skiff_tests::{build_busybox_image, push, CriEnv, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_conformance_skiff_and_containerd() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=warn".into()))
        .with_test_writer()
        .with_ansi(false)
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
        let mut t = Target::skiff(&env, &image_name, &scratch, "10.244.10.").await;
        // The image checks remove the scratch image; the lifecycle checks need the main one.
        pull_image(&mut t.img, &image_name).await;
        record_failures(&mut failures, "skiff", run(&mut t).await);
    }

    if ContainerdEnv::available() {
        let ctd = ContainerdEnv::start("skbr11", "10.244.11.0/24", registry.addr(), &image)
            .await
            .unwrap();
        let mut t = Target::containerd(&ctd, &image_name, &scratch, "10.244.11.").await;
        pull_image(&mut t.img, &image_name).await;
        record_failures(&mut failures, "containerd", run(&mut t).await);
        print_containerd_errors(&ctd, &failures);
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
