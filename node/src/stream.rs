//! `/exec`, `/attach` and `/portForward` on :10250: the kubelet asks the CRI runtime for a
//! streaming URL (Exec, Attach, PortForward) and proxies the client's upgrade request there, then
//! copies bytes both ways, as upstream's kubelet does by default. The protocols (WebSocket
//! `v5.channel.k8s.io`..., SPDY/3.1) are the runtime streaming server's business: the kubelet only
//! forwards the handshake headers and the upgraded bytes.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use skiff_proto::cri;
use tracing::{debug, warn, Instrument};

use crate::cri::{labels, CriRuntime};
use crate::server::{text, Body, ServerState};

/// Which streaming endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

/// The options of an exec or attach request (upstream's query names, plus kubectl's own).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub ports: Vec<i32>,
}

/// Parses the query of `/exec`, `/attach` or `/portForward`.
pub fn parse_stream_query(query: Option<&str>) -> Result<StreamOptions, String> {
    let mut o = StreamOptions::default();
    let truthy = |v: &str| v.is_empty() || v == "1" || v.eq_ignore_ascii_case("true");
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "command" => o.command.push(v.into_owned()),
            "input" | "stdin" => o.stdin = truthy(&v),
            "output" | "stdout" => o.stdout = truthy(&v),
            "error" | "stderr" => o.stderr = truthy(&v),
            "tty" => o.tty = truthy(&v),
            "port" => {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    let n: i32 = p
                        .parse()
                        .ok()
                        .filter(|n| (1..=65535).contains(n))
                        .ok_or_else(|| format!("invalid port {p:?}"))?;
                    o.ports.push(n);
                }
            }
            _ => {}
        }
    }
    Ok(o)
}

/// The pod named by `ns`/`name` (and `uid`, when the path carries one).
fn find_pod<R: CriRuntime>(
    st: &ServerState<R>,
    ns: &str,
    name: &str,
    uid: Option<&str>,
) -> Option<Pod> {
    let pod = st.lookup(ns, name)?;
    if let Some(uid) = uid {
        // A static pod is also reached by its mirror pod's uid.
        let api_uid = st
            .pods
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
            .and_then(|p| p.metadata.uid.clone());
        if pod.metadata.uid.as_deref() != Some(uid) && api_uid.as_deref() != Some(uid) {
            return None;
        }
    }
    Some((*pod).clone())
}

/// The id of the running instance of `container` in the pod with `uid`.
async fn running_container<R: CriRuntime>(
    st: &ServerState<R>,
    uid: &str,
    container: &str,
) -> Result<Option<String>, String> {
    let mut sel = HashMap::new();
    sel.insert(labels::POD_UID.to_string(), uid.to_string());
    sel.insert(labels::CONTAINER_NAME.to_string(), container.to_string());
    let list = st
        .cri
        .list_containers("", sel)
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .max_by_key(|c| c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0))
        .map(|c| c.id))
}

/// The ready sandbox of the pod with `uid`.
async fn ready_sandbox<R: CriRuntime>(
    st: &ServerState<R>,
    uid: &str,
) -> Result<Option<String>, String> {
    let mut sel = HashMap::new();
    sel.insert(labels::POD_UID.to_string(), uid.to_string());
    let list = st
        .cri
        .list_pod_sandbox(sel)
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .into_iter()
        .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
        .map(|s| s.id))
}

