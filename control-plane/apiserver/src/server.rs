//! HTTPS serving, authentication and routing.

use crate::handlers::{self, Ctx, Target, UserInfo};
use crate::pki::Pki;
use crate::registry::Registry;
use crate::status::StatusError;
use crate::wire;
use crate::ApiError;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use serde_json::{json, Value};
use skiff_store::Store;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// Address to listen on (`--bind-address` + `--https-listen-port`).
    pub listen: SocketAddr,
    /// Address clients are told to use (discovery's serverAddressByClientCIDRs, the
    /// `kubernetes` Service's endpoints).
    pub advertise: SocketAddr,
    pub pki: Pki,
    /// Service IPs (`--service-cidr`); the first is the `kubernetes` Service's.
    pub service_cidr: String,
    /// `--service-node-port-range`.
    pub node_port_range: (u16, u16),
    /// `--audit-policy-file` and `--audit-log-*`: no auditing when `None`.
    pub audit: Option<crate::audit::AuditConfig>,
}

impl ApiServerConfig {
    /// A config with the default service ranges.
    pub fn new(listen: SocketAddr, advertise: SocketAddr, pki: Pki) -> Self {
        Self {
            listen,
            advertise,
            pki,
            service_cidr: "10.43.0.0/16".into(),
            node_port_range: (30000, 32767),
            audit: None,
        }
    }
}

fn tls_config(pki: &Pki) -> Result<(rustls::ServerConfig, Arc<RequestClientCert>), ApiError> {
    let tls = |e: &dyn std::fmt::Display| ApiError::Tls(e.to_string());
    let certs: Vec<_> = rustls_pemfile::certs(&mut pki.apiserver.cert_pem()?.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut pki.apiserver.key_pem()?.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| ApiError::Tls("no private key in the serving key file".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca.cert_pem()?.as_bytes()) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(RequestClientCert {
        inner: rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?,
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((cfg, verifier))
}

/// Asks for a client certificate without refusing the handshake over it (Go's
/// `tls.RequestClientCert`, as kube-apiserver does): the chain is checked against the cluster
/// CA after the handshake ([`RequestClientCert::check`]), so a certificate from another CA gets
/// a 401 Status rather than a TLS alert. The handshake's proof of key possession is still
/// checked here.
#[derive(Debug)]
struct RequestClientCert {
    inner: Arc<dyn ClientCertVerifier>,
}

impl RequestClientCert {
    fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (end, rest) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.inner
            .verify_client_cert(end, rest, UnixTime::now())
            .map(|_| ())
    }
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the client certificate of a connection says.
#[derive(Clone, Debug)]
pub enum CertUser {
    None,
    Valid(UserInfo),
    /// Presented but not signed by the cluster CA (or expired): 401 unless a token succeeds.
    Invalid,
}

/// Aborts a background task when dropped (when [`serve`] returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    cfg: ApiServerConfig,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    let registry = Arc::new(Registry::builtin());
    let ctx = Ctx::new(store, registry, &cfg)?.into_arc();
    let owners = AbortOnDrop(tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.owners.run(ctx.store.clone()).await }
    }));
    crate::bootstrap::run(&ctx).await?;
    crate::service_repair::run(&ctx).await;
    crate::crd::load_all(&ctx).await;
    let auditor = match &cfg.audit {
        Some(a) => Some(Arc::new(
            crate::audit::Auditor::open(a).map_err(ApiError::Config)?,
        )),
        None => None,
    };
    let (tls_cfg, client_check) = tls_config(&cfg.pki)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_cfg));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ApiError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(listen = %cfg.listen, "API server listening");
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let client_check = client_check.clone();
        let ctx = ctx.clone();
        let auditor = auditor.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = match tls.get_ref().1.peer_certificates() {
                None | Some([]) => CertUser::None,
                Some(chain) => match client_check.check(chain) {
                    Ok(()) => CertUser::Valid(user_of(chain[0].as_ref())),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "client certificate rejected");
                        CertUser::Invalid
                    }
                },
            };
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                let user = user.clone();
                let auditor = auditor.clone();
                async move {
                    Ok::<_, Infallible>(match auditor {
                        Some(a) => audited(a, ctx, req, user, peer).await,
                        None => route(ctx, req, user).await,
                    })
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Go's http.Server allows 1 MiB of headers (HTTP/1 and HTTP/2 alike); hyper's
            // HTTP/2 default of 16 KiB would answer 431 before authentication can say 401.
            builder.http2().max_header_list_size(1 << 20);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(owners);
    Ok(())
}

