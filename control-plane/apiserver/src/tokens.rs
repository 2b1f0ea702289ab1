//! Service-account tokens: `serviceaccounts/<name>/token` (TokenRequest) issues ES256-signed
//! JWTs bound to the service account and optionally a pod or secret, with audiences and expiry;
//! TokenReview verifies them (signature, time, audience, and that the service account and bound
//! object still exist with the same uid); `/.well-known/openid-configuration` and
//! `/openid/v1/jwks` publish the verification key. The signing key is generated once into
//! `<data-dir>/tls/service-account.key` (PKCS#8, 0600). [`review`] is also how bearer tokens on
//! API requests are authenticated ([`crate::authn`]); legacy tokens (issuer
//! `kubernetes/serviceaccount`, stored in `kubernetes.io/service-account-token` Secrets) are
//! valid while their Secret holds them and their service account exists.

use crate::handlers::{Ctx, Target};
use crate::server::Body;
use crate::status::{FieldError, StatusError};
use base64::Engine;
use hyper::Response;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{json, Value};
use std::path::Path;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// The issuer and default audience, as kubeadm and k3s configure them.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
    /// Tokens whose signature checked out (by SHA-256 of the token), with their claims, for
    /// at most [`VERIFIED_TTL`] secs: a request then skips the ECDSA verification, never the
    /// time, audience and binding checks, so revocation stays immediate.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Value, i64)>>,
}

/// How long a verified signature is remembered (upstream caches whole token authentications
/// for 10 s; we cache only the signature).
const VERIFIED_TTL: i64 = 10;
const VERIFIED_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("service-account signing key {path}: {reason}")]
    Key { path: String, reason: String },
}

impl Signer {
    /// Loads the signing key from `path`, generating it on first start.
    pub fn load_or_create(path: &Path) -> Result<Signer, TokenKeyError> {
        let err = |reason: String| TokenKeyError::Key {
            path: path.display().to_string(),
            reason,
        };
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let der = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng)
                    .map_err(|_| err("cannot generate an ECDSA P-256 key".into()))?;
                write_private(path, doc.as_ref()).map_err(|e| err(e.to_string()))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let key = EcdsaKeyPair::from_pkcs8(alg, &der, &rng)
            .map_err(|e| err(format!("not a PKCS#8 P-256 key: {e}")))?;
        use sha2::Digest;
        let kid = B64.encode(&sha2::Sha256::digest(key.public_key().as_ref())[..16]);
        Ok(Signer {
            key,
            kid,
            rng,
            verified: Default::default(),
        })
    }

    fn sign(&self, claims: &Value) -> Result<String, StatusError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let msg = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, msg.as_bytes())
            .map_err(|_| StatusError::internal("signing the token failed"))?;
        Ok(format!("{msg}.{}", B64.encode(sig.as_ref())))
    }

    /// Claims of a token whose signature is valid (time and binding are the caller's).
    fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&B64.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = B64.decode(s).ok()?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
        serde_json::from_slice(&B64.decode(c).ok()?).ok()
    }

    /// [`Signer::verify`] with the recent results remembered.
    fn verify_cached(&self, token: &str) -> Option<Value> {
        use sha2::Digest;
        let h: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let t = now();
        if let Some((c, until)) = self.verified.lock().ok()?.get(&h) {
            if *until > t {
                return Some(c.clone());
            }
        }
        let c = self.verify(token)?;
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= VERIFIED_MAX {
                m.retain(|_, (_, until)| *until > t);
                if m.len() >= VERIFIED_MAX {
                    m.clear();
                }
            }
            m.insert(h, (c.clone(), t + VERIFIED_TTL));
        }
        Some(c)
    }

    /// The JWK set with the verification key.
    pub fn jwks(&self) -> Value {
        let p = self.key.public_key().as_ref();
        // Uncompressed point: 0x04 || X || Y.
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])}]})
    }
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

