//! MutatingAdmissionWebhook and ValidatingAdmissionWebhook: the webhooks of
//! Mutating/ValidatingWebhookConfigurations are called over HTTPS (their `caBundle`, or the
//! cluster CA) with an `admission.k8s.io/v1` AdmissionReview, in upstream's order
//! (configurations by name, webhooks in their order; mutating ones one after the other, each
//! seeing the previous patches). Matching: `rules` (operations, groups, versions, resources incl.
//! subresources and `*`, scope), `namespaceSelector` (labels of the object's namespace; of the
//! object itself for a Namespace) and `objectSelector`. `timeoutSeconds` (default 10) bounds each
//! call; a call that fails is an error (`failurePolicy: Fail`, the default) or skipped
//! (`Ignore`). A denial is upstream's `admission webhook "<name>" denied the request: <message>`.
//! Mutations are JSONPatch responses applied to the object. Webhooks take `clientConfig.url`;
//! a `clientConfig.service` is reached at the Service's cluster IP.
//!
//! Configurations are cached and re-read after any write to them. Mutating webhooks run on
//! creates; validating ones on creates, updates and deletes.

use crate::handlers::{self, Ctx, Target};
use crate::rbac::selector_matches;
use crate::status::StatusError;
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GROUP: &str = "admissionregistration.k8s.io";

/// Every webhook of the stored configurations, in upstream's order; `None` when a list failed.
async fn read_hooks(ctx: &Ctx) -> Option<Vec<Hook>> {
    let mut all = vec![];
    for (kind, mutating) in [
        ("MutatingWebhookConfiguration", true),
        ("ValidatingWebhookConfiguration", false),
    ] {
        let Some(res) = ctx.registry.by_kind(GROUP, kind) else {
            continue;
        };
        let (kvs, _) = ctx.store.list(&res.prefix()).await.ok()?;
        let mut cfgs: Vec<Value> = kvs
            .iter()
            .filter_map(|kv| handlers::decode_as(&res, kv).ok())
            .collect();
        cfgs.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        for c in cfgs {
            for w in c["webhooks"].as_array().into_iter().flatten() {
                all.push(Hook {
                    name: w["name"].as_str().unwrap_or("").to_string(),
                    mutating,
                    spec: w.clone(),
                });
            }
        }
    }
    Some(all)
}

#[derive(Clone, Debug)]
struct Hook {
    name: String,
    mutating: bool,
    spec: Value,
}

/// The cached webhook configurations and HTTPS clients by CA bundle.
pub struct Webhooks {
    hooks: crate::rebuilt::Rebuilt<Vec<Hook>>,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            hooks: Default::default(),
            clients: Mutex::new(HashMap::new()),
        }
    }
}

impl Webhooks {
    pub fn invalidate(&self) {
        self.hooks.invalidate();
    }

    async fn current(&self, ctx: &Ctx) -> Arc<Vec<Hook>> {
        self.hooks.get(|| read_hooks(ctx)).await
    }

    fn client(&self, ctx: &Ctx, ca_b64: Option<&str>) -> Result<reqwest::Client, String> {
        let key = ca_b64.unwrap_or("").to_string();
        if let Some(c) = self.clients.lock().expect("clients lock").get(&key) {
            return Ok(c.clone());
        }
        let pem = match ca_b64 {
            Some(b) if !b.is_empty() => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("caBundle: {e}"))?,
            _ => ctx.ca_pem.as_bytes().to_vec(),
        };
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("caBundle: {e}"))?
        {
            b = b.add_root_certificate(cert);
        }
        let c = b.build().map_err(|e| e.to_string())?;
        self.clients
            .lock()
            .expect("clients lock")
            .insert(key, c.clone());
        Ok(c)
    }
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_matches(rule: &Value, op: &str, t: &Target) -> bool {
    let any = |list: Vec<&str>, want: &str| list.iter().any(|x| *x == "*" || *x == want);
    if !any(strs(&rule["operations"]), op) {
        return false;
    }
    if !any(strs(&rule["apiGroups"]), &t.res.group)
        || !any(strs(&rule["apiVersions"]), &t.res.version)
    {
        return false;
    }
    let res = &t.res.plural;
    let sub = t.sub.as_deref().unwrap_or("");
    let resources = strs(&rule["resources"]);
    let res_ok = resources.iter().any(|r| {
        let (rr, rs) = r.split_once('/').unwrap_or((r, ""));
        (rr == "*" || rr == res) && (rs == sub || (rs == "*" && !sub.is_empty()) || (*r == "*/*"))
    });
    if !res_ok {
        return false;
    }
    match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !t.res.namespaced,
        "Namespaced" => t.res.namespaced,
        _ => true,
    }
}

