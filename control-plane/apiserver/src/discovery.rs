//! Discovery: `/version`, legacy discovery (`/api`, `/apis`, resource lists) and aggregated
//! discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`, one request for every group, as
//! kubectl 1.26+ and client-go ask first), OpenAPI documents, and object counts for /metrics.

use crate::handlers::Ctx;
use crate::registry::Resource;
use crate::server::{full, json_response, Body};
use crate::status::StatusError;
use hyper::Response;
use serde_json::{json, Value};

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0+skiff",
           "gitCommit": env!("CARGO_PKG_VERSION"), "gitTreeState": "clean",
           "buildDate": "2026-12-06T00:00:00Z", "goVersion": "n/a (rust)", "compiler": "rustc",
           "platform": "linux/amd64"})
}

fn not_found() -> StatusError {
    StatusError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|p| {
        p.contains("as=APIGroupDiscoveryList")
            && p.contains("g=apidiscovery.k8s.io")
            && p.contains("v=v2")
            && !p.contains("v=v2beta1")
    })
}

fn legacy_resource(r: &Resource) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
        "kind": r.kind, "verbs": r.verbs(), "shortNames": r.short_names,
        "categories": r.categories, "storageVersionHash": storage_hash(r),
    })];
    for sub in &r.subresources {
        let mut v = json!({
            "name": format!("{}/{}", r.plural, sub.name), "singularName": "", "namespaced": r.namespaced,
            "kind": sub.kind, "verbs": sub.verbs,
        });
        if sub.group != r.group || sub.version != r.version {
            v["group"] = json!(sub.group);
            v["version"] = json!(sub.version);
        }
        out.push(v);
    }
    out
}

fn storage_hash(r: &Resource) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{}/{}/{}", r.group, r.version, r.kind));
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&h[..8])
}

fn resource_list(ctx: &Ctx, group: &str, version: &str) -> Option<Value> {
    let resources: Vec<Value> = ctx
        .registry
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| legacy_resource(r))
        .collect();
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": vs, "preferredVersion": vs[0]})
}

fn aggregated_resource(r: &Resource) -> Value {
    let subs: Vec<Value> = r
        .subresources
        .iter()
        .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
        .collect();
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        v["subresources"] = json!(subs);
    }
    v
}

fn aggregated(ctx: &Ctx, legacy: bool) -> Value {
    let all = ctx.registry.all();
    let groups: Vec<(String, Vec<String>)> = if legacy {
        vec![(String::new(), vec!["v1".into()])]
    } else {
        ctx.registry.groups()
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let rs: Vec<Value> = all
                        .iter()
                        .filter(|r| &r.group == g && &r.version == v)
                        .map(|r| aggregated_resource(r))
                        .collect();
                    json!({"version": v, "resources": rs, "freshness": "Current"})
                })
                .collect();
            let md = if legacy {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": g, "creationTimestamp": null})
            };
            json!({"metadata": md, "versions": vs})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub fn serve(ctx: &Ctx, segs: &[&str], accept: &str) -> Result<Response<Body>, StatusError> {
    match segs {
        ["api"] if wants_aggregated(accept) => Ok(typed(AGGREGATED, &aggregated(ctx, true))),
        ["apis"] if wants_aggregated(accept) => Ok(typed(AGGREGATED, &aggregated(ctx, false))),
        ["api"] => Ok(json_response(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": ctx.advertise.to_string()}]}),
        )),
        ["apis"] => {
            let groups: Vec<Value> = ctx
                .registry
                .groups()
                .iter()
                .map(|(g, vs)| group_json(g, vs))
                .collect();
            Ok(json_response(
                200,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            ))
        }
        ["apis", g] => {
            let (g, vs) = ctx
                .registry
                .groups()
                .into_iter()
                .find(|(x, _)| x == g)
                .ok_or_else(not_found)?;
            let mut body = group_json(&g, &vs);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            Ok(json_response(200, &body))
        }
        ["api", v] => resource_list(ctx, "", v)
            .map(|b| json_response(200, &b))
            .ok_or_else(not_found),
        ["apis", g, v] => resource_list(ctx, g, v)
            .map(|b| json_response(200, &b))
            .ok_or_else(not_found),
        _ => Err(not_found()),
    }
}

fn typed(ct: &str, v: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", ct)
        .header("vary", "Accept")
        .body(full(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

/// The built-in resources as the OpenAPI documents describe them (CRDs are registered with
/// the documents separately).
fn openapi_resources(ctx: &Ctx) -> Vec<skiff_openapi::Resource> {
    ctx.registry
        .all()
        .iter()
        .filter(|r| r.builtin)
        .map(|r| skiff_openapi::Resource {
            group: r.group.clone(),
            version: r.version.clone(),
            kind: r.kind.clone(),
            plural: r.plural.clone(),
            namespaced: r.namespaced,
            verbs: r.verbs().iter().map(|v| v.to_string()).collect(),
            subresources: r.subresources.iter().map(|s| s.name.clone()).collect(),
        })
        .collect()
}

fn document(doc: &skiff_openapi::Document, ct: &str, gzip_ok: bool) -> Response<Body> {
    let b = Response::builder()
        .status(200)
        .header("content-type", ct)
        .header("etag", format!("\"{:016X}\"", doc.hash))
        .header("vary", "Accept, Accept-Encoding");
    let r = if gzip_ok {
        b.header("content-encoding", "gzip")
            .body(full(doc.gzip().to_vec()))
    } else {
        b.body(full(doc.json()))
    };
    // Building a document allocates a burst; give the freed heap back.
    skiff_memtrim::trim_heap();
    r.expect("response")
}

pub fn openapi(
    ctx: &Ctx,
    segs: &[&str],
    accept: &str,
    gzip_ok: bool,
) -> Result<Response<Body>, StatusError> {
    let resources = openapi_resources(ctx);
    match segs {
        ["openapi", "v2"] => {
            let doc = skiff_openapi::cached_v2(&resources);
            if accept.contains("protobuf") {
                let pb = doc.protobuf().ok_or_else(not_found)?;
                skiff_memtrim::trim_heap();
                return Ok(Response::builder()
                    .status(200)
                    .header(
                        "content-type",
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    )
                    .header("etag", format!("\"{:016X}\"", doc.hash))
                    .body(full(pb))
                    .expect("response"));
            }
            Ok(document(&doc, "application/json", gzip_ok))
        }
        ["openapi", "v3"] => Ok(json_response(200, &skiff_openapi::v3_index(&resources))),
        ["openapi", "v3", gv @ ..] => {
            let (g, v) = match gv {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Err(not_found()),
            };
            let doc =
                skiff_openapi::cached_v3_group_version(g, v, &resources).ok_or_else(not_found)?;
            Ok(document(&doc, "application/json", gzip_ok))
        }
        _ => Err(not_found()),
    }
}

/// Stored objects per resource, for `apiserver_storage_objects`.
pub async fn object_counts(ctx: &Ctx) -> Vec<(String, usize)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    for r in ctx.registry.all() {
        if !r.stored() || !seen.insert(r.prefix()) {
            continue;
        }
        if let Ok((kvs, _)) = ctx.store.list(&r.prefix()).await {
            let name = if r.group.is_empty() {
                r.plural.clone()
            } else {
                format!("{}.{}", r.plural, r.group)
            };
            out.push((name, kvs.len()));
        }
    }
    out
}
