//! API server benchmark (bench/apiserver/run.sh; issue 11, "Benchmark").
//!
//! Starts its own `skiff server --disable-agent` (temp data dir under `$BENCH_DIR`, default
//! /var/tmp, free loopback port) and Debian's etcd 3.4 (free loopback ports), both stopped by
//! PID, then measures in one run:
//!
//! * idle: API server RSS right after start, and disk bytes written (`/proc/<pid>/io`
//!   `write_bytes`) by the API server and by etcd over the same idle window
//!   (`SK_BENCH_IDLE_SECS`, default 60);
//! * ConfigMaps (~900-byte value, as ../shared/upstream/bench-configmaps.py): sequential creates,
//!   gets, lists (of ~1,000) and updates with one client over one keep-alive HTTPS connection
//!   (ops/s, p50, p99), and creates with 16 clients (one connection each);
//! * raw etcd puts of the same objects (the ConfigMap JSON as the API server would store it),
//!   with 1 and 16 clients, through the `etcd-client` gRPC crate (one connection per client);
//! * 10,000 pods created with 16 clients, then one full JSON list of them timed a few times;
//! * watch fan-out: 1,000 watch streams on the ConfigMaps of one namespace (HTTP/2, 125
//!   streams per connection), then 50 creates 100 ms apart; for every event and watcher the time
//!   from the create's response to the watcher receiving the event;
//! * API server RSS after all that;
//! * authorization overhead (issue 12): with 200 extra RBAC bindings in place, sequential GETs
//!   of one pod over one keep-alive connection as the admin (`system:masters`: no
//!   authorization decision, the baseline), as the scheduler's certificate (RBAC through a
//!   ClusterRoleBinding) and with a service-account token (token authentication + RBAC through
//!   a RoleBinding), interleaved in rounds; p50 of each and the difference to the baseline.
//!   `SK_BENCH_ONLY=authz` runs only this part (no etcd, no idle window).
//! * `SK_BENCH_ONLY=seq`: only the sequential creates, against etcd and skiff in interleaved
//!   rounds (`SK_BENCH_ROUNDS`, default 7) so both see the same load; per round creates/s,
//!   p50/p99/max, CPU per create of each server and skiff's context switches per create, then
//!   the median ratio. With `SKIFF_BIN_B` set, a second server from that binary takes its turn
//!   in each round too (an A/B of two builds), and the median per-round B/A ratio is printed.
//!
//! When upstream Kubernetes runs beside it (../shared/upstream: `admin.kubeconfig` present and
//! https://127.0.0.1:7443 answering), the same API workload runs against it as a third column
//! (`upstream=`); otherwise its figures from ../shared/upstream/README.md are printed as
//! `upstream_ref=` (Kubernetes v1.20.2, measured on another day: not the same run).
//!
//! One line per figure (`name skiff=.. etcd=.. ratio=..`); failures are counted and printed;
//! nothing asserts on timings. Targets of issue 11 are listed at the end as met/missed.

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_bench::{cpu_secs, free_port, line_multi, percentile, rss_kib, write_bytes, Etcd};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sequential creates, gets and updates (as bench-configmaps.py).
const SEQ: usize = 1000;
/// Full lists of the ~1,000 ConfigMaps.
const LISTS: usize = 20;
const CLIENTS: usize = 16;
/// Creates per client in the 16-client run.
const CONC_EACH: usize = 250;
const PODS: usize = 10_000;
const POD_LISTS: usize = 5;
const WATCHERS: usize = 1000;
const STREAMS_PER_CONN: usize = 125;
const WATCH_EVENTS: usize = 50;
const WATCH_SPACING: Duration = Duration::from_millis(100);
/// Size of the ConfigMap value, as bench-configmaps.py.
const PAYLOAD: usize = 900;
/// How many failures of each phase are printed in full.
const SHOW_FAILS: usize = 3;

const UPSTREAM_KUBECONFIG: &str = "/var/tmp/upstream/run/admin.kubeconfig";
const UPSTREAM_PKI: &str = "/var/tmp/upstream/run/pki";
const UPSTREAM_ADDR: &str = "127.0.0.1:7443";

// ---------------------------------------------------------------------------------------------
// HTTPS clients

/// An API server to talk to: address and TLS settings (admin client certificate).
#[derive(Clone)]
struct Api {
    addr: SocketAddr,
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
    /// Sent as `Authorization: Bearer` (a client without a certificate).
    bearer: Option<String>,
}

fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

impl Api {
    fn new(addr: SocketAddr, ca: &Path, cert: &Path, key: &Path) -> Result<Api> {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(ca)? {
            roots.add(c)?;
        }
        let chain = pem_certs(cert)?;
        let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())?
            .with_context(|| format!("no private key in {}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        let mut h1 = cfg.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2 = cfg;
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Api {
            addr,
            h1: Arc::new(h1),
            h2: Arc::new(h2),
            bearer: None,
        })
    }

    /// A client with no certificate that sends `token`.
    fn with_token(addr: SocketAddr, ca: &Path, token: &str) -> Result<Api> {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(ca)? {
            roots.add(c)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut h1 = cfg.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2 = cfg;
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Api {
            addr,
            h1: Arc::new(h1),
            h2: Arc::new(h2),
            bearer: Some(token.to_string()),
        })
    }

    async fn tls(
        &self,
        cfg: &Arc<rustls::ClientConfig>,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await?;
        Ok(TokioIo::new(tls))
    }

    /// A keep-alive HTTP/1.1 connection.
    async fn conn(&self) -> Result<Conn> {
        let io = self.tls(&self.h1).await?;
        let (tx, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn {
            tx,
            host: self.addr.to_string(),
            bearer: self.bearer.clone(),
        })
    }

    /// An HTTP/2 connection (for many concurrent watch streams).
    async fn conn_h2(&self) -> Result<http2::SendRequest<Full<Bytes>>> {
        let io = self.tls(&self.h2).await?;
        let (tx, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(tx)
    }
}

struct Conn {
    tx: http1::SendRequest<Full<Bytes>>,
    host: String,
    bearer: Option<String>,
}

fn request(
    host: &str,
    method: &str,
    path: &str,
    body: Option<Bytes>,
) -> hyper::Request<Full<Bytes>> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("accept", "application/json");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(body.unwrap_or_default()))
        .expect("request")
}

