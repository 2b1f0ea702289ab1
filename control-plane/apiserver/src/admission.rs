//! Admission: what runs on a write after authorization and before the store, in upstream's
//! order. Mutating: ServiceAccount (default service account, the projected
//! `kube-api-access-*` token volume), Priority (priorityClassName resolved), LimitRanger and
//! DefaultStorageClass ([`crate::quota`]), the token controller's filling of legacy
//! service-account token Secrets. Validating: NodeRestriction ([`crate::nodeauthz::admit`]),
//! RBAC's escalation prevention, PodSecurity ([`crate::podsecurity`]) and ResourceQuota.
//! NamespaceLifecycle is `handlers::ensure_namespace`.

use crate::handlers::{Ctx, Target, UserInfo};
use crate::rbac::{self, Attrs, Rule, GROUP};
use crate::status::StatusError;
use base64::Engine;
use serde_json::{json, Value};

const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn internal(user: &UserInfo) -> bool {
    user.name.is_empty()
}

/// Mutating admission of a create (built-in plugins, then webhooks); returns the webhooks'
/// warnings.
pub async fn mutate_create(
    ctx: &Ctx,
    t: &Target,
    obj: &mut Value,
) -> Result<Vec<String>, StatusError> {
    builtin_mutations(ctx, t, obj).await?;
    if internal(&t.user) {
        return Ok(vec![]);
    }
    crate::webhook::mutate(ctx, t, obj).await
}

async fn builtin_mutations(ctx: &Ctx, t: &Target, obj: &mut Value) -> Result<(), StatusError> {
    let res = &t.res;
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            crate::quota::limit_ranger(ctx, obj).await?;
            service_account(ctx, obj).await?;
            priority(ctx, obj).await?;
        }
        ("", "Secret") => fill_legacy_token(ctx, obj).await,
        ("", "PersistentVolumeClaim") => crate::quota::default_storage_class(ctx, obj).await,
        _ => {}
    }
    Ok(())
}

/// Validating admission of a create, update (incl. patch) or delete; returns the warnings
/// for the client.
pub async fn validate(
    ctx: &Ctx,
    t: &Target,
    verb: &str,
    obj: &Value,
) -> Result<Vec<String>, StatusError> {
    if internal(&t.user) {
        return Ok(vec![]);
    }
    crate::nodeauthz::admit(&t.user, &t.res, t.sub.as_deref(), verb, obj).await?;
    if t.res.group == "certificates.k8s.io" && t.res.kind == "CertificateSigningRequest" {
        signer_permission(ctx, t, verb, obj).await?;
    }
    if t.res.group == GROUP && verb != "delete" && t.sub.is_none() {
        escalation(ctx, &t.user, &t.res, obj).await?;
    }
    let mut warnings = vec![];
    if verb == "create" && t.sub.is_none() {
        warnings = pod_security(ctx, t, obj).await?;
    }
    warnings.extend(crate::webhook::validate(ctx, t, verb, obj).await?);
    if verb == "create" && t.sub.is_none() {
        crate::quota::check_quota(ctx, &t.res, obj).await?;
    }
    Ok(warnings)
}

