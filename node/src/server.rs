//! The kubelet's HTTPS server on :10250: `/healthz`, `/pods` and
//! `/containerLogs/{namespace}/{pod}/{container}` (what `kubectl logs` reaches via the API server).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use skiff_proto::cri;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::cri::{labels, CriRuntime};
use crate::error::NodeError;
use crate::logs::{render, LogOptions, Renderer};
use crate::reconcile::pod_log_directory;
use crate::stream::Kind;

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// What the handlers need.
pub struct ServerState<R: CriRuntime> {
    pub cri: Arc<R>,
    pub pods: Store<Pod>,
    pub pod_log_dir: PathBuf,
    /// Who may call what ([`crate::auth`]).
    pub auth: Arc<crate::auth::Auth>,
    /// The monitoring endpoints' sources (`/metrics`, `/stats/summary`, `/configz`).
    pub monitor: Option<Arc<crate::monitor::Monitor>>,
    /// Static pods by `namespace/name` (their mirror pods in the store name them).
    pub static_pods: crate::static_pods::Registry,
}

impl<R: CriRuntime> ServerState<R> {
    /// The pod `ns/name` runs as: the static pod of that name, else the API's pod.
    pub fn lookup(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        if let Some(p) = self
            .static_pods
            .read()
            .ok()
            .and_then(|r| r.get(&format!("{ns}/{name}")).cloned())
        {
            return Some(p);
        }
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    /// The pods this kubelet runs: the API's (without mirror pods) and the static ones.
    pub fn all_pods(&self) -> Vec<Arc<Pod>> {
        let mut v: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| !crate::static_pods::is_mirror(p))
            .collect();
        if let Ok(r) = self.static_pods.read() {
            v.extend(r.values().cloned());
        }
        v
    }
}

pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = msg.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed()))
}

/// Parses the `/containerLogs` query.
pub fn parse_log_query(query: Option<&str>) -> Result<LogOptions, String> {
    let mut o = LogOptions::default();
    let boolean = |v: &str| v.is_empty() || v == "true" || v == "1";
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "follow" => o.follow = boolean(v),
            "timestamps" => o.timestamps = boolean(v),
            "previous" => o.previous = boolean(v),
            "tailLines" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("tailLines: bad number {v:?}"))?;
                o.tail_lines = Some(n.max(0) as usize);
            }
            "sinceSeconds" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("sinceSeconds: bad number {v:?}"))?;
                o.since = Some(chrono::Utc::now() - chrono::Duration::seconds(n.max(0)));
            }
            "sinceTime" => {
                let t = url::form_urlencoded::parse(format!("x={v}").as_bytes())
                    .next()
                    .map(|(_, t)| t.into_owned())
                    .unwrap_or_default();
                let t = chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| format!("sinceTime: {t:?}: {e}"))?;
                o.since = Some(t.with_timezone(&chrono::Utc));
            }
            "limitBytes" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| format!("limitBytes: bad number {v:?}"))?;
                o.limit_bytes = Some(n.max(0) as usize);
            }
            _ => {}
        }
    }
    Ok(o)
}

/// The CRI id of the instance in `lastState.terminated` of `container` in `pod`'s status.
fn last_terminated_id(pod: &Pod, container: &str) -> Option<String> {
    let st = pod.status.as_ref()?;
    [
        &st.container_statuses,
        &st.init_container_statuses,
        &st.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|s| s.name == container)?
    .last_state
    .as_ref()?
    .terminated
    .as_ref()?
    .container_id
    .as_deref()
    .map(|id| id.rsplit_once("://").map_or(id, |(_, id)| id).to_string())
}