impl Conn {
    /// One request; the status and the whole body.
    async fn req(&mut self, method: &str, path: &str, body: Option<Bytes>) -> Result<(u16, Bytes)> {
        self.tx.ready().await?;
        let mut r = request(&self.host, method, path, body);
        if let Some(t) = &self.bearer {
            r.headers_mut().insert(
                hyper::header::AUTHORIZATION,
                hyper::header::HeaderValue::from_str(&format!("Bearer {t}"))?,
            );
        }
        let resp = self.tx.send_request(r).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((code, body))
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// Outcome of one phase: latencies of the successful operations and the failures.
#[derive(Default)]
struct Phase {
    ok: usize,
    fails: usize,
    secs: f64,
    lat_ms: Vec<f64>,
    shown: Vec<String>,
}

impl Phase {
    fn per_s(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            f64::NAN
        }
    }
    fn p(&mut self, q: f64) -> f64 {
        self.lat_ms.sort_by(|a, b| a.total_cmp(b));
        percentile(&self.lat_ms, q)
    }
    fn fail(&mut self, what: String) {
        self.fails += 1;
        if self.shown.len() < SHOW_FAILS {
            self.shown.push(what);
        }
    }
    fn merge(&mut self, o: Phase) {
        self.ok += o.ok;
        self.fails += o.fails;
        self.lat_ms.extend(o.lat_ms);
        for s in o.shown {
            if self.shown.len() < SHOW_FAILS {
                self.shown.push(s);
            }
        }
    }
    /// Records one response: `expect` is the success code.
    fn record(
        &mut self,
        r: Result<(u16, Bytes)>,
        expect: u16,
        t: Instant,
        what: &str,
    ) -> Option<Bytes> {
        match r {
            Ok((code, body)) if code == expect => {
                self.ok += 1;
                self.lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
                Some(body)
            }
            Ok((code, body)) => {
                let snippet = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                self.fail(format!("{what}: {code} {snippet}"));
                None
            }
            Err(e) => {
                self.fail(format!("{what}: {e:#}"));
                None
            }
        }
    }
}

/// Failures of every phase, printed as `# failures` lines at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn note(&mut self, col: &str, phase: &str, p: &Phase) {
        if p.fails > 0 {
            self.0.push(format!(
                "{col} {phase}: {} failed of {}; first: {}",
                p.fails,
                p.fails + p.ok,
                p.shown.join(" | ")
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Objects

fn payload(seed: usize) -> String {
    let c = (b'a' + (seed % 26) as u8) as char;
    std::iter::repeat_n(c, PAYLOAD).collect()
}

fn configmap(name: &str, seed: usize, rv: Option<&str>) -> Bytes {
    let mut md = serde_json::json!({ "name": name });
    if let Some(rv) = rv {
        md["resourceVersion"] = rv.into();
    }
    let obj = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": md,
        "data": { "payload": payload(seed) }
    });
    Bytes::from(serde_json::to_vec(&obj).expect("json"))
}

/// The ConfigMap as an API server stores it (uid, creationTimestamp, managedFields), for the
/// raw etcd puts.
fn stored_configmap(ns: &str, name: &str, seed: usize) -> Vec<u8> {
    let obj = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": name, "namespace": ns,
            "uid": format!("6f1c2a8e-0d3b-4c59-9a7e-{seed:012}"),
            "creationTimestamp": "2026-12-06T03:00:00Z",
            "managedFields": [{
                "manager": "apiserver-bench", "operation": "Update", "apiVersion": "v1",
                "time": "2026-12-06T03:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:payload": {}}}
            }]
        },
        "data": { "payload": payload(seed) }
    });
    serde_json::to_vec(&obj).expect("json")
}

fn pod(name: &str) -> Bytes {
    // Bound to a node that does not exist: valid, and the scheduler leaves it alone.
    let obj = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "sk-bench" } },
        "spec": {
            "nodeName": "sk-bench-absent-node",
            "containers": [{ "name": "c", "image": "127.0.0.1:5000/busybox:latest" }]
        }
    });
    Bytes::from(serde_json::to_vec(&obj).expect("json"))
}

