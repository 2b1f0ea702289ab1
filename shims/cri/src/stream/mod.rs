//! The streaming server behind Exec, Attach and PortForward (like containerd's and CRI-O's):
//! the gRPC verb validates the request and returns `http://<addr>/<verb>/<token>`; the kubelet
//! (or any client) then opens that URL with a WebSocket (`v5`/`v4.channel.k8s.io`, their
//! `base64` variants and the legacy `channel.k8s.io`) or an SPDY/3.1 upgrade
//! (`X-Stream-Protocol-Version: v4.channel.k8s.io` / `portforward.k8s.io`). Tokens are random,
//! single use, and expire after a minute.
//!
//! `exec.rs`, `attach.rs`, `portforward.rs` hold the verbs over a protocol-neutral [`Io`];
//! `ws.rs` and `spdy.rs` the wire protocols.

mod attach;
mod exec;
mod portforward;
mod spdy;
mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_proto::cri;
use tokio::sync::mpsc;

use crate::error::{CriError, Result};
use crate::server::State;

/// How long a streaming URL stays valid (containerd and the kubelet use one minute).
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// A validated request waiting for its client to connect.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

impl Pending {
    fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The running streaming server.
pub(crate) struct StreamServer {
    base: String,
    cache: Mutex<HashMap<String, (Instant, Pending)>>,
    state: Arc<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StreamServer {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves until [`StreamServer::shutdown`].
    pub(crate) async fn start(state: Arc<State>, addr: &str) -> Result<Arc<StreamServer>> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CriError::Serve(format!("binding streaming server on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| CriError::Serve(format!("streaming server address: {e}")))?;
        let srv = Arc::new(StreamServer {
            base: format!("http://{local}"),
            cache: Mutex::new(HashMap::new()),
            state,
            task: Mutex::new(None),
        });
        tracing::info!(addr = %local, "CRI streaming server listening");
        let s = srv.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let r = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .with_upgrades()
                        .await;
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "streaming connection");
                    }
                });
            }
        });
        *srv.task.lock().expect("poisoned") = Some(task);
        Ok(srv)
    }

    pub(crate) fn shutdown(&self) {
        if let Some(t) = self.task.lock().expect("poisoned").take() {
            t.abort();
        }
    }

    /// Stores `p` under a fresh token and returns its URL.
    pub(crate) fn url(&self, p: Pending) -> String {
        let token = crate::util::new_id()[..32].to_string();
        let kind = p.kind();
        let mut cache = self.cache.lock().expect("poisoned");
        let now = Instant::now();
        cache.retain(|_, (t, _)| now.duration_since(*t) < TOKEN_TTL);
        cache.insert(token.clone(), (now, p));
        format!("{}/{kind}/{token}", self.base)
    }

    fn take(&self, kind: &str, token: &str) -> Option<Pending> {
        let mut cache = self.cache.lock().expect("poisoned");
        match cache.get(token) {
            Some((t, p)) if p.kind() == kind && t.elapsed() < TOKEN_TTL => {
                cache.remove(token).map(|(_, p)| p)
            }
            _ => None,
        }
    }

    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let mut parts = path.trim_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let Some(pending) = self.take(kind, token) else {
            return text(
                StatusCode::NOT_FOUND,
                "unknown or expired streaming URL: ask the CRI server for a new one",
            );
        };
        let header = |name: &str| -> Vec<String> {
            req.headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        };
        let upgrade = header("upgrade")
            .first()
            .map(|u| u.to_ascii_lowercase())
            .unwrap_or_default();
        let query_ports = query_values(req.uri().query().unwrap_or(""), "port");
        let st = self.state.clone();
        if upgrade == "websocket" {
            let Some(key) = header("sec-websocket-key").into_iter().next() else {
                return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
            };
            let offered = header("sec-websocket-protocol");
            let supported: &[&str] = match pending {
                Pending::PortForward(_) => &PF_WS_PROTOCOLS,
                _ => &IO_WS_PROTOCOLS,
            };
            let chosen = if offered.is_empty() {
                Some(String::new())
            } else {
                offered
                    .iter()
                    .find(|o| supported.contains(&o.as_str()))
                    .cloned()
            };
            let Some(proto) = chosen else {
                return text(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "no supported protocol in {offered:?}; this server speaks {supported:?}"
                    ),
                );
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let proto2 = proto.clone();
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => {
                        let io = TokioIo::new(up);
                        serve_ws(st, pending, io, &proto2, query_ports).await
                    }
                    Err(e) => tracing::warn!(error = %e, "websocket upgrade failed"),
                }
            });
            let mut b = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("Upgrade", "websocket")
                .header("Connection", "Upgrade")
                .header("Sec-WebSocket-Accept", ws::accept_key(&key));
            if !proto.is_empty() {
                b = b.header("Sec-WebSocket-Protocol", proto);
            }
            return b.body(Full::new(Bytes::new())).expect("valid response");
        }
        if upgrade.starts_with("spdy/3.1") {
            let offered = header("x-stream-protocol-version");
            let supported: &[&str] = match pending {
                Pending::PortForward(_) => &["portforward.k8s.io"],
                _ => &spdy::IO_PROTOCOLS,
            };
            let Some(proto) = offered
                .iter()
                .find(|o| supported.contains(&o.as_str()))
                .cloned()
            else {
                return text(
                    StatusCode::FORBIDDEN,
                    &format!("no supported X-Stream-Protocol-Version in {offered:?}; this server speaks {supported:?}"),
                );
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let proto2 = proto.clone();
            tokio::spawn(async move {
                match on_upgrade.await {
                    Ok(up) => spdy::serve(st, pending, TokioIo::new(up), &proto2).await,
                    Err(e) => tracing::warn!(error = %e, "SPDY upgrade failed"),
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("Upgrade", "SPDY/3.1")
                .header("Connection", "Upgrade")
                .header("X-Stream-Protocol-Version", proto)
                .body(Full::new(Bytes::new()))
                .expect("valid response");
        }
        text(
            StatusCode::BAD_REQUEST,
            "streaming needs an Upgrade: websocket or SPDY/3.1 request",
        )
    }
}

fn text(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from(format!("{msg}\n"))))
        .expect("valid response")
}