/// The log file and container id of `container` of `pod` (the previous instance if `previous`).
async fn locate_log<R: CriRuntime>(
    st: &ServerState<R>,
    pod: &Pod,
    container: &str,
    previous: bool,
) -> Result<(PathBuf, Option<String>), (StatusCode, String)> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let log_dir = pod_log_directory(&st.pod_log_dir, &ns, &name, &uid);
    let mut sel = HashMap::new();
    sel.insert(labels::POD_UID.to_string(), uid.clone());
    sel.insert(labels::CONTAINER_NAME.to_string(), container.to_string());
    let mut list = st
        .cri
        .list_containers("", sel)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    list.sort_by(|a, b| {
        let at = |c: &cri::Container| c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
        at(b).cmp(&at(a)).then(b.created_at.cmp(&a.created_at))
    });
    // `previous` is the pod status's lastState.terminated instance, as upstream: while the
    // container waits in CrashLoopBackOff that is the newest exited one. Without that status yet,
    // the instance before the newest.
    let pick = match last_terminated_id(pod, container).filter(|_| previous) {
        Some(id) => list.iter().find(|c| c.id == id),
        None => list.get(usize::from(previous)),
    };
    let Some(c) = pick else {
        if previous {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "previous terminated container \"{container}\" in pod \"{name}\" not found"
                ),
            ));
        }
        // No container (yet or any more): fall back to the newest file of the path convention.
        let dir = log_dir.join(container);
        let newest = std::fs::read_dir(&dir)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".log")
                    .and_then(|s| s.parse::<u32>().ok())
                    .map(|k| (k, e.path()))
            })
            .max_by_key(|(k, _)| *k);
        return match newest {
            Some((_, p)) => Ok((p, None)),
            None => Err((
                StatusCode::BAD_REQUEST,
                format!("container \"{container}\" in pod \"{name}\" is waiting to start"),
            )),
        };
    };
    let path = match st.cri.container_status(&c.id).await {
        Ok(s) if !s.log_path.is_empty() => {
            let p = PathBuf::from(&s.log_path);
            if p.is_absolute() {
                p
            } else {
                log_dir.join(p)
            }
        }
        _ => {
            let attempt = c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0);
            log_dir.join(container).join(format!("{attempt}.log"))
        }
    };
    Ok((path, Some(c.id.clone())))
}

