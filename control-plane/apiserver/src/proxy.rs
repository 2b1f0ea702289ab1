//! Proxies to the kubelet: `pods/log`, the streaming subresources `pods/exec`, `pods/attach`,
//! `pods/portforward`, and `nodes/proxy`.
//!
//! Streaming requests are upgrade requests (WebSocket or SPDY/3.1): they are forwarded to the
//! kubelet's `/exec`, `/attach` or `/portForward` with the handshake headers, and after the
//! kubelet's `101 Switching Protocols` the two connections are copied into each other, as
//! upstream's upgrade-aware proxy does. kubectl 1.31+ asks for port-forward over a WebSocket
//! carrying SPDY (`SPDY/3.1+portforward.k8s.io`); that tunnel ends here and the kubelet is spoken
//! to in SPDY, as upstream's API server does.

use crate::handlers::{decode_as, Ctx, Target};
use crate::server::Body;
use crate::status::StatusError;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

/// `pods/log`: proxies to the kubelet of the pod's node, like upstream.
pub async fn pod_log(ctx: &Ctx, t: &Target) -> Result<Response<Body>, StatusError> {
    let pods = &t.res;
    let pod = match ctx.store.get(&t.key()).await {
        Ok(Some(kv)) => decode_as(pods, &kv)?,
        Ok(None) => return Err(StatusError::not_found("", "pods", t.name())),
        Err(e) => return Err(StatusError::internal(e.to_string())),
    };
    let names: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match t.param("container") {
        Some(c) if !c.is_empty() => c.to_string(),
        _ if names.len() == 1 => names[0].clone(),
        _ => {
            return Err(StatusError::bad_request(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                t.name(),
                names.join(" ")
            )))
        }
    };
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(StatusError::bad_request(format!(
            "pod {} is not scheduled to a node yet; there are no logs",
            t.name()
        )));
    }
    let nodes = ctx.registry.by_kind("", "Node").expect("nodes registered");
    let node = match ctx.store.get(&nodes.key(None, node_name)).await {
        Ok(Some(kv)) => decode_as(&nodes, &kv)?,
        _ => return Err(StatusError::not_found("", "nodes", node_name)),
    };
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    let mut url = url::Url::parse(&format!(
        "https://{host}:{port}/containerLogs/{}/{}/{container}",
        t.namespace.as_deref().unwrap_or("default"),
        t.name()
    ))
    .map_err(|e| StatusError::internal(e.to_string()))?;
    for (k, v) in &t.query {
        if [
            "follow",
            "previous",
            "timestamps",
            "tailLines",
            "sinceSeconds",
            "sinceTime",
            "limitBytes",
        ]
        .contains(&k.as_str())
        {
            url.query_pairs_mut().append_pair(k, v);
        }
    }
    let resp = ctx.kubelet.get(url.clone()).send().await.map_err(|e| {
        StatusError::internal(format!(
            "cannot reach the kubelet on node {node_name} at {url}: {e}"
        ))
    })?;
    let code = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    if code >= 400 {
        let text = resp.text().await.unwrap_or_default();
        return Err(StatusError::new(
            code,
            "BadRequest",
            text.trim().to_string(),
        ));
    }
    let stream = resp
        .bytes_stream()
        .map(|r| r.map(Frame::data).map_err(std::io::Error::other));
    Ok(Response::builder()
        .status(200)
        .header("content-type", ct)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}

