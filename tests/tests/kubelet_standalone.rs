//! `skiff kubelet` alone (upstream's flag names and a KubeletConfiguration file) beside
//! `skiff cri` and a control plane: it tells systemd it is ready (`NOTIFY_SOCKET`), registers the
//! node with the given labels, taints and max pods, reports Ready, and answers `nodes/proxy`
//! through the API server with the API server's kubelet-client certificate. Needs root and
//! kubectl 1.32; builds on `cargo build --workspace --bins`.

use skiff_tests::control_plane::ControlPlane;
use std::process::{Command, Stdio};
use std::time::Duration;

use skiff_tests::standalone::Proc;

#[test]
fn standalone_kubelet_registers_and_serves_node_proxy() {
    let cp = ControlPlane::start();
    let dir = cp.dir().join("sk-standalone");
    std::fs::create_dir_all(&dir).expect("dir");
    let skiff = skiff_tests::workspace_bin("skiff");
    assert!(
        skiff.exists(),
        "{} missing: cargo build --workspace --bins",
        skiff.display()
    );
    let sock = dir.join("cri.sock");
    let cri_config = dir.join("cri.toml");
    std::fs::write(&cri_config, "").expect("cri config");
    let cri = Command::new(&skiff)
        .arg("cri")
        .arg("--address")
        .arg(&sock)
        .arg("--root")
        .arg(dir.join("cri"))
        .arg("--runtime-root")
        .arg(dir.join("runtime"))
        .arg("--netns-dir")
        .arg(dir.join("netns"))
        .arg("--cni-conf-dir")
        .arg(dir.join("cni"))
        .arg("--config")
        .arg(&cri_config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("cri.log")).expect("log"),
        ))
        .spawn()
        .expect("start skiff cri");
    let cri = Proc(cri);

    let tls = cp.dir().join("data/tls");
    // The server's own kubelet credential is `system:node:<its node>`: the node authorizer and
    // NodeRestriction (as upstream) let it write only that Node, so this kubelet, registering
    // a node of another name, uses the admin kubeconfig.
    let kubeconfig = cp.kubeconfig.clone();
    let config = dir.join("kubelet.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDomain: cluster.local\nmaxPods: 9\n",
    )
    .expect("config");
    let notify = dir.join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).expect("notify socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let node = format!("sk-standalone-{}", std::process::id());
    let port = skiff_tests::free_port();
    let healthz_port = skiff_tests::free_port();
    let kubelet = Command::new(&skiff)
        .arg("kubelet")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--config")
        .arg(&config)
        .arg("--container-runtime-endpoint")
        .arg(format!("unix://{}", sock.display()))
        .args(["--hostname-override", &node, "--node-ip", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--max-pods", "7"])
        .args(["--healthz-port", &healthz_port.to_string()])
        .args(["--node-labels", "skiff.test/role=edge,skiff.test/n=1"])
        .args(["--register-with-taints", "skiff.test/only=yes:NoSchedule"])
        .args(["--cgroup-root", "/sk-standalone"])
        .arg("--root-dir")
        .arg(dir.join("kubelet"))
        .arg("--tls-cert-file")
        .arg(tls.join("serving-kubelet.crt"))
        .arg("--tls-private-key-file")
        .arg(tls.join("serving-kubelet.key"))
        .arg("--client-ca-file")
        .arg(tls.join("ca.crt"))
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("kubelet.log")).expect("log"),
        ))
        .spawn()
        .expect("start skiff kubelet");
    let kubelet = Proc(kubelet);

    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap_or(0);
    let log = || std::fs::read_to_string(dir.join("kubelet.log")).unwrap_or_default();
    assert_eq!(&buf[..n], b"READY=1", "sd_notify; kubelet log:\n{}", log());

    cp.wait_for(
        "the standalone node to be Ready",
        Duration::from_secs(60),
        || {
            cp.kubectl(&[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
                == "True"
        },
    );
    let get = |path: &str| cp.ok(&["get", "node", &node, "-o", &format!("jsonpath={path}")]);
    assert_eq!(
        get("{.status.capacity.pods}"),
        "7",
        "the flag wins over the file"
    );
    assert_eq!(get("{.metadata.labels.skiff\\.test/role}"), "edge");
    assert_eq!(
        get("{.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}"),
        "skiff.test/only=yes:NoSchedule"
    );
    assert_eq!(
        cp.ok(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/healthz")
        ]),
        "ok\n"
    );
    let pods = cp.ok(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/pods")]);
    assert!(pods.contains("\"kind\":\"PodList\""), "{pods}");

    // With a config file the server is secured (v1beta1's defaults): no certificate, no
    // token: 401; the admin's certificate from the cluster CA: allowed.
    let curl = |extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "30",
            ])
            .args(extra)
            .arg(format!("https://127.0.0.1:{port}/pods"))
            .output()
            .expect("curl is needed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        curl(&[]),
        "401",
        "anonymous request to the standalone kubelet"
    );
    let (cert, key, _) = cp.admin_pems();
    assert_eq!(
        curl(&[
            "--cert",
            cert.to_str().expect("path"),
            "--key",
            key.to_str().expect("path")
        ]),
        "200"
    );
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30"])
        .arg(format!("http://127.0.0.1:{healthz_port}/healthz"))
        .output()
        .expect("curl is needed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n",
        "the plain-HTTP healthz port"
    );
    let configz = cp.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/configz"),
    ]);
    assert!(configz.contains("\"mode\":\"Webhook\""), "{configz}");

    drop(kubelet);
    drop(cri);
    cp.ok(&["delete", "node", &node]);
    let _ = std::fs::remove_dir_all(&dir);
}
