//! The `pods/eviction` subresource (policy/v1 Eviction), as upstream's eviction REST storage
//! behaves: a pod that cannot count towards a budget (terminal, pending, already terminating)
//! is deleted at once; otherwise the one PodDisruptionBudget that selects it must allow a
//! disruption, which is taken by decrementing `status.disruptionsAllowed` and recording the pod
//! in `status.disruptedPods`, guarded by the budget's resourceVersion (the disruption controller
//! recomputes the status and forgets the pod once it is gone). A budget that does not allow it
//! answers 429 TooManyRequests with a `DisruptionBudget` cause; two budgets answer 500.
//! `unhealthyPodEvictionPolicy` decides whether a pod that is not Ready needs the budget.
//! Before deleting, the pod gets the `DisruptionTarget` condition (reason
//! `EvictionByEvictionAPI`). Dry run (query or `deleteOptions.dryRun`) checks without writing.

use crate::handlers::{self, now_rfc3339, Ctx, Target};
use crate::server::Body;
use crate::status::StatusError;
use hyper::Response;
use serde_json::{json, Value};
use skiff_store::{RangeRequest, StoreError};

/// Upstream's message for an eviction a budget refuses.
pub const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
/// Upstream's bound on `status.disruptedPods`.
const MAX_DISRUPTED_PODS: usize = 2000;
/// Attempts when the pod or the budget changes under us (upstream retries conflicts too).
const ATTEMPTS: usize = 20;