/// The WebSocket subprotocol of kubectl's port-forward: SPDY/3.1 frames in binary messages.
const SPDY_TUNNEL_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Request headers that stay on this hop (the client's credentials never reach the kubelet).
const HOP_REQUEST: [&str; 7] = [
    "host",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "te",
    "authorization",
    "proxy-authorization",
];
/// Response headers that stay on the kubelet's hop.
const HOP_RESPONSE: [&str; 4] = ["content-length", "transfer-encoding", "keep-alive", "te"];

async fn load(ctx: &Ctx, t: &Target) -> Result<serde_json::Value, StatusError> {
    match ctx.store.get(&t.key()).await {
        Ok(Some(kv)) => decode_as(&t.res, &kv),
        Ok(None) => Err(StatusError::not_found(
            &t.res.group,
            &t.res.plural,
            t.name(),
        )),
        Err(e) => Err(StatusError::internal(e.to_string())),
    }
}

/// `https://<InternalIP>:<kubelet port>` of `node_name`.
pub(crate) async fn kubelet_base(ctx: &Ctx, node_name: &str) -> Result<String, StatusError> {
    let nodes = ctx.registry.by_kind("", "Node").expect("nodes registered");
    let node = match ctx.store.get(&nodes.key(None, node_name)).await {
        Ok(Some(kv)) => decode_as(&nodes, &kv)?,
        _ => return Err(StatusError::not_found("", "nodes", node_name)),
    };
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .unwrap_or("127.0.0.1")
        .to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(10250);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Ok(format!("https://{host}:{port}"))
}

/// The container an exec or attach is for: the `container` parameter, or the only one.
fn pick_container(pod: &serde_json::Value, t: &Target) -> Result<String, StatusError> {
    let names = |field: &str| -> Vec<String> {
        pod["spec"][field]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (app, init, eph) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    match t.param("container") {
        Some(c) if !c.is_empty() => {
            if app.iter().chain(&init).chain(&eph).any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(StatusError::bad_request(format!(
                    "container {c} is not valid for pod {}",
                    t.name()
                )))
            }
        }
        _ if app.len() == 1 => Ok(app[0].clone()),
        _ => {
            let mut msg = format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                t.name(),
                app.join(" ")
            );
            if !init.is_empty() {
                msg.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            if !eph.is_empty() {
                msg.push_str(&format!(
                    " or one of the ephemeral containers: [{}]",
                    eph.join(" ")
                ));
            }
            Err(StatusError::bad_request(msg))
        }
    }
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some(v) if v == "1" || v.eq_ignore_ascii_case("true"))
}

/// `pods/exec`, `pods/attach`, `pods/portforward` and `nodes/proxy`: forwarded to the kubelet.
pub async fn stream(
    ctx: &Ctx,
    t: &Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, StatusError> {
    let sub = t.sub.as_deref().unwrap_or_default();
    if t.res.kind == "Node" {
        return node_proxy(ctx, t, req).await;
    }
    let pod = load(ctx, t).await?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node_name.is_empty() {
        return Err(StatusError::bad_request(format!(
            "pod {} does not have a host assigned",
            t.name()
        )));
    }
    let ns = t.namespace.as_deref().unwrap_or("default");
    let base = kubelet_base(ctx, node_name).await?;
    let mut url = match sub {
        "exec" | "attach" => {
            let c = pick_container(&pod, t)?;
            let verb = if sub == "exec" { "exec" } else { "attach" };
            url::Url::parse(&format!("{base}/{verb}/{ns}/{}/{c}", t.name()))
        }
        "portforward" => url::Url::parse(&format!("{base}/portForward/{ns}/{}", t.name())),
        other => {
            return Err(StatusError::bad_request(format!(
                "pods/{other} is not served by this version of Skiff"
            )))
        }
    }
    .map_err(|e| StatusError::internal(e.to_string()))?;
    {
        let mut q = url.query_pairs_mut();
        if sub == "exec" {
            for (k, v) in &t.query {
                if k == "command" {
                    q.append_pair("command", v);
                }
            }
        }
        if sub == "exec" || sub == "attach" {
            for (ours, theirs) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if truthy(t.param(ours)) {
                    q.append_pair(theirs, "1");
                }
            }
        } else {
            for (k, v) in &t.query {
                if k == "ports" || k == "port" {
                    q.append_pair("port", v);
                }
            }
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let websocket = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if sub == "portforward" && websocket && offered.iter().any(|p| p == SPDY_TUNNEL_PORTFORWARD) {
        return spdy_tunnel(ctx, url, req).await;
    }
    tracing::debug!(%url, "proxying a stream to the kubelet");
    upgrade_proxy(ctx, url, req).await
}

/// Forwards an upgrade request to the kubelet and splices the upgraded connections.
async fn upgrade_proxy(
    ctx: &Ctx,
    url: url::Url,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, StatusError> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in req.headers() {
        if !HOP_REQUEST.contains(&k.as_str()) && !k.as_str().starts_with("impersonate-") {
            headers.append(k.clone(), v.clone());
        }
    }
    let resp = ctx
        .kubelet
        .request(req.method().clone(), url.clone())
        .headers(headers)
        .send()
        .await
        .map_err(|e| StatusError::internal(format!("error dialing the kubelet at {url}: {e}")))?;
    let status = resp.status();
    let mut back = Response::builder().status(status.as_u16());
    for (k, v) in resp.headers() {
        if !HOP_RESPONSE.contains(&k.as_str()) {
            back = back.header(k, v);
        }
    }
    if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let text = resp.text().await.unwrap_or_default();
        return Err(StatusError::new(
            if status.as_u16() >= 400 {
                status.as_u16()
            } else {
                500
            },
            "BadRequest",
            text.trim().to_string(),
        ));
    }
    let client = hyper::upgrade::on(&mut req);
    let kubelet = resp
        .upgrade()
        .await
        .map_err(|e| StatusError::internal(format!("upgrading the kubelet connection: {e}")))?;
    tokio::spawn(
        async move {
            let c = match client.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "client upgrade failed");
                    return;
                }
            };
            let mut c = TokioIo::new(c);
            let mut k = kubelet;
            match tokio::io::copy_bidirectional(&mut c, &mut k).await {
                Ok((up, down)) => tracing::debug!(up, down, "stream closed"),
                Err(e) => tracing::debug!(error = %e, "stream ended"),
            }
        }
        .in_current_span(),
    );
    Ok(back
        .body(BodyExt::boxed(
            http_body_util::Empty::new().map_err(|e| match e {}),
        ))
        .expect("response"))
}

