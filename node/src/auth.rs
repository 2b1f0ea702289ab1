//! Authentication and authorization of the :10250 server, as upstream's kubelet
//! (`--anonymous-auth`, `--client-ca-file`, `--authentication-token-webhook`,
//! `--authorization-mode=AlwaysAllow|Webhook`).
//!
//! Authentication: a client certificate verified against the client CA (by rustls during the
//! handshake; CN is the user, O the groups), else a bearer token checked with a TokenReview
//! against the API server (answers cached for 2 minutes, upstream's
//! `authentication.webhook.cacheTTL`), else anonymous (`system:anonymous` in
//! `system:unauthenticated`) when allowed, else 401.
//!
//! Authorization: a SubjectAccessReview for `nodes/<subresource>` named after this node, verb
//! from the HTTP method, subresource from the path (upstream's mapping in
//! `pkg/kubelet/server/auth.go`, with the fine-grained `pods`/`healthz`/`configz` subresources
//! falling back to `proxy`). Allowed answers are cached 5 minutes and denials 30 seconds
//! (upstream's `authorization.webhook.cacheAuthorizedTTL`/`cacheUnauthorizedTTL`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Method};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

/// `--authorization-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzMode {
    AlwaysAllow,
    Webhook,
}

impl std::str::FromStr for AuthzMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "AlwaysAllow" => Ok(AuthzMode::AlwaysAllow),
            "Webhook" => Ok(AuthzMode::Webhook),
            _ => Err(format!(
                "unknown authorization mode {s:?} (AlwaysAllow or Webhook)"
            )),
        }
    }
}

impl AuthzMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthzMode::AlwaysAllow => "AlwaysAllow",
            AuthzMode::Webhook => "Webhook",
        }
    }
}

/// The authentication and authorization settings of the server.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Requests without credentials are `system:anonymous` (true) or get 401 (false).
    pub anonymous: bool,
    /// Bearer tokens are checked with TokenReviews.
    pub webhook_authn: bool,
    pub token_ttl: Duration,
    pub mode: AuthzMode,
    pub authorized_ttl: Duration,
    pub unauthorized_ttl: Duration,
}

impl Default for AuthSettings {
    /// Upstream's flag defaults (anonymous allowed, no token webhook, AlwaysAllow).
    fn default() -> Self {
        Self {
            anonymous: true,
            webhook_authn: false,
            token_ttl: Duration::from_secs(120),
            mode: AuthzMode::AlwaysAllow,
            authorized_ttl: Duration::from_secs(300),
            unauthorized_ttl: Duration::from_secs(30),
        }
    }
}

impl AuthSettings {
    /// What `skiff server` and the KubeletConfiguration v1beta1 defaults use: no anonymous
    /// access, token webhook, Webhook authorization.
    pub fn secure() -> Self {
        Self {
            anonymous: false,
            webhook_authn: true,
            mode: AuthzMode::Webhook,
            ..Self::default()
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Self::default()
        }
    }
}

/// The user a verified client certificate names: CN, and O as groups.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User {
        name,
        groups,
        ..User::default()
    })
}

/// What a request asks for, in upstream's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: &'static str,
    /// Subresources to try in order (the first allowed wins).
    pub subresources: Vec<&'static str>,
}

/// Upstream's mapping of a kubelet request to `nodes/<subresource>` and a verb.
pub fn attributes(method: &Method, path: &str) -> Attributes {
    let verb = match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    };
    let sub = |p: &str| path == p || path.starts_with(&format!("{p}/"));
    let subresources = if sub("/stats") {
        vec!["stats"]
    } else if sub("/metrics") {
        vec!["metrics"]
    } else if sub("/logs") {
        vec!["log"]
    } else if sub("/checkpoint") {
        vec!["checkpoint"]
    } else if sub("/pods") || sub("/runningpods") {
        vec!["pods", "proxy"]
    } else if sub("/healthz") {
        vec!["healthz", "proxy"]
    } else if sub("/configz") {
        vec!["configz", "proxy"]
    } else {
        vec!["proxy"]
    };
    Attributes { verb, subresources }
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// 401.
    Unauthorized,
    /// 403 with the message.
    Forbidden(String),
    /// 500: the API server could not answer.
    Error(String),
}

type TokenCache = HashMap<[u8; 32], (Instant, Option<User>)>;
type SarCache = HashMap<(User, &'static str, &'static str), (Instant, bool)>;

/// The server's authenticator and authorizer.
pub struct Auth {
    settings: AuthSettings,
    node_name: String,
    client: Option<kube::Client>,
    tokens: Mutex<TokenCache>,
    decisions: Mutex<SarCache>,
}

