//! The probe manager: liveness, readiness and startup probes (exec, httpGet, tcpSocket, grpc),
//! one task per probe of each running container instance, as upstream's probe workers.
//!
//! A worker waits `initialDelaySeconds` after the container started, then probes every
//! `periodSeconds` with `timeoutSeconds`; `successThreshold` consecutive successes or
//! `failureThreshold` consecutive failures flip its result. Readiness starts as failure, liveness
//! as success, startup as unknown; liveness and readiness do not probe until the startup probe
//! (if any) succeeded. Each failed probe records an `Unhealthy` event (`<Kind> probe failed:
//! <output>`). A liveness or startup result of failure stops the worker: the pod sync kills the
//! container, and the next instance gets new workers. A change of result wakes the pod worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, Instrument};

use crate::cri::CriRuntime;
use crate::events::PodEvent;

/// The User-Agent of HTTP probes (upstream: `kube-probe/<major>.<minor>`).
pub const USER_AGENT: &str = "kube-probe/1.32";

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    /// The word upstream's events use.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// A probe's current verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unknown,
    Success,
    Failure,
}

/// Where a probe goes: the pod's IP and the container (for exec and named ports).
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_ip: String,
    pub container_id: String,
    pub container: Container,
    /// The pod's namespace, name and uid (metric labels).
    pub pod: (String, String, String),
}

/// One probe's counters and result, shared between its task and the pod sync.
#[derive(Debug)]
pub struct ProbeState {
    pub verdict: Verdict,
    successes: i32,
    failures: i32,
    /// Events not yet taken by the pod sync.
    pub events: Vec<PodEvent>,
    /// The last failure's output (for the kill event).
    pub last_output: String,
}

impl ProbeState {
    fn new(kind: ProbeKind) -> Self {
        Self {
            verdict: match kind {
                ProbeKind::Liveness => Verdict::Success,
                ProbeKind::Readiness => Verdict::Failure,
                ProbeKind::Startup => Verdict::Unknown,
            },
            successes: 0,
            failures: 0,
            events: Vec::new(),
            last_output: String::new(),
        }
    }

    /// Counts one probe result; returns whether the verdict changed.
    pub fn record(&mut self, ok: bool, success_threshold: i32, failure_threshold: i32) -> bool {
        let before = self.verdict;
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= success_threshold.max(1) {
                self.verdict = Verdict::Success;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= failure_threshold.max(1) {
                self.verdict = Verdict::Failure;
            }
        }
        before != self.verdict
    }
}

/// The probe workers of one running container instance. Dropping it stops them.
pub struct ContainerProbes {
    pub container_id: String,
    started: Arc<AtomicBool>,
    states: Vec<(ProbeKind, Arc<Mutex<ProbeState>>)>,
    tasks: Vec<JoinHandle<()>>,
    has_startup: bool,
    has_readiness: bool,
}

impl Drop for ContainerProbes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(m: &Mutex<ProbeState>) -> std::sync::MutexGuard<'_, ProbeState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ContainerProbes {
    /// Starts the workers of `target.container`'s probes. `started_at_ns` is the instance's
    /// start (CRI nanoseconds) for `initialDelaySeconds`.
    pub fn start<R: CriRuntime>(
        cri: Arc<R>,
        target: Target,
        started_at_ns: i64,
        wake: Arc<Notify>,
    ) -> Self {
        let c = target.container.clone();
        let has_startup = c.startup_probe.is_some();
        let started = Arc::new(AtomicBool::new(!has_startup));
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        for (kind, probe) in [
            (ProbeKind::Startup, &c.startup_probe),
            (ProbeKind::Liveness, &c.liveness_probe),
            (ProbeKind::Readiness, &c.readiness_probe),
        ] {
            let Some(probe) = probe.clone() else { continue };
            let state = Arc::new(Mutex::new(ProbeState::new(kind)));
            states.push((kind, state.clone()));
            let w = Worker {
                cri: cri.clone(),
                kind,
                probe,
                target: target.clone(),
                state,
                started: started.clone(),
                wake: wake.clone(),
                started_at_ns,
            };
            let span = tracing::debug_span!("probe", kind = kind.name(), container = %c.name);
            tasks.push(tokio::spawn(w.run().instrument(span)));
        }
        Self {
            container_id: target.container_id,
            started,
            states,
            tasks,
            has_startup,
            has_readiness: c.readiness_probe.is_some(),
        }
    }

    /// Whether the container counts as started (no startup probe, or it succeeded).
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Whether the container is ready: started, and its readiness probe (if any) succeeds.
    pub fn ready(&self) -> bool {
        if !self.started() {
            return false;
        }
        if !self.has_readiness {
            return true;
        }
        self.verdict(ProbeKind::Readiness) == Verdict::Success
    }

    /// The verdict of `kind` (`Unknown` if the container has no such probe).
    pub fn verdict(&self, kind: ProbeKind) -> Verdict {
        self.states
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| lock(s).verdict)
            .unwrap_or(Verdict::Unknown)
    }

    /// The probe (liveness, then startup) whose failure means the container must be restarted.
    pub fn failed(&self) -> Option<ProbeKind> {
        if self.verdict(ProbeKind::Liveness) == Verdict::Failure {
            return Some(ProbeKind::Liveness);
        }
        if self.has_startup && self.verdict(ProbeKind::Startup) == Verdict::Failure {
            return Some(ProbeKind::Startup);
        }
        None
    }

    /// Events recorded by the workers since the last call.
    pub fn take_events(&self) -> Vec<PodEvent> {
        let mut out = Vec::new();
        for (_, s) in &self.states {
            out.append(&mut lock(s).events);
        }
        out
    }
}

