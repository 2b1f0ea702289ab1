//! Authentication of one request, in upstream's order: a client certificate the cluster CA
//! signed (checked by the TLS layer; CN = user, O = groups), else an `Authorization: Bearer`
//! token: a bootstrap token (`<id>.<secret>`, from a `bootstrap-token-<id>` Secret in
//! kube-system), a service-account token (bound, from TokenRequest, or legacy, from a
//! `kubernetes.io/service-account-token` Secret). Then impersonation headers, each checked
//! against the `impersonate` verb. Failures are 401 `Unauthorized`, logged at debug without the
//! token's secret part.

use crate::handlers::{Ctx, UserInfo};
use crate::rbac::{self, Attrs};
use crate::server::CertUser;
use crate::status::StatusError;
use hyper::header::HeaderMap;
use serde_json::Value;
use std::collections::BTreeMap;

/// Longest Authorization header accepted (upstream caps request headers near 1 MiB; tokens
/// are a few KiB at most).
const MAX_TOKEN: usize = 16 * 1024;

/// Outcome of authenticating a request.
pub enum Authn {
    User(UserInfo),
    /// No credentials at all.
    Anonymous,
    /// Credentials that do not check out.
    Failed,
}

/// The part of a token safe to log: a bootstrap token's id, a JWT's claims without signature
/// (subject and id only), or its length.
fn redacted(token: &str) -> String {
    if let Some((id, _)) = token
        .split_once('.')
        .filter(|(a, b)| a.len() == 6 && b.len() == 16)
    {
        return format!("bootstrap token id {id}");
    }
    format!("token of {} bytes", token.len())
}

pub async fn authenticate(ctx: &Ctx, headers: &HeaderMap, cert: CertUser) -> Authn {
    let bad_cert = match cert {
        CertUser::Valid(u) => return Authn::User(u),
        CertUser::Invalid => true,
        CertUser::None => false,
    };
    let none = if bad_cert {
        Authn::Failed
    } else {
        Authn::Anonymous
    };
    let Some(auth) = headers.get(hyper::header::AUTHORIZATION) else {
        return none;
    };
    let Ok(auth) = auth.to_str() else {
        tracing::debug!("unauthorized: Authorization header is not ASCII");
        return Authn::Failed;
    };
    if auth.len() > MAX_TOKEN {
        tracing::debug!(
            len = auth.len(),
            "unauthorized: Authorization header too long"
        );
        return Authn::Failed;
    }
    let Some(token) = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        // Basic auth and other schemes are not served: no authenticator takes them.
        return none;
    };
    match token_user(ctx, token).await {
        Ok(u) => Authn::User(u),
        Err(why) => {
            tracing::debug!(token = %redacted(token), reason = %why, "unauthorized bearer token");
            Authn::Failed
        }
    }
}

