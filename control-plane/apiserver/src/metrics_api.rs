//! The resource metrics API (`metrics.k8s.io/v1beta1` NodeMetrics and PodMetrics), served by
//! the API server itself from the kubelets' Summary API (`/stats/summary`), as k3s bundles
//! metrics-server: `kubectl top node|pod` and the HPA's resource metrics read it. CPU is the
//! kubelet's `usageNanoCores` (a rate over its last samples), memory the working set.

use crate::handlers::{decode_as, Ctx, Target};
use crate::registry::{Resource, Verbs};
use crate::status::StatusError;
use hyper::Response;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const GROUP: &str = "metrics.k8s.io";
const VERSION: &str = "v1beta1";
/// The window the kubelet's CPU rate covers, reported as upstream's metrics-server does.
const WINDOW: &str = "10s";

/// NodeMetrics and PodMetrics for the registry (read-only, never stored).
pub fn resources() -> Vec<Resource> {
    let mk = |kind: &str, plural: &str, namespaced: bool| Resource {
        group: GROUP.into(),
        version: VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: String::new(),
        namespaced,
        short_names: vec![],
        categories: vec![],
        verbs: Verbs::ReadOnly,
        subresources: vec![],
        has_status: false,
        storage_group: GROUP.into(),
        storage_plural: plural.into(),
        preferred: true,
        builtin: false,
        strategy: Arc::new(crate::crd::Custom {
            schema: Value::Null,
            columns: vec![],
            has_status: false,
        }),
    };
    vec![
        mk("NodeMetrics", "nodes", false),
        mk("PodMetrics", "pods", true),
    ]
}

fn cpu(nano: Option<u64>) -> String {
    format!("{}n", nano.unwrap_or(0))
}

fn memory(bytes: Option<u64>) -> String {
    format!("{}Ki", bytes.unwrap_or(0) / 1024)
}

fn u(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// The Summary of every node whose kubelet answers (nodes that do not are left out, as
/// metrics-server does).
async fn summaries(ctx: &Ctx) -> Vec<(String, Value)> {
    let nodes = ctx.registry.by_kind("", "Node").expect("nodes registered");
    let Ok((kvs, _)) = ctx.store.list(&nodes.prefix()).await else {
        return vec![];
    };
    let mut out = vec![];
    for kv in kvs {
        let Ok(node) = decode_as(&nodes, &kv) else {
            continue;
        };
        let name = node["metadata"]["name"].as_str().unwrap_or("").to_string();
        let Ok(base) = crate::proxy::kubelet_base(ctx, &name).await else {
            continue;
        };
        let req = ctx
            .kubelet
            .get(format!("{base}/stats/summary"))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match req {
            Ok(r) if r.status().is_success() => {
                if let Ok(v) = r.json::<Value>().await {
                    out.push((name, v));
                }
            }
            Ok(r) => {
                tracing::debug!(node = %name, code = %r.status(), "no summary from the kubelet")
            }
            Err(e) => tracing::debug!(node = %name, error = %e, "no summary from the kubelet"),
        }
    }
    out
}

fn node_metrics(name: &str, s: &Value) -> Value {
    let n = &s["node"];
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"name": name, "creationTimestamp": crate::handlers::now_rfc3339(),
                      "labels": {}},
        "timestamp": n["cpu"]["time"].as_str().map(str::to_string)
            .unwrap_or_else(crate::handlers::now_rfc3339),
        "window": WINDOW,
        "usage": {
            "cpu": cpu(u(&n["cpu"]["usageNanoCores"])),
            "memory": memory(u(&n["memory"]["workingSetBytes"])),
        },
    })
}

fn pod_metrics(p: &Value) -> Value {
    let r = &p["podRef"];
    let containers: Vec<Value> = p["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            json!({"name": c["name"], "usage": {
                "cpu": cpu(u(&c["cpu"]["usageNanoCores"])),
                "memory": memory(u(&c["memory"]["workingSetBytes"])),
            }})
        })
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"name": r["name"], "namespace": r["namespace"],
                      "creationTimestamp": crate::handlers::now_rfc3339(), "labels": {}},
        "timestamp": p["cpu"]["time"].as_str().map(str::to_string)
            .unwrap_or_else(crate::handlers::now_rfc3339),
        "window": WINDOW,
        "containers": containers,
    })
}

/// Every item of the requested kind (in the request's namespace for pods).
async fn items(ctx: &Ctx, t: &Target) -> Vec<Value> {
    let mut out = vec![];
    for (node, s) in summaries(ctx).await {
        if t.res.kind == "NodeMetrics" {
            out.push(node_metrics(&node, &s));
            continue;
        }
        for p in s["pods"].as_array().into_iter().flatten() {
            if let Some(ns) = &t.namespace {
                if p["podRef"]["namespace"].as_str() != Some(ns.as_str()) {
                    continue;
                }
            }
            out.push(pod_metrics(p));
        }
    }
    out
}

/// GET of a list (label selectors apply to the underlying Node or Pod's labels upstream; here
/// to none: the metrics carry no labels).
pub async fn list(ctx: &Ctx, t: &Target) -> Result<Response<crate::server::Body>, StatusError> {
    let items = items(ctx, t).await;
    Ok(t.respond(
        200,
        &json!({"kind": format!("{}List", t.res.kind), "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {}, "items": items}),
    ))
}

/// GET of one NodeMetrics or PodMetrics.
pub async fn get(ctx: &Ctx, t: &Target) -> Result<Response<crate::server::Body>, StatusError> {
    let name = t.name();
    let found = items(ctx, t)
        .await
        .into_iter()
        .find(|i| i["metadata"]["name"].as_str() == Some(name));
    match found {
        Some(o) => Ok(t.respond(200, &o)),
        None => Err(StatusError::not_found(GROUP, &t.res.plural, name)),
    }
}