fn resource_version(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// API workload

async fn ensure_namespace(c: &mut Conn, ns: &str) -> Result<()> {
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    let (code, resp) = c
        .req(
            "POST",
            "/api/v1/namespaces",
            Some(Bytes::from(body.to_string())),
        )
        .await?;
    if code != 201 && code != 409 {
        bail!(
            "creating namespace {ns}: {code} {}",
            String::from_utf8_lossy(&resp)
        );
    }
    Ok(())
}

/// `SK_BENCH_ONLY=seq`: only the sequential-create figure, in interleaved rounds
/// (`SK_BENCH_ROUNDS`, default 7) of 1,000 etcd puts then 1,000 API creates against each server
/// (`SKIFF_BIN`, and `SKIFF_BIN_B` when set: an A/B of two builds under the same load), so that
/// all see the same machine load; prints each round and the medians.
async fn seq_interleaved(skiffs: &[(&str, &Skiff)], etcd_addr: &str, etcd_pid: u32) -> Result<()> {
    let rounds: usize = match std::env::var("SK_BENCH_ROUNDS") {
        Ok(s) => s.parse().context("SK_BENCH_ROUNDS: a whole number")?,
        Err(_) => 7,
    };
    for (name, skiff) in skiffs {
        println!("# skiff {name} pid {}", skiff.pid());
    }
    println!("# etcd {etcd_addr}; {rounds} interleaved rounds of {SEQ} sequential creates");
    let ep = format!("http://{etcd_addr}");
    let mut etcd = etcd_client::Client::connect([ep.as_str()], None).await?;
    let ns = "sk-bench-cm";
    let base = format!("/api/v1/namespaces/{ns}/configmaps");
    let mut conns = Vec::new();
    for (_, skiff) in skiffs {
        let mut c = skiff.api.conn().await.context("connecting")?;
        ensure_namespace(&mut c, ns).await?;
        conns.push(c);
    }
    // Per server: ratios to etcd, p50s; etcd's p50s; per round, B's creates/s over A's.
    let mut ratios = vec![Vec::new(); skiffs.len()];
    let mut sk_p50 = vec![Vec::new(); skiffs.len()];
    let (mut et_p50, mut b_over_a) = (Vec::new(), Vec::new());
    let mut fails = Failures::default();
    for r in 0..rounds {
        let mut e = Phase::default();
        let ecpu0 = cpu_secs(etcd_pid);
        let t0 = Instant::now();
        for i in 0..SEQ {
            let name = format!("cm-{r}-{i:05}");
            let v = stored_configmap(ns, &name, i);
            let t = Instant::now();
            match etcd
                .put(format!("/registry/configmaps/{ns}/{name}"), v, None)
                .await
            {
                Ok(_) => {
                    e.ok += 1;
                    e.lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Err(err) => e.fail(format!("put: {err}")),
            }
        }
        e.secs = t0.elapsed().as_secs_f64();
        let ecpu = cpu_secs(etcd_pid) - ecpu0;
        println!(
            "round {r}: etcd puts/s={:.0} p50/p99/max ms={:.3}/{:.2}/{:.1} cpu us/op={:.0}; load {}",
            e.per_s(),
            e.p(0.5),
            e.p(0.99),
            e.p(1.0),
            ecpu * 1e6 / SEQ as f64,
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split(' ')
                .next()
                .unwrap_or("?")
        );
        et_p50.push(e.p(0.5));
        fails.note("etcd", "puts sequential", &e);
        let mut per_s = Vec::new();
        for (k, ((label, skiff), c)) in skiffs.iter().zip(conns.iter_mut()).enumerate() {
            let mut s = Phase::default();
            let scpu0 = cpu_secs(skiff.pid());
            let sctx0 = ctx_switches(skiff.pid());
            let t0 = Instant::now();
            for i in 0..SEQ {
                let name = format!("cm-{r}-{i:05}");
                let t = Instant::now();
                let res = c.req("POST", &base, Some(configmap(&name, i, None))).await;
                s.record(res, 201, t, &format!("create {name}"));
            }
            s.secs = t0.elapsed().as_secs_f64();
            let scpu = cpu_secs(skiff.pid()) - scpu0;
            let sctx = ctx_switches(skiff.pid()) - sctx0;
            let ratio = s.per_s() / e.per_s();
            println!(
                "round {r}: skiff {label} creates/s={:.0} ratio={ratio:.2} p50/p99/max ms={:.3}/{:.2}/{:.1} cpu us/op={:.0} context switches/op={:.1}",
                s.per_s(),
                s.p(0.5),
                s.p(0.99),
                s.p(1.0),
                scpu * 1e6 / SEQ as f64,
                sctx as f64 / SEQ as f64,
            );
            ratios[k].push(ratio);
            sk_p50[k].push(s.p(0.5));
            per_s.push(s.per_s());
            fails.note("skiff", "creates sequential", &s);
        }
        if let [a, b] = per_s[..] {
            b_over_a.push(b / a);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    for (k, (label, _)) in skiffs.iter().enumerate() {
        println!(
            "apiserver_create_seq_ratio_median{} ratio={:.2} (p50 ms skiff={:.3} etcd={:.3})",
            if skiffs.len() > 1 {
                format!(" {label}")
            } else {
                String::new()
            },
            med(&mut ratios[k]),
            med(&mut sk_p50[k]),
            med(&mut et_p50)
        );
    }
    if !b_over_a.is_empty() {
        println!(
            "apiserver_create_seq_b_over_a median={:.3} (creates/s of SKIFF_BIN_B over SKIFF_BIN, per round)",
            med(&mut b_over_a)
        );
    }
    for f in &fails.0 {
        println!("# failures: {f}");
    }
    Ok(())
}

/// Context switches (voluntary and not) of every thread of `pid` so far.
fn ctx_switches(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|st| {
            st.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Figures of the ConfigMap, pod and watch workload on one API server.
#[derive(Default)]
struct ApiFigures {
    create_seq: Phase,
    get_seq: Phase,
    list_seq: Phase,
    list_items: usize,
    update_seq: Phase,
    create_16: Phase,
    /// CPU seconds of this process and of the API server during the 16-client creates.
    create_16_cpu: (f64, f64),
    pods_16: Phase,
    pod_list: Phase,
    pod_list_bytes: usize,
    pod_list_items: usize,
    /// The pods' deletecollection (grace period 0): the request, how long until none was
    /// left, how many were left.
    pod_delete: Phase,
    pod_delete_ms: f64,
    pod_delete_left: usize,
    watch: WatchFigures,
}

#[derive(Default)]
struct WatchFigures {
    /// Latency from the create's response to each watcher's receipt (ms; negative when the
    /// event arrived before the response).
    from_ack: Phase,
    /// Latency from sending the create to each watcher's receipt (ms).
    from_send: Phase,
    watchers_up: usize,
    creates: Phase,
    missed: usize,
}

/// `server`: the API server's PID when it is ours (for its CPU time).
async fn run_api(api: &Api, label: &str, server: Option<u32>) -> Result<ApiFigures> {
    let mut f = ApiFigures::default();
    let mut c = api.conn().await.context("connecting")?;
    let ns = "sk-bench-cm";
    for n in [ns, "sk-bench-cm16", "sk-bench-pods", "sk-bench-watch"] {
        ensure_namespace(&mut c, n).await?;
    }
    let base = format!("/api/v1/namespaces/{ns}/configmaps");

    // Sequential creates, one keep-alive connection.
    let mut rvs: Vec<Option<String>> = Vec::with_capacity(SEQ);
    let t0 = Instant::now();
    for i in 0..SEQ {
        let name = format!("cm-{i:05}");
        let t = Instant::now();
        let r = c.req("POST", &base, Some(configmap(&name, i, None))).await;
        let body = f.create_seq.record(r, 201, t, &format!("create {name}"));
        rvs.push(body.and_then(|b| resource_version(&b)));
    }
    f.create_seq.secs = t0.elapsed().as_secs_f64();
    eprintln!("[{label}] sequential creates done");

    let t0 = Instant::now();
    for i in 0..SEQ {
        let path = format!("{base}/cm-{i:05}");
        let t = Instant::now();
        let r = c.req("GET", &path, None).await;
        f.get_seq.record(r, 200, t, &format!("get {path}"));
    }
    f.get_seq.secs = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    for _ in 0..LISTS {
        let t = Instant::now();
        let r = c.req("GET", &base, None).await;
        if let Some(b) = f.list_seq.record(r, 200, t, "list configmaps") {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            f.list_items = v["items"].as_array().map_or(0, Vec::len);
        }
    }
    f.list_seq.secs = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    for (i, rv) in rvs.iter().enumerate() {
        let name = format!("cm-{i:05}");
        let t = Instant::now();
        let r = c
            .req(
                "PUT",
                &format!("{base}/{name}"),
                Some(configmap(&name, i + 1, rv.as_deref())),
            )
            .await;
        f.update_seq.record(r, 200, t, &format!("update {name}"));
    }
    f.update_seq.secs = t0.elapsed().as_secs_f64();
    eprintln!("[{label}] gets, lists, updates done");

    // Creates with 16 clients, one connection each.
    let cpu0 = (cpu_secs(std::process::id()), server.map_or(0.0, cpu_secs));
    f.create_16 = concurrent(api, CLIENTS, CONC_EACH, |t, i| {
        let name = format!("cm-{t:02}-{i:05}");
        (
            "/api/v1/namespaces/sk-bench-cm16/configmaps".to_string(),
            configmap(&name, i, None),
        )
    })
    .await?;
    f.create_16_cpu = (
        cpu_secs(std::process::id()) - cpu0.0,
        server.map_or(0.0, cpu_secs) - cpu0.1,
    );

    // 10,000 pods with 16 clients, then full lists.
    f.pods_16 = concurrent(api, CLIENTS, PODS / CLIENTS, |t, i| {
        (
            "/api/v1/namespaces/sk-bench-pods/pods".to_string(),
            pod(&format!("pod-{t:02}-{i:05}")),
        )
    })
    .await?;
    eprintln!("[{label}] 16-client creates and {PODS} pods done");
    for _ in 0..POD_LISTS {
        let t = Instant::now();
        let r = c
            .req("GET", "/api/v1/namespaces/sk-bench-pods/pods", None)
            .await;
        if let Some(b) = f.pod_list.record(r, 200, t, "list pods") {
            f.pod_list_bytes = b.len();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            f.pod_list_items = v["items"].as_array().map_or(0, Vec::len);
        }
    }

    // All of them deleted with one deletecollection (grace period 0: their node never
    // confirms), then listed until none is left.
    let pods = "/api/v1/namespaces/sk-bench-pods/pods";
    let t = Instant::now();
    let body =
        Bytes::from_static(br#"{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0}"#);
    let r = c.req("DELETE", pods, Some(body)).await;
    f.pod_delete.record(r, 200, t, "deletecollection pods");
    f.pod_delete_left = usize::MAX;
    while f.pod_delete.fails == 0 && t.elapsed() < Duration::from_secs(300) {
        let r = c.req("GET", &format!("{pods}?limit=1"), None).await;
        let v: serde_json::Value = match r {
            Ok((200, b)) => serde_json::from_slice(&b).unwrap_or_default(),
            _ => break,
        };
        let left = v["items"].as_array().map_or(usize::MAX, Vec::len);
        f.pod_delete_left = left;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.pod_delete_ms = t.elapsed().as_secs_f64() * 1e3;
    eprintln!("[{label}] pods deleted");

    f.watch = watch_fanout(api, &mut c, "sk-bench-watch").await?;
    eprintln!("[{label}] watch fan-out done");
    Ok(f)
}

/// `clients` tasks, each on its own keep-alive connection, each POSTing `each` objects made by
/// `make(task, i)`; expects 201.
async fn concurrent<F>(api: &Api, clients: usize, each: usize, make: F) -> Result<Phase>
where
    F: Fn(usize, usize) -> (String, Bytes) + Send + Sync + Clone + 'static,
{
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(api.conn().await?);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(t, mut c)| {
            let make = make.clone();
            tokio::spawn(async move {
                let mut p = Phase::default();
                for i in 0..each {
                    let (path, body) = make(t, i);
                    let tm = Instant::now();
                    let r = c.req("POST", &path, Some(body)).await;
                    p.record(r, 201, tm, &format!("POST {path} #{t}/{i}"));
                }
                p
            })
        })
        .collect();
    let mut all = Phase::default();
    for t in tasks {
        all.merge(t.await?);
    }
    all.secs = t0.elapsed().as_secs_f64();
    Ok(all)
}

/// One printed figure: name, skiff's value, the peers' values.
type Row<'a> = (String, f64, Vec<(&'a str, f64)>);

/// Times at which one watcher received the events (by create index).
type Receipts = Vec<Option<Instant>>;

/// Index `i` of an ADDED `w-<i>` ConfigMap in one JSON line of a watch stream; found by a byte
/// search, not a JSON parse, so that 1,000 watchers in this process stay cheap next to the server.
fn added_index(line: &[u8]) -> Option<usize> {
    fn find(h: &[u8], n: &[u8]) -> Option<usize> {
        h.windows(n.len()).position(|w| w == n)
    }
    find(line, br#""type":"ADDED""#)?;
    let at = find(line, br#""name":"w-"#)? + br#""name":"w-"#.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// One watch stream: sends `true` on `up` once the response headers came (`false` on failure),
/// then records the receipt time of every ADDED `w-<i>` ConfigMap until it has all of them or
/// `stop` fires.
async fn watcher(
    mut tx: http2::SendRequest<Full<Bytes>>,
    host: String,
    path: String,
    up: tokio::sync::mpsc::Sender<std::result::Result<(), String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Receipts {
    let mut got: Receipts = vec![None; WATCH_EVENTS];
    let resp = async {
        tx.ready().await?;
        tx.send_request(request(&host, "GET", &path, None)).await
    }
    .await;
    let resp = match resp {
        Ok(r) if r.status() == 200 => {
            let _ = up.send(Ok(())).await;
            r
        }
        Ok(r) => {
            let _ = up.send(Err(format!("watch: {}", r.status()))).await;
            return got;
        }
        Err(e) => {
            let _ = up.send(Err(format!("watch: {e}"))).await;
            return got;
        }
    };
    drop(up);
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut left = WATCH_EVENTS;
    while left > 0 {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => break,
        };
        let Some(Ok(frame)) = frame else { break };
        let now = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(nl + 1);
            if let Some(slot) = added_index(&line).and_then(|i| got.get_mut(i)) {
                if slot.is_none() {
                    *slot = Some(now);
                    left -= 1;
                }
            }
        }
    }
    got
}

async fn watch_fanout(api: &Api, c: &mut Conn, ns: &str) -> Result<WatchFigures> {
    let mut wf = WatchFigures::default();
    let path = format!("/api/v1/namespaces/{ns}/configmaps?watch=true");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(WATCHERS);
    let mut tasks = Vec::with_capacity(WATCHERS);
    let mut conn = None;
    for w in 0..WATCHERS {
        if w % STREAMS_PER_CONN == 0 {
            conn = Some(
                api.conn_h2()
                    .await
                    .context("HTTP/2 connection for watches")?,
            );
        }
        let tx = conn.clone().expect("connection");
        tasks.push(tokio::spawn(watcher(
            tx,
            api.addr.to_string(),
            path.clone(),
            up_tx.clone(),
            stop_rx.clone(),
        )));
    }
    drop(up_tx);
    let mut setup = Phase::default();
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    for _ in 0..WATCHERS {
        tokio::select! {
            r = up_rx.recv() => match r {
                Some(Ok(())) => wf.watchers_up += 1,
                Some(Err(e)) => setup.fail(e),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    if setup.fails > 0 {
        eprintln!(
            "watch streams that failed to open: {} (first: {})",
            setup.fails,
            setup.shown.join(" | ")
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let base = format!("/api/v1/namespaces/{ns}/configmaps");
    let mut sent = vec![None; WATCH_EVENTS];
    let mut acked = vec![None; WATCH_EVENTS];
    let t0 = Instant::now();
    for i in 0..WATCH_EVENTS {
        let name = format!("w-{i:03}");
        let t = Instant::now();
        let r = c.req("POST", &base, Some(configmap(&name, i, None))).await;
        if wf
            .creates
            .record(r, 201, t, &format!("create {name}"))
            .is_some()
        {
            sent[i] = Some(t);
            acked[i] = Some(Instant::now());
        }
        tokio::time::sleep(WATCH_SPACING).await;
    }
    wf.creates.secs = t0.elapsed().as_secs_f64();
    // Every watcher should have every event well before this; the rest count as missed.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = stop_tx.send(true);
        stop_tx
    });
    let mut receipts = Vec::with_capacity(WATCHERS);
    for t in tasks {
        receipts.push(t.await?);
    }
    stopper.abort();
    for got in &receipts {
        for i in 0..WATCH_EVENTS {
            let (Some(s), Some(a)) = (sent[i], acked[i]) else {
                continue;
            };
            match got[i] {
                Some(r) => {
                    let from_ack = if r >= a {
                        (r - a).as_secs_f64()
                    } else {
                        -(a - r).as_secs_f64()
                    };
                    wf.from_ack.lat_ms.push(from_ack * 1e3);
                    wf.from_send.lat_ms.push((r - s).as_secs_f64() * 1e3);
                    wf.from_ack.ok += 1;
                }
                None => wf.missed += 1,
            }
        }
    }
    Ok(wf)
}

// ---------------------------------------------------------------------------------------------
// etcd

/// Sequential then 16-client puts of the stored ConfigMaps through `etcd-client`.
async fn run_etcd(addr: &str) -> Result<(Phase, Phase)> {
    let ep = format!("http://{addr}");
    let mut client = etcd_client::Client::connect([ep.as_str()], None).await?;
    let mut seq = Phase::default();
    let values: Vec<(String, Vec<u8>)> = (0..SEQ)
        .map(|i| {
            let name = format!("cm-{i:05}");
            (
                format!("/registry/configmaps/sk-bench-cm/{name}"),
                stored_configmap("sk-bench-cm", &name, i),
            )
        })
        .collect();
    let t0 = Instant::now();
    for (k, v) in values {
        let t = Instant::now();
        match client.put(k, v, None).await {
            Ok(_) => {
                seq.ok += 1;
                seq.lat_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => seq.fail(format!("put: {e}")),
        }
    }
    seq.secs = t0.elapsed().as_secs_f64();

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(etcd_client::Client::connect([ep.as_str()], None).await?);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(t, mut cl)| {
            tokio::spawn(async move {
                let mut p = Phase::default();
                for i in 0..CONC_EACH {
                    let name = format!("cm-{t:02}-{i:05}");
                    let k = format!("/registry/configmaps/sk-bench-cm16/{name}");
                    let v = stored_configmap("sk-bench-cm16", &name, i);
                    let tm = Instant::now();
                    match cl.put(k, v, None).await {
                        Ok(_) => {
                            p.ok += 1;
                            p.lat_ms.push(tm.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(e) => p.fail(format!("put: {e}")),
                    }
                }
                p
            })
        })
        .collect();
    let mut conc = Phase::default();
    for t in tasks {
        conc.merge(t.await?);
    }
    conc.secs = t0.elapsed().as_secs_f64();
    Ok((seq, conc))
}

// ---------------------------------------------------------------------------------------------
// Authorization overhead

/// Extra RBAC bindings in place while the authorization figures are measured.
const AUTHZ_BINDINGS: usize = 200;
/// Sequential GETs per identity and round; rounds interleave the identities.
const AUTHZ_GETS: usize = 500;
const AUTHZ_ROUNDS: usize = 6;

struct AuthzFigures {
    baseline: Phase,
    cert: Phase,
    token: Phase,
}

async fn post(c: &mut Conn, path: &str, body: serde_json::Value) -> Result<Bytes> {
    let (code, resp) = c
        .req("POST", path, Some(Bytes::from(body.to_string())))
        .await?;
    if code != 201 && code != 200 && code != 409 {
        bail!("POST {path}: {code} {}", String::from_utf8_lossy(&resp));
    }
    Ok(resp)
}

async fn authz_overhead(skiff: &Skiff) -> Result<AuthzFigures> {
    let ns = "sk-authz";
    let rbac = "rbac.authorization.k8s.io";
    let mut admin = skiff.api.conn().await?;
    ensure_namespace(&mut admin, ns).await?;
    // 200 bindings: three quarters RoleBindings in the namespace, the rest cluster-wide, to
    // users and groups the measured identities are not.
    for i in 0..AUTHZ_BINDINGS {
        let subject = if i % 2 == 0 {
            serde_json::json!({"apiGroup": rbac, "kind": "User", "name": format!("sk-user-{i}")})
        } else {
            serde_json::json!({"apiGroup": rbac, "kind": "Group", "name": format!("sk-group-{i}")})
        };
        if i < AUTHZ_BINDINGS * 3 / 4 {
            post(
                &mut admin,
                &format!("/apis/{rbac}/v1/namespaces/{ns}/rolebindings"),
                serde_json::json!({"apiVersion": format!("{rbac}/v1"), "kind": "RoleBinding",
                    "metadata": {"name": format!("sk-rb-{i}")},
                    "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "view"},
                    "subjects": [subject]}),
            )
            .await?;
        } else {
            post(
                &mut admin,
                &format!("/apis/{rbac}/v1/clusterrolebindings"),
                serde_json::json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRoleBinding",
                    "metadata": {"name": format!("sk-crb-{i}")},
                    "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "view"},
                    "subjects": [subject]}),
            )
            .await?;
        }
    }
    post(
        &mut admin,
        &format!("/api/v1/namespaces/{ns}/pods"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sk-authz-pod"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await?;
    post(
        &mut admin,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sk-bench"}}),
    )
    .await?;
    post(
        &mut admin,
        &format!("/apis/{rbac}/v1/namespaces/{ns}/roles"),
        serde_json::json!({
        "apiVersion": format!("{rbac}/v1"), "kind": "Role", "metadata": {"name": "sk-pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    )
    .await?;
    post(&mut admin, &format!("/apis/{rbac}/v1/namespaces/{ns}/rolebindings"), serde_json::json!({
        "apiVersion": format!("{rbac}/v1"), "kind": "RoleBinding", "metadata": {"name": "sk-pod-reader"},
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "sk-pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "sk-bench", "namespace": ns}]})).await?;
    let tr = post(
        &mut admin,
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/sk-bench/token"),
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}}),
    )
    .await?;
    let tr: serde_json::Value = serde_json::from_slice(&tr)?;
    let token = tr["status"]["token"]
        .as_str()
        .context("TokenRequest without a token")?;
    let sched = Api::new(
        skiff.api.addr,
        &skiff.tls.join("ca.crt"),
        &skiff.tls.join("client-scheduler.crt"),
        &skiff.tls.join("client-scheduler.key"),
    )?;
    let tok = Api::with_token(skiff.api.addr, &skiff.tls.join("ca.crt"), token)?;
    let mut conns = [admin, sched.conn().await?, tok.conn().await?];
    let path = format!("/api/v1/namespaces/{ns}/pods/sk-authz-pod");
    // Warm-up (connections, caches), then interleaved rounds.
    for c in conns.iter_mut() {
        for _ in 0..50 {
            let (code, body) = c.req("GET", &path, None).await?;
            if code != 200 {
                bail!("GET {path}: {code} {}", String::from_utf8_lossy(&body));
            }
        }
    }
    let mut phases = [Phase::default(), Phase::default(), Phase::default()];
    for _ in 0..AUTHZ_ROUNDS {
        for (c, ph) in conns.iter_mut().zip(phases.iter_mut()) {
            let t0 = Instant::now();
            for _ in 0..AUTHZ_GETS {
                let t = Instant::now();
                let r = c.req("GET", &path, None).await;
                ph.record(r, 200, t, "GET pod");
            }
            ph.secs += t0.elapsed().as_secs_f64();
        }
    }
    let [baseline, cert, token] = phases;
    Ok(AuthzFigures {
        baseline,
        cert,
        token,
    })
}

fn print_authz(a: &mut AuthzFigures, fails: &mut Failures) {
    fails.note("skiff", "authz baseline gets", &a.baseline);
    fails.note("skiff", "authz cert gets", &a.cert);
    fails.note("skiff", "authz token gets", &a.token);
    let base = a.baseline.p(0.5) * 1e3;
    let cert = a.cert.p(0.5) * 1e3;
    let token = a.token.p(0.5) * 1e3;
    println!(
        "# authorization: {AUTHZ_BINDINGS} extra RBAC bindings; {AUTHZ_ROUNDS} interleaved rounds of {AUTHZ_GETS} sequential GETs of one pod per identity, one keep-alive HTTP/1.1 connection each; baseline = admin (system:masters, no authorization decision)"
    );
    println!(
        "authz_cert_get_p50_us skiff={cert:.1} baseline={base:.1} ratio={:.2}",
        cert / base
    );
    println!(
        "authz_token_get_p50_us skiff={token:.1} baseline={base:.1} ratio={:.2}",
        token / base
    );
    println!(
        "authz_cert_get_p99_us skiff={:.1} baseline={:.1} ratio={:.2}",
        a.cert.p(0.99) * 1e3,
        a.baseline.p(0.99) * 1e3,
        a.cert.p(0.99) / a.baseline.p(0.99)
    );
    println!(
        "authz_token_get_p99_us skiff={:.1} baseline={:.1} ratio={:.2}",
        a.token.p(0.99) * 1e3,
        a.baseline.p(0.99) * 1e3,
        a.token.p(0.99) / a.baseline.p(0.99)
    );
    println!(
        "authz_overhead_p50_us cert={:.1} token={:.1}",
        cert - base,
        token - base
    );
    target(
        "authorization overhead p50 with 200 bindings < 50 us (cert)",
        cert - base,
        cert - base < 50.0,
    );
    target(
        "authentication+authorization overhead p50 with 200 bindings < 50 us (token)",
        token - base,
        token - base < 50.0,
    );
}

// ---------------------------------------------------------------------------------------------
// skiff server

/// `skiff server --disable-agent` of the bench's own; killed by PID and its temp dir removed on
/// drop.
struct Skiff {
    child: Child,
    _dir: tempfile::TempDir,
    api: Api,
    /// The server's PKI folder (CA, client certificates).
    tls: PathBuf,
}

impl Skiff {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn start(bin: &Path, parent: &Path) -> Result<Skiff> {
        let dir = tempfile::Builder::new()
            .prefix("sk-apibench")
            .tempdir_in(parent)
            .with_context(|| format!("temp dir in {}", parent.display()))?;
        let port = free_port()?;
        let data = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new(bin)
            .args(["server", "--disable-agent", "--node-name", "sk-bench"])
            .args(["--bind-address", "127.0.0.1", "--node-ip", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--write-kubeconfig")
            .arg(dir.path().join("kubeconfig.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let tls = data.join("tls");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        let mut last = String::from("no attempt");
        while started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !dir.path().join("kubeconfig.yaml").exists() {
                continue;
            }
            let api = Api::new(
                addr,
                &tls.join("ca.crt"),
                &tls.join("client-admin.crt"),
                &tls.join("client-admin.key"),
            )?;
            let ready = async {
                let mut c = api.conn().await?;
                c.req("GET", "/readyz", None).await
            }
            .await;
            match ready {
                Ok((200, _)) => {
                    return Ok(Skiff {
                        child,
                        _dir: dir,
                        api,
                        tls,
                    })
                }
                Ok((code, body)) => last = format!("{code} {}", String::from_utf8_lossy(&body)),
                Err(e) => last = format!("{e:#}"),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let tail = log_tail(dir.path());
        bail!("skiff server did not become ready in 60 s (last: {last})\n{tail}")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Drop for Skiff {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream

/// Upstream's API when it runs beside us (../shared/upstream/start.sh).
async fn upstream() -> Option<Api> {
    if !Path::new(UPSTREAM_KUBECONFIG).exists() {
        return None;
    }
    let pki = Path::new(UPSTREAM_PKI);
    let api = Api::new(
        UPSTREAM_ADDR.parse().ok()?,
        &pki.join("ca.crt"),
        &pki.join("admin.crt"),
        &pki.join("admin.key"),
    )
    .ok()?;
    let probe = async {
        let mut c = api.conn().await?;
        c.req("GET", "/version", None).await
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok((200, _))) => Some(api),
        _ => None,
    }
}

async fn delete_namespaces(api: &Api) {
    if let Ok(mut c) = api.conn().await {
        for ns in [
            "sk-bench-cm",
            "sk-bench-cm16",
            "sk-bench-pods",
            "sk-bench-watch",
        ] {
            let _ = c
                .req("DELETE", &format!("/api/v1/namespaces/{ns}"), None)
                .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn target(desc: &str, value: f64, met: bool) {
    let verdict = if met { "met" } else { "MISSED" };
    println!("# target {desc}: {value:.2} ({verdict})");
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The benchmark runs as a task on a worker, not on the main thread: its requests and the
    // connection tasks of both clients then hand off to each other on one worker thread instead
    // of waking the main thread for every response.
    rt.block_on(async { tokio::spawn(run()).await? })
}

async fn run() -> Result<()> {
    let parent = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    let idle_secs: u64 = match std::env::var("SK_BENCH_IDLE_SECS") {
        Ok(s) => s.parse().context("SK_BENCH_IDLE_SECS: whole seconds")?,
        Err(_) => 60,
    };
    let bin = match std::env::var_os("SKIFF_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?.with_file_name("skiff"),
    };
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin skiff` (or set SKIFF_BIN)",
            bin.display()
        );
    }

    if std::env::var("SK_BENCH_ONLY").is_ok_and(|v| v == "authz") {
        let skiff = Skiff::start(&bin, &parent).await?;
        println!("# skiff {} (pid {})", bin.display(), skiff.pid());
        let mut fails = Failures::default();
        let mut a = authz_overhead(&skiff).await?;
        print_authz(&mut a, &mut fails);
        for f in &fails.0 {
            println!("# failures: {f}");
        }
        return Ok(());
    }
    let etcd = Etcd::start(&parent).context("etcd (Debian's etcd-server) is needed as the peer")?;
    let skiff = Skiff::start(&bin, &parent).await?;
    if std::env::var("SK_BENCH_ONLY").is_ok_and(|v| v == "seq") {
        let Some(bin_b) = std::env::var_os("SKIFF_BIN_B") else {
            return seq_interleaved(&[("A", &skiff)], &etcd.addr, etcd.pid()).await;
        };
        let skiff_b = Skiff::start(Path::new(&bin_b), &parent).await?;
        return seq_interleaved(&[("A", &skiff), ("B", &skiff_b)], &etcd.addr, etcd.pid()).await;
    }
    println!(
        "# skiff {} (pid {}), etcd {} (pid {}), data under {}; idle window {idle_secs} s",
        bin.display(),
        skiff.pid(),
        etcd.addr,
        etcd.pid(),
        parent.display()
    );
    // Let start-up writes (PKI, bootstrap objects) settle before the idle figures.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = rss_kib(skiff.pid());
    let etcd_rss_idle = rss_kib(etcd.pid());
    let (s0, e0) = (write_bytes(skiff.pid()), write_bytes(etcd.pid()));
    eprintln!("idle window: {idle_secs} s");
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (s1, e1) = (write_bytes(skiff.pid()), write_bytes(etcd.pid()));
    let per_min = 60.0 / idle_secs.max(1) as f64;
    let skiff_idle_kib_min = kib(s1 - s0) * per_min;
    let etcd_idle_kib_min = kib(e1 - e0) * per_min;

    let mut fails = Failures::default();
    let (mut etcd_seq, mut etcd_16) = run_etcd(&etcd.addr).await?;
    fails.note("etcd", "puts sequential", &etcd_seq);
    fails.note("etcd", "puts 16 clients", &etcd_16);
    eprintln!("etcd puts done");
    let (sw0, ew0) = (write_bytes(skiff.pid()), write_bytes(etcd.pid()));
    let mut sk = run_api(&skiff.api, "skiff", Some(skiff.pid())).await?;
    let rss_after = rss_kib(skiff.pid());
    let busy_writes_mib = (write_bytes(skiff.pid()) - sw0) as f64 / 1048576.0;
    let etcd_busy_writes_mib = (write_bytes(etcd.pid()) - ew0) as f64 / 1048576.0;

    let up_api = upstream().await;
    let mut up = match &up_api {
        Some(api) => {
            let f = run_api(api, "upstream", None).await;
            delete_namespaces(api).await;
            Some(f?)
        }
        None => None,
    };

    for (col, f) in [("skiff", Some(&sk)), ("upstream", up.as_ref())] {
        let Some(f) = f else { continue };
        fails.note(col, "creates sequential", &f.create_seq);
        fails.note(col, "gets", &f.get_seq);
        fails.note(col, "lists", &f.list_seq);
        fails.note(col, "updates", &f.update_seq);
        fails.note(col, "creates 16 clients", &f.create_16);
        fails.note(col, "pod creates", &f.pods_16);
        fails.note(col, "pod lists", &f.pod_list);
        fails.note(col, "pod deletecollection", &f.pod_delete);
        fails.note(col, "watch creates", &f.watch.creates);
    }

    // Upstream column: measured now, or the reference figures of ../shared/upstream/README.md
    // (medians of its 3 runs) where it has one.
    let upname = if up.is_some() {
        "upstream"
    } else {
        "upstream_ref"
    };
    let up_or = |measured: Option<f64>, reference: Option<f64>| -> Option<f64> {
        if up_api.is_some() {
            measured
        } else {
            reference
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut row = |name: &str, v: f64, etcd: Option<f64>, upv: Option<f64>| {
        let mut peers = Vec::new();
        if let Some(e) = etcd {
            peers.push(("etcd", e));
        }
        if let Some(u) = upv {
            peers.push((upname, u));
        }
        rows.push((name.to_string(), v, peers));
    };
    macro_rules! upv {
        ($($field:tt)+) => {
            up.as_mut().map(|u| u.$($field)+)
        };
    }
    row(
        "apiserver_create_seq_per_s",
        sk.create_seq.per_s(),
        Some(etcd_seq.per_s()),
        up_or(upv!(create_seq.per_s()), Some(509.0)),
    );
    row(
        "apiserver_create_seq_p50_ms",
        sk.create_seq.p(0.5),
        Some(etcd_seq.p(0.5)),
        up_or(upv!(create_seq.p(0.5)), None),
    );
    row(
        "apiserver_create_seq_p99_ms",
        sk.create_seq.p(0.99),
        Some(etcd_seq.p(0.99)),
        up_or(upv!(create_seq.p(0.99)), None),
    );
    row(
        "apiserver_create_16_clients_per_s",
        sk.create_16.per_s(),
        Some(etcd_16.per_s()),
        up_or(upv!(create_16.per_s()), None),
    );
    row(
        "apiserver_create_16_clients_p99_ms",
        sk.create_16.p(0.99),
        Some(etcd_16.p(0.99)),
        up_or(upv!(create_16.p(0.99)), None),
    );
    let (ug, ul, uu) = match up.as_mut() {
        Some(u) => (
            Some(&mut u.get_seq),
            Some(&mut u.list_seq),
            Some(&mut u.update_seq),
        ),
        None => (None, None, None),
    };
    for (name, ph, mut upph) in [
        ("get", &mut sk.get_seq, ug),
        ("list", &mut sk.list_seq, ul),
        ("update", &mut sk.update_seq, uu),
    ] {
        row(
            &format!("apiserver_{name}_seq_per_s"),
            ph.per_s(),
            None,
            upph.as_mut().map(|p| p.per_s()),
        );
        row(
            &format!("apiserver_{name}_seq_p50_ms"),
            ph.p(0.5),
            None,
            upph.as_mut().map(|p| p.p(0.5)),
        );
        row(
            &format!("apiserver_{name}_seq_p99_ms"),
            ph.p(0.99),
            None,
            upph.as_mut().map(|p| p.p(0.99)),
        );
    }
    row(
        "apiserver_pod_create_16_clients_per_s",
        sk.pods_16.per_s(),
        None,
        upv!(pods_16.per_s()),
    );
    row(
        "apiserver_list_10k_pods_p50_ms",
        sk.pod_list.p(0.5),
        None,
        upv!(pod_list.p(0.5)),
    );
    row(
        "apiserver_delete_10k_pods_ms",
        sk.pod_delete_ms,
        None,
        upv!(pod_delete_ms),
    );
    row(
        "apiserver_watch_1000_event_p50_ms",
        sk.watch.from_send.p(0.5),
        None,
        upv!(watch.from_send.p(0.5)),
    );
    row(
        "apiserver_watch_1000_event_p99_ms",
        sk.watch.from_send.p(0.99),
        None,
        upv!(watch.from_send.p(0.99)),
    );
    row(
        "apiserver_watch_1000_create_response_p99_ms",
        sk.watch.creates.p(0.99),
        None,
        upv!(watch.creates.p(0.99)),
    );
    row(
        "apiserver_watch_1000_event_after_response_p99_ms",
        sk.watch.from_ack.p(0.99),
        None,
        upv!(watch.from_ack.p(0.99)),
    );
    row(
        "apiserver_rss_idle_mib",
        rss_idle as f64 / 1024.0,
        None,
        up_or(None, Some(354_384.0 / 1024.0)),
    );
    row(
        "apiserver_rss_after_runs_mib",
        rss_after as f64 / 1024.0,
        None,
        None,
    );
    row(
        "apiserver_idle_write_kib_per_min",
        skiff_idle_kib_min,
        Some(etcd_idle_kib_min),
        up_or(None, Some(8192.0 / 1024.0)),
    );
    rows.push((
        "etcd_rss_idle_mib".into(),
        etcd_rss_idle as f64 / 1024.0,
        Vec::new(),
    ));
    for (name, v, peers) in &rows {
        println!("{}", line_multi(name, *v, peers));
    }
    println!(
        "# sequential ops: {SEQ} creates/gets/updates and {LISTS} lists of {} ConfigMaps ({PAYLOAD}-byte value) on one keep-alive HTTPS/1.1 connection; 16 clients: {} creates, one connection each; etcd: etcd-client 0.21 gRPC puts of the stored-form objects, one connection per client",
        sk.list_items,
        CLIENTS * CONC_EACH,
    );
    println!(
        "# pods: {} created by 16 clients; list of {} pods = {:.1} MiB JSON, {POD_LISTS} runs",
        sk.pods_16.ok,
        sk.pod_list_items,
        sk.pod_list_bytes as f64 / 1048576.0
    );
    println!(
        "# pods deleted: one deletecollection (gracePeriodSeconds 0), then lists until empty: {}",
        match sk.pod_delete_left {
            0 => "all gone".to_string(),
            usize::MAX => "the deletecollection or a list failed".to_string(),
            n => format!("{n}+ still there after 300 s"),
        }
    );
    println!(
        "# watch: {}/{WATCHERS} streams up over {} HTTP/2 connections; {} creates {} ms apart; {} receipts, {} missed",
        sk.watch.watchers_up,
        WATCHERS.div_ceil(STREAMS_PER_CONN),
        sk.watch.creates.ok,
        WATCH_SPACING.as_millis(),
        sk.watch.from_ack.ok,
        sk.watch.missed,
    );
    println!(
        "# watch latency: from sending the create to each watcher's receipt (includes the create's own round trip: an upper bound); after_response: from the create's response (negative when the event came first; {} of {} did)",
        sk.watch.from_ack.lat_ms.iter().filter(|l| **l < 0.0).count(),
        sk.watch.from_ack.ok
    );
    println!(
        "# disk writes (/proc/<pid>/io write_bytes) during the API workload: skiff server {busy_writes_mib:.1} MiB, etcd {etcd_busy_writes_mib:.1} MiB (etcd: none expected, it is idle then); idle window {idle_secs} s: skiff {} B, etcd {} B",
        s1 - s0,
        e1 - e0
    );
    println!(
        "# cpu during the 16-client creates: bench client {:.2} s, skiff server {:.2} s over {:.2} s wall (2 cores shared with other work)",
        sk.create_16_cpu.0, sk.create_16_cpu.1, sk.create_16.secs
    );
    if let Some(u) = &up {
        println!(
            "# upstream watch: {}/{WATCHERS} streams up, {} receipts, {} missed",
            u.watch.watchers_up, u.watch.from_ack.ok, u.watch.missed
        );
    }
    if up.is_none() {
        println!(
            "# upstream_ref: Kubernetes v1.20.2 figures from ../shared/upstream/README.md (median of 3 runs, not this run): kube-apiserver not running at {UPSTREAM_ADDR}"
        );
    }
    let ratio = sk.create_seq.per_s() / etcd_seq.per_s();
    target(
        "embedded-store sequential creates / raw etcd puts >= 2x",
        ratio,
        ratio >= 2.0,
    );
    let c16 = sk.create_16.per_s();
    target("creates/s with 16 clients >= 5000", c16, c16 >= 5000.0);
    let p99 = sk.create_seq.p(0.99);
    target("sequential create p99 < 10 ms", p99, p99 < 10.0);
    let w99 = sk.watch.from_send.p(0.99);
    target(
        "watch event p99 with 1000 watchers < 100 ms (from sending the create)",
        w99,
        w99 < 100.0 && sk.watch.missed == 0,
    );
    let rss = rss_idle as f64 / 1024.0;
    target("API server RSS idle < 40 MiB", rss, rss < 40.0);
    target(
        "idle disk writes <= 64 KiB/min",
        skiff_idle_kib_min,
        skiff_idle_kib_min <= 64.0,
    );
    let mut authz = authz_overhead(&skiff).await?;
    print_authz(&mut authz, &mut fails);
    if fails.0.is_empty() {
        println!("# failures: none");
    }
    for f in &fails.0 {
        println!("# failures: {f}");
    }
    drop(skiff);
    drop(etcd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_index_finds_watch_events() {
        let skiff = br#"{"object":{"metadata":{"name":"w-007","namespace":"x"}},"type":"ADDED"}"#;
        let upstream = br#"{"type":"ADDED","object":{"metadata":{"name":"w-42"}}}"#;
        assert_eq!(added_index(skiff), Some(7));
        assert_eq!(added_index(upstream), Some(42));
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"w-1"}}}"#;
        assert_eq!(added_index(modified), None);
        let other = br#"{"type":"ADDED","object":{"metadata":{"name":"kube-root-ca.crt"}}}"#;
        assert_eq!(added_index(other), None);
    }
}