/// The user a bearer token names.
pub async fn token_user(ctx: &Ctx, token: &str) -> Result<UserInfo, String> {
    if let Some((id, secret)) = token.split_once('.') {
        let is = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if is(id, 6) && is(secret, 16) {
            return bootstrap_user(ctx, id, secret).await;
        }
    }
    let st = crate::tokens::review(ctx, token, &[]).await?;
    let u = &st["user"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut extra = BTreeMap::new();
    if let Some(m) = u["extra"].as_object() {
        for (k, v) in m {
            extra.insert(k.clone(), strings(v));
        }
    }
    Ok(UserInfo {
        name: u["username"].as_str().unwrap_or("").to_string(),
        uid: u["uid"].as_str().unwrap_or("").to_string(),
        groups: strings(&u["groups"]),
        extra,
    })
}

/// A bootstrap token (upstream's `bootstrap.kubernetes.io/token` Secrets): usable for
/// authentication when `usage-bootstrap-authentication` is "true" and it has not expired.
async fn bootstrap_user(ctx: &Ctx, id: &str, secret: &str) -> Result<UserInfo, String> {
    let res = ctx
        .registry
        .by_kind("", "Secret")
        .ok_or("no secrets resource")?;
    let key = res.key(Some("kube-system"), &format!("bootstrap-token-{id}"));
    let kv = ctx
        .store
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no bootstrap token with this id")?;
    let s = crate::handlers::decode_as(&res, &kv).map_err(|e| e.message)?;
    if s["type"] != "bootstrap.kubernetes.io/token" {
        return Err("secret is not a bootstrap token".into());
    }
    if !s["metadata"]["deletionTimestamp"].is_null() {
        return Err("bootstrap token is being deleted".into());
    }
    let data = |k: &str| -> Option<String> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(s["data"][k].as_str()?)
            .ok()?;
        String::from_utf8(b).ok()
    };
    if data("token-id").as_deref() != Some(id) {
        return Err("bootstrap token id does not match its secret".into());
    }
    let want = data("token-secret").unwrap_or_default();
    if !constant_time_eq(want.as_bytes(), secret.as_bytes()) {
        return Err("bootstrap token secret does not match".into());
    }
    if data("usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err("bootstrap token is not marked for authentication".into());
    }
    if let Some(exp) = data("expiration") {
        match chrono::DateTime::parse_from_rfc3339(&exp) {
            Ok(t) if t > chrono::Utc::now() => {}
            _ => return Err("bootstrap token has expired".into()),
        }
    }
    let mut groups = vec!["system:bootstrappers".to_string()];
    for g in data("auth-extra-groups")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
    {
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    groups.push("system:authenticated".into());
    Ok(UserInfo {
        name: format!("system:bootstrap:{id}"),
        groups,
        ..Default::default()
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Applies `Impersonate-*` headers: each asked-for attribute must be allowed by the
/// `impersonate` verb for the real user. None when no impersonation was asked.
pub async fn impersonate(
    ctx: &Ctx,
    real: &UserInfo,
    headers: &HeaderMap,
) -> Result<Option<UserInfo>, StatusError> {
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let user = all("impersonate-user").into_iter().next();
    let groups = all("impersonate-group");
    let uid = all("impersonate-uid").into_iter().next();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        if let Some(key) = k.as_str().strip_prefix("impersonate-extra-") {
            let key = percent_decode(key);
            if let Ok(v) = v.to_str() {
                extra.entry(key).or_default().push(v.to_string());
            }
        }
    }
    if user.is_none() && groups.is_empty() && uid.is_none() && extra.is_empty() {
        return Ok(None);
    }
    let Some(user) = user else {
        return Err(StatusError::internal(format!(
            "requested {} without impersonating a user",
            if uid.is_some() {
                "uid"
            } else if !groups.is_empty() {
                "groups"
            } else {
                "extra"
            }
        )));
    };
    let check = |a: Attrs| async move {
        let d = rbac::authorize(ctx, real, &a).await;
        if d.allowed {
            Ok(())
        } else {
            Err(impersonation_forbidden(real, &a, &d.reason))
        }
    };
    let sa = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'));
    match sa {
        Some((ns, name)) => {
            check(Attrs::resource(
                "impersonate",
                ns,
                "",
                "serviceaccounts",
                "",
                name,
            ))
            .await?
        }
        None => check(Attrs::resource("impersonate", "", "", "users", "", &user)).await?,
    }
    for g in &groups {
        check(Attrs::resource("impersonate", "", "", "groups", "", g)).await?;
    }
    if let Some(u) = &uid {
        check(Attrs::resource(
            "impersonate",
            "",
            "authentication.k8s.io",
            "uids",
            "",
            u,
        ))
        .await?;
    }
    for (k, vs) in &extra {
        for v in vs {
            check(Attrs::resource(
                "impersonate",
                "",
                "authentication.k8s.io",
                "userextras",
                k,
                v,
            ))
            .await?;
        }
    }
    let mut out_groups = groups;
    if let Some((ns, _)) = sa {
        if out_groups.is_empty() {
            out_groups.push("system:serviceaccounts".into());
            out_groups.push(format!("system:serviceaccounts:{ns}"));
        }
    }
    if user != "system:anonymous" && !out_groups.iter().any(|g| g == "system:authenticated") {
        out_groups.push("system:authenticated".into());
    }
    Ok(Some(UserInfo {
        name: user,
        groups: out_groups,
        uid: uid.unwrap_or_default(),
        extra,
    }))
}

fn impersonation_forbidden(real: &UserInfo, a: &Attrs, reason: &str) -> StatusError {
    rbac::forbidden(real, a, reason)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn redaction_keeps_secrets_out() {
        let r = super::redacted("abcdef.0123456789abcdef");
        assert_eq!(r, "bootstrap token id abcdef");
        let r = super::redacted("eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl");
        assert!(!r.contains("c2lnbmF0dXJl"));
    }
}