pub fn openid_configuration(advertise: &std::net::SocketAddr) -> Value {
    json!({"issuer": ISSUER, "jwks_uri": format!("https://{advertise}/openid/v1/jwks"),
           "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
           "id_token_signing_alg_values_supported": ["ES256"]})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn get_obj(ctx: &Ctx, group: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
    let res = ctx.registry.by_kind(group, kind)?;
    let kv = ctx.store.get(&res.key(Some(ns), name)).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// `POST serviceaccounts/<name>/token`.
pub async fn token_request(
    ctx: &Ctx,
    t: &Target,
    mut body: Value,
) -> Result<Response<Body>, StatusError> {
    let signer = ctx.signer.as_ref().ok_or_else(|| {
        StatusError::new(503, "ServiceUnavailable", "no service-account signing key")
    })?;
    let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
    let name = t.name().to_string();
    let sa = get_obj(ctx, "", "ServiceAccount", &ns, &name)
        .await
        .ok_or_else(|| StatusError::not_found("", "serviceaccounts", &name))?;
    let spec = &body["spec"];
    let exp_secs = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if exp_secs < 600 {
        return Err(StatusError::invalid(
            "TokenRequest",
            &name,
            "authentication.k8s.io",
            &[FieldError::invalid(
                "spec.expirationSeconds",
                &exp_secs.to_string(),
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    let exp_secs = exp_secs.min(48 * 3600);
    let audiences: Vec<Value> = spec["audiences"]
        .as_array()
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(ISSUER)]);
    let iat = now();
    let mut k8s =
        json!({"namespace": ns, "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]}});
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or("");
        let bname = bound["name"].as_str().unwrap_or("");
        let field = match kind {
            "Pod" => "pod",
            "Secret" => "secret",
            "Node" => "node",
            _ => {
                return Err(StatusError::invalid(
                    "TokenRequest",
                    &name,
                    "authentication.k8s.io",
                    &[FieldError::not_supported(
                        "spec.boundObjectRef.kind",
                        kind,
                        &["Pod", "Secret", "Node"],
                    )],
                ))
            }
        };
        let obj = if kind == "Node" {
            let res = ctx.registry.by_kind("", "Node");
            match res {
                Some(r) => match ctx.store.get(&r.key(None, bname)).await {
                    Ok(Some(kv)) => serde_json::from_slice::<Value>(&kv.value).ok(),
                    _ => None,
                },
                None => None,
            }
        } else {
            get_obj(ctx, "", kind, &ns, bname).await
        }
        .ok_or_else(|| StatusError::not_found("", &format!("{field}s"), bname))?;
        let uid = obj["metadata"]["uid"].clone();
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty()) {
            if uid != want {
                return Err(StatusError::conflict(
                    &format!("{field}s"),
                    bname,
                    &format!("the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"),
                ));
            }
        }
        k8s[field] = json!({"name": bname, "uid": uid});
    }
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = json!({"aud": audiences, "exp": iat + exp_secs, "iat": iat, "nbf": iat, "iss": ISSUER,
        "jti": jti, "kubernetes.io": k8s, "sub": format!("system:serviceaccount:{ns}:{name}")});
    let token = signer.sign(&claims)?;
    let exp = chrono::DateTime::from_timestamp(iat + exp_secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenRequest");
    body["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    body["spec"]["audiences"] = json!(audiences);
    body["spec"]["expirationSeconds"] = json!(exp_secs);
    body["status"] = json!({"token": token, "expirationTimestamp": exp});
    Ok(t.respond(201, &body))
}

/// The issuer of legacy (Secret-based) service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// A legacy token for the Secret `secret` of service account `ns/sa` (no expiry).
pub fn legacy_token(ctx: &Ctx, ns: &str, sa: &str, uid: &str, secret: &str) -> Option<String> {
    let claims = json!({"iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": format!("system:serviceaccount:{ns}:{sa}")});
    ctx.signer.as_ref()?.sign(&claims).ok()
}

async fn review_legacy(ctx: &Ctx, token: &str, c: &Value) -> Result<Value, String> {
    let field = |k: &str| {
        c[format!("kubernetes.io/serviceaccount/{k}")]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (ns, sa_name, secret, uid) = (
        field("namespace"),
        field("service-account.name"),
        field("secret.name"),
        field("service-account.uid"),
    );
    let s = get_obj(ctx, "", "Secret", &ns, &secret)
        .await
        .ok_or("invalid bearer token: secret has been deleted")?;
    use base64::Engine;
    let stored = s["data"]["token"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .unwrap_or_default();
    if stored != token.as_bytes() {
        return Err("invalid bearer token: token does not match the secret".into());
    }
    let sa = get_obj(ctx, "", "ServiceAccount", &ns, &sa_name)
        .await
        .ok_or("invalid bearer token: service account has been deleted")?;
    if sa["metadata"]["uid"] != uid.as_str() {
        return Err("invalid bearer token: service account UID does not match".into());
    }
    Ok(json!({"authenticated": true, "audiences": [ISSUER],
        "user": {"username": format!("system:serviceaccount:{ns}:{sa_name}"), "uid": uid,
                 "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                 "extra": {"authentication.kubernetes.io/credential-id": [format!("secret/{secret}")]}}}))
}

/// The user a token names, when it is valid and its bindings still hold.
pub async fn review(ctx: &Ctx, token: &str, audiences: &[String]) -> Result<Value, String> {
    let signer = ctx
        .signer
        .as_ref()
        .ok_or("no service-account signing key")?;
    let c = signer
        .verify_cached(token)
        .ok_or("invalid bearer token: not a token this server signed")?;
    if c["iss"] == LEGACY_ISSUER {
        return review_legacy(ctx, token, &c).await;
    }
    let t = now();
    if c["exp"].as_i64().is_none_or(|e| e <= t) {
        return Err("invalid bearer token: token has expired".into());
    }
    if c["nbf"].as_i64().is_some_and(|n| n > t + 60) {
        return Err("invalid bearer token: token is not valid yet".into());
    }
    let token_aud: Vec<String> = c["aud"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let wanted: Vec<String> = if audiences.is_empty() {
        vec![ISSUER.to_string()]
    } else {
        audiences.to_vec()
    };
    let matched: Vec<String> = wanted
        .iter()
        .filter(|a| token_aud.contains(a))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Err("invalid bearer token: token audiences don't match".into());
    }
    let k = &c["kubernetes.io"];
    let ns = k["namespace"].as_str().unwrap_or("");
    let sa_name = k["serviceaccount"]["name"].as_str().unwrap_or("");
    let sa = get_obj(ctx, "", "ServiceAccount", ns, sa_name)
        .await
        .ok_or("invalid bearer token: service account has been deleted")?;
    if sa["metadata"]["uid"] != k["serviceaccount"]["uid"] {
        return Err("invalid bearer token: service account UID does not match".into());
    }
    let mut extra = json!({"authentication.kubernetes.io/credential-id": [format!("JTI={}", c["jti"].as_str().unwrap_or(""))]});
    for (field, kind) in [("pod", "Pod"), ("secret", "Secret")] {
        if let Some(name) = k[field]["name"].as_str() {
            let obj = get_obj(ctx, "", kind, ns, name)
                .await
                .ok_or_else(|| format!("invalid bearer token: {field} {name} has been deleted"))?;
            if obj["metadata"]["uid"] != k[field]["uid"] {
                return Err(format!(
                    "invalid bearer token: {field} {name} UID does not match"
                ));
            }
            if field == "pod" {
                extra["authentication.kubernetes.io/pod-name"] = json!([name]);
                extra["authentication.kubernetes.io/pod-uid"] = json!([k[field]["uid"]]);
            }
        }
    }
    Ok(json!({"authenticated": true, "audiences": matched,
        "user": {"username": format!("system:serviceaccount:{ns}:{sa_name}"), "uid": k["serviceaccount"]["uid"],
                 "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                 "extra": extra}}))
}