impl Auth {
    /// `client` is the kubelet's API client (needed for the token webhook and Webhook mode).
    pub fn new(settings: AuthSettings, node_name: String, client: Option<kube::Client>) -> Self {
        Self {
            settings,
            node_name,
            client,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// Everyone is allowed (upstream's flag defaults; unit tests).
    pub fn always_allow() -> Self {
        Self::new(AuthSettings::default(), String::new(), None)
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The user of a request: the certificate's, the bearer token's, or anonymous.
    pub async fn authenticate(
        &self,
        cert_user: Option<&User>,
        headers: &HeaderMap,
    ) -> Result<User, Denied> {
        if let Some(u) = cert_user {
            return Ok(u.clone());
        }
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, t) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
            })
            .filter(|t| !t.is_empty());
        if let (Some(token), true) = (token, self.settings.webhook_authn) {
            return match self.review_token(token).await? {
                Some(u) => Ok(u),
                None => Err(Denied::Unauthorized),
            };
        }
        if self.settings.anonymous {
            Ok(User::anonymous())
        } else {
            Err(Denied::Unauthorized)
        }
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, Denied> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(c) = self.tokens.lock() {
            if let Some((at, u)) = c.get(&key) {
                if at.elapsed() < self.settings.token_ttl {
                    return Ok(u.clone());
                }
            }
        }
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                          "spec": {"token": token}});
        let answer = post(client, "/apis/authentication.k8s.io/v1/tokenreviews", &body)
            .await
            .map_err(|e| {
                warn!(error = %e, "TokenReview failed");
                Denied::Unauthorized
            })?;
        let st = &answer["status"];
        let user = if st["authenticated"] == true {
            let u = &st["user"];
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            Some(User {
                name: u["username"].as_str().unwrap_or_default().to_string(),
                uid: u["uid"].as_str().unwrap_or_default().to_string(),
                groups: strings(&u["groups"]),
                extra: u["extra"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), strings(v)))
                    .collect(),
            })
        } else {
            debug!(error = ?st["error"], "token not authenticated");
            None
        };
        if let Ok(mut c) = self.tokens.lock() {
            c.retain(|_, (at, _)| at.elapsed() < self.settings.token_ttl);
            c.insert(key, (Instant::now(), user.clone()));
        }
        Ok(user)
    }

    /// Authorizes `user` for `attrs` on this node.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<(), Denied> {
        if self.settings.mode == AuthzMode::AlwaysAllow {
            return Ok(());
        }
        for sub in &attrs.subresources {
            if self.allowed(user, attrs.verb, sub).await? {
                return Ok(());
            }
        }
        Err(Denied::Forbidden(format!(
            "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])",
            user.name,
            attrs.verb,
            attrs.subresources.join(" ")
        )))
    }

    async fn allowed(
        &self,
        user: &User,
        verb: &'static str,
        sub: &'static str,
    ) -> Result<bool, Denied> {
        let key = (user.clone(), verb, sub);
        if let Ok(c) = self.decisions.lock() {
            if let Some((at, ok)) = c.get(&key) {
                let ttl = if *ok {
                    self.settings.authorized_ttl
                } else {
                    self.settings.unauthorized_ttl
                };
                if at.elapsed() < ttl {
                    return Ok(*ok);
                }
            }
        }
        let error = |e: String| {
            Denied::Error(format!(
                "Authorization error (user={}, verb={verb}, resource=nodes, subresource={sub}): {e}",
                user.name
            ))
        };
        let Some(client) = &self.client else {
            return Err(error("no API client for SubjectAccessReviews".into()));
        };
        let mut spec = json!({
            "user": user.name,
            "groups": user.groups,
            "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": sub,
                                   "name": self.node_name, "version": "v1"},
        });
        if !user.uid.is_empty() {
            spec["uid"] = json!(user.uid);
        }
        if !user.extra.is_empty() {
            spec["extra"] = json!(user.extra);
        }
        let body = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                          "spec": spec});
        let answer = post(
            client,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &body,
        )
        .await
        .map_err(error)?;
        let ok = answer["status"]["allowed"] == true;
        if let Ok(mut c) = self.decisions.lock() {
            let max = self.settings.authorized_ttl;
            c.retain(|_, (at, _)| at.elapsed() < max);
            c.insert(key, (Instant::now(), ok));
        }
        Ok(ok)
    }
}

async fn post(client: &kube::Client, path: &str, body: &Value) -> Result<Value, String> {
    let req = hyper::http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    client
        .request::<Value>(req)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_mapping() {
        let a = attributes(&Method::GET, "/stats/summary");
        assert_eq!(a.verb, "get");
        assert_eq!(a.subresources, vec!["stats"]);
        assert_eq!(
            attributes(&Method::POST, "/exec/ns/p/c").subresources,
            vec!["proxy"]
        );
        assert_eq!(attributes(&Method::POST, "/exec/ns/p/c").verb, "create");
        assert_eq!(
            attributes(&Method::GET, "/metrics/resource").subresources,
            vec!["metrics"]
        );
        assert_eq!(attributes(&Method::GET, "/logs/").subresources, vec!["log"]);
        assert_eq!(
            attributes(&Method::GET, "/pods").subresources,
            vec!["pods", "proxy"]
        );
        assert_eq!(
            attributes(&Method::GET, "/podsx").subresources,
            vec!["proxy"]
        );
        assert_eq!(
            attributes(&Method::GET, "/healthz").subresources,
            vec!["healthz", "proxy"]
        );
    }

    #[tokio::test]
    async fn anonymous_and_denials() {
        let s = AuthSettings {
            anonymous: false,
            ..AuthSettings::secure()
        };
        let a = Auth::new(s, "n".into(), None);
        let h = HeaderMap::new();
        assert_eq!(a.authenticate(None, &h).await, Err(Denied::Unauthorized));
        let u = User {
            name: "alice".into(),
            ..User::default()
        };
        assert_eq!(a.authenticate(Some(&u), &h).await, Ok(u));
        let open = Auth::always_allow();
        assert_eq!(open.authenticate(None, &h).await, Ok(User::anonymous()));
        assert!(open
            .authorize(&User::anonymous(), &attributes(&Method::GET, "/pods"))
            .await
            .is_ok());
    }
}