/// The user a verified client certificate names: CN is the user, each O a group.
fn user_of(der: &[u8]) -> UserInfo {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return UserInfo::default();
    };
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    UserInfo {
        name,
        groups,
        ..Default::default()
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn text(code: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(full(body))
        .expect("response")
}

pub fn error_response(e: &StatusError) -> Response<Body> {
    json_response(e.code, &e.to_json())
}

fn not_found() -> StatusError {
    StatusError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// Health checks, as upstream names them under /livez and /readyz.
async fn health(ctx: &Ctx, which: &str, rest: &[&str], query: &str) -> Response<Body> {
    let store_ok = ctx.store.get("/registry/health").await.is_ok();
    let mut checks: Vec<(&str, bool)> = vec![
        ("ping", true),
        ("log", true),
        ("etcd", store_ok),
        ("poststarthook/start-apiextensions-informers", true),
        ("poststarthook/bootstrap-controller", true),
        (
            "poststarthook/scheduling/bootstrap-system-priority-classes",
            true,
        ),
    ];
    if which == "readyz" {
        checks.push(("etcd-readiness", store_ok));
        checks.push(("informer-sync", true));
        checks.push(("shutdown", true));
    }
    if !rest.is_empty() {
        let name = rest.join("/");
        return match checks.iter().find(|(n, _)| *n == name) {
            Some((_, true)) => text(200, "ok".into()),
            Some((_, false)) => text(500, format!("internal server error: {name} check failed")),
            None => text(404, "404 page not found\n".into()),
        };
    }
    let all_ok = checks.iter().all(|(_, ok)| *ok);
    let verbose = query
        .split('&')
        .any(|p| p == "verbose" || p.starts_with("verbose="));
    if !verbose && all_ok {
        return text(200, "ok".into());
    }
    let mut out = String::new();
    for (n, ok) in &checks {
        out.push_str(&format!(
            "[{}]{n} {}\n",
            if *ok { "+" } else { "-" },
            if *ok { "ok" } else { "failed: reason withheld" }
        ));
    }
    if all_ok {
        out.push_str(&format!("{which} check passed\n"));
        text(200, out)
    } else {
        out.push_str(&format!("{which} check failed\n"));
        text(500, out)
    }
}

/// [`route`] with an audit record: filled in while the request is served, written when its
/// response is known.
async fn audited(
    a: Arc<crate::audit::Auditor>,
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    user: CertUser,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    use crate::audit::Level;
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut source_ips: Vec<String> = header("x-forwarded-for")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    source_ips.push(peer.ip().to_string());
    let path = req.uri().path().to_string();
    let verb = req.method().as_str().to_lowercase();
    let rec = Arc::new(std::sync::Mutex::new(crate::audit::Record {
        id: uuid::Uuid::new_v4().to_string(),
        received: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        verb: verb.clone(),
        source_ips,
        user_agent: header("user-agent"),
        request: crate::audit::Request {
            verb,
            resource: None,
            path,
        },
        ..Default::default()
    }));
    let resp = crate::audit::scope(a.clone(), rec.clone(), route(ctx, req, user)).await;
    let code = resp.status().as_u16();
    let (long_running, level) = {
        let r = rec.lock().unwrap_or_else(|e| e.into_inner());
        (
            r.verb == "watch" || code == 101 || r.long_running,
            r.level.unwrap_or_default(),
        )
    };
    if long_running {
        crate::audit::finish(&a, &rec, "ResponseStarted", code, None, None);
        return resp;
    }
    if code < 400 && level < Level::RequestResponse {
        crate::audit::finish(&a, &rec, "ResponseComplete", code, None, None);
        return resp;
    }
    // The body is needed (an error's Status, or the response object): it is in memory.
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let protobuf = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("protobuf"));
    let gzip = parts
        .headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let plain = if gzip {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .ok()
            .map(|_| Bytes::from(out))
    } else {
        Some(bytes.clone())
    };
    let value = plain.and_then(|b| {
        if protobuf {
            skiff_codec::decode(&b).ok()
        } else {
            serde_json::from_slice::<Value>(&b).ok()
        }
    });
    let status = value.as_ref().filter(|v| v["kind"] == "Status");
    crate::audit::finish(
        &a,
        &rec,
        "ResponseComplete",
        code,
        status,
        value.clone().filter(|_| level == Level::RequestResponse),
    );
    Response::from_parts(parts, full(bytes))
}

async fn route(ctx: Arc<Ctx>, req: Request<Incoming>, user: CertUser) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let span = tracing::debug_span!("api", %method, %path);
    async move {
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let public = matches!(
            segs.as_slice(),
            ["healthz", ..]
                | ["livez", ..]
                | ["readyz", ..]
                | ["version"]
                | [".well-known", "openid-configuration"]
                | ["openid", "v1", "jwks"]
        );
        let user = match crate::authn::authenticate(&ctx, req.headers(), user).await {
            crate::authn::Authn::User(u) => u,
            crate::authn::Authn::Anonymous if public => UserInfo {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
                ..Default::default()
            },
            _ => return error_response(&StatusError::unauthorized()),
        };
        crate::audit::with(|_, r| r.user = Some(user.clone()));
        let user = match crate::authn::impersonate(&ctx, &user, req.headers()).await {
            Ok(Some(as_user)) => {
                tracing::debug!(user = %user.name, as_user = %as_user.name, "impersonating");
                crate::audit::with(|_, r| r.impersonated = Some(as_user.clone()));
                as_user
            }
            Ok(None) => user,
            Err(e) => return error_response(&e),
        };
        let resource_request = matches!(segs.as_slice(), ["api", _, _, ..] | ["apis", _, _, _, ..]);
        if !resource_request {
            crate::audit::request_received();
        }
        if !public && !resource_request {
            let verb = match *req.method() {
                Method::GET | Method::HEAD => "get",
                Method::POST => "post",
                Method::PUT => "put",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "",
            };
            let a = crate::rbac::Attrs::non_resource(verb, &path);
            let d = crate::rbac::authorize(&ctx, &user, &a).await;
            if !d.allowed {
                tracing::debug!(user = %user.name, verb, %path, "forbidden");
                return error_response(&crate::rbac::forbidden(&user, &a, &d.reason));
            }
        }
        let accept = req
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let res = match segs.as_slice() {
            ["healthz", rest @ ..] => return health(&ctx, "healthz", rest, &query).await,
            ["livez", rest @ ..] => return health(&ctx, "livez", rest, &query).await,
            ["readyz", rest @ ..] => return health(&ctx, "readyz", rest, &query).await,
            ["metrics"] => {
                let objects = crate::discovery::object_counts(&ctx).await;
                return Response::builder()
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(full(ctx.metrics.render(&objects)))
                    .expect("response");
            }
            ["version"] => Ok(json_response(200, &crate::discovery::version())),
            [".well-known", "openid-configuration"] => Ok(json_response(
                200,
                &crate::tokens::openid_configuration(&ctx.advertise),
            )),
            ["openid", "v1", "jwks"] => match &ctx.signer {
                Some(s) => Ok(Response::builder()
                    .header("content-type", "application/jwk-set+json")
                    .body(full(s.jwks().to_string()))
                    .expect("response")),
                None => Err(not_found()),
            },
            ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["apis", _, _] => {
                crate::discovery::serve(&ctx, &segs, &accept)
            }
            ["openapi", ..] => {
                let gzip_ok = req
                    .headers()
                    .get("accept-encoding")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("gzip"));
                crate::discovery::openapi(&ctx, &segs, &accept, gzip_ok)
            }
            ["api", v, rest @ ..] => resource(ctx.clone(), req, "", v, rest, user).await,
            ["apis", g, v, rest @ ..] => resource(ctx.clone(), req, g, v, rest, user).await,
            _ => Err(not_found()),
        };
        match res {
            Ok(r) => r,
            Err(e) => {
                if e.code >= 500 {
                    tracing::warn!(code = e.code, message = %e.message, "request failed");
                }
                let fmt = wire::negotiate(&accept).unwrap_or(wire::Format::Json);
                wire::respond(fmt, e.code, &e.to_json(), false)
            }
        }
    }
    .instrument(span)
    .await
}