async fn container_logs<R: CriRuntime>(
    st: Arc<ServerState<R>>,
    ns: &str,
    pod_name: &str,
    container: &str,
    query: Option<&str>,
) -> Response<Body> {
    let opts = match parse_log_query(query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(pod) = st.lookup(ns, pod_name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod_name} not found on this node"),
        );
    };
    let in_spec = pod
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == container)
        })
        .unwrap_or(false);
    if !in_spec {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {pod_name}"),
        );
    }
    let (path, id) = match locate_log(&st, &pod, container, opts.previous).await {
        Ok(x) => x,
        Err((code, msg)) => return text(code, msg),
    };
    debug!(path = %path.display(), "serving container logs");
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("cannot open the log file {}: {e}", path.display()),
            )
        }
    };
    let mut content = Vec::new();
    if let Err(e) = file.read_to_end(&mut content).await {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: {e}", path.display()),
        );
    }
    // Only whole records now; a trailing fragment is kept for following.
    let cut = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let rest = content.split_off(cut);
    let first = render(&String::from_utf8_lossy(&content), &opts);
    if !opts.follow || opts.previous || id.is_none() {
        return Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(
                Full::new(Bytes::from(first))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let cri = st.cri.clone();
    let id = id.unwrap_or_default();
    tokio::spawn(follow_log(cri, id, file, first, rest, opts.timestamps, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// Streams a log file as it grows until the container stops or the client goes away.
async fn follow_log<R: CriRuntime>(
    cri: Arc<R>,
    id: String,
    mut file: tokio::fs::File,
    first: Vec<u8>,
    mut pending: Vec<u8>,
    timestamps: bool,
    tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
) {
    if !first.is_empty() && tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
        return;
    }
    let mut renderer = Renderer::new(timestamps);
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle = 0u32;
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if n > 0 {
            idle = 0;
            pending.extend_from_slice(&buf[..n]);
            if let Some(i) = pending.iter().rposition(|&b| b == b'\n') {
                let rest = pending.split_off(i + 1);
                let mut out = Vec::new();
                for line in String::from_utf8_lossy(&pending).lines() {
                    renderer.push(line, &mut out);
                }
                pending = rest;
                if tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                    return;
                }
            }
            continue;
        }
        if tx.is_closed() {
            return;
        }
        idle += 1;
        // Every second without data: stop once the container no longer runs.
        if idle.is_multiple_of(5) {
            let running = matches!(
                cri.container_status(&id).await,
                Ok(s) if s.state == cri::ContainerState::ContainerRunning as i32
            );
            if !running {
                // One last read for what was written just before the exit.
                if let Ok(n) = file.read(&mut buf).await {
                    if n > 0 {
                        continue;
                    }
                }
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn handle<R: CriRuntime>(
    st: Arc<ServerState<R>>,
    cert_user: Option<Arc<crate::auth::User>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    // Authentication, then authorization, before anything else (upstream's auth filter).
    let user = match st
        .auth
        .authenticate(cert_user.as_deref(), req.headers())
        .await
    {
        Ok(u) => u,
        Err(_) => return Ok(text(StatusCode::UNAUTHORIZED, "Unauthorized")),
    };
    let attrs = crate::auth::attributes(req.method(), &path);
    match st.auth.authorize(&user, &attrs).await {
        Ok(()) => {}
        Err(crate::auth::Denied::Forbidden(m)) => return Ok(text(StatusCode::FORBIDDEN, m)),
        Err(crate::auth::Denied::Error(m)) => {
            warn!(user = %user.name, "{m}");
            return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, m));
        }
        Err(crate::auth::Denied::Unauthorized) => {
            return Ok(text(StatusCode::UNAUTHORIZED, "Unauthorized"))
        }
    }
    let query = req.uri().query().map(str::to_string);
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    // Streaming endpoints take GET (WebSocket) and POST (SPDY), like upstream.
    let streaming = match parts.as_slice() {
        ["exec", ns, pod, c] => Some((Kind::Exec, *ns, *pod, None, Some(*c))),
        ["exec", ns, pod, uid, c] => Some((Kind::Exec, *ns, *pod, Some(*uid), Some(*c))),
        ["attach", ns, pod, c] => Some((Kind::Attach, *ns, *pod, None, Some(*c))),
        ["attach", ns, pod, uid, c] => Some((Kind::Attach, *ns, *pod, Some(*uid), Some(*c))),
        ["portForward", ns, pod] => Some((Kind::PortForward, *ns, *pod, None, None)),
        ["portForward", ns, pod, uid] => Some((Kind::PortForward, *ns, *pod, Some(*uid), None)),
        _ => None,
    };
    if let Some((kind, ns, pod, uid, c)) = streaming {
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
            return Ok(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and POST are served",
            ));
        }
        return Ok(crate::stream::handle(&st, kind, req, ns, pod, uid, c).await);
    }
    if req.method() != hyper::Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served"));
    }
    let resp = match parts.as_slice() {
        ["healthz"] | ["healthz", "ping"] => text(StatusCode::OK, "ok"),
        ["pods"] => {
            let items: Vec<_> = st.all_pods().iter().map(|p| (**p).clone()).collect();
            let list = serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
            Response::builder()
                .header("content-type", "application/json")
                .body(
                    Full::new(Bytes::from(list.to_string()))
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
        }
        ["containerLogs", ns, pod, container] => {
            container_logs(st.clone(), ns, pod, container, query.as_deref()).await
        }
        ["logs", rest @ ..] => node_logs(Path::new(NODE_LOG_DIR), rest, path.ends_with('/')).await,
        ["metrics"]
        | ["metrics", "resource"]
        | ["metrics", "cadvisor"]
        | ["metrics", "probes"]
        | ["stats", "summary"]
        | ["configz"]
        | ["runningpods"] => monitoring(&st, parts.as_slice()).await,
        _ => text(StatusCode::NOT_FOUND, format!("{path}: not found")),
    };
    Ok(resp)
}

/// What `/logs/` serves (upstream: the node's `/var/log`).
pub const NODE_LOG_DIR: &str = "/var/log";

/// `/logs/<path>`: a file of the node's log folder, or a folder's listing (`<pre>` of links,
/// folders with a trailing `/`, like the Go file server upstream uses).
pub async fn node_logs(root: &Path, rel: &[&str], dir_request: bool) -> Response<Body> {
    if rel
        .iter()
        .any(|p| *p == ".." || *p == "." || p.contains('\0'))
    {
        return text(StatusCode::BAD_REQUEST, "invalid path");
    }
    let mut full = root.to_path_buf();
    for p in rel.iter().filter(|p| !p.is_empty()) {
        full.push(p);
    }
    let meta = match tokio::fs::metadata(&full).await {
        Ok(m) => m,
        Err(_) => return text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    let html = |body: String| {
        Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    };
    if meta.is_dir() {
        if !dir_request && !rel.is_empty() {
            // A folder without its slash is redirected to it, as Go's file server does.
            let loc = format!("{}/", rel.last().copied().unwrap_or_default());
            return Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header("location", loc)
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"));
        }
        let mut names = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(&full).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let mut n = e.file_name().to_string_lossy().into_owned();
                if e.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                    n.push('/');
                }
                names.push(n);
            }
        }
        names.sort();
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let mut body = String::from("<pre>\n");
        for n in names {
            let href: String = url::form_urlencoded::byte_serialize(n.as_bytes())
                .collect::<String>()
                .replace("%2F", "/")
                .replace('+', "%20");
            body.push_str(&format!("<a href=\"{href}\">{}</a>\n", esc(&n)));
        }
        body.push_str("</pre>\n");
        return html(body);
    }
    match tokio::fs::read(&full).await {
        Ok(data) => Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(data)).map_err(|e| match e {}).boxed())
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response")),
        Err(e) => text(StatusCode::FORBIDDEN, format!("{}: {e}", full.display())),
    }
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

