//! A CRI server started without a pod network (as a fresh standalone `skiff cri`): Status says
//! NetworkReady=false, reason NetworkPluginNotReady, naming the folder to fill; RunPodSandbox
//! fails naming it too; the default bridge network (`skiff cni-config`) then makes pods work.
//! Bridge `skbr23`, 10.244.23.0/24. Run as root.

use skiff_proto::cri;
use skiff_tests::cri_env::run_sandbox;
use skiff_tests::{CriEnv, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_not_ready_until_the_default_conflist_is_installed() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let env = CriEnv::start("skbr23", "10.244.23.0/24", registry.addr())
        .await
        .unwrap();
    let conf_dir = env.cfg.cni_conf_dir.clone();
    for e in std::fs::read_dir(&conf_dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let (mut rt, _) = env.clients().await.unwrap();

    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let net = status
        .conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition");
    assert!(!net.status, "{net:?}");
    assert_eq!(net.reason, "NetworkPluginNotReady");
    let dir = conf_dir.display().to_string();
    assert!(
        net.message.contains(&dir) && net.message.contains("skiff cni-config"),
        "{net:?}"
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady");
    assert!(ready.is_some_and(|c| c.status), "{:?}", status.conditions);

    let cfg = env.sandbox_config("sknonet");
    let err = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("RunPodSandbox without a network");
    assert!(err.message().contains(&dir), "{err:?}");

    // The default network, with its IPAM store in the test's temp dir.
    let mut conflist = skiff_cri::default_bridge_conflist("skbr23", "10.244.23.0/24");
    conflist["plugins"][0]["ipam"]["dataDir"] = env.ipam_dir.display().to_string().into();
    std::fs::write(
        conf_dir.join(skiff_cri::DEFAULT_CONFLIST_NAME),
        conflist.to_string(),
    )
    .unwrap();
    let sb = run_sandbox(&mut rt, &cfg, "").await;
    let ip = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sb.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(ip.starts_with("10.244.23."), "pod IP {ip:?}");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sb.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
        .await
        .unwrap();
}