struct Worker<R: CriRuntime> {
    cri: Arc<R>,
    kind: ProbeKind,
    probe: Probe,
    target: Target,
    state: Arc<Mutex<ProbeState>>,
    started: Arc<AtomicBool>,
    wake: Arc<Notify>,
    started_at_ns: i64,
}

fn secs(v: Option<i32>, default: i32, min: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(min) as u64)
}

impl<R: CriRuntime> Worker<R> {
    async fn run(self) {
        let period = secs(self.probe.period_seconds, 10, 1);
        let timeout = secs(self.probe.timeout_seconds, 1, 1);
        let success_threshold = self.probe.success_threshold.unwrap_or(1);
        let failure_threshold = self.probe.failure_threshold.unwrap_or(3);
        // initialDelaySeconds counts from the container's start.
        let delay =
            Duration::from_secs(self.probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let ran = Duration::from_nanos((now_ns - self.started_at_ns).max(0) as u64);
        if ran < delay {
            tokio::time::sleep(delay - ran).await;
        }
        loop {
            let gated = self.kind != ProbeKind::Startup && !self.started.load(Ordering::SeqCst);
            if !gated {
                let (ok, output) = match tokio::time::timeout(
                    timeout,
                    run_probe(&*self.cri, &self.probe, &self.target, timeout),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => (
                        false,
                        probe_timeout_message(&self.probe, &self.target, timeout),
                    ),
                };
                debug!(ok, %output, "probe ran");
                crate::monitor::METRICS.count_probe(
                    self.kind.name(),
                    if ok { "successful" } else { "failed" },
                    &self.target.container.name,
                    &self.target.pod,
                );
                let (changed, verdict) = {
                    let mut st = lock(&self.state);
                    if !ok {
                        st.events.push(PodEvent::warning(
                            "Unhealthy",
                            &self.target.container.name,
                            format!("{} probe failed: {}", self.kind.name(), output),
                        ));
                        st.last_output = output;
                    }
                    let changed = st.record(ok, success_threshold, failure_threshold);
                    (changed, st.verdict)
                };
                if self.kind == ProbeKind::Startup && verdict == Verdict::Success {
                    self.started.store(true, Ordering::SeqCst);
                    self.wake.notify_one();
                    return;
                }
                if changed || !ok {
                    self.wake.notify_one();
                }
                if verdict == Verdict::Failure
                    && matches!(self.kind, ProbeKind::Liveness | ProbeKind::Startup)
                {
                    // On hold: the container is killed and its successor gets new workers.
                    return;
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// What a timed-out probe reports.
fn probe_timeout_message(probe: &Probe, target: &Target, timeout: Duration) -> String {
    if let Some(e) = &probe.exec {
        return format!(
            "command {:?} timed out",
            e.command.clone().unwrap_or_default().join(" ")
        );
    }
    if let Some(h) = &probe.http_get {
        let host = h.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let port = resolve_port(&h.port, &target.container).unwrap_or(0);
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        return format!(
            "Get \"{scheme}://{}:{port}{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            host,
            h.path.as_deref().unwrap_or("/")
        );
    }
    if let Some(t) = &probe.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let port = resolve_port(&t.port, &target.container).unwrap_or(0);
        return format!("dial tcp {host}:{port}: i/o timeout");
    }
    if let Some(g) = &probe.grpc {
        return format!(
            "timeout: failed to connect service \"{}:{}\" within {}s",
            target.pod_ip,
            g.port,
            timeout.as_secs()
        );
    }
    "probe timed out".into()
}

/// A port number or a named container port.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(*n as u16),
        IntOrString::Int(n) => Err(format!("invalid port number: {n}")),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<u16>() {
                return Ok(n);
            }
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port as u16)
                .ok_or_else(|| format!("couldn't find port: {s} in {}", c.name))
        }
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn dial_error(addr: &str, e: &std::io::Error) -> String {
    let what = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_string(),
        _ => {
            let s = e.to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            format!("connect: {}", s.to_lowercase())
        }
    };
    format!("dial tcp {addr}: {what}")
}

/// Runs one probe: (success, output).
pub async fn run_probe<R: CriRuntime>(
    cri: &R,
    probe: &Probe,
    target: &Target,
    timeout: Duration,
) -> (bool, String) {
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        return match cri
            .exec_sync(&target.container_id, cmd, timeout.as_secs() as i64)
            .await
        {
            Ok((code, out)) => {
                let text = String::from_utf8_lossy(&out).trim_end().to_string();
                (code == 0, text)
            }
            Err(e) => (false, e.message()),
        };
    }
    if let Some(h) = &probe.http_get {
        return http_probe(h, target).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| target.pod_ip.clone());
        let port = match resolve_port(&t.port, &target.container) {
            Ok(p) => p,
            Err(e) => return (false, e),
        };
        let addr = host_port(&host, port);
        return match tokio::net::TcpStream::connect(&addr).await {
            Ok(_) => (true, String::new()),
            Err(e) => (false, dial_error(&addr, &e)),
        };
    }
    if let Some(g) = &probe.grpc {
        return grpc_probe(
            &target.pod_ip,
            g.port,
            g.service.clone().unwrap_or_default(),
        )
        .await;
    }
    (false, "probe has no handler".into())
}