/// Port-forward over `SPDY/3.1+portforward.k8s.io`: the WebSocket ends here, its binary
/// messages carry the SPDY connection to the kubelet.
async fn spdy_tunnel(
    ctx: &Ctx,
    url: url::Url,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, StatusError> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| StatusError::bad_request("missing Sec-WebSocket-Key"))?
        .to_string();
    let resp = ctx
        .kubelet
        .post(url.clone())
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", "portforward.k8s.io")
        .send()
        .await
        .map_err(|e| StatusError::internal(format!("error dialing the kubelet at {url}: {e}")))?;
    if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        return Err(StatusError::new(
            if code >= 400 { code } else { 500 },
            "BadRequest",
            text.trim().to_string(),
        ));
    }
    let kubelet = resp
        .upgrade()
        .await
        .map_err(|e| StatusError::internal(format!("upgrading the kubelet connection: {e}")))?;
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(
        async move {
            match client.await {
                Ok(c) => tunnel(TokioIo::new(c), kubelet).await,
                Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
            }
        }
        .in_current_span(),
    );
    Ok(Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .header("sec-websocket-protocol", SPDY_TUNNEL_PORTFORWARD)
        .body(BodyExt::boxed(
            http_body_util::Empty::new().map_err(|e| match e {}),
        ))
        .expect("response"))
}

/// Copies WebSocket binary messages from `client` to `kubelet` and `kubelet`'s bytes back as
/// binary messages, until either side closes.
async fn tunnel<C, K>(client: C, kubelet: K)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    K: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::SinkExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Server, None).await;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut k_rx, mut k_tx) = tokio::io::split(kubelet);
    let up = async {
        while let Some(msg) = ws_rx.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    if k_tx.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = k_tx.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match k_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    tokio::join!(up, down);
    tracing::debug!("port-forward tunnel closed");
}

/// `nodes/<name>/proxy/<path>`: a plain request to the kubelet's `<path>`.
async fn node_proxy(
    ctx: &Ctx,
    t: &Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, StatusError> {
    let base = kubelet_base(ctx, t.name()).await?;
    let marker = format!("/nodes/{}/proxy", t.name());
    let path = req.uri().path();
    let tail = path
        .find(&marker)
        .map(|i| &path[i + marker.len()..])
        .unwrap_or("/");
    let tail = if tail.is_empty() { "/" } else { tail };
    let mut url = format!("{base}{tail}");
    if let Some(q) = req.uri().query() {
        url.push('?');
        url.push_str(q);
    }
    let url = url::Url::parse(&url).map_err(|e| StatusError::bad_request(e.to_string()))?;
    if req.headers().contains_key("upgrade") {
        return upgrade_proxy(ctx, url, req).await;
    }
    let resp = ctx
        .kubelet
        .request(req.method().clone(), url.clone())
        .send()
        .await
        .map_err(|e| StatusError::internal(format!("error dialing the kubelet at {url}: {e}")))?;
    let mut back = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if !HOP_RESPONSE.contains(&k.as_str()) {
            back = back.header(k, v);
        }
    }
    let stream = resp
        .bytes_stream()
        .map(|r| r.map(Frame::data).map_err(std::io::Error::other));
    Ok(back
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response"))
}

/// Whether `kind`'s subresource `sub` is proxied as a stream to the kubelet.
pub fn is_stream(kind: &str, sub: Option<&str>) -> bool {
    matches!(
        (kind, sub),
        ("Pod", Some("exec" | "attach" | "portforward")) | ("Node", Some("proxy"))
    )
}
