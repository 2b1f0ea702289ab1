//! CRI streaming (run as root): Exec, Attach and PortForward URLs served over WebSocket
//! (v5/v4/base64 channel protocols, port-forward channels) and SPDY/3.1, driven by the
//! hand-written clients of `skiff_tests::cri_env::stream`. Bridge `skbr7`, 10.244.7.0/24.
//! The tty exec needs a runtime with `exec --tty --detach --console-socket --pid-file`
//! (skiff-runtime and runc have it).

use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::cri_env::stream::{Refused, SpdyClient, SpdyFrame, WsClient};
use skiff_tests::cri_env::{pull_image, push_busybox, wait_exited, RuntimeClient};
use skiff_tests::cri_env::{run_sandbox, start_container};
use skiff_tests::{CriEnv, Registry};

async fn exec_url(
    rt: &mut RuntimeClient,
    id: &str,
    cmd: &[&str],
    stdin: bool,
    tty: bool,
) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

fn status(v: &[u8]) -> serde_json::Value {
    serde_json::from_slice(v)
        .unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(v)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_streaming_exec_attach_portforward() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "skiff_cri=info".into()))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image_name = push_busybox(registry.addr(), "skbusybox:stream").await;
    let env = CriEnv::start("skbr7", "10.244.7.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image_name).await;
    let sb_config = env.sandbox_config("skstream");
    let sandbox_id = run_sandbox(&mut rt, &sb_config, "").await;
    // One container serving HTTP on 8080 and printing a tick every 200 ms.
    let script = "mkdir -p /www && echo skiff-pf-ok > /www/index.html && httpd -p 8080 -h /www && \
                  i=0; while true; do echo tick$i; echo tock$i >&2; i=$((i+1)); sleep 0.2; done";
    let ct = start_container(
        &mut rt,
        &sandbox_id,
        &sb_config,
        CriEnv::shell_container("skstreamct", &image_name, script),
    )
    .await;

    // Validation happens at the gRPC call.
    let err = rt
        .exec(cri::ExecRequest {
            container_id: ct.clone(),
            cmd: vec!["sh".into()],
            tty: true,
            stderr: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err = rt
        .exec(cri::ExecRequest {
            container_id: "sknope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");

    // WebSocket v4: stdout, stderr and a non-zero exit code in the status.
    let url = exec_url(
        &mut rt,
        &ct,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
        false,
    )
    .await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ws.protocol, "v4.channel.k8s.io");
    let got = ws.collect().await.unwrap();
    assert_eq!(got.get(&1).map(Vec::as_slice), Some(&b"out\n"[..]));
    assert_eq!(got.get(&2).map(Vec::as_slice), Some(&b"err\n"[..]));
    let s = status(&got[&3]);
    assert_eq!(s["status"], "Failure", "{s}");
    assert_eq!(s["reason"], "NonZeroExitCode");
    assert_eq!(s["details"]["causes"][0]["message"], "3");
    // A URL is single use.
    match WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
    {
        Err(Refused(code)) => assert_eq!(code, 404),
        Ok(_) => panic!("a streaming URL worked twice"),
    }

    // WebSocket v5 with stdin, closed with the v5 CLOSE message (channel 255).
    let url = exec_url(&mut rt, &ct, &["cat"], true, false).await;
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ws.protocol, "v5.channel.k8s.io");
    ws.send(0, b"hello through stdin\n").await.unwrap();
    ws.send(255, &[0]).await.unwrap();
    let got = ws.collect().await.unwrap();
    assert_eq!(
        got.get(&1).map(Vec::as_slice),
        Some(&b"hello through stdin\n"[..])
    );
    assert_eq!(status(&got[&3])["status"], "Success");

    // base64 variant.
    let url = exec_url(&mut rt, &ct, &["echo", "b64"], false, false).await;
    let mut ws = WsClient::connect(&url, &["v4.base64.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ws.protocol, "v4.base64.channel.k8s.io");
    let got = ws.collect().await.unwrap();
    assert_eq!(got.get(&1).map(Vec::as_slice), Some(&b"b64\n"[..]));

    // A terminal: resize reaches the pty; the exit code comes back through skiff-monitor exec.
    let url = exec_url(
        &mut rt,
        &ct,
        &["sh", "-c", "sleep 0.5; stty size; exit 5"],
        true,
        true,
    )
    .await;
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    ws.send(4, br#"{"Width":123,"Height":45}"#).await.unwrap();
    let got = ws.collect().await.unwrap();
    let out =
        String::from_utf8_lossy(got.get(&1).map(Vec::as_slice).unwrap_or_default()).to_string();
    assert!(out.contains("45 123"), "tty output {out:?}");
    assert!(!got.contains_key(&2), "a tty has no stderr");
    assert_eq!(status(&got[&3])["details"]["causes"][0]["message"], "5");

    // Attach: the container's ongoing output, split into stdout and stderr.
    let url = rt
        .attach(cri::AttachRequest {
            container_id: ct.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    let (mut saw_out, mut saw_err) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(saw_out && saw_err) && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
            Ok(Ok(Some((1, d)))) => saw_out |= String::from_utf8_lossy(&d).contains("tick"),
            Ok(Ok(Some((2, d)))) => saw_err |= String::from_utf8_lossy(&d).contains("tock"),
            Ok(Ok(Some(_))) => {}
            other => panic!("attach ended early: {other:?}"),
        }
    }
    assert!(
        saw_out && saw_err,
        "attach saw stdout {saw_out}, stderr {saw_err}"
    );
    drop(ws);

    // Port-forward over WebSocket: an HTTP GET to busybox httpd inside the pod's netns.
    let pf_url = |rt: &mut RuntimeClient| {
        let mut rt = rt.clone();
        let sandbox_id = sandbox_id.clone();
        async move {
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: sandbox_id,
                port: vec![8080],
            })
            .await
            .unwrap()
            .into_inner()
            .url
        }
    };
    let mut body = String::new();
    for _ in 0..50 {
        let url = pf_url(&mut rt).await;
        let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
            .await
            .unwrap()
            .unwrap();
        // First message on each channel: the port, little endian.
        assert_eq!(
            ws.recv().await.unwrap(),
            Some((0, 8080u16.to_le_bytes().to_vec()))
        );
        assert_eq!(
            ws.recv().await.unwrap(),
            Some((1, 8080u16.to_le_bytes().to_vec()))
        );
        ws.send(0, b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let got = ws.collect().await.unwrap();
        body =
            String::from_utf8_lossy(got.get(&0).map(Vec::as_slice).unwrap_or_default()).to_string();
        if body.contains("skiff-pf-ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // httpd still starting
    }
    assert!(
        body.contains("200 OK") && body.contains("skiff-pf-ok"),
        "{body:?}"
    );

    // SPDY/3.1 exec: streams error, stdout, stderr; exit code 7 in the status.
    let url = exec_url(
        &mut rt,
        &ct,
        &["sh", "-c", "echo spdy-out; echo spdy-err >&2; exit 7"],
        false,
        false,
    )
    .await;
    let mut sp = SpdyClient::connect(&url, &["v4.channel.k8s.io", "v3.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sp.protocol, "v4.channel.k8s.io");
    let err_id = sp.open(&[("streamtype", "error")]).await.unwrap();
    let out_id = sp.open(&[("streamtype", "stdout")]).await.unwrap();
    let errs_id = sp.open(&[("streamtype", "stderr")]).await.unwrap();
    sp.ping(1).await.unwrap();
    let (mut out, mut errs, mut st, mut replies, mut fins) =
        (Vec::new(), Vec::new(), Vec::new(), 0, 0);
    while fins < 3 {
        match tokio::time::timeout(Duration::from_secs(20), sp.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Some(SpdyFrame::Reply(_)) => replies += 1,
            Some(SpdyFrame::Data { stream, fin, data }) => {
                if stream == out_id {
                    out.extend(data);
                } else if stream == errs_id {
                    errs.extend(data);
                } else if stream == err_id {
                    st.extend(data);
                }
                fins += usize::from(fin);
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(replies, 3);
    assert_eq!(out, b"spdy-out\n");
    assert_eq!(errs, b"spdy-err\n");
    assert_eq!(status(&st)["details"]["causes"][0]["message"], "7");

    // SPDY port-forward: an error + data stream pair per connection.
    let url = pf_url(&mut rt).await;
    let mut sp = SpdyClient::connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    sp.open(&[
        ("streamtype", "error"),
        ("port", "8080"),
        ("requestid", "0"),
    ])
    .await
    .unwrap();
    let data_id = sp
        .open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])
        .await
        .unwrap();
    sp.data(data_id, b"GET /index.html HTTP/1.0\r\n\r\n", true)
        .await
        .unwrap();
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), sp.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Some(SpdyFrame::Data { stream, fin, data }) if stream == data_id => {
                body.extend(data);
                if fin {
                    break;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("skiff-pf-ok"), "{body:?}");

    // Port-forward to a closed port reports on the error channel.
    let url = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox_id.clone(),
            port: vec![9],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut ws = WsClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    let got = ws.collect().await.unwrap();
    let e = String::from_utf8_lossy(&got[&1][2..]).to_string();
    assert!(e.contains("error forwarding port 9"), "{e:?}");

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    // Exec on a stopped container is refused up front.
    let err = rt
        .exec(cri::ExecRequest {
            container_id: ct.clone(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await
    .unwrap();
}

/// Reads the session until `want` shows up on stdout (or panics after 10 s), returning stdout.
async fn read_until(ws: &mut WsClient, want: &str) -> String {
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !out.contains(want) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, ws.recv()).await {
            Ok(Ok(Some((1, d)))) => out.push_str(&String::from_utf8_lossy(&d)),
            Ok(Ok(Some(_))) => {}
            other => panic!("waiting for {want:?}, got {other:?}; stdout so far {out:?}"),
        }
    }
    out
}

/// Attach with input: a `stdinOnce` container reads lines from the session and sees EOF when
/// the session closes its stdin; a tty container gets a shell on a pty, resized by the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_attach_stdin_and_tty() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image_name = push_busybox(registry.addr(), "skbusybox:attach").await;
    let env = CriEnv::start("skbr15", "10.244.15.0/24", registry.addr())
        .await
        .unwrap();
    let (mut rt, mut img) = env.clients().await.unwrap();
    pull_image(&mut img, &image_name).await;
    let sb_config = env.sandbox_config("skattach");
    let sandbox_id = run_sandbox(&mut rt, &sb_config, "").await;
    let start = |mut cfg: cri::ContainerConfig| {
        let mut rt = rt.clone();
        let sandbox_id = sandbox_id.clone();
        let sb_config = sb_config.clone();
        async move {
            cfg.log_path = format!("{}/0.log", cfg.metadata.as_ref().unwrap().name);
            start_container(&mut rt, &sandbox_id, &sb_config, cfg).await
        }
    };
    let attach_url = |id: String, tty: bool| {
        let mut rt = rt.clone();
        async move {
            rt.attach(cri::AttachRequest {
                container_id: id,
                stdin: true,
                tty,
                stdout: true,
                stderr: !tty,
            })
            .await
            .unwrap()
            .into_inner()
            .url
        }
    };

    // stdin + stdinOnce, no tty: lines in, EOF when the session closes its stdin.
    let mut cfg = CriEnv::shell_container(
        "reader",
        &image_name,
        "while read l; do echo \"got:$l\"; done; echo stdin-closed",
    );
    cfg.stdin = true;
    cfg.stdin_once = true;
    let reader = start(cfg).await;
    let url = attach_url(reader.clone(), false).await;
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    ws.send(0, b"hello\nskiff\n").await.unwrap();
    read_until(&mut ws, "got:skiff").await;
    ws.send(255, &[0]).await.unwrap(); // v5: close stdin
    read_until(&mut ws, "stdin-closed").await;
    drop(ws);
    let st = wait_exited(&mut rt.clone(), &reader).await;
    assert_eq!(st.exit_code, 0, "{st:?}");

    // tty + stdin: an interactive shell on a pty, resized through the session.
    let mut cfg = CriEnv::shell_container("shell", &image_name, "exec sh");
    cfg.stdin = true;
    cfg.tty = true;
    let shell = start(cfg).await;
    let url = attach_url(shell.clone(), true).await;
    let mut ws = WsClient::connect(&url, &["v5.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    ws.send(4, br#"{"Width":101,"Height":31}"#).await.unwrap();
    // Resize is applied by the monitor before later input is read by the shell.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(0, b"stty size; tty; echo tty-$((40+2))\n")
        .await
        .unwrap();
    let out = read_until(&mut ws, "tty-42").await;
    assert!(out.contains("31 101"), "stty size after resize: {out:?}");
    assert!(out.contains("/dev/pts/"), "a pty: {out:?}");
    ws.send(0, b"exit 3\n").await.unwrap();
    drop(ws);
    let st = wait_exited(&mut rt.clone(), &shell).await;
    assert_eq!(st.exit_code, 3, "{st:?}");

    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await
    .unwrap();
}