async fn namespace_labels(ctx: &Ctx, ns: &str) -> Value {
    let Some(res) = ctx.registry.by_kind("", "Namespace") else {
        return Value::Null;
    };
    match ctx.store.get(&res.key(None, ns)).await {
        Ok(Some(kv)) => handlers::decode_as(&res, &kv)
            .map(|n| n["metadata"]["labels"].clone())
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

async fn applies(ctx: &Ctx, h: &Hook, op: &str, t: &Target, obj: &Value, old: &Value) -> bool {
    if !h.spec["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| rule_matches(r, op, t))
    {
        return false;
    }
    let empty = json!({});
    let ns_sel = h.spec.get("namespaceSelector").unwrap_or(&empty);
    if ns_sel.as_object().is_some_and(|m| !m.is_empty()) {
        let labels = if t.res.group.is_empty() && t.res.kind == "Namespace" {
            let o = if obj.is_null() { old } else { obj };
            o["metadata"]["labels"].clone()
        } else if t.res.namespaced {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .or(old["metadata"]["namespace"].as_str())
                .or(t.namespace.as_deref())
                .unwrap_or("");
            namespace_labels(ctx, ns).await
        } else {
            // Cluster-scoped objects other than namespaces are never excluded by it.
            Value::Null
        };
        if (t.res.namespaced || t.res.kind == "Namespace") && !selector_matches(ns_sel, &labels) {
            return false;
        }
    }
    let obj_sel = h.spec.get("objectSelector").unwrap_or(&empty);
    if obj_sel.as_object().is_some_and(|m| !m.is_empty()) {
        let new_ok = !obj.is_null() && selector_matches(obj_sel, &obj["metadata"]["labels"]);
        let old_ok = !old.is_null() && selector_matches(obj_sel, &old["metadata"]["labels"]);
        if !new_ok && !old_ok {
            return false;
        }
    }
    true
}

fn review(op: &str, t: &Target, obj: &Value, old: &Value, uid: &str) -> Value {
    let res = &t.res;
    let mut user = json!({"username": t.user.name, "groups": t.user.groups});
    if !t.user.uid.is_empty() {
        user["uid"] = json!(t.user.uid);
    }
    if !t.user.extra.is_empty() {
        user["extra"] = json!(t.user.extra);
    }
    let kind = json!({"group": res.group, "version": res.version, "kind": res.kind});
    let resource = json!({"group": res.group, "version": res.version, "resource": res.plural});
    let name = obj["metadata"]["name"]
        .as_str()
        .or(old["metadata"]["name"].as_str())
        .or(t.name.as_deref())
        .unwrap_or("");
    let mut req = json!({"uid": uid, "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource, "name": name,
        "operation": op, "userInfo": user, "object": obj, "oldObject": old,
        "dryRun": t.query.iter().any(|(k, v)| k == "dryRun" && v == "All")});
    if let Some(s) = &t.sub {
        req["subResource"] = json!(s);
        req["requestSubResource"] = json!(s);
    }
    if let Some(ns) = obj["metadata"]["namespace"]
        .as_str()
        .or(old["metadata"]["namespace"].as_str())
        .or(t.namespace.as_deref())
    {
        if res.namespaced {
            req["namespace"] = json!(ns);
        }
    }
    let opts = match op {
        "CREATE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}),
        "UPDATE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"}),
        _ => json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}),
    };
    req["options"] = opts;
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// The URL a webhook is called at.
async fn url_of(ctx: &Ctx, cc: &Value) -> Result<String, String> {
    if let Some(u) = cc["url"].as_str() {
        return Ok(u.to_string());
    }
    let svc = &cc["service"];
    let (ns, name) = (
        svc["namespace"].as_str().unwrap_or(""),
        svc["name"].as_str().unwrap_or(""),
    );
    let port = svc["port"].as_i64().unwrap_or(443);
    let path = svc["path"].as_str().unwrap_or("");
    let res = ctx
        .registry
        .by_kind("", "Service")
        .ok_or("no services resource")?;
    let kv = ctx
        .store
        .get(&res.key(Some(ns), name))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("service \"{name}\" not found"))?;
    let s = handlers::decode_as(&res, &kv).map_err(|e| e.message)?;
    let ip = s["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .ok_or_else(|| format!("service \"{name}\" has no cluster IP"))?;
    Ok(format!("https://{ip}:{port}{path}"))
}