/// PodSecurity for a new Pod (enforce refuses, warn warns) or pod template (both warn).
async fn pod_security(ctx: &Ctx, t: &Target, obj: &Value) -> Result<Vec<String>, StatusError> {
    use crate::podsecurity::{check, level_of, message, pod_parts};
    let Some((meta, spec)) = pod_parts(&t.res.kind, obj) else {
        return Ok(vec![]);
    };
    let ns_name = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let Some(ns) = get(ctx, "", "Namespace", None, ns_name).await else {
        return Ok(vec![]);
    };
    let is_pod = t.res.group.is_empty() && t.res.kind == "Pod";
    let mut warnings = vec![];
    if let Some(level) = level_of(&ns, "enforce") {
        let v = check(level, meta, spec);
        if !v.is_empty() {
            if is_pod {
                let name = obj["metadata"]["name"].as_str().unwrap_or("");
                return Err(StatusError::forbidden(
                    "",
                    "pods",
                    name,
                    &message("violates", level, &v),
                ));
            }
            warnings.push(message("would violate", level, &v));
        }
    }
    if let Some(level) = level_of(&ns, "warn") {
        let v = check(level, meta, spec);
        if !v.is_empty() {
            let w = message("would violate", level, &v);
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    Ok(warnings)
}

fn random5() -> String {
    // Upstream's utilrand alphabet (no vowels, no confusable digits).
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let u = uuid::Uuid::new_v4();
    u.as_bytes()[..5]
        .iter()
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

async fn get(ctx: &Ctx, group: &str, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
    let res = ctx.registry.by_kind(group, kind)?;
    let kv = ctx.store.get(&res.key(ns, name)).await.ok()??;
    crate::handlers::decode_as(&res, &kv).ok()
}

/// The ServiceAccount admission plugin.
async fn service_account(ctx: &Ctx, pod: &mut Value) -> Result<(), StatusError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    if !pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
        return Ok(());
    }
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let spec = &mut pod["spec"];
    let sa_name = spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["serviceAccount"].as_str().filter(|s| !s.is_empty()))
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(sa_name);
    spec["serviceAccount"] = json!(sa_name);
    let Some(sa) = get(ctx, "", "ServiceAccount", Some(&ns), &sa_name).await else {
        return Err(StatusError::forbidden(
            "",
            "pods",
            &name,
            &format!(
                "error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            ),
        ));
    };
    // The ServiceAccount's imagePullSecrets go to a pod that names none (upstream's plugin).
    let pod_secrets = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if let Some(sa_secrets) = sa["imagePullSecrets"].as_array().filter(|a| !a.is_empty()) {
        if !pod_secrets {
            spec["imagePullSecrets"] = json!(sa_secrets);
        }
    }
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let mounted_already = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == SA_MOUNT)
    };
    let vol = format!("kube-api-access-{}", random5());
    let mut used = false;
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec[list].as_array_mut() {
            for c in cs {
                if mounted_already(c) {
                    continue;
                }
                let m = json!({"name": vol, "readOnly": true, "mountPath": SA_MOUNT});
                match c["volumeMounts"].as_array_mut() {
                    Some(a) => a.push(m),
                    None => c["volumeMounts"] = json!([m]),
                }
                used = true;
            }
        }
    }
    if used {
        let v = json!({"name": vol, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}});
        match spec["volumes"].as_array_mut() {
            Some(a) => a.push(v),
            None => spec["volumes"] = json!([v]),
        }
    }
    Ok(())
}

/// The Priority admission plugin: priorityClassName resolved to priority (the global default
/// class, else 0, when unnamed).
async fn priority(ctx: &Ctx, pod: &mut Value) -> Result<(), StatusError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let class = pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let found = match &class {
        Some(c) => match get(ctx, "scheduling.k8s.io", "PriorityClass", None, c).await {
            Some(pc) => Some(pc),
            None => {
                return Err(StatusError::forbidden(
                    "",
                    "pods",
                    &name,
                    &format!("no PriorityClass with name {c} was found"),
                ))
            }
        },
        None => default_class(ctx).await,
    };
    let (value, policy, cname) = match &found {
        Some(pc) => (
            pc["value"].as_i64().unwrap_or(0),
            pc["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
            pc["metadata"]["name"].as_str().map(str::to_string),
        ),
        None => (0, "PreemptLowerPriority".to_string(), None),
    };
    pod["spec"]["priority"] = json!(value);
    pod["spec"]["preemptionPolicy"] = json!(policy);
    if let Some(n) = cname {
        pod["spec"]["priorityClassName"] = json!(n);
    }
    Ok(())
}

async fn default_class(ctx: &Ctx) -> Option<Value> {
    let res = ctx.registry.by_kind("scheduling.k8s.io", "PriorityClass")?;
    let (kvs, _) = ctx.store.list(&res.prefix()).await.ok()?;
    kvs.iter()
        .filter_map(|kv| crate::handlers::decode_as(&res, kv).ok())
        .filter(|pc| pc["globalDefault"] == true)
        .min_by_key(|pc| pc["value"].as_i64().unwrap_or(0))
}

