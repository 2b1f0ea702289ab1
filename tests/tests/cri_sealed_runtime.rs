//! The CRI server runs the default runtime from a sealed memfd copy bind-mounted in place
//! (runc's `memfd-bind`, what `skiff server` and `skiff cri` do; `shims/cri/src/seal.rs`):
//! the copy is mounted at `<state>/bin/skiff-runtime`, carries the write/grow/shrink seals,
//! refuses writes, runs containers and execs, and is unmounted when the server stops.
//! Bridge `skbr32`, 10.244.32.0/24. Run as root.

use std::os::fd::AsRawFd;

use skiff_proto::cri;
use skiff_tests::cri_env::{pull_image, push_busybox, run_sandbox, start_container};
use skiff_tests::{CriEnv, Registry};

fn mounted_at(path: &std::path::Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_runtime_runs_from_a_sealed_memfd() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    assert!(
        skiff_tests::workspace_bin("skiff-runtime").exists(),
        "skiff-runtime is not built: cargo build -p skiff-runtime -p skiff-monitor -p skiff-cni"
    );
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = push_busybox(registry.addr(), "busybox:latest").await;
    let mut env = CriEnv::start("skbr32", "10.244.32.0/24", registry.addr())
        .await
        .unwrap();
    env.cfg.seal_runtime = true;
    env.restart().await.unwrap();
    let sealed = env.dir().join("state/bin/skiff-runtime");
    assert!(
        mounted_at(&sealed),
        "nothing is mounted at {}",
        sealed.display()
    );
    let f = std::fs::File::open(&sealed).unwrap();
    // SAFETY: F_GET_SEALS reads the seals of a valid fd.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    assert!(
        seals >= 0 && seals & want == want,
        "{} is not a sealed memfd (seals {seals:#x})",
        sealed.display()
    );
    drop(f);
    // F_SEAL_WRITE: an open for writing may succeed, every write fails (EPERM).
    if let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&sealed) {
        use std::io::Write;
        assert!(
            w.write_all(b"x").is_err(),
            "a write to the sealed runtime copy succeeded"
        );
    }

    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image).await;
    let cfg = env.sandbox_config("sksealed");
    let sb = run_sandbox(&mut rt, &cfg, "").await;
    let id = start_container(
        &mut rt,
        &sb,
        &cfg,
        CriEnv::shell_container("sksealed", &image, "sleep 1000"),
    )
    .await;
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "sealed".into()],
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.exit_code, String::from_utf8_lossy(&r.stdout).trim()),
        (0, "sealed"),
        "ExecSync through the sealed runtime: {r:?}"
    );
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
        .await
        .unwrap();
    env.stop().await.unwrap();
    assert!(
        !mounted_at(&sealed),
        "the sealed runtime copy is still mounted after the server stopped"
    );
}
