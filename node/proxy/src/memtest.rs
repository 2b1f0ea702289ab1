//! Live bytes of what the proxy keeps per Service (counting allocator; tests only).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

#[global_allocator]
static A: skiff_memtrim::counting::Counting = skiff_memtrim::counting::Counting;
use skiff_memtrim::counting;

/// Service `i` of the proxy bench as the API server returns it.
pub fn bench_service(i: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "sk-bench-rss",
            "uid": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e", "resourceVersion": "123456",
            "creationTimestamp": "2026-12-07T01:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                "time": "2026-12-07T01:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}}}}]},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            "clusterIP": format!("10.43.{}.{}", i / 250, i % 250 + 1),
            "clusterIPs": [format!("10.43.{}.{}", i / 250, i % 250 + 1)],
            "type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}
    })
}

/// Its EndpointSlice of 10 endpoints as the bench writes it.
pub fn bench_slice(i: usize) -> serde_json::Value {
    let eps: Vec<_> = (0..10).map(|j| {
        let n = i * 10 + j;
        serde_json::json!({
            "addresses": [format!("10.244.{}.{}", n / 250, n % 250 + 1)],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": "sk-bench",
            "targetRef": {"kind": "Pod", "namespace": "sk-bench-rss", "name": format!("svc-{i}-pod-{j}"), "uid": format!("00000000-0000-0000-0000-{n:012}")},
        })
    }).collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-sk"), "namespace": "sk-bench-rss",
            "uid": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5f", "resourceVersion": "123457",
            "creationTimestamp": "2026-12-07T01:00:00Z",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}"), "endpointslice.kubernetes.io/managed-by": "sk-bench"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{i}"), "uid": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e", "controller": true, "blockOwnerDeletion": true}]},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    })
}

/// What the caches keep per Service of the proxy bench (1,000 Services x 10 endpoints), read
/// from bytes as a watch body is: the Service slimmed, the EndpointSlice as a slimmed
/// [`crate::CachedSlice`] against a k8s-openapi `EndpointSlice` as read. Figures in
/// bench/README.md (proxy + DNS RSS, 2026-12-07).
#[test]
fn a_cached_slice_is_small() {
    use counting::live_bytes;
    let (svc, svc_read) = live_bytes(|| {
        let b = serde_json::to_vec(&bench_service(7)).unwrap();
        let s: Service = serde_json::from_slice(&b).unwrap();
        Arc::new(s)
    });
    let (_, svc_slim) = live_bytes(|| {
        let mut s = (*svc).clone();
        crate::informers::slim_service(&mut s);
        Arc::new(s)
    });
    let (_, slice_read) = live_bytes(|| {
        let b = serde_json::to_vec(&bench_slice(7)).unwrap();
        Arc::new(serde_json::from_slice::<EndpointSlice>(&b).unwrap())
    });
    let (cached, slice_cached) = live_bytes(|| {
        let b = serde_json::to_vec(&bench_slice(7)).unwrap();
        let mut s: crate::CachedSlice = serde_json::from_slice(&b).unwrap();
        crate::informers::slim_slice(&mut s);
        Arc::new(s)
    });
    eprintln!(
        "service read {svc_read} slim {svc_slim}; slice read {slice_read} cached {slice_cached}"
    );
    assert_eq!(cached.endpoints.len(), 10);
    assert_eq!(
        cached.endpoints[9].addresses.as_slice(),
        ["10.244.0.80".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(cached.endpoints[9].node_name.as_deref(), Some("sk-bench"));
    assert!(
        slice_cached * 3 < slice_read,
        "{slice_cached} vs {slice_read}"
    );
    assert!(svc_slim < svc_read, "{svc_slim} vs {svc_read}");
}