/// The token controller's part for legacy `kubernetes.io/service-account-token` Secrets:
/// `token`, `ca.crt` and `namespace` filled, the service account's uid recorded.
async fn fill_legacy_token(ctx: &Ctx, secret: &mut Value) {
    if secret["type"] != "kubernetes.io/service-account-token" {
        return;
    }
    let ns = secret["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let sname = secret["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let Some(sa_name) = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
        .as_str()
        .map(str::to_string)
    else {
        return;
    };
    let Some(sa) = get(ctx, "", "ServiceAccount", Some(&ns), &sa_name).await else {
        return;
    };
    let uid = sa["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let Some(token) = crate::tokens::legacy_token(ctx, &ns, &sa_name, &uid, &sname) else {
        return;
    };
    secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = json!(uid);
    if !secret["data"].is_object() {
        secret["data"] = json!({});
    }
    secret["data"]["token"] = json!(B64.encode(token));
    secret["data"]["ca.crt"] = json!(B64.encode(&ctx.ca_pem));
    secret["data"]["namespace"] = json!(B64.encode(&ns));
}

/// RBAC's escalation check: a role may only hold what its author holds, a binding may only
/// grant what its author holds, unless the author may `escalate` (roles) or `bind` (bindings).
async fn escalation(
    ctx: &Ctx,
    user: &UserInfo,
    res: &crate::registry::Resource,
    obj: &Value,
) -> Result<(), StatusError> {
    if rbac::is_master(user) {
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let allowed = |a: Attrs| async move { rbac::authorize(ctx, user, &a).await.allowed };
    let wanted: Vec<Rule> = match res.kind.as_str() {
        "Role" | "ClusterRole" => {
            if allowed(Attrs::resource(
                "escalate",
                &ns,
                GROUP,
                &res.plural,
                "",
                &name,
            ))
            .await
            {
                return Ok(());
            }
            if obj["aggregationRule"].is_object() {
                let all = vec![
                    Rule::new(&["*"], &["*"], &["*"]),
                    Rule::urls(&["*"], &["*"]),
                ];
                let snap = ctx.rbac.snapshot(ctx).await;
                if !rbac::uncovered(&snap.rules_for(user, &ns), &all).is_empty() {
                    return Err(StatusError::forbidden(
                        GROUP,
                        &res.plural,
                        &name,
                        "must have cluster-admin privileges to use the aggregationRule",
                    ));
                }
                return Ok(());
            }
            serde_json::from_value(obj["rules"].clone()).unwrap_or_default()
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let rk = obj["roleRef"]["kind"].as_str().unwrap_or("");
            let rn = obj["roleRef"]["name"].as_str().unwrap_or("");
            let plural = if rk == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if allowed(Attrs::resource("bind", &ns, GROUP, plural, "", rn)).await {
                return Ok(());
            }
            let role = if rk == "Role" {
                get(ctx, GROUP, "Role", Some(&ns), rn).await
            } else {
                get(ctx, GROUP, "ClusterRole", None, rn).await
            };
            let Some(role) = role else {
                return Err(StatusError::not_found(GROUP, plural, rn));
            };
            serde_json::from_value(role["rules"].clone()).unwrap_or_default()
        }
        _ => return Ok(()),
    };
    let snap = ctx.rbac.snapshot(ctx).await;
    let missing = rbac::uncovered(&snap.rules_for(user, &ns), &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups = format!(
        "[{}]",
        user.groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let list: Vec<String> = missing.iter().map(Rule::compact).collect();
    Err(StatusError::forbidden(
        GROUP,
        &res.plural,
        &name,
        &format!(
            "user {:?} (groups={groups}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            list.join("\n")
        ),
    ))
}

/// Upstream's CertificateApproval and CertificateSigning admission: writing `/approval` needs
/// `approve`, and writing an issued certificate through `/status` needs `sign`, on the
/// `signers` resource named by the request's signer (or its `<domain>/*`).
async fn signer_permission(
    ctx: &Ctx,
    t: &Target,
    verb: &str,
    obj: &Value,
) -> Result<(), StatusError> {
    let needed = match (verb, t.sub.as_deref()) {
        ("update", Some("approval")) => "approve",
        ("update", Some("status"))
            if obj["status"]["certificate"]
                .as_str()
                .is_some_and(|c| !c.is_empty()) =>
        {
            "sign"
        }
        _ => return Ok(()),
    };
    let signer = obj["spec"]["signerName"].as_str().unwrap_or_default();
    let mut names = vec![signer.to_string()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    for name in names {
        let a =
            crate::rbac::Attrs::resource(needed, "", "certificates.k8s.io", "signers", "", &name);
        if crate::rbac::authorize(ctx, &t.user, &a).await.allowed {
            return Ok(());
        }
    }
    let csr = obj["metadata"]["name"].as_str().unwrap_or_default();
    Err(StatusError::forbidden(
        "certificates.k8s.io",
        "certificatesigningrequests",
        csr,
        &format!("user not permitted to {needed} requests with signerName {signer:?}"),
    ))
}
