//! The node authorizer and the NodeRestriction admission plugin, for kubelets (user
//! `system:node:<name>` in group `system:nodes`).
//!
//! Authorizer (upstream's `plugin/pkg/auth/authorizer/node`): secrets, configmaps,
//! persistentvolumeclaims, persistentvolumes and service-account tokens only when a pod bound to
//! the node refers to them, and only by name (`get`, a `list`/`watch` whose field selector names
//! one object, token `create`); anything else by the
//! static node rules ([`crate::policy::node_rules`]). Where upstream keeps a graph fed by
//! informers, we read the node's pods from the store at decision time: correct at once, and
//! paid only by kubelet requests for those kinds.
//!
//! Admission: a node may write only its own Node and Lease, only the status of pods bound to
//! it, create only mirror pods bound to itself, and delete only pods bound to itself.

use crate::handlers::{self, Ctx, UserInfo};
use crate::rbac::Attrs;
use crate::status::StatusError;
use serde_json::Value;

/// The node a kubelet identity names.
pub fn node_of(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == "system:nodes") {
        return None;
    }
    user.name
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

/// Upstream's node rules, built once.
fn node_rules() -> &'static [crate::rbac::Rule] {
    static RULES: std::sync::OnceLock<Vec<crate::rbac::Rule>> = std::sync::OnceLock::new();
    RULES.get_or_init(crate::policy::node_rules)
}

fn no_relation(node: &str) -> String {
    format!("no relationship found between node '{node}' and this object")
}

/// Pods bound to `node` in `ns`.
async fn pods_on(ctx: &Ctx, node: &str, ns: &str) -> Vec<Value> {
    let Some(res) = ctx.registry.by_kind("", "Pod") else {
        return vec![];
    };
    let prefix = format!("{}{ns}/", res.prefix());
    match ctx.store.list(&prefix).await {
        Ok((kvs, _)) => kvs
            .iter()
            .filter_map(|kv| handlers::decode_as(&res, kv).ok())
            .filter(|p| p["spec"]["nodeName"] == node)
            .collect(),
        Err(_) => vec![],
    }
}

/// Whether `pod` refers to the object (`secret`, `configmap`, `pvc`, `serviceaccount`) `name`.
fn refers(pod: &Value, what: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    match what {
        "serviceaccount" => {
            let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
            sa == name
        }
        "pvc" => spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| is(&v["persistentVolumeClaim"]["claimName"])),
        "secret" | "configmap" => {
            let (vol, proj, key_ref, env_from, vol_field) = if what == "secret" {
                (
                    "secret",
                    "secret",
                    "secretKeyRef",
                    "secretRef",
                    "secretName",
                )
            } else {
                (
                    "configMap",
                    "configMap",
                    "configMapKeyRef",
                    "configMapRef",
                    "name",
                )
            };
            if what == "secret"
                && spec["imagePullSecrets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| is(&s["name"]))
            {
                return true;
            }
            for v in spec["volumes"].as_array().into_iter().flatten() {
                if is(&v[vol][vol_field]) {
                    return true;
                }
                for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                    if is(&s[proj]["name"]) {
                        return true;
                    }
                }
                // Secrets some volume drivers take.
                for k in ["csi", "cephfs", "rbd", "flexVolume", "iscsi", "azureFile"] {
                    let v = &v[k];
                    if is(&v["nodePublishSecretRef"]["name"])
                        || is(&v["secretRef"]["name"])
                        || is(&v["secretName"])
                    {
                        return what == "secret";
                    }
                }
            }
            for list in ["containers", "initContainers", "ephemeralContainers"] {
                for c in spec[list].as_array().into_iter().flatten() {
                    for e in c["env"].as_array().into_iter().flatten() {
                        if is(&e["valueFrom"][key_ref]["name"]) {
                            return true;
                        }
                    }
                    for e in c["envFrom"].as_array().into_iter().flatten() {
                        if is(&e[env_from]["name"]) {
                            return true;
                        }
                    }
                }
            }
            false
        }
        _ => false,
    }
}

/// The node authorizer's decision: Ok to allow, Err(reason) for no opinion (RBAC goes on).
pub async fn authorize(ctx: &Ctx, node: &str, a: &Attrs) -> Result<(), String> {
    let Some(r) = &a.resource else {
        return if node_rules().iter().any(|x| x.allows(a)) {
            Ok(())
        } else {
            Err(String::new())
        };
    };
    let graph_kind = match (
        r.group.as_str(),
        r.resource.as_str(),
        r.subresource.as_str(),
    ) {
        ("", "secrets", "") => Some("secret"),
        ("", "configmaps", "") => Some("configmap"),
        ("", "persistentvolumeclaims", "") => Some("pvc"),
        ("", "persistentvolumes", "") => Some("pv"),
        ("", "serviceaccounts", "token") => Some("serviceaccount"),
        _ => None,
    };
    let Some(kind) = graph_kind else {
        return if node_rules().iter().any(|x| x.allows(a)) {
            Ok(())
        } else {
            Err(String::new())
        };
    };
    // Upstream: secrets, configmaps and claims may be read (get, and list or watch selecting
    // one object by name); volumes only got; tokens only created.
    match kind {
        "serviceaccount" if a.verb != "create" => {
            return Err("can only create tokens for individual service accounts".into())
        }
        "pv" if a.verb != "get" => {
            return Err("can only get individual resources of this type".into())
        }
        "secret" | "configmap" | "pvc" if !matches!(a.verb.as_str(), "get" | "list" | "watch") => {
            return Err("can only read resources of this type".into())
        }
        _ => {}
    }
    if r.name.is_empty() {
        return Err("No Object name found".into());
    }
    if kind == "pv" {
        // A PV is the node's when a claim one of its pods uses is bound to it.
        let Some(pvcs) = ctx.registry.by_kind("", "PersistentVolumeClaim") else {
            return Err(no_relation(node));
        };
        if let Ok((kvs, _)) = ctx.store.list(&pvcs.prefix()).await {
            for kv in &kvs {
                let Ok(pvc) = handlers::decode_as(&pvcs, kv) else {
                    continue;
                };
                if pvc["spec"]["volumeName"] == r.name.as_str() {
                    let ns = pvc["metadata"]["namespace"].as_str().unwrap_or("");
                    let claim = pvc["metadata"]["name"].as_str().unwrap_or("");
                    if pods_on(ctx, node, ns)
                        .await
                        .iter()
                        .any(|p| refers(p, "pvc", claim))
                    {
                        return Ok(());
                    }
                }
            }
        }
        return Err(no_relation(node));
    }
    if pods_on(ctx, node, &r.namespace)
        .await
        .iter()
        .any(|p| refers(p, kind, &r.name))
    {
        Ok(())
    } else {
        Err(no_relation(node))
    }
}