/// All values of `name` in a query string (repeated and comma separated).
fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Exec/attach WebSocket protocols, preferred first.
const IO_WS_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward WebSocket protocols ("" = none offered).
const PF_WS_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// Channel numbers of the remotecommand protocols.
pub(crate) const CH_STDIN: u8 = 0;
pub(crate) const CH_STDOUT: u8 = 1;
pub(crate) const CH_STDERR: u8 = 2;
pub(crate) const CH_ERROR: u8 = 3;
pub(crate) const CH_RESIZE: u8 = 4;
pub(crate) const CH_CLOSE: u8 = 255;

/// Protocol-neutral streams of an exec or attach session. A closed `stdin` channel is EOF.
pub(crate) struct Io {
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub stdout: Option<mpsc::Sender<Vec<u8>>>,
    pub stderr: Option<mpsc::Sender<Vec<u8>>>,
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// How an exec or attach session ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Exited(i32),
    Failed(String),
}

impl Outcome {
    /// The `metav1.Status` JSON written on the error stream (v4 and later).
    pub(crate) fn status_json(&self, cmd: &[String]) -> String {
        match self {
            Outcome::Exited(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
            Outcome::Exited(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}
            })
            .to_string(),
            Outcome::Failed(msg) => serde_json::json!({
                "metadata": {}, "status": "Failure", "message": msg
            })
            .to_string(),
        }
    }

    /// The plain-text error of the v1-v3 protocols (nothing on success).
    pub(crate) fn legacy_text(&self) -> Option<String> {
        match self {
            Outcome::Exited(0) => None,
            Outcome::Exited(code) => Some(format!("command terminated with exit code {code}")),
            Outcome::Failed(msg) => Some(msg.clone()),
        }
    }
}

/// Stream flags of a pending exec or attach.
pub(crate) struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub cmd: Vec<String>,
}

impl Pending {
    fn opts(&self) -> Opts {
        match self {
            Pending::Exec(r) => Opts {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr && !r.tty,
                tty: r.tty,
                cmd: r.cmd.clone(),
            },
            Pending::Attach(r) => Opts {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr && !r.tty,
                tty: r.tty,
                cmd: Vec::new(),
            },
            Pending::PortForward(_) => Opts {
                stdin: false,
                stdout: false,
                stderr: false,
                tty: false,
                cmd: Vec::new(),
            },
        }
    }
}

