//! POST subresources: pods/binding (and the `bindings` resource), pods/eviction,
//! serviceaccounts/token. The streaming ones (exec, attach, portforward) are proxied to the
//! kubelet by `proxy.rs`.

use crate::handlers::{self, now_rfc3339, Ctx, Target};
use crate::server::Body;
use crate::status::{FieldError, StatusError};
use hyper::Response;
use serde_json::{json, Value};

fn success(t: &Target, code: u16) -> Response<Body> {
    t.respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}),
    )
}

pub async fn create(
    ctx: &Ctx,
    t: &Target,
    sub: &str,
    body: Value,
) -> Result<Response<Body>, StatusError> {
    match sub {
        "binding" => bind(ctx, t, t.name(), &body).await,
        "eviction" => crate::eviction::evict(ctx, t, body).await,
        "token" => crate::tokens::token_request(ctx, t, body).await,
        other => Err(StatusError::bad_request(format!(
            "{}/{other} is not served by this version of Skiff",
            t.res.plural
        ))),
    }
}

/// The `bindings` resource: the pod named in the body.
pub async fn bind_resource(
    ctx: &Ctx,
    t: &Target,
    body: &Value,
) -> Result<Response<Body>, StatusError> {
    let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    bind(ctx, t, &name, body).await
}

async fn bind(
    ctx: &Ctx,
    t: &Target,
    pod_name: &str,
    binding: &Value,
) -> Result<Response<Body>, StatusError> {
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(StatusError::invalid(
            "Binding",
            pod_name,
            "",
            &[FieldError::required("target.name", "")],
        ));
    }
    let pods = ctx.registry.by_kind("", "Pod").expect("pods");
    let key = pods.key(t.namespace.as_deref(), pod_name);
    let kv = match ctx.store.get(&key).await {
        Ok(Some(kv)) => kv,
        Ok(None) => return Err(StatusError::not_found("", "pods", pod_name)),
        Err(e) => return Err(StatusError::internal(e.to_string())),
    };
    let mut pod = handlers::decode_as(&pods, &kv)?;
    if let Some(uid) = binding["metadata"]["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
    {
        if pod["metadata"]["uid"] != uid {
            return Err(StatusError::conflict(
                "pods/binding",
                pod_name,
                "Precondition failed: UID in precondition does not match",
            ));
        }
    }
    if !pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        return Err(StatusError::conflict(
            "pods/binding",
            pod_name,
            &format!(
                "pod {pod_name} is already assigned to node {:?}",
                pod["spec"]["nodeName"].as_str().unwrap_or("")
            ),
        ));
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return Err(StatusError::conflict(
            "pods/binding",
            pod_name,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    pod["spec"]["nodeName"] = json!(node);
    let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
    let mut conds: Vec<Value> = pod["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(cond);
    pod["status"]["conditions"] = json!(conds);
    ctx.store
        .update(
            &key,
            handlers::encode_for(&pods, &pod),
            Some(kv.mod_revision),
        )
        .await
        .map_err(|e| handlers::store_err(&pods, pod_name, e))?;
    Ok(success(t, 201))
}
