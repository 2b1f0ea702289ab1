//! `run` keeps retrying while the API server is unreachable and stops cleanly on shutdown.

use std::sync::Arc;
use std::time::Duration;

use skiff_node::fake::FakeCri;
use skiff_node::{run_with_runtime, KubeSource, KubeletConfig};

#[tokio::test]
async fn waits_for_an_unreachable_api_server_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let kc = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let mut cfg = KubeletConfig::new(
        "sk-node",
        KubeSource::Config(Box::new(kc)),
        [127, 0, 0, 1].into(),
    );
    cfg.root_dir = dir.path().join("kubelet");
    cfg.pod_log_dir = dir.path().join("pods");
    cfg.port = 0;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_with_runtime(
        cfg,
        Arc::new(FakeCri::new()),
        async move {
            let _ = rx.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!task.is_finished(), "run must keep retrying, not fail");
    tx.send(()).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run must stop on shutdown")
        .unwrap();
    assert!(res.is_ok(), "{res:?}");
}

#[tokio::test]
async fn rejects_a_missing_kubeconfig_with_a_clear_error() {
    let mut cfg = KubeletConfig::new(
        "sk-node",
        KubeSource::Kubeconfig("/nonexistent/sk-kubeconfig.yaml".into()),
        [127, 0, 0, 1].into(),
    );
    cfg.port = 0;
    let err = run_with_runtime(cfg, Arc::new(FakeCri::new()), std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/sk-kubeconfig.yaml"), "{msg}");
}