/// What a node's mirror pod may hold (upstream's NodeRestriction): at most one owner
/// reference, and that one the node itself as controller; no service account, secrets,
/// configmaps or claims.
fn mirror_pod_rules(node: &str, pod: &Value) -> Result<(), String> {
    if let Some(refs) = pod["metadata"]["ownerReferences"].as_array() {
        if refs.len() > 1 {
            return Err(format!(
                "node {node:?} can only create pods with a single owner reference set to itself"
            ));
        }
        if let Some(r) = refs.first() {
            if r["apiVersion"] != "v1" || r["kind"] != "Node" || r["name"] != node {
                return Err(format!(
                    "node {node:?} can only create pods with an owner reference set to itself"
                ));
            }
            if r["controller"] != true {
                return Err(format!(
                    "node {node:?} can only create pods with a controller owner reference set to itself"
                ));
            }
            if r["blockOwnerDeletion"] == true {
                return Err(format!(
                    "node {node:?} must not set blockOwnerDeletion on an owner reference"
                ));
            }
        }
    }
    let spec = &pod["spec"];
    let sa = spec["serviceAccountName"].as_str().unwrap_or("");
    if !sa.is_empty() {
        return Err(format!(
            "node {node:?} can not create pods that reference a service account"
        ));
    }
    let vols = spec["volumes"].as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        .collect();
    let env_refs = |key: &str, from: &str| {
        containers.iter().any(|c| {
            c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| !e["valueFrom"][key].is_null())
                || c["envFrom"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| !e[from].is_null())
        })
    };
    let projected = |key: &str| {
        vols.iter().any(|v| {
            v["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| !s[key].is_null())
        })
    };
    if vols.iter().any(|v| !v["secret"].is_null())
        || projected("secret")
        || env_refs("secretKeyRef", "secretRef")
    {
        return Err(format!(
            "node {node:?} can not create pods that reference secrets"
        ));
    }
    if vols.iter().any(|v| !v["configMap"].is_null())
        || projected("configMap")
        || env_refs("configMapKeyRef", "configMapRef")
    {
        return Err(format!(
            "node {node:?} can not create pods that reference configmaps"
        ));
    }
    if vols
        .iter()
        .any(|v| !v["persistentVolumeClaim"].is_null() || !v["ephemeral"].is_null())
    {
        return Err(format!(
            "node {node:?} can not create pods that reference persistentvolumeclaims"
        ));
    }
    Ok(())
}

/// NodeRestriction: what a kubelet may write, checked before the write is stored.
/// `verb` is create/update/patch/delete; `obj` the object being written (for deletes, the
/// stored one).
pub async fn admit(
    user: &UserInfo,
    res: &crate::registry::Resource,
    sub: Option<&str>,
    verb: &str,
    obj: &Value,
) -> Result<(), StatusError> {
    let Some(node) = node_of(user) else {
        return Ok(());
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let forbid = |why: String| StatusError::forbidden(&res.group, &res.plural, name, &why);
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Node") if name != node => {
            return Err(forbid(format!(
                "node {node:?} is not allowed to modify node {name:?}"
            )));
        }
        ("coordination.k8s.io", "Lease")
            if obj["metadata"]["namespace"] == "kube-node-lease" && name != node =>
        {
            return Err(forbid(
                "can only access node lease with the same name as the requesting node".into(),
            ));
        }
        ("", "Pod") => {
            let bound = obj["spec"]["nodeName"].as_str().unwrap_or("");
            match (verb, sub) {
                ("create", None) => {
                    if obj["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
                        return Err(forbid(format!(
                            "pod does not have \"kubernetes.io/config.mirror\" annotation, node {node:?} can only create mirror pods"
                        )));
                    }
                    if bound != node {
                        return Err(forbid(format!(
                            "node {node:?} can only create pods with spec.nodeName set to itself"
                        )));
                    }
                    mirror_pod_rules(node, obj).map_err(forbid)?;
                }
                (_, Some("status")) => {
                    if bound != node {
                        return Err(forbid(format!(
                            "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                        )));
                    }
                }
                ("delete", _) => {
                    if bound != node {
                        return Err(forbid(format!(
                            "node {node:?} can only delete pods with spec.nodeName set to itself"
                        )));
                    }
                }
                (_, Some("eviction")) => {
                    if bound != node {
                        return Err(forbid(format!(
                            "node {node:?} can only evict pods with spec.nodeName set to itself"
                        )));
                    }
                }
                _ => {
                    return Err(forbid(format!(
                        "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                    )))
                }
            }
        }
        _ => {}
    }
    Ok(())
}