fn reason_of(r: &str) -> &'static str {
    match r {
        "Forbidden" => "Forbidden",
        "BadRequest" => "BadRequest",
        "Invalid" => "Invalid",
        "NotFound" => "NotFound",
        "Conflict" => "Conflict",
        "Unauthorized" => "Unauthorized",
        "AlreadyExists" => "AlreadyExists",
        "TooManyRequests" => "TooManyRequests",
        "InternalError" => "InternalError",
        _ => "",
    }
}

/// Calls one webhook; Ok(Some(response)) when it answered, Ok(None) when it failed and is
/// ignored.
async fn call(ctx: &Ctx, h: &Hook, body: &Value) -> Result<Option<Value>, StatusError> {
    let timeout = h.spec["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30);
    let ignore = h.spec["failurePolicy"] == "Ignore";
    let cc = &h.spec["clientConfig"];
    let outcome: Result<Value, String> = async {
        let url = url_of(ctx, cc).await?;
        let full = format!(
            "{url}{}timeout={timeout}s",
            if url.contains('?') { "&" } else { "?" }
        );
        let client = ctx.webhooks.client(ctx, cc["caBundle"].as_str())?;
        let resp = client
            .post(&full)
            .timeout(Duration::from_secs(timeout))
            .json(body)
            .send()
            .await
            .map_err(|e| {
                let e = if e.is_timeout() {
                    "context deadline exceeded".to_string()
                } else {
                    let mut s = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(x) = src {
                        s = format!("{s}: {x}");
                        src = x.source();
                    }
                    s
                };
                format!("failed to call webhook: Post \"{full}\": {e}")
            })?;
        let code = resp.status().as_u16();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| format!("received invalid webhook response: {e}"))?;
        if code != 200 {
            return Err(format!(
                "received invalid webhook response: status code {code}"
            ));
        }
        if v["response"]["uid"] != body["request"]["uid"] {
            return Err(format!(
                "expected response.uid={}, got {}",
                body["request"]["uid"], v["response"]["uid"]
            ));
        }
        Ok(v["response"].clone())
    }
    .await;
    match outcome {
        Ok(r) => Ok(Some(r)),
        Err(e) if ignore => {
            tracing::warn!(webhook = %h.name, error = %e, "failed calling webhook, failing open (failurePolicy Ignore)");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(webhook = %h.name, error = %e, "failed calling webhook, failing closed");
            Err(StatusError::new(
                500,
                "InternalError",
                format!(
                    "Internal error occurred: failed calling webhook \"{}\": {e}",
                    h.name
                ),
            ))
        }
    }
}