/// Runs the verb of `pending` with `io`.
pub(crate) async fn run_io(st: &State, pending: &Pending, io: Io) -> Outcome {
    match pending {
        Pending::Exec(r) => exec::run(st, r, io).await,
        Pending::Attach(r) => attach::run(st, r, io).await,
        Pending::PortForward(_) => Outcome::Failed("not an exec or attach".into()),
    }
}

/// Parses a remotecommand resize message (`{"Width":W,"Height":H}`).
pub(crate) fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let w = v.get("Width")?.as_u64()?;
    let h = v.get("Height")?.as_u64()?;
    Some((w.min(u16::MAX as u64) as u16, h.min(u16::MAX as u64) as u16))
}

async fn serve_ws<S>(st: Arc<State>, pending: Pending, io: S, proto: &str, ports: Vec<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let base64 = proto.contains("base64");
    let (tx, rx) = ws::split(io, base64);
    if let Pending::PortForward(pf) = &pending {
        let ports: Vec<u16> = if ports.is_empty() {
            pf.port
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect()
        } else {
            ports.iter().filter_map(|p| p.parse().ok()).collect()
        };
        portforward::serve_ws(&st, &pf.pod_sandbox_id, &ports, tx, rx).await;
        return;
    }
    let opts = pending.opts();
    let v5 = proto == "v5.channel.k8s.io";
    let legacy = !proto.starts_with("v4") && !v5;
    // An empty message on the lowest writable channel tells the client we are ready.
    let first = if opts.stdout {
        CH_STDOUT
    } else if opts.stderr {
        CH_STDERR
    } else {
        CH_ERROR
    };
    tx.send(first, &[]).await;

    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<(u16, u16)>(4);
    let demux = tokio::spawn(async move {
        let mut rx = rx;
        let mut stdin_tx = Some(stdin_tx);
        while let Some((ch, data)) = rx.next().await {
            match ch {
                CH_STDIN => {
                    if let Some(s) = &stdin_tx {
                        if s.send(data).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                CH_RESIZE => {
                    if let Some(sz) = parse_resize(&data) {
                        let _ = resize_tx.send(sz).await;
                    }
                }
                CH_CLOSE if v5 && data.first() == Some(&CH_STDIN) => stdin_tx = None,
                _ => {}
            }
        }
    });
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    let (err_tx, mut err_rx) = mpsc::channel::<Vec<u8>>(16);
    let (t1, t2) = (tx.clone(), tx.clone());
    let fwd_out = tokio::spawn(async move {
        while let Some(d) = out_rx.recv().await {
            if !t1.send(CH_STDOUT, &d).await {
                break;
            }
        }
    });
    let fwd_err = tokio::spawn(async move {
        while let Some(d) = err_rx.recv().await {
            if !t2.send(CH_STDERR, &d).await {
                break;
            }
        }
    });
    let io = Io {
        stdin: opts.stdin.then_some(stdin_rx),
        stdout: opts.stdout.then_some(out_tx),
        stderr: opts.stderr.then_some(err_tx),
        resize: opts.tty.then_some(resize_rx),
    };
    let outcome = run_io(&st, &pending, io).await;
    let _ = fwd_out.await;
    let _ = fwd_err.await;
    tracing::info!(kind = pending.kind(), ?outcome, "streaming session ended");
    if legacy {
        if let Some(msg) = outcome.legacy_text() {
            tx.send(CH_ERROR, msg.as_bytes()).await;
        }
    } else {
        tx.send(CH_ERROR, outcome.status_json(&opts.cmd).as_bytes())
            .await;
    }
    tx.close().await;
    demux.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ports_and_resize_parse() {
        assert_eq!(
            query_values("port=80&port=443,8080&x=1", "port"),
            ["80", "443", "8080"]
        );
        assert_eq!(
            parse_resize(br#"{"Width":120,"Height":40}"#),
            Some((120, 40))
        );
        assert_eq!(parse_resize(b"nope"), None);
    }

    #[test]
    fn status_json_carries_the_exit_code() {
        let s = Outcome::Exited(3).status_json(&["sh".into()]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(Outcome::Exited(0).status_json(&[]).contains("Success"));
    }
}
