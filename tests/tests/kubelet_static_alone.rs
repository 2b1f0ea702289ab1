//! `skiff kubelet --pod-manifest-path` runs its static pods while its API server does not answer
//! (how a kubelet starts a control plane from manifests, as upstream's): beside a CRI server of
//! the harness (bridge `skbr26`, 10.244.26.0/24), with a kubeconfig naming a closed port, the
//! manifest's container runs and logs; removing the manifest stops the pod. Needs root,
//! docker-registry and busybox-static; builds on `cargo build --bin skiff`.

use skiff_proto::cri;
use skiff_tests::{CriEnv, Registry};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::standalone::Proc;

async fn wait_until<F, Fut>(what: &str, timeout: Duration, log: &dyn Fn() -> String, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; kubelet log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pod_runs_without_the_api_server() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    let skiff = skiff_tests::workspace_bin("skiff");
    assert!(
        skiff.exists(),
        "{} missing: cargo build --bin skiff",
        skiff.display()
    );
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = skiff_tests::cri_env::push_busybox(registry.addr(), "sk-busybox:latest").await;
    let mut env = CriEnv::start("skbr26", "10.244.26.0/24", registry.addr())
        .await
        .expect("CRI server");
    let dir = tempfile::Builder::new()
        .prefix("sk-static-alone")
        .tempdir()
        .expect("dir");
    let d = dir.path();
    let manifests = d.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests");
    // Nothing listens on this port: the API server "is not up yet".
    let dead = skiff_tests::free_port();
    let kubeconfig = d.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{dead}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: sk-none\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"),
    )
    .expect("kubeconfig");
    let config = d.join("kubelet.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nstaticPodPath: {}\npodLogsDir: {}\n",
            manifests.display(),
            d.join("pods").display()
        ),
    )
    .expect("config");
    let node = "sk-alone-node";
    let log_file = d.join("kubelet.log");
    let kubelet = Command::new(&skiff)
        .arg("kubelet")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--config")
        .arg(&config)
        .arg("--container-runtime-endpoint")
        .arg(format!("unix://{}", env.cfg.socket.display()))
        .args(["--hostname-override", node, "--node-ip", "127.0.0.1"])
        .args([
            "--port",
            &skiff_tests::free_port().to_string(),
            "--healthz-port",
            "0",
        ])
        .args(["--cgroup-root", env.cgroup_parent.as_str()])
        .arg("--root-dir")
        .arg(d.join("kubelet"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_file).expect("log")))
        .spawn()
        .expect("start skiff kubelet");
    let kubelet = Proc(kubelet);
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();

    std::fs::write(
        manifests.join("sk-alone.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: sk-alone\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo sk-static-alone; while true; do sleep 1; done\"]\n"),
    )
    .expect("manifest");

    // The container's log, under the static pod's name `sk-alone-<node>`.
    let pods_dir = d.join("pods");
    wait_until(
        "the static pod's log",
        Duration::from_secs(90),
        &log,
        || {
            let pods_dir = pods_dir.clone();
            async move {
                std::fs::read_dir(&pods_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("default_sk-alone-{node}_"))
                    })
                    .any(|e| {
                        std::fs::read_to_string(e.path().join("main/0.log"))
                            .unwrap_or_default()
                            .contains("sk-static-alone")
                    })
            }
        },
    )
    .await;
    assert!(
        log().contains("cannot register the node"),
        "the API server was not reachable:\n{}",
        log()
    );

    // Removing the manifest stops the pod.
    let (rt, _) = env.clients().await.expect("CRI clients");
    let ready_sandboxes = move || {
        let mut rt = rt.clone();
        async move {
            let mut sel = HashMap::new();
            sel.insert(
                "io.kubernetes.pod.name".to_string(),
                format!("sk-alone-{node}"),
            );
            rt.list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: sel,
                    ..Default::default()
                }),
            })
            .await
            .map(|r| {
                r.into_inner()
                    .items
                    .iter()
                    .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
                    .count()
            })
            .unwrap_or(usize::MAX)
        }
    };
    assert_eq!(ready_sandboxes().await, 1, "the static pod's sandbox");
    std::fs::remove_file(manifests.join("sk-alone.yaml")).expect("remove manifest");
    wait_until(
        "the static pod to stop",
        Duration::from_secs(60),
        &log,
        || {
            let f = ready_sandboxes.clone();
            async move { f().await == 0 }
        },
    )
    .await;

    drop(kubelet);
    env.stop().await.expect("stop the CRI server");
}
