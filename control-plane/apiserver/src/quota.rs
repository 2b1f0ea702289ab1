//! Resource admission: LimitRanger (container defaults from LimitRanges, then min/max checks),
//! ResourceQuota (usage counted from the namespace's objects at admission time, refused with
//! upstream's `exceeded quota` message, `status.used` kept current) and DefaultStorageClass.
//!
//! Upstream keeps quota usage in `status.used` through the quota controller and admission's
//! compare-and-swap; here usage is recounted from the store on each admitted create in a
//! namespace that has quotas (exact, O(objects in the namespace), and only paid where quotas
//! exist), and written to `status.used` after creates and deletes.

use crate::handlers::{self, Ctx};
use crate::status::StatusError;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A quantity's value (`100m` = 0.1, `1Ki` = 1024, `1k` = 1000, `1e3` = 1000).
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
    .unwrap_or((s, 1.0));
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn qv(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// A value in Kubernetes' canonical quantity form (close enough for messages and status).
pub fn format_quantity(v: f64) -> String {
    if v.fract().abs() > 1e-9 {
        let milli = (v * 1000.0).round() as i64;
        return format!("{milli}m");
    }
    let i = v.round() as i64;
    if i != 0 {
        for (suf, m) in [
            ("Ei", 1i64 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if i % m == 0 && i >= m {
                return format!("{}{suf}", i / m);
            }
        }
    }
    i.to_string()
}

async fn list(ctx: &Ctx, group: &str, kind: &str, ns: &str) -> Vec<Value> {
    let Some(res) = ctx.registry.by_kind(group, kind) else {
        return vec![];
    };
    let prefix = if res.namespaced {
        format!("{}{ns}/", res.prefix())
    } else {
        res.prefix()
    };
    match ctx.store.list(&prefix).await {
        Ok((kvs, _)) => kvs
            .iter()
            .filter_map(|kv| handlers::decode_as(&res, kv).ok())
            .collect(),
        Err(_) => vec![],
    }
}

fn containers_mut(spec: &mut Value) -> Vec<&mut Value> {
    let mut out = vec![];
    let Some(m) = spec.as_object_mut() else {
        return out;
    };
    for (k, v) in m.iter_mut() {
        if k == "containers" || k == "initContainers" {
            if let Some(a) = v.as_array_mut() {
                out.extend(a.iter_mut());
            }
        }
    }
    out
}

/// LimitRanger on a new pod: defaults filled, then min/max/ratio checked per container.
pub async fn limit_ranger(ctx: &Ctx, pod: &mut Value) -> Result<(), StatusError> {
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let ranges = list(ctx, "", "LimitRange", &ns).await;
    // Upstream's LimitRange defaulting: a missing default limit is the max, a missing default
    // request the default limit, else the min.
    let items: Vec<Value> = ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().cloned().unwrap_or_default())
        .filter(|l| l["type"] == "Container")
        .map(|mut l| {
            for (from, to) in [
                ("max", "default"),
                ("default", "defaultRequest"),
                ("min", "defaultRequest"),
            ] {
                if let Some(src) = l[from].as_object().cloned() {
                    for (k, v) in src {
                        if l[to][&k].is_null() {
                            l[to][&k] = v;
                        }
                    }
                }
            }
            l
        })
        .collect();
    if items.is_empty() {
        return Ok(());
    }
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let mut notes: Vec<String> = vec![];
    let mut errors: Vec<String> = vec![];
    for c in containers_mut(&mut pod["spec"]) {
        let cname = c["name"].as_str().unwrap_or("").to_string();
        for l in &items {
            for (field, target) in [("defaultRequest", "requests"), ("default", "limits")] {
                let mut set: Vec<String> = vec![];
                if let Some(defs) = l[field].as_object() {
                    for (res, q) in defs {
                        if c["resources"][target][res].is_null() {
                            c["resources"][target][res] = q.clone();
                            set.push(res.clone());
                        }
                    }
                }
                if !set.is_empty() {
                    set.sort();
                    let what = if target == "requests" {
                        "request"
                    } else {
                        "limit"
                    };
                    notes.push(format!("{} {what} for container {cname}", set.join(", ")));
                }
            }
            // A request defaults to the limit when only the limit is known (as upstream).
            if let Some(lims) = c["resources"]["limits"].as_object().cloned() {
                for (res, q) in lims {
                    if c["resources"]["requests"][&res].is_null() {
                        c["resources"]["requests"][&res] = q;
                    }
                }
            }
            let get = |c: &Value, t: &str, r: &str| qv(&c["resources"][t][r]);
            if let Some(min) = l["min"].as_object() {
                for (res, q) in min {
                    let (Some(m), qs) = (qv(q), q.as_str().unwrap_or("")) else {
                        continue;
                    };
                    match get(c, "requests", res) {
                        Some(r) if r < m => errors.push(format!(
                            "minimum {res} usage per Container is {qs}, but request is {}",
                            c["resources"]["requests"][res]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| format_quantity(r))
                        )),
                        None => errors.push(format!(
                            "minimum {res} usage per Container is {qs}.  No request is specified"
                        )),
                        _ => {}
                    }
                }
            }
            if let Some(max) = l["max"].as_object() {
                for (res, q) in max {
                    let (Some(m), qs) = (qv(q), q.as_str().unwrap_or("")) else {
                        continue;
                    };
                    match get(c, "limits", res) {
                        Some(v) if v > m => errors.push(format!(
                            "maximum {res} usage per Container is {qs}, but limit is {}",
                            c["resources"]["limits"][res]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| format_quantity(v))
                        )),
                        None => errors.push(format!(
                            "maximum {res} usage per Container is {qs}.  No limit is specified"
                        )),
                        _ => {}
                    }
                }
            }
            if let Some(ratio) = l["maxLimitRequestRatio"].as_object() {
                for (res, q) in ratio {
                    let (Some(m), qs) = (qv(q), q.as_str().unwrap_or("")) else {
                        continue;
                    };
                    if let (Some(lim), Some(req)) = (get(c, "limits", res), get(c, "requests", res))
                    {
                        if req > 0.0 && lim / req > m {
                            errors.push(format!(
                                "{res} max limit to request ratio per Container is {qs}, but provided ratio is {:.6}",
                                lim / req
                            ));
                        }
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        let msg = if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("[{}]", errors.join(", "))
        };
        return Err(StatusError::forbidden("", "pods", &name, &msg));
    }
    if !notes.is_empty() {
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
    Ok(())
}

/// DefaultStorageClass: a claim without `storageClassName` gets the default class (the
/// newest when several are marked default).
pub async fn default_storage_class(ctx: &Ctx, pvc: &mut Value) {
    if !pvc["spec"]["storageClassName"].is_null() {
        return;
    }
    let classes = list(ctx, "storage.k8s.io", "StorageClass", "").await;
    let is_default = |c: &Value| {
        let a = &c["metadata"]["annotations"];
        a["storageclass.kubernetes.io/is-default-class"] == "true"
            || a["storageclass.beta.kubernetes.io/is-default-class"] == "true"
    };
    if let Some(c) = classes.iter().filter(|c| is_default(c)).max_by_key(|c| {
        c["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }) {
        pvc["spec"]["storageClassName"] = c["metadata"]["name"].clone();
    }
}

/// What one object counts against quotas (resource name -> amount).
fn usage_of(group: &str, kind: &str, plural: &str, obj: &Value) -> BTreeMap<String, f64> {
    let mut u = BTreeMap::new();
    let count_key = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    u.insert(count_key, 1.0);
    if !group.is_empty() {
        return u;
    }
    match kind {
        "Pod" => {
            let phase = obj["status"]["phase"].as_str().unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                return BTreeMap::new();
            }
            u.insert("pods".into(), 1.0);
            let spec = &obj["spec"];
            for (t, prefix) in [("requests", "requests."), ("limits", "limits.")] {
                for res in ["cpu", "memory", "ephemeral-storage"] {
                    let sum: f64 = spec["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| qv(&c["resources"][t][res]))
                        .sum();
                    // Init containers run one at a time: the largest counts when larger.
                    let init: f64 = spec["initContainers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| qv(&c["resources"][t][res]))
                        .fold(0.0, f64::max);
                    let v = sum.max(init);
                    if v > 0.0 {
                        u.insert(format!("{prefix}{res}"), v);
                        if t == "requests" {
                            u.insert(res.to_string(), v);
                        }
                    }
                }
            }
        }
        "Service" => {
            u.insert("services".into(), 1.0);
            match obj["spec"]["type"].as_str() {
                Some("NodePort") => {
                    u.insert("services.nodeports".into(), 1.0);
                }
                Some("LoadBalancer") => {
                    u.insert("services.loadbalancers".into(), 1.0);
                    u.insert("services.nodeports".into(), 1.0);
                }
                _ => {}
            }
        }
        "ConfigMap" => {
            u.insert("configmaps".into(), 1.0);
        }
        "Secret" => {
            u.insert("secrets".into(), 1.0);
        }
        "ReplicationController" => {
            u.insert("replicationcontrollers".into(), 1.0);
        }
        "ResourceQuota" => {
            u.insert("resourcequotas".into(), 1.0);
        }
        "PersistentVolumeClaim" => {
            u.insert("persistentvolumeclaims".into(), 1.0);
            if let Some(s) = qv(&obj["spec"]["resources"]["requests"]["storage"]) {
                u.insert("requests.storage".into(), s);
            }
        }
        _ => {}
    }
    u
}

/// The namespace's usage of every resource the quotas name.
async fn namespace_usage(ctx: &Ctx, ns: &str, tracked: &[String]) -> BTreeMap<String, f64> {
    let mut used: BTreeMap<String, f64> = tracked.iter().map(|k| (k.clone(), 0.0)).collect();
    let mut kinds: Vec<(String, String, String)> = vec![];
    for k in tracked {
        let (group, kind, plural) = match k.as_str() {
            "pods" | "cpu" | "memory" | "ephemeral-storage" => ("", "Pod", "pods"),
            x if x.starts_with("requests.") && x != "requests.storage" => ("", "Pod", "pods"),
            x if x.starts_with("limits.") => ("", "Pod", "pods"),
            "services" | "services.nodeports" | "services.loadbalancers" => {
                ("", "Service", "services")
            }
            "configmaps" => ("", "ConfigMap", "configmaps"),
            "secrets" => ("", "Secret", "secrets"),
            "replicationcontrollers" => ("", "ReplicationController", "replicationcontrollers"),
            "resourcequotas" => ("", "ResourceQuota", "resourcequotas"),
            "persistentvolumeclaims" | "requests.storage" => {
                ("", "PersistentVolumeClaim", "persistentvolumeclaims")
            }
            x => match x.strip_prefix("count/") {
                Some(rest) => {
                    let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
                    let found = ctx
                        .registry
                        .all()
                        .into_iter()
                        .find(|r| r.group == group && r.plural == plural);
                    match found {
                        Some(r) => {
                            kinds.push((group.to_string(), r.kind.clone(), plural.to_string()));
                            continue;
                        }
                        None => continue,
                    }
                }
                None => continue,
            },
        };
        kinds.push((group.into(), kind.into(), plural.into()));
    }
    kinds.sort();
    kinds.dedup();
    for (group, kind, plural) in kinds {
        for o in list(ctx, &group, &kind, ns).await {
            if !o["metadata"]["deletionTimestamp"].is_null() && kind != "Pod" {
                continue;
            }
            for (k, v) in usage_of(&group, &kind, &plural, &o) {
                if let Some(u) = used.get_mut(&k) {
                    *u += v;
                }
            }
        }
    }
    used
}

/// ResourceQuota on a create: refused when any quota of the namespace would be exceeded.
pub async fn check_quota(
    ctx: &Ctx,
    res: &crate::registry::Resource,
    obj: &Value,
) -> Result<(), StatusError> {
    let Some(ns) = obj["metadata"]["namespace"].as_str() else {
        return Ok(());
    };
    let quotas = list(ctx, "", "ResourceQuota", ns).await;
    if quotas.is_empty() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let req = usage_of(&res.group, &res.kind, &res.plural, obj);
    let forbid = |msg: String| StatusError::forbidden(&res.group, &res.plural, name, &msg);
    for q in &quotas {
        let qname = q["metadata"]["name"].as_str().unwrap_or("");
        let Some(hard) = q["spec"]["hard"].as_object() else {
            continue;
        };
        // A pod must say what a compute quota tracks.
        if res.group.is_empty() && res.kind == "Pod" {
            let mut missing: Vec<String> = vec![];
            for k in hard.keys() {
                let (t, r) = match k.as_str() {
                    "cpu" | "requests.cpu" => ("requests", "cpu"),
                    "memory" | "requests.memory" => ("requests", "memory"),
                    "limits.cpu" => ("limits", "cpu"),
                    "limits.memory" => ("limits", "memory"),
                    _ => continue,
                };
                let lacking: Vec<String> = obj["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["resources"][t][r].is_null())
                    .map(|c| c["name"].as_str().unwrap_or("").to_string())
                    .collect();
                if !lacking.is_empty() {
                    missing.push(format!("{k} for: {}", lacking.join(",")));
                }
            }
            if !missing.is_empty() {
                missing.sort();
                return Err(forbid(format!(
                    "failed quota: {qname}: must specify {}",
                    missing.join("; ")
                )));
            }
        }
        let relevant: Vec<&String> = hard.keys().filter(|k| req.contains_key(*k)).collect();
        if relevant.is_empty() {
            continue;
        }
        let tracked: Vec<String> = relevant.iter().map(|k| k.to_string()).collect();
        let used = namespace_usage(ctx, ns, &tracked).await;
        let mut over = vec![];
        for k in &relevant {
            let h = qv(&hard[k.as_str()]).unwrap_or(0.0);
            let u = used.get(k.as_str()).copied().unwrap_or(0.0);
            let r = req[k.as_str()];
            if u + r > h + 1e-9 {
                over.push((k.to_string(), r, u, hard[k.as_str()].clone()));
            }
        }
        if !over.is_empty() {
            let requested: Vec<String> = over
                .iter()
                .map(|o| format!("{}={}", o.0, format_quantity(o.1)))
                .collect();
            let used: Vec<String> = over
                .iter()
                .map(|o| format!("{}={}", o.0, format_quantity(o.2)))
                .collect();
            let limited: Vec<String> = over
                .iter()
                .map(|o| {
                    let h =
                        o.3.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| o.3.to_string());
                    format!("{}={h}", o.0)
                })
                .collect();
            return Err(forbid(format!(
                "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                requested.join(","),
                used.join(","),
                limited.join(",")
            )));
        }
    }
    Ok(())
}

/// The ResourceQuota kind and the store prefix of namespace `ns`'s quotas.
fn quotas_of(ctx: &Ctx, ns: &str) -> Option<(std::sync::Arc<crate::registry::Resource>, String)> {
    let res = ctx.registry.by_kind("", "ResourceQuota")?;
    let prefix = format!("{}{ns}/", res.prefix());
    Some((res, prefix))
}

/// Whether namespace `ns` holds a ResourceQuota (one key read).
pub async fn has_quotas(ctx: &Ctx, ns: &str) -> bool {
    let Some((_, prefix)) = quotas_of(ctx, ns) else {
        return false;
    };
    let one = skiff_store::RangeRequest {
        limit: 1,
        ..skiff_store::RangeRequest::prefix(prefix)
    };
    ctx.store.range(one).await.is_ok_and(|r| !r.kvs.is_empty())
}

/// Writes `status.hard` and `status.used` of the namespace's quotas (after writes that count).
pub async fn refresh_status(ctx: &Ctx, ns: &str) {
    let Some((res, prefix)) = quotas_of(ctx, ns) else {
        return;
    };
    let Ok((kvs, _)) = ctx.store.list(&prefix).await else {
        return;
    };
    for kv in kvs {
        let Ok(mut q) = handlers::decode_as(&res, &kv) else {
            continue;
        };
        let hard = q["spec"]["hard"].clone();
        let tracked: Vec<String> = hard
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let used = namespace_usage(ctx, ns, &tracked).await;
        let used: serde_json::Map<String, Value> = used
            .into_iter()
            .map(|(k, v)| (k, json!(format_quantity(v))))
            .collect();
        let status = json!({"hard": hard, "used": used});
        if q["status"] != status {
            q["status"] = status;
            let _ = ctx
                .store
                .update(
                    &kv.key,
                    handlers::encode_for(&res, &q),
                    Some(kv.mod_revision),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1k"), Some(1000.0));
        assert_eq!(format_quantity(0.5), "500m");
        assert_eq!(format_quantity(1073741824.0), "1Gi");
        assert_eq!(format_quantity(3.0), "3");
    }
}