fn denied(h: &Hook, r: &Value) -> StatusError {
    let st = &r["status"];
    let by = format!("admission webhook \"{}\" denied the request", h.name);
    let msg = st["message"].as_str().filter(|m| !m.is_empty());
    let reason = st["reason"].as_str().filter(|m| !m.is_empty());
    let message = match (msg, reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, Some(r)) => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = st["code"].as_u64().unwrap_or(0).clamp(400, 599) as u16;
    let mut e = StatusError::new(code, reason_of(reason.unwrap_or("")), message);
    if st["details"].is_object() {
        e.details = Some(st["details"].clone());
    }
    e
}

fn warnings_of(r: &Value, out: &mut Vec<String>) {
    for w in r["warnings"].as_array().into_iter().flatten() {
        if let Some(w) = w.as_str() {
            out.push(w.to_string());
        }
    }
}

/// The operation of a write (`CREATE`, `UPDATE`, `DELETE`).
fn op_of(verb: &str) -> &'static str {
    match verb {
        "create" => "CREATE",
        "delete" => "DELETE",
        _ => "UPDATE",
    }
}

/// Mutating webhooks on a create: each matching one may patch `obj`.
pub async fn mutate(ctx: &Ctx, t: &Target, obj: &mut Value) -> Result<Vec<String>, StatusError> {
    let hooks = ctx.webhooks.current(ctx).await;
    let mut warnings = vec![];
    for h in hooks.iter().filter(|h| h.mutating) {
        if !applies(ctx, h, "CREATE", t, obj, &Value::Null).await {
            continue;
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let body = review("CREATE", t, obj, &Value::Null, &uid);
        let Some(r) = call(ctx, h, &body).await? else {
            continue;
        };
        warnings_of(&r, &mut warnings);
        if r["allowed"] != true {
            return Err(denied(h, &r));
        }
        if let Some(p) = r["patch"].as_str() {
            if r["patchType"] != "JSONPatch" {
                return Err(StatusError::internal(format!(
                    "failed calling webhook \"{}\": unsupported patch type {}",
                    h.name, r["patchType"]
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| {
                    StatusError::internal(format!("webhook \"{}\": patch: {e}", h.name))
                })?;
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).map_err(|e| {
                StatusError::internal(format!("webhook \"{}\": patch: {e}", h.name))
            })?;
            json_patch::patch(obj, &patch).map_err(|e| {
                StatusError::internal(format!("webhook \"{}\": applying the patch: {e}", h.name))
            })?;
        }
    }
    Ok(warnings)
}

/// Validating webhooks: every matching one is asked; the first denial wins.
pub async fn validate(
    ctx: &Ctx,
    t: &Target,
    verb: &str,
    obj: &Value,
) -> Result<Vec<String>, StatusError> {
    let hooks = ctx.webhooks.current(ctx).await;
    if !hooks.iter().any(|h| !h.mutating) {
        return Ok(vec![]);
    }
    let op = op_of(verb);
    let (new, old) = match op {
        "DELETE" => (Value::Null, obj.clone()),
        "UPDATE" => {
            let old = match ctx.store.get(&t.key()).await {
                Ok(Some(kv)) => handlers::decode_as(&t.res, &kv).unwrap_or(Value::Null),
                _ => Value::Null,
            };
            (obj.clone(), old)
        }
        _ => (obj.clone(), Value::Null),
    };
    let mut warnings = vec![];
    for h in hooks.iter().filter(|h| !h.mutating) {
        if !applies(ctx, h, op, t, &new, &old).await {
            continue;
        }
        let uid = uuid::Uuid::new_v4().to_string();
        let body = review(op, t, &new, &old, &uid);
        let Some(r) = call(ctx, h, &body).await? else {
            continue;
        };
        warnings_of(&r, &mut warnings);
        if r["allowed"] != true {
            return Err(denied(h, &r));
        }
    }
    Ok(warnings)
}
