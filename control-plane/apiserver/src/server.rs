//! HTTPS serving, authentication and routing.

use crate::handlers::{self, Ctx, Target};
use crate::pki::Pki;
use crate::registry::{self, RESOURCES};
use crate::status::StatusError;
use crate::ApiError;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
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
    /// Address clients are told to use (discovery's serverAddressByClientCIDRs).
    pub advertise: SocketAddr,
    pub pki: Pki,
}

/// Creates the namespaces every cluster has.
pub fn bootstrap(store: &dyn Store) -> Result<(), ApiError> {
    let ns = registry::by_kind("Namespace").expect("namespaces registered");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = ns.key(None, name);
        if store.get(&key)?.is_some() {
            continue;
        }
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        handlers::stamp_new(&mut obj);
        crate::strategy::default(ns.strategy, &mut obj);
        store.create(&key, serde_json::to_vec(&obj).expect("json"))?;
    }
    Ok(())
}

fn tls_config(pki: &Pki) -> Result<rustls::ServerConfig, ApiError> {
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
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    cfg: ApiServerConfig,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError> {
    bootstrap(store.as_ref())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&cfg.pki)?));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ApiError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let ctx = Arc::new(Ctx::new(store, &cfg)?);
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
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let authenticated = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let svc = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(ctx, req, authenticated).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    Ok(())
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

pub fn error_response(e: &StatusError) -> Response<Body> {
    json_response(e.code, &e.to_json())
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs(), "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for sub in r.subresources {
            let (kind, verbs): (&str, &[&str]) = match *sub {
                "status" => (r.kind, &["get", "patch", "update"]),
                "binding" => ("Binding", &["create"]),
                _ => (r.kind, &["get"]),
            };
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": kind, "verbs": verbs,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

async fn route(ctx: Arc<Ctx>, req: Request<Incoming>, authenticated: bool) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::debug_span!("api", %method, %path);
    async move {
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let public = matches!(segs.as_slice(), ["healthz"] | ["livez"] | ["readyz"] | ["version"]);
        if !authenticated && !public {
            return error_response(&StatusError::new(
                401,
                "Unauthorized",
                "Unauthorized: present a client certificate signed by the cluster CA (see the kubeconfig written by `skiff server`)",
            ));
        }
        let res = match segs.as_slice() {
            ["healthz"] | ["livez"] | ["readyz"] => {
                return Response::builder()
                    .header("content-type", "text/plain")
                    .body(full("ok"))
                    .expect("response")
            }
            ["version"] => Ok(json_response(
                200,
                &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0+skiff", "gitCommit": "", "gitTreeState": "clean",
                        "buildDate": "2026-11-25T00:00:00Z", "goVersion": "n/a (rust)", "compiler": "rustc", "platform": "linux/amd64"}),
            )),
            ["api"] => Ok(json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": ctx.advertise.to_string()}]}),
            )),
            ["apis"] => {
                let groups: Vec<Value> = registry::groups()
                    .into_iter()
                    .map(|(g, v)| group_json(g, v))
                    .collect();
                Ok(json_response(
                    200,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                ))
            }
            ["apis", g] => match registry::groups().into_iter().find(|(x, _)| x == g) {
                Some((g, v)) => {
                    let mut body = group_json(g, v);
                    body["kind"] = json!("APIGroup");
                    body["apiVersion"] = json!("v1");
                    Ok(json_response(200, &body))
                }
                None => Err(StatusError::new(404, "NotFound", "the server could not find the requested resource")),
            },
            ["api", v] => resource_list("", v)
                .map(|b| json_response(200, &b))
                .ok_or_else(|| StatusError::new(404, "NotFound", "the server could not find the requested resource")),
            ["apis", g, v] => resource_list(g, v)
                .map(|b| json_response(200, &b))
                .ok_or_else(|| StatusError::new(404, "NotFound", "the server could not find the requested resource")),
            ["openapi", "v3"] => Ok(json_response(200, &crate::openapi::root())),
            ["openapi", "v3", gv @ ..] => crate::openapi::group_version(&gv.join("/"))
                .map(|b| json_response(200, &b))
                .ok_or_else(|| StatusError::new(404, "NotFound", "the server could not find the requested resource")),
            ["api", v, rest @ ..] => resource(ctx, req, "", v, rest).await,
            ["apis", g, v, rest @ ..] => resource(ctx, req, g, v, rest).await,
            _ => Err(StatusError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        };
        match res {
            Ok(r) => r,
            Err(e) => {
                if e.code >= 500 {
                    tracing::warn!(code = e.code, message = %e.message, "request failed");
                }
                error_response(&e)
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
) -> Result<Response<Body>, StatusError> {
    let not_found = || {
        StatusError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (legacy_watch, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, r @ ..]
            if registry::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(r);
                v
            })
        }
        r => (None, r.to_vec()),
    };
    let res = registry::find(group, version, rest.first().ok_or_else(not_found)?)
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
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let method = req.method().clone();
    let body = if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        req.into_body()
            .collect()
            .await
            .map_err(|e| StatusError::bad_request(format!("reading request body: {e}")))?
            .to_bytes()
    } else {
        Bytes::new()
    };
    let t = Target {
        res,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
        query,
        accept,
        content_type,
    };
    if rest.len() > 3 {
        return Err(not_found());
    }
    if let Some(sub) = &t.sub {
        if !res.subresources.contains(&sub.as_str()) {
            return Err(not_found());
        }
    }
    let watch = legacy_watch || t.param("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, t.name.is_some(), t.sub.as_deref()) {
        (Method::GET, false, _) if watch => handlers::watch(&ctx, &t).await,
        (Method::GET, false, _) => handlers::list(&ctx, &t),
        (Method::POST, false, _) => handlers::create(&ctx, &t, &body),
        (Method::GET, true, Some("log")) => handlers::pod_log(&ctx, &t).await,
        (Method::POST, true, Some("binding")) => handlers::bind(&ctx, &t, &body),
        (Method::GET, true, _) => handlers::get(&ctx, &t),
        (Method::PUT, true, _) => handlers::update(&ctx, &t, &body),
        (Method::PATCH, true, _) => handlers::patch(&ctx, &t, &body),
        (Method::DELETE, true, None) => handlers::delete(&ctx, &t, &body),
        (m, _, _) => Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}
