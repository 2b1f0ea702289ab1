//! The :10250 server over real TLS, with the fake CRI: /healthz and /containerLogs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use skiff_node::fake::FakeCri;
use skiff_node::reconcile::{PodSync, SyncContext};
use skiff_node::server::{serve_listener, ServerState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTP/1.1 GET over TLS; returns the raw response (head + body).
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

#[tokio::test]
async fn healthz_and_container_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log_root = dir.path().join("pods");
    let cri = Arc::new(FakeCri::new());
    let ctx = Arc::new(SyncContext {
        node_name: "sk-node".into(),
        node_ip: "127.0.0.1".into(),
        secondary_node_ip: None,
        pod_log_dir: log_root.clone(),
        cluster_dns: vec![],
        cluster_domain: "cluster.local".into(),
        cgroup_root: "/kubepods".into(),
        root_dir: std::env::temp_dir().join("sk-kubelet-test"),
    });
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "sk-uid-logs"},
        "spec": {"nodeName": "sk-node", "containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap();
    let mut sync = PodSync::new(cri.clone(), ctx);
    sync.sync(&pod, Instant::now()).await;
    let log_file = log_root.join("default_web_sk-uid-logs/c/0.log");
    std::fs::create_dir_all(log_file.parent().unwrap()).unwrap();
    std::fs::write(
        &log_file,
        "2024-05-01T10:00:00.000000001Z stdout F hello\n\
         2024-05-01T10:00:01.000000001Z stderr F world\n",
    )
    .unwrap();

    let (reader, mut writer) = reflector::store::<Pod>();
    writer.apply_watcher_event(&watcher::Event::Apply(pod.clone()));
    let (cert, key) = skiff_node::tls::ensure_self_signed(
        &dir.path().join("pki"),
        "sk-node",
        [127, 0, 0, 1].into(),
    )
    .unwrap();
    let tls = skiff_node::tls::server_config(&cert, &key, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(ServerState {
        cri: cri.clone(),
        pods: reader,
        pod_log_dir: log_root.clone(),
        auth: Arc::new(skiff_node::auth::Auth::always_allow()),
        monitor: None,
        static_pods: Default::default(),
    });
    let (_stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move { serve_listener(listener, tls, state, &mut stop_rx).await });

    let r = get(addr, "/healthz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&r), "ok\n");

    let r = get(addr, "/containerLogs/default/web/c").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(body(&r), "hello\nworld\n");

    let r = get(
        addr,
        "/containerLogs/default/web/c?tailLines=1&timestamps=true",
    )
    .await;
    assert_eq!(body(&r), "2024-05-01T10:00:01.000000001Z world\n");

    let r = get(addr, "/containerLogs/default/web/c?previous=true").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = get(addr, "/containerLogs/default/nope/c").await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = get(addr, "/containerLogs/default/web/zz").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // follow: lines appended later arrive; the stream ends when the container exits.
    let cid = cri.containers_named("c")[0].clone();
    let (lf, cri2) = (log_file.clone(), cri.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&lf).unwrap();
        f.write_all(b"2024-05-01T10:00:02Z stdout P par\n2024-05-01T10:00:02Z stdout F tial\n")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        cri2.exit_container(&cid, 0);
    });
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        get(addr, "/containerLogs/default/web/c?follow=true"),
    )
    .await
    .expect("follow must end when the container exits");
    assert!(r.contains("hello\nworld\n"), "{r}");
    assert!(r.contains("partial\n"), "{r}");
}