fn too_many(message: String) -> StatusError {
    StatusError {
        details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": message}]})),
        ..StatusError::new(429, "TooManyRequests", REFUSED)
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Pods whose eviction never needs a budget (upstream's `canIgnorePDB`).
fn can_ignore_budget(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed" | "Pending")
    ) || !pod["metadata"]["deletionTimestamp"].is_null()
}

fn pod_target(t: &Target, dry_run: bool, grace: Option<i64>) -> Target {
    let mut query = vec![];
    if dry_run {
        query.push(("dryRun".to_string(), "All".to_string()));
    }
    if let Some(g) = grace {
        query.push(("gracePeriodSeconds".to_string(), g.to_string()));
    }
    Target {
        res: t.res.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
        query,
        accept: String::new(),
        content_type: "application/json".into(),
        format: t.format,
        gzip: false,
        user: t.user.clone(),
    }
}

pub async fn evict(ctx: &Ctx, t: &Target, body: Value) -> Result<Response<Body>, StatusError> {
    let name = t.name().to_string();
    if let Some(n) = body["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
        if n != name {
            return Err(StatusError::bad_request(
                "name in URL does not match name in Eviction object",
            ));
        }
    }
    let mut del_opts = body["deleteOptions"].clone();
    if !del_opts.is_object() {
        del_opts = json!({});
    }
    let body_dry = del_opts["dryRun"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x == "All"));
    let query_dry = t.param("dryRun").is_some_and(|d| d == "All");
    let dry_run = body_dry || query_dry;
    let grace = del_opts["gracePeriodSeconds"].as_i64();
    let ns = t.namespace.clone().unwrap_or_default();
    let pods = t.res.clone();
    let pdbs = ctx
        .registry
        .by_kind("policy", "PodDisruptionBudget")
        .ok_or_else(|| StatusError::internal("poddisruptionbudgets are not served"))?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let kv = ctx
            .store
            .get(&pods.key(Some(&ns), &name))
            .await
            .map_err(|e| handlers::store_err(&pods, &name, e))?
            .ok_or_else(|| StatusError::not_found("", "pods", &name))?;
        let pod = handlers::decode_as(&pods, &kv)?;
        let pod_rv = kv.mod_revision.to_string();
        // Whether the deletion must be of exactly this version of the pod (it was let through
        // without taking a disruption because of its readiness, which must not change).
        let mut pin_version = false;
        if !can_ignore_budget(&pod) {
            let matching = budgets_for(ctx, &pdbs, &ns, &pod).await?;
            if matching.len() > 1 {
                return Err(StatusError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            if let Some((pdb, _)) = matching.into_iter().next() {
                let st = &pdb["status"];
                let policy = pdb["spec"]["unhealthyPodEvictionPolicy"].as_str();
                let current = st["currentHealthy"].as_i64().unwrap_or(0);
                let desired = st["desiredHealthy"].as_i64().unwrap_or(0);
                if !is_ready(&pod)
                    && (policy == Some("AlwaysAllow") || (current >= desired && desired > 0))
                {
                    pin_version = true;
                } else {
                    take_disruption(ctx, &pdbs, &ns, &pdb, &name, dry_run).await?;
                }
            }
        }
        match delete_pod(ctx, t, &pod, &pod_rv, pin_version, dry_run, grace, &del_opts).await {
            Ok(()) => {
                return Ok(t.respond(
                    201,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            Err(e) if e.code == 409 && pin_version => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| StatusError::internal("eviction kept conflicting")))
}

/// The budgets in the pod's namespace whose selector matches it (a nil or empty selector matches
/// nothing here, as upstream's eviction decides), with their stored revisions.
async fn budgets_for(
    ctx: &Ctx,
    pdbs: &crate::registry::Resource,
    ns: &str,
    pod: &Value,
) -> Result<Vec<(Value, i64)>, StatusError> {
    let labels = &pod["metadata"]["labels"];
    if labels.as_object().is_none_or(|l| l.is_empty()) {
        return Ok(vec![]);
    }
    let resp = ctx
        .store
        .range(RangeRequest::prefix(format!("{}{ns}/", pdbs.prefix())))
        .await
        .map_err(|e| StatusError::internal(e.to_string()))?;
    let mut out = vec![];
    for kv in resp.kvs {
        let pdb = handlers::decode_as(pdbs, &kv)?;
        let sel = &pdb["spec"]["selector"];
        let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
            && sel["matchExpressions"]
                .as_array()
                .is_none_or(|m| m.is_empty());
        if empty || !crate::strategy::selector_matches(sel, labels) {
            continue;
        }
        out.push((pdb, kv.mod_revision));
    }
    Ok(out)
}

/// Upstream's `checkAndDecrement`, retried with a fresh budget when it changed meanwhile.
async fn take_disruption(
    ctx: &Ctx,
    pdbs: &crate::registry::Resource,
    ns: &str,
    pdb: &Value,
    pod_name: &str,
    dry_run: bool,
) -> Result<(), StatusError> {
    let pdb_name = pdb["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = pdbs.key(Some(ns), &pdb_name);
    for _ in 0..ATTEMPTS {
        let kv = ctx
            .store
            .get(&key)
            .await
            .map_err(|e| handlers::store_err(pdbs, &pdb_name, e))?
            .ok_or_else(|| StatusError::not_found("policy", "poddisruptionbudgets", &pdb_name))?;
        let mut pdb = handlers::decode_as(pdbs, &kv)?;
        let st = &pdb["status"];
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
        if st["observedGeneration"].as_i64().unwrap_or(0) < generation {
            return Err(too_many(format!(
                "The disruption budget {pdb_name} is still being processed by the server."
            )));
        }
        let allowed = st["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed < 0 {
            return Err(StatusError::forbidden(
                "policy",
                "poddisruptionbudget",
                &pdb_name,
                "pdb disruptions allowed is negative",
            ));
        }
        if st["disruptedPods"]
            .as_object()
            .is_some_and(|m| m.len() > MAX_DISRUPTED_PODS)
        {
            return Err(StatusError::forbidden(
                "policy",
                "poddisruptionbudget",
                &pdb_name,
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(too_many(format!(
                "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                st["desiredHealthy"].as_i64().unwrap_or(0),
                st["currentHealthy"].as_i64().unwrap_or(0)
            )));
        }
        if dry_run {
            return Ok(());
        }
        let st = &mut pdb["status"];
        st["disruptionsAllowed"] = json!(allowed - 1);
        if allowed - 1 == 0 {
            set_condition(st, "False", "InsufficientPods");
        }
        if !st["disruptedPods"].is_object() {
            st["disruptedPods"] = json!({});
        }
        st["disruptedPods"][pod_name] = json!(now_rfc3339());
        match ctx
            .store
            .update(
                &key,
                handlers::encode_for(pdbs, &pdb),
                Some(kv.mod_revision),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(handlers::store_err(pdbs, &pdb_name, e)),
        }
    }
    Err(too_many(format!(
        "The disruption budget {pdb_name} kept changing; try again"
    )))
}

/// Sets the `DisruptionAllowed` condition, keeping its transition time when the status stays.
fn set_condition(st: &mut Value, status: &str, reason: &str) {
    let mut conds: Vec<Value> = st["conditions"].as_array().cloned().unwrap_or_default();
    let observed = st["observedGeneration"].clone();
    match conds.iter_mut().find(|c| c["type"] == "DisruptionAllowed") {
        Some(c) => {
            if c["status"] != status {
                c["lastTransitionTime"] = json!(now_rfc3339());
            }
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!("");
            c["observedGeneration"] = observed;
        }
        None => conds.push(json!({
            "type": "DisruptionAllowed", "status": status, "reason": reason, "message": "",
            "lastTransitionTime": now_rfc3339(), "observedGeneration": observed,
        })),
    }
    st["conditions"] = json!(conds);
}

/// Marks the pod with `DisruptionTarget` (not for terminal pods) and deletes it.
#[allow(clippy::too_many_arguments)]
async fn delete_pod(
    ctx: &Ctx,
    t: &Target,
    pod: &Value,
    pod_rv: &str,
    pin_version: bool,
    dry_run: bool,
    grace: Option<i64>,
    del_opts: &Value,
) -> Result<(), StatusError> {
    let mut opts = del_opts.clone();
    if let Some(m) = opts.as_object_mut() {
        m.remove("dryRun");
        m.remove("kind");
        m.remove("apiVersion");
    }
    let key = t.res.key(t.namespace.as_deref(), t.name());
    let mut current = (pod.clone(), pod_rv.to_string());
    let mut marked = false;
    for _ in 0..ATTEMPTS {
        let (p, rv) = &current;
        let terminal = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
        if dry_run || terminal || !p["metadata"]["deletionTimestamp"].is_null() {
            break;
        }
        let mut p = p.clone();
        let mut conds: Vec<Value> = p["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "DisruptionTarget")
            .collect();
        conds.push(json!({
            "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting", "lastProbeTime": null,
            "lastTransitionTime": now_rfc3339(),
        }));
        p["status"]["conditions"] = json!(conds);
        let rev: i64 = rv.parse().unwrap_or(0);
        match ctx
            .store
            .update(&key, handlers::encode_for(&t.res, &p), Some(rev))
            .await
        {
            Ok(kv) => {
                current.1 = kv.mod_revision.to_string();
                marked = true;
                break;
            }
            // A pod let through for its readiness must still be the one decided on.
            Err(StoreError::Conflict { .. }) if !pin_version => {
                let Some(kv) = ctx
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| handlers::store_err(&t.res, t.name(), e))?
                else {
                    return Ok(());
                };
                current = (
                    handlers::decode_as(&t.res, &kv)?,
                    kv.mod_revision.to_string(),
                );
            }
            Err(e) => return Err(handlers::store_err(&t.res, t.name(), e)),
        }
    }
    // Our own condition write moved the version on: preconditions on the version the caller
    // (or the readiness decision) saw now mean the version after that write.
    if pin_version || (marked && opts["preconditions"]["resourceVersion"].as_str() == Some(pod_rv))
    {
        opts["preconditions"]["resourceVersion"] = json!(current.1);
    }
    let target = pod_target(t, dry_run, grace);
    match handlers::delete_with(ctx, &target, &opts).await {
        Ok(_) => Ok(()),
        // Gone meanwhile: what the eviction asked for has happened.
        Err(e) if e.code == 404 && !pin_version => Ok(()),
        Err(e) => Err(e),
    }
}