async fn http_probe(
    h: &k8s_openapi::api::core::v1::HTTPGetAction,
    target: &Target,
) -> (bool, String) {
    use http_body_util::{BodyExt, Empty};
    let host = h
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| target.pod_ip.clone());
    let port = match resolve_port(&h.port, &target.container) {
        Ok(p) => p,
        Err(e) => return (false, e),
    };
    let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
    let mut path = h.path.clone().unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let addr = host_port(&host, port);
    let url = format!("{scheme}://{addr}{path}");
    let tcp = match tokio::net::TcpStream::connect(&addr).await {
        Ok(t) => t,
        Err(e) => return (false, format!("Get \"{url}\": {}", dial_error(&addr, &e))),
    };
    let mut req = hyper::Request::builder().method("GET").uri(path.as_str());
    let mut has_host = false;
    let mut has_ua = false;
    let mut has_accept = false;
    for hd in h.http_headers.iter().flatten() {
        let n = hd.name.to_ascii_lowercase();
        has_host |= n == "host";
        has_ua |= n == "user-agent";
        has_accept |= n == "accept";
        req = req.header(hd.name.as_str(), hd.value.as_str());
    }
    if !has_host {
        req = req.header("host", addr.as_str());
    }
    if !has_ua {
        req = req.header("user-agent", USER_AGENT);
    }
    if !has_accept {
        req = req.header("accept", "*/*");
    }
    let req = match req.body(Empty::<bytes::Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return (false, format!("Get \"{url}\": {e}")),
    };
    let result = if scheme == "https" {
        let connector = tokio_rustls::TlsConnector::from(crate::tls::insecure_client_config());
        let name = rustls::pki_types::ServerName::try_from(host.clone()).unwrap_or_else(|_| {
            rustls::pki_types::ServerName::try_from("localhost").expect("name")
        });
        match connector.connect(name.to_owned(), tcp).await {
            Ok(tls) => send(hyper_util::rt::TokioIo::new(tls), req).await,
            Err(e) => Err(format!("tls: {e}")),
        }
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await
    };
    match result {
        Ok((code, body)) => {
            if (200..400).contains(&code) {
                (true, String::new())
            } else {
                let _ = body.collect().await;
                (false, format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Err(e) => (false, format!("Get \"{url}\": {e}")),
    }
}

async fn send<T>(
    io: hyper_util::rt::TokioIo<T>,
    req: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<(u16, hyper::body::Incoming), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok((resp.status().as_u16(), resp.into_body()))
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (status: 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

async fn grpc_probe(ip: &str, port: i32, service: String) -> (bool, String) {
    let addr = host_port(ip, port as u16);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e,
        Err(e) => return (false, e.to_string()),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return (false, format!("failed to connect service \"{addr}\": {e}")),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return (false, format!("failed to connect service \"{addr}\": {e}"));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    match grpc
        .unary(tonic::Request::new(HealthCheckRequest { service }), path, codec)
        .await
    {
        Ok(r) => {
            let status = r.into_inner().status;
            if status == 1 {
                (true, String::new())
            } else {
                let name = match status {
                    2 => "NOT_SERVING",
                    3 => "SERVICE_UNKNOWN",
                    _ => "UNKNOWN",
                };
                (false, format!("service unhealthy (responded with \"{name}\")"))
            }
        }
        Err(s) if s.code() == tonic::Code::Unimplemented => (
            false,
            format!("this server does not implement the grpc health protocol (grpc.health.v1.Health): {}", s.message()),
        ),
        Err(s) => (false, format!("health rpc probe failed: {}", s.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn thresholds_flip_the_verdict() {
        let mut s = ProbeState::new(ProbeKind::Readiness);
        assert_eq!(s.verdict, Verdict::Failure);
        assert!(!s.record(true, 2, 3));
        assert!(s.record(true, 2, 3));
        assert_eq!(s.verdict, Verdict::Success);
        assert!(!s.record(false, 2, 3));
        assert!(!s.record(false, 2, 3));
        assert!(s.record(false, 2, 3));
        assert_eq!(s.verdict, Verdict::Failure);
        let s = ProbeState::new(ProbeKind::Liveness);
        assert_eq!(s.verdict, Verdict::Success);
        let s = ProbeState::new(ProbeKind::Startup);
        assert_eq!(s.verdict, Verdict::Unknown);
    }

    #[test]
    fn named_ports_resolve() {
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("grpc".into()), &c).is_err());
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_local_listeners() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /ok ")
                    && req.contains("kube-probe/")
                    && req.contains("x-sk: 1")
                {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let target = Target {
            pod: Default::default(),
            pod_ip: "127.0.0.1".into(),
            container_id: "c1".into(),
            container: Container {
                name: "c".into(),
                ..Default::default()
            },
        };
        let cri = crate::fake::FakeCri::new();
        let t = Duration::from_secs(1);
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(port as i32),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            run_probe(&cri, &tcp, &target, t).await,
            (true, String::new())
        );
        let http = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(port as i32),
                http_headers: Some(vec![k8s_openapi::api::core::v1::HTTPHeader {
                    name: "X-Sk".into(),
                    value: "1".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(run_probe(&cri, &http("/ok"), &target, t).await.0);
        assert_eq!(
            run_probe(&cri, &http("/bad"), &target, t).await,
            (false, "HTTP probe failed with statuscode: 500".into())
        );
        // A closed port: upstream's dial error text.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cport = closed.local_addr().unwrap().port();
        drop(closed);
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(cport as i32),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            run_probe(&cri, &tcp, &target, t).await,
            (
                false,
                format!("dial tcp 127.0.0.1:{cport}: connect: connection refused")
            )
        );
    }

    #[tokio::test]
    async fn exec_liveness_fails_after_the_threshold_and_readiness_gates_on_startup() {
        let cri = Arc::new(crate::fake::FakeCri::new());
        let exec = |cmd: &str| Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec![cmd.into()]),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(2),
            ..Default::default()
        };
        let container = Container {
            name: "c".into(),
            liveness_probe: Some(exec("false")),
            readiness_probe: Some(exec("true")),
            startup_probe: Some(exec("true")),
            ..Default::default()
        };
        let wake = Arc::new(Notify::new());
        let p = ContainerProbes::start(
            cri.clone(),
            Target {
                pod: Default::default(),
                pod_ip: "127.0.0.1".into(),
                container_id: "id1".into(),
                container,
            },
            0,
            wake.clone(),
        );
        assert!(!p.started() && !p.ready());
        for _ in 0..20 {
            if p.failed().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(p.started(), "the startup probe succeeded");
        assert!(p.ready(), "the readiness probe succeeded");
        assert_eq!(p.failed(), Some(ProbeKind::Liveness));
        let events = p.take_events();
        assert!(events
            .iter()
            .all(|e| e.reason == "Unhealthy" && e.message == "Liveness probe failed: failed"));
        assert_eq!(events.len(), 2, "one event per failed probe: {events:?}");
    }
}