async fn resource(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: &[&str],
    user: UserInfo,
) -> Result<Response<Body>, StatusError> {
    let started = std::time::Instant::now();
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, r @ ..]
            if ctx
                .registry
                .find(group, version, plural)
                .is_some_and(|r| r.namespaced) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(r);
                v
            })
        }
        r => (None, r.to_vec()),
    };
    let res = ctx
        .registry
        .find(group, version, rest.first().ok_or_else(not_found)?)
        .ok_or_else(not_found)?;
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = header("accept");
    let content_type = header("content-type");
    let gzip = header("accept-encoding").contains("gzip");
    let format = wire::negotiate(&accept).ok_or_else(|| {
        StatusError::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf (asked for {accept:?})"),
        )
    })?;
    // Custom resources have no protobuf form: they are answered in JSON, as upstream does.
    let format = if format == wire::Format::Protobuf
        && !skiff_codec::supports(&res.api_version(), &res.kind)
        && accept
            .split(',')
            .any(|p| wire::media_type(p) == "application/json" || wire::media_type(p) == "*/*")
    {
        wire::Format::Json
    } else {
        format
    };
    let method = req.method().clone();
    // Streaming subresources keep the request: the proxy needs its upgrade.
    let streaming = crate::proxy::is_stream(&res.kind, rest.get(2).copied());
    let (body, req) = if streaming {
        (Bytes::new(), Some(req))
    } else if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        let limited = http_body_util::Limited::new(req.into_body(), wire::MAX_BODY + 1);
        let body = limited
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    StatusError::new(
                        413,
                        "RequestEntityTooLarge",
                        "the request is too large: limit is 3MB",
                    )
                } else {
                    StatusError::bad_request(format!("reading request body: {e}"))
                }
            })?
            .to_bytes();
        (body, None)
    } else {
        (Bytes::new(), None)
    };
    let t = Target {
        res: res.clone(),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
        query,
        accept,
        content_type,
        format,
        gzip,
        user,
    };
    if rest.len() > 3 && !streaming {
        return Err(not_found());
    }
    if let Some(sub) = &t.sub {
        if res.subresource(sub).is_none() {
            return Err(not_found());
        }
    }
    let watch = legacy_watch || t.param("watch").is_some_and(|w| w == "true" || w == "1");
    let has_name = t.name.is_some();
    let verb = match (&method, has_name) {
        (&Method::GET, false) if watch => "WATCH",
        (&Method::GET, false) => "LIST",
        (&Method::GET, true) => "GET",
        (&Method::POST, _) => "POST",
        (&Method::PUT, _) => "PUT",
        (&Method::PATCH, _) => "PATCH",
        (&Method::DELETE, true) => "DELETE",
        (&Method::DELETE, false) => "DELETE",
        _ => "OTHER",
    };
    let kube_verb = match verb {
        "WATCH" => "watch",
        "LIST" => "list",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if has_name => "delete",
        "DELETE" => "deletecollection",
        _ => "",
    };
    crate::audit::with(|a, r| {
        r.verb = kube_verb.to_string();
        r.long_running = watch
            || streaming
            || (t.sub.as_deref() == Some("log") && t.param("follow") == Some("true"));
        let mut o = serde_json::Map::new();
        o.insert("resource".into(), json!(res.plural));
        if let Some(ns) = &t.namespace {
            o.insert("namespace".into(), json!(ns));
        }
        if let Some(n) = &t.name {
            o.insert("name".into(), json!(n));
        }
        if !res.group.is_empty() {
            o.insert("apiGroup".into(), json!(res.group));
        }
        o.insert("apiVersion".into(), json!(version));
        if let Some(sub) = &t.sub {
            o.insert("subresource".into(), json!(sub));
        }
        r.object_ref = Some(Value::Object(o));
        r.request = crate::audit::Request {
            verb: kube_verb.into(),
            resource: Some((
                res.group.clone(),
                res.plural.clone(),
                t.sub.clone().unwrap_or_default(),
                t.namespace.clone().unwrap_or_default(),
                t.name.clone().unwrap_or_default(),
            )),
            path: String::new(),
        };
        r.decide(a);
        if r.level >= Some(crate::audit::Level::Request) {
            r.request_object = crate::audit::request_body(&t.content_type, &body);
            // As upstream: a create names its object in the body.
            if let (Some(o), Some(Value::Object(obj_ref))) = (&r.request_object, &mut r.object_ref)
            {
                if !obj_ref.contains_key("name") {
                    if let Some(n) = o["metadata"]["name"].as_str() {
                        obj_ref.insert("name".into(), json!(n));
                    }
                }
            }
        }
    });
    crate::audit::request_received();
    let allowed = match &t.sub {
        Some(sub) => res
            .subresource(sub)
            .is_some_and(|s| s.verbs.contains(&kube_verb)),
        None => res.verbs.allows(kube_verb),
    };
    if !allowed {
        return Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            res.plural
        )));
    }
    let authz_verb = match t.sub.as_deref() {
        // Streaming upgrades over GET are creates, as upstream authorizes them.
        Some("exec" | "attach" | "portforward") => "create",
        _ => kube_verb,
    };
    // As upstream's RequestInfo: a namespace's own URL is in that namespace, so a RoleBinding
    // there can grant reading (or updating) the Namespace object itself.
    let authz_ns = match (&t.namespace, t.name.as_deref()) {
        (None, Some(n)) if res.group.is_empty() && res.plural == "namespaces" => n,
        (ns, _) => ns.as_deref().unwrap_or(""),
    };
    // As upstream's RequestInfo: a list or watch that selects one object by `metadata.name`
    // names that object, so the node authorizer can allow a kubelet to watch one Secret.
    let selected = match kube_verb {
        "list" | "watch" => {
            crate::selectors::FieldSelector::parse(t.param("fieldSelector").unwrap_or(""))
                .ok()
                .and_then(|f| f.requires_exact("metadata.name").map(str::to_owned))
                .filter(|n| !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '%']))
        }
        _ => None,
    };
    let attrs = crate::rbac::Attrs::resource(
        authz_verb,
        authz_ns,
        &res.group,
        &res.plural,
        t.sub.as_deref().unwrap_or(""),
        selected.as_deref().unwrap_or(t.name()),
    );
    let d = crate::rbac::authorize(&ctx, &t.user, &attrs).await;
    crate::audit::with(|_, r| {
        let decision = if d.allowed { "allow" } else { "forbid" };
        r.annotations
            .insert("authorization.k8s.io/decision".into(), json!(decision));
        r.annotations
            .insert("authorization.k8s.io/reason".into(), json!(d.reason));
    });
    if !d.allowed {
        tracing::debug!(user = %t.user.name, verb = authz_verb, resource = %res.plural, "forbidden");
        return Err(crate::rbac::forbidden(&t.user, &attrs, &d.reason));
    }
    let out = match (method, has_name, t.sub.as_deref()) {
        (_, true, Some(_)) if req.is_some() => {
            crate::proxy::stream(&ctx, &t, req.expect("kept")).await
        }
        (Method::GET, false, _) if watch => handlers::watch(&ctx, &t).await,
        (Method::GET, false, _) => handlers::list(&ctx, &t).await,
        (Method::POST, false, _) => handlers::create(&ctx, &t, &body).await,
        (Method::GET, true, Some("log")) => crate::proxy::pod_log(&ctx, &t).await,
        (Method::POST, true, Some(_)) => handlers::create(&ctx, &t, &body).await,
        (Method::GET, true, Some("exec" | "attach" | "portforward" | "proxy")) => {
            handlers::create(&ctx, &t, &body).await
        }
        (Method::GET, true, _) => handlers::get(&ctx, &t).await,
        (Method::PUT, true, _) => handlers::update(&ctx, &t, &body).await,
        (Method::PATCH, true, _) => handlers::patch(&ctx, &t, &body).await,
        (Method::DELETE, true, None) => handlers::delete(&ctx, &t, &body).await,
        (Method::DELETE, false, None) => handlers::delete_collection(&ctx, &t, &body).await,
        (m, _, _) => Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    };
    let code = match &out {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.code,
    };
    let scope = if t.name.is_some() {
        "resource"
    } else if t.namespace.is_some() {
        "namespace"
    } else {
        "cluster"
    };
    ctx.metrics.request(
        &crate::metrics::RequestLabels {
            verb,
            group: &res.group,
            version: &res.version,
            resource: &res.plural,
            subresource: t.sub.as_deref().unwrap_or(""),
            scope,
        },
        code,
        started.elapsed(),
    );
    out
}