fn prometheus(body: String) -> Response<Body> {
    Response::builder()
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// Start times (unix nanoseconds) of the running containers, by container id.
async fn start_times<R: CriRuntime>(cri: &R, list: &[cri::Container]) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for c in list
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
    {
        if let Ok(s) = cri.container_status(&c.id).await {
            out.insert(c.id.clone(), s.started_at);
        }
    }
    out
}

/// `/metrics`, `/metrics/resource`, `/stats/summary`, `/configz`, `/runningpods/`.
async fn monitoring<R: CriRuntime>(st: &ServerState<R>, parts: &[&str]) -> Response<Body> {
    let Some(m) = st.monitor.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "monitoring endpoints are not enabled",
        );
    };
    let internal =
        |e: crate::error::CriError| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    match parts {
        ["configz"] => json_response(&m.configz),
        ["metrics", "probes"] => prometheus(crate::monitor::METRICS.render_probes()),
        ["runningpods"] => {
            let sandboxes = match st.cri.list_pod_sandbox(HashMap::new()).await {
                Ok(s) => s,
                Err(e) => return internal(e),
            };
            let containers = match st.cri.list_containers("", HashMap::new()).await {
                Ok(c) => c,
                Err(e) => return internal(e),
            };
            json_response(&crate::monitor::running_pods(&sandboxes, &containers))
        }
        ["metrics"] => {
            let containers = st
                .cri
                .list_containers("", HashMap::new())
                .await
                .unwrap_or_default();
            let ready = cri::PodSandboxState::SandboxReady as i32;
            let running = st
                .cri
                .list_pod_sandbox(HashMap::new())
                .await
                .map(|l| l.iter().filter(|s| s.state == ready).count())
                .unwrap_or(0);
            prometheus(crate::monitor::render_metrics(
                running,
                &containers,
                &m.node_name,
                m.started,
            ))
        }
        _ => {
            let (cs, ss) = (
                st.cri.list_container_stats().await,
                st.cri.list_pod_sandbox_stats().await,
            );
            let scrape_error = cs.is_err() || ss.is_err();
            if let Err(e) = &cs {
                warn!(error = %e, "ListContainerStats failed");
            }
            let (cs, ss) = (cs.unwrap_or_default(), ss.unwrap_or_default());
            let containers = st
                .cri
                .list_containers("", HashMap::new())
                .await
                .unwrap_or_default();
            let started = start_times(&*st.cri, &containers).await;
            let m2 = m.clone();
            let node = tokio::task::spawn_blocking(move || m2.node_usage())
                .await
                .unwrap_or_default();
            if parts == ["metrics", "cadvisor"] {
                // /proc/meminfo is read once per scrape; small, but off the async workers.
                let (cs2, ss2) = (cs.clone(), ss.clone());
                let body = tokio::task::spawn_blocking(move || {
                    crate::monitor::render_cadvisor(&cs2, &ss2, &containers, &started)
                })
                .await
                .unwrap_or_default();
                prometheus(body)
            } else if parts == ["metrics", "resource"] {
                prometheus(crate::monitor::render_resource(
                    &node,
                    &cs,
                    &ss,
                    &started,
                    scrape_error,
                ))
            } else {
                let pods = st.all_pods();
                json_response(&crate::monitor::summary(
                    &m.node_name,
                    m.started,
                    &node,
                    &pods,
                    &cs,
                    &ss,
                    &started,
                ))
            }
        }
    }
}

