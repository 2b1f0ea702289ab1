//! What every cluster holds from its first start: the four namespaces with their default
//! ServiceAccount and `kube-root-ca.crt`, the `kubernetes` Service with its Endpoints and
//! EndpointSlice pointing at this API server, the two system PriorityClasses, and the
//! `extension-apiserver-authentication` ConfigMap. Re-run at every start; existing objects are
//! kept, the `kubernetes` endpoints follow the advertised address.

use crate::handlers::{self, Ctx};
use crate::lifecycle::{create_internal, namespace_contents};
use crate::ApiError;
use serde_json::{json, Value};

pub async fn run(ctx: &Ctx) -> Result<(), ApiError> {
    let reg = &ctx.registry;
    let ns = reg.by_kind("", "Namespace").expect("namespaces");
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut o = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        create_internal(ctx, &ns, &mut o).await;
    }
    // Every namespace (also those made before this version) has its default contents.
    if let Ok((kvs, _)) = ctx.store.list(&ns.prefix()).await {
        for kv in kvs {
            if let Ok(o) = handlers::decode_as(&ns, &kv) {
                if o["metadata"]["deletionTimestamp"].is_null() {
                    if let Some(n) = o["metadata"]["name"].as_str() {
                        namespace_contents(ctx, n).await;
                    }
                }
            }
        }
    }
    let svc = reg.by_kind("", "Service").expect("services");
    let ip = ctx.services.first().to_string();
    let family = ctx.services.primary_family();
    let port = ctx.advertise.port();
    let mut kubernetes = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "sessionAffinity": "None",
                 "ipFamilies": [family], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}});
    if create_internal(ctx, &svc, &mut kubernetes).await {
        let _ = ctx
            .store
            .create(
                &format!("/registry/ranges/serviceips/{ip}"),
                b"default/kubernetes".to_vec(),
            )
            .await;
    }
    let addr = ctx.advertise.ip().to_string();
    let eps = reg.by_kind("", "Endpoints").expect("endpoints");
    let want_eps = json!([{"addresses": [{"ip": addr}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]);
    upsert(
        ctx,
        &eps,
        json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": want_eps}),
        "subsets",
    ).await;
    let slices = reg
        .by_kind("discovery.k8s.io", "EndpointSlice")
        .expect("slices");
    upsert(
        ctx,
        &slices,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [addr], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
        "endpoints",
    ).await;
    let pc = reg
        .by_kind("scheduling.k8s.io", "PriorityClass")
        .expect("priorityclasses");
    for (name, value, desc) in [
        ("system-node-critical", 2000001000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2000000000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        let mut o = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "globalDefault": false, "description": desc,
            "preemptionPolicy": "PreemptLowerPriority"});
        create_internal(ctx, &pc, &mut o).await;
    }
    let cm = reg.by_kind("", "ConfigMap").expect("configmaps");
    let mut auth = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {"client-ca-file": ctx.ca_pem}});
    create_internal(ctx, &cm, &mut auth).await;
    crate::policy::reconcile(ctx).await;
    Ok(())
}

/// Creates `obj`, or rewrites `field` of the stored one when it differs.
async fn upsert(ctx: &Ctx, res: &crate::registry::Resource, mut obj: Value, field: &str) {
    let key = res.key(
        obj["metadata"]["namespace"].as_str(),
        obj["metadata"]["name"].as_str().unwrap_or(""),
    );
    match ctx.store.get(&key).await {
        Ok(Some(kv)) => {
            if let Ok(mut cur) = handlers::decode_as(res, &kv) {
                if cur[field] != obj[field] {
                    cur[field] = obj[field].take();
                    let _ = ctx
                        .store
                        .update(&key, handlers::encode_for(res, &cur), Some(kv.mod_revision))
                        .await;
                }
            }
        }
        _ => {
            create_internal(ctx, res, &mut obj).await;
        }
    }
}