/// Serves `/exec`, `/attach` (`container` set) or `/portForward` (`container` unset).
pub async fn handle<R: CriRuntime>(
    st: &ServerState<R>,
    kind: Kind,
    req: Request<Incoming>,
    ns: &str,
    pod_name: &str,
    uid: Option<&str>,
    container: Option<&str>,
) -> Response<Body> {
    let span = tracing::info_span!("stream", ?kind, pod = %format!("{ns}/{pod_name}"), container = container.unwrap_or(""));
    async move {
        let opts = match parse_stream_query(req.uri().query()) {
            Ok(o) => o,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let Some(pod) = find_pod(st, ns, pod_name, uid) else {
            return text(StatusCode::NOT_FOUND, "pod does not exist");
        };
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let url = match kind {
            Kind::Exec | Kind::Attach => {
                let container = container.unwrap_or_default();
                let id = match running_container(st, &pod_uid, container).await {
                    Ok(Some(id)) => id,
                    Ok(None) => {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("container not found ({container:?})"),
                        )
                    }
                    Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
                };
                let r = if kind == Kind::Exec {
                    if opts.command.is_empty() {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "you must specify at least 1 command",
                        );
                    }
                    st.cri
                        .exec(cri::ExecRequest {
                            container_id: id,
                            cmd: opts.command.clone(),
                            tty: opts.tty,
                            stdin: opts.stdin,
                            stdout: opts.stdout,
                            stderr: opts.stderr && !opts.tty,
                        })
                        .await
                } else {
                    st.cri
                        .attach(cri::AttachRequest {
                            container_id: id,
                            stdin: opts.stdin,
                            tty: opts.tty,
                            stdout: opts.stdout,
                            stderr: opts.stderr && !opts.tty,
                        })
                        .await
                };
                match r {
                    Ok(u) => u,
                    Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
                }
            }
            Kind::PortForward => {
                let id = match ready_sandbox(st, &pod_uid).await {
                    Ok(Some(id)) => id,
                    Ok(None) => {
                        return text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("pod {pod_name} has no running sandbox"),
                        )
                    }
                    Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
                };
                match st
                    .cri
                    .port_forward(cri::PortForwardRequest {
                        pod_sandbox_id: id,
                        port: opts.ports.clone(),
                    })
                    .await
                {
                    Ok(u) => u,
                    Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.message()),
                }
            }
        };
        debug!(%url, "proxying to the runtime's streaming server");
        proxy_upgrade(req, &url).await
    }
    .instrument(span)
    .await
}

/// Headers that belong to one hop and are not forwarded (the upgrade ones are set again).
const HOP: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "te",
];

/// Sends `req` (its method, headers and query) to the streaming `url` and, on `101 Switching
/// Protocols`, copies the two upgraded connections into each other.
pub async fn proxy_upgrade(mut req: Request<Incoming>, url: &str) -> Response<Body> {
    let parsed = match url::Url::parse(url) {
        Ok(u) => u,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("bad streaming URL {url:?}: {e}"),
            )
        }
    };
    if parsed.scheme() != "http" {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("streaming URL {url:?}: only http:// is supported"),
        );
    }
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let tcp = match tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await {
        Ok(t) => t,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("cannot reach the streaming server at {url}: {e}"),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("streaming server: {e}")),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "streaming server connection ended");
        }
    });
    // The runtime's URL carries its own path and query; the client's query (ports of a
    // port-forward) is added when the URL has none.
    let mut path_q = parsed.path().to_string();
    match (parsed.query(), req.uri().query()) {
        (Some(q), _) => {
            path_q.push('?');
            path_q.push_str(q);
        }
        (None, Some(q)) => {
            path_q.push('?');
            path_q.push_str(q);
        }
        _ => {}
    }
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(path_q)
        .header("host", format!("{host}:{port}"));
    for (k, v) in req.headers() {
        if HOP.contains(&k.as_str()) {
            continue;
        }
        b = b.header(k, v);
    }
    let out = match b.body(Full::new(Bytes::new())) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("request: {e}")),
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = match sender.send_request(out).await {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("streaming server: {e}")),
    };
    let status = resp.status();
    let mut back = Response::builder().status(status);
    for (k, v) in resp.headers() {
        if HOP.contains(&k.as_str()) {
            continue;
        }
        back = back.header(k, v);
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return back
            .body(Full::new(body).map_err(|e| match e {}).boxed())
            .unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "response"));
    }
    let server_upgrade = hyper::upgrade::on(&mut resp);
    tokio::spawn(
        async move {
            let (c, s) = match tokio::join!(client_upgrade, server_upgrade) {
                (Ok(c), Ok(s)) => (c, s),
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "stream upgrade failed");
                    return;
                }
            };
            let mut c = TokioIo::new(c);
            let mut s = TokioIo::new(s);
            match tokio::io::copy_bidirectional(&mut c, &mut s).await {
                Ok((up, down)) => debug!(up, down, "stream closed"),
                Err(e) => debug!(error = %e, "stream ended"),
            }
        }
        .in_current_span(),
    );
    back.body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
        .unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_and_kubectl_names() {
        let o = parse_stream_query(Some(
            "command=sh&command=-c&command=echo%20hi&input=1&output=1&error=1&tty=0",
        ))
        .unwrap();
        assert_eq!(o.command, vec!["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let o = parse_stream_query(Some("stdin=true&stdout=true&tty=true")).unwrap();
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        let o = parse_stream_query(Some("port=80&port=8080,9090")).unwrap();
        assert_eq!(o.ports, vec![80, 8080, 9090]);
        assert!(parse_stream_query(Some("port=0")).is_err());
        assert!(parse_stream_query(Some("port=x")).is_err());
    }
}