/// Serves HTTPS on `addr` until `shutdown` turns true.
pub async fn serve<R: CriRuntime>(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    st: Arc<ServerState<R>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    serve_listener(listener, tls, st, &mut shutdown).await;
    Ok(())
}

/// Serves HTTPS on an already bound listener (tests bind port 0).
pub async fn serve_listener<R: CriRuntime>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    st: Arc<ServerState<R>>,
    shutdown: &mut watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "kubelet server listening (https)");
    }
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let st = st.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            // The client certificate (already verified against the client CA) names the user.
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::auth::user_from_cert(c.as_ref()))
                .map(Arc::new);
            let svc =
                hyper::service::service_fn(move |req| handle(st.clone(), cert_user.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Where a pod's logs live (for callers outside the server).
pub fn log_dir_of(root: &Path, pod: &Pod) -> PathBuf {
    pod_log_directory(
        root,
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// The plain-HTTP healthz endpoint (upstream's `--healthz-port`, 10248 on 127.0.0.1): `/healthz`
/// answers `ok`, without authentication. A port in use is retried every 10 s (logged once).
pub async fn serve_healthz(addr: SocketAddr, mut shutdown: watch::Receiver<bool>) {
    let mut warned = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                if !warned {
                    warn!(%addr, error = %e, "cannot serve healthz; retrying every 10s");
                    warned = true;
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    info!(%addr, "kubelet healthz listening (http)");
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let resp = match (req.method(), req.uri().path()) {
                    (&hyper::Method::GET | &hyper::Method::HEAD, "/healthz") => {
                        text(StatusCode::OK, "ok")
                    }
                    _ => text(StatusCode::NOT_FOUND, "404 page not found"),
                };
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Response<Body>) -> String {
        let b = r.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn node_logs_serves_files_and_listings() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("apt")).expect("sub");
        std::fs::write(dir.path().join("sk <1>.log"), "line\n").expect("file");
        let r = node_logs(dir.path(), &[], true).await;
        assert_eq!(r.status(), StatusCode::OK);
        let b = body_of(r).await;
        assert!(b.contains("<a href=\"apt/\">apt/</a>"), "{b}");
        assert!(b.contains(">sk &lt;1&gt;.log</a>"), "{b}");
        let r = node_logs(dir.path(), &["sk <1>.log"], false).await;
        assert_eq!(body_of(r).await, "line\n");
        let r = node_logs(dir.path(), &["apt"], false).await;
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        let r = node_logs(dir.path(), &["..", "etc"], false).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let r = node_logs(dir.path(), &["missing"], false).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
