//! JSON (as k8s-openapi writes it) -> protobuf -> JSON round trips, and watch frames.

#![recursion_limit = "512"]

use k8s_openapi::api::{apps, authorization, core, events, policy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
use serde_json::{json, Value};

/// Normalises `v` through the k8s-openapi type `T` (so the JSON has the real shape).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(v: Value) -> Value {
    let t: T = serde_json::from_value(v).expect("valid k8s-openapi JSON");
    serde_json::to_value(t).unwrap()
}

fn round_trip(v: &Value) -> Value {
    let bytes = skiff_codec::encode_strict(v).unwrap_or_else(|e| panic!("encode: {e}"));
    assert!(skiff_codec::is_protobuf(&bytes));
    skiff_codec::decode(&bytes).unwrap_or_else(|e| panic!("decode: {e}"))
}

/// Go writes integral floats without a fraction (`1`, not `1.0`); compare numbers by value.
fn norm(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(norm).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, norm(v))).collect()),
        v => v,
    }
}

fn assert_round_trip(v: Value) {
    assert_eq!(round_trip(&v), norm(v));
}

/// Upstream leaves apiVersion/kind unset on embedded objects; k8s-openapi writes them.
fn strip_type_meta(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
    }
}

fn pod() -> Value {
    typed::<core::v1::Pod>(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-0", "namespace": "default", "uid": "0b9c6c8e-1111-4222-8333-444455556666",
            "resourceVersion": "12", "generation": 3,
            "creationTimestamp": "2024-05-06T07:08:09Z",
            "deletionTimestamp": "2024-05-06T08:00:00Z", "deletionGracePeriodSeconds": 0,
            "labels": {"app": "web", "empty": ""}, "annotations": {"a/b": "c"},
            "finalizers": ["x/y"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                "uid": "u-1", "controller": true, "blockOwnerDeletion": false}],
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                "time": "2024-05-06T07:08:09Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
        },
        "spec": {
            "containers": [{
                "name": "app", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k", "optional": false}}},
                    {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}
                ],
                "envFrom": [{"configMapRef": {"name": "cm2"}, "prefix": "P_"}],
                "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                    "initialDelaySeconds": 5, "periodSeconds": 10},
                "readinessProbe": {"tcpSocket": {"port": 80}, "failureThreshold": 3},
                "startupProbe": {"exec": {"command": ["true"]}},
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true}],
                "securityContext": {"runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}
            }],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420,
                    "items": [{"key": "k", "path": "p"}]}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "sec", "secret": {"secretName": "s", "optional": true}},
                {"name": "proj", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}}
            ],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}}}]}},
            "overhead": {"cpu": "10m"},
            "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]}
        },
        "status": {
            "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}],
            "startTime": "2024-05-06T07:08:10Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-06T07:08:12Z"}],
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0, "image": "nginx:1.27",
                "imageID": "sha256:abc", "started": true,
                "state": {"running": {"startedAt": "2024-05-06T07:08:11Z"}}}]
        }
    }))
}

#[test]
fn pod_with_every_special_type() {
    let p = pod();
    let back = round_trip(&p);
    assert_eq!(back, p);
    // Spot checks of the special forms.
    assert_eq!(
        back["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"],
        "http"
    );
    assert_eq!(
        back["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"],
        80
    );
    assert_eq!(back["spec"]["volumes"][0]["configMap"]["name"], "cm");
    assert_eq!(
        back["spec"]["containers"][0]["securityContext"]["runAsUser"],
        0
    );
    assert_eq!(
        back["metadata"]["managedFields"][0]["fieldsV1"]["f:metadata"]["f:labels"]["."],
        json!({})
    );
}

#[test]
fn deployment_statefulset_daemonset() {
    assert_round_trip(typed::<apps::v1::Deployment>(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "d"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        "status": {"replicas": 3, "conditions": [{"type": "Available", "status": "True",
            "lastUpdateTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    })));
    let mut sts = typed::<apps::v1::StatefulSet>(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "s"},
        "spec": {"serviceName": "s", "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "storageClassName": "", "resources": {"requests": {"storage": "10Gi"}}}}],
            "updateStrategy": {"rollingUpdate": {"partition": 2, "maxUnavailable": "50%"}}}
    }));
    strip_type_meta(&mut sts["spec"]["volumeClaimTemplates"][0]);
    assert_round_trip(sts);
    assert_round_trip(typed::<apps::v1::ControllerRevision>(json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"},
        "revision": 2, "data": {"spec": {"template": {"x": [1, 2.5, "s", null, true]}}}
    })));
}

#[test]
fn secret_configmap_binary_data() {
    let s = typed::<core::v1::Secret>(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque",
        "data": {"bin": "AAH+/w==", "text": "aGVsbG8="}, "immutable": true
    }));
    assert_round_trip(s);
    assert_round_trip(typed::<core::v1::ConfigMap>(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"a": "b", "multi": "x\ny\n"}, "binaryData": {"raw": "3q2+7w=="}
    })));
}

#[test]
fn service_namespace_node() {
    assert_round_trip(typed::<core::v1::Service>(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "a", "port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"},
                      {"name": "b", "port": 443, "targetPort": "https"}],
            "selector": {"app": "x"}, "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10800}},
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "ports": [{"port": 80, "protocol": "TCP"}]}]}}
    })));
    assert_round_trip(typed::<core::v1::Namespace>(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
    })));
    assert_round_trip(typed::<core::v1::Node>(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"],
            "taints": [{"key": "k", "effect": "NoSchedule", "timeAdded": "2024-01-01T00:00:00Z"}]},
        "status": {
            "capacity": {"cpu": "4", "memory": "16336516Ki", "pods": "110", "ephemeral-storage": "100Gi"},
            "allocatable": {"cpu": "3800m", "memory": "15Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2024-01-01T00:00:00Z", "lastTransitionTime": "2024-01-01T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.1",
                "osImage": "Debian", "containerRuntimeVersion": "skiff://0.1", "kubeletVersion": "v1.33.0",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": ["nginx:1.27"], "sizeBytes": 987654321012i64}]
        }
    })));
}

#[test]
fn events_with_micro_time_and_lease() {
    assert_round_trip(typed::<core::v1::Event>(json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "Started", "message": "ok", "type": "Normal", "count": 2,
        "firstTimestamp": "2024-01-01T00:00:00Z", "lastTimestamp": "2024-01-01T00:00:05Z",
        "eventTime": "2024-01-01T00:00:05.123456Z", "reportingComponent": "kubelet", "reportingInstance": "n1",
        "source": {"component": "kubelet", "host": "n1"}
    })));
    assert_round_trip(typed::<events::v1::Event>(json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
        "eventTime": "2024-01-01T00:00:05.000001Z", "reason": "R", "action": "A", "type": "Warning",
        "reportingController": "c", "reportingInstance": "i",
        "series": {"count": 3, "lastObservedTime": "2024-01-01T00:01:00.500000Z"}
    })));
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40,
            "acquireTime": "2024-01-01T00:00:00.000000Z", "renewTime": "2024-01-01T00:00:10.250000Z",
            "leaseTransitions": 0}
    });
    assert_round_trip(typed::<k8s_openapi::api::coordination::v1::Lease>(lease));
}

#[test]
fn micro_time_truncates_to_micros_and_time_to_seconds() {
    let e = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
        "involvedObject": {}, "eventTime": "2024-01-01T01:00:05.123456789+01:00",
        "firstTimestamp": "2024-01-01T00:00:00.9Z"});
    let back = round_trip(&e);
    assert_eq!(back["eventTime"], "2024-01-01T00:00:05.123456Z");
    assert_eq!(back["firstTimestamp"], "2024-01-01T00:00:00Z");
}

#[test]
fn crd_with_schema() {
    let crd = typed::<apiext::CustomResourceDefinition>(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList",
                "shortNames": ["wd"], "categories": ["all"]},
            "conversion": {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"],
                "clientConfig": {"caBundle": "LS0tLS1CRUdJTg==", "service": {"namespace": "n", "name": "s", "port": 443}}}},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                "schema": {"openAPIV3Schema": {
                    "type": "object", "description": "A widget",
                    "required": ["spec"],
                    "x-kubernetes-preserve-unknown-fields": false,
                    "properties": {
                        "spec": {"type": "object",
                            "x-kubernetes-validations": [{"rule": "self.size >= 0", "message": "neg"}],
                            "properties": {
                                "size": {"type": "integer", "minimum": 1, "maximum": 5.5, "default": 3, "format": "int32"},
                                "mode": {"type": "string", "enum": ["a", "b"], "default": "a", "pattern": "^[ab]$"},
                                "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 10},
                                "tuple": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
                                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                "closed": {"type": "object", "additionalProperties": false},
                                "raw": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
                                "deps": {"type": "object", "dependencies": {"a": ["b", "c"], "d": {"required": ["e"]}}},
                                "ex": {"type": "object", "example": {"k": [1, "v"]}, "nullable": true}
                            }},
                        "status": {"type": "object", "x-kubernetes-map-type": "atomic"}
                    }}}}]},
        "status": {"acceptedNames": {"plural": "widgets", "kind": "Widget"}, "storedVersions": ["v1"],
            "conditions": [{"type": "Established", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    }));
    let back = round_trip(&crd);
    assert_eq!(back, norm(crd));
    let props = &back["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    assert_eq!(props["size"]["maximum"], 5.5);
    assert_eq!(props["size"]["minimum"], json!(1));
    assert_eq!(props["closed"]["additionalProperties"], false);
    assert_eq!(props["deps"]["dependencies"]["a"], json!(["b", "c"]));
}

#[test]
fn lists_strip_item_type_meta() {
    let mut list = serde_json::to_value(k8s_openapi::List::<core::v1::Pod> {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta {
            resource_version: Some("77".into()),
            continue_: Some("tok".into()),
            remaining_item_count: Some(0),
            ..Default::default()
        },
        items: vec![
            serde_json::from_value(pod()).unwrap(),
            serde_json::from_value(pod()).unwrap(),
        ],
    })
    .unwrap();
    let back = round_trip(&list);
    // Upstream does not set apiVersion/kind on list items.
    for item in list["items"].as_array_mut().unwrap() {
        let o = item.as_object_mut().unwrap();
        o.remove("apiVersion");
        o.remove("kind");
    }
    assert_eq!(back, list);
    assert_eq!(back["kind"], "PodList");
}

#[test]
fn meta_kinds() {
    assert_round_trip(json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "pods \"x\" not found", "reason": "NotFound", "code": 404,
        "details": {"name": "x", "kind": "pods", "causes": [{"reason": "FieldValueNotFound", "field": "metadata.name"}],
            "retryAfterSeconds": 1}
    }));
    assert_round_trip(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
        "propagationPolicy": "Foreground", "preconditions": {"uid": "u", "resourceVersion": "1"}, "dryRun": ["All"]
    }));
    // DeleteOptions sent with a group's apiVersion maps to the meta type too.
    assert_round_trip(
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "orphanDependents": false}),
    );
    assert_round_trip(json!({
        "apiVersion": "v1", "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [{"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
            "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": ["po"], "categories": ["all"],
            "storageVersionHash": "xPOwRZ+Yhw8="}]
    }));
    assert_round_trip(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "5"},
        "items": [{"metadata": {"name": "a", "labels": {"x": "y"}}}]
    }));
    assert_round_trip(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "APIGroupList",
        "groups": [{"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]
    }));
}

#[test]
fn subresources_and_reviews() {
    assert_round_trip(
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "namespace": "d"},
        "target": {"kind": "Node", "name": "n1"}}),
    );
    assert_round_trip(typed::<policy::v1::Eviction>(
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "p", "namespace": "d"}, "deleteOptions": {"gracePeriodSeconds": 30}}),
    ));
    assert_round_trip(
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d"},
        "spec": {"replicas": 3}, "status": {"replicas": 2, "selector": "app=d"}}),
    );
    // ScaleSpec.replicas is a non-pointer omitempty int in Go: its zero is not in the JSON.
    let zero = json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d"},
        "spec": {"replicas": 0}});
    assert_eq!(round_trip(&zero)["spec"], json!({}));
    assert_round_trip(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": "sa"}, "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u"}},
        "status": {"token": "eyJ...", "expirationTimestamp": "2024-01-01T01:00:00Z"}}),
    );
    assert_round_trip(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {},
        "spec": {"token": "t"}, "status": {"authenticated": true,
            "user": {"username": "u", "groups": ["g"], "extra": {"scopes": ["a", "b"]}}}}),
    );
    assert_round_trip(typed::<authorization::v1::SubjectAccessReview>(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
        "spec": {"user": "u", "groups": ["system:authenticated"], "extra": {"x": ["1", "2"], "empty": []},
            "resourceAttributes": {"namespace": "d", "verb": "get", "resource": "pods"}},
        "status": {"allowed": true, "reason": "RBAC"}
    })));
}

#[test]
fn inline_structs_and_bytes() {
    assert_round_trip(
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"},
        "spec": {"capacity": {"storage": "5Gi"}, "hostPath": {"path": "/data", "type": "DirectoryOrCreate"},
            "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local"}}),
    );
    assert_round_trip(
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "m"}, "webhooks": [{"name": "w.example.com", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "clientConfig": {"caBundle": "AAEC", "url": "https://x"},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "*"}]}]}),
    );
    assert_round_trip(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
        "spec": {"rules": [{"host": "a.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "s", "port": {"name": "http"}}}}]}}]}}),
    );
    assert_round_trip(
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "c"}, "spec": {"request": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K",
            "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "expirationSeconds": 600,
            "extra": {"k": ["v"]}}}),
    );
}

#[test]
fn watch_event_frames() {
    let p = pod();
    let frame = skiff_codec::encode_watch_event("ADDED", &p).unwrap();
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len + 4, frame.len());
    // The outer event has no envelope; the embedded object has one.
    assert!(!frame[4..].starts_with(b"k8s\0"));
    let (t, obj, used) = skiff_codec::decode_watch_event(&frame).unwrap().unwrap();
    assert_eq!((t.as_str(), used), ("ADDED", frame.len()));
    assert_eq!(obj, p);
    // Partial frames wait for more bytes; consecutive frames decode one by one.
    assert!(skiff_codec::decode_watch_event(&frame[..frame.len() - 1])
        .unwrap()
        .is_none());
    let bookmark = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"resourceVersion": "99",
        "annotations": {"k8s.io/initial-events-end": "true"}}});
    let mut stream = frame.clone();
    stream.extend(skiff_codec::encode_watch_event("BOOKMARK", &bookmark).unwrap());
    let (_, _, n) = skiff_codec::decode_watch_event(&stream).unwrap().unwrap();
    let (t2, o2, _) = skiff_codec::decode_watch_event(&stream[n..])
        .unwrap()
        .unwrap();
    assert_eq!((t2.as_str(), o2), ("BOOKMARK", bookmark));
    // A custom resource (no protobuf form) travels as JSON inside the event.
    let cr = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}});
    let f = skiff_codec::encode_watch_event("MODIFIED", &cr).unwrap();
    assert_eq!(skiff_codec::decode_watch_event(&f).unwrap().unwrap().1, cr);
    // A WatchEvent object given to encode() gets the same embedding.
    let ev = json!({"apiVersion": "meta.k8s.io/v1", "kind": "WatchEvent", "type": "DELETED", "object": p});
    assert_eq!(round_trip(&ev), ev);
}

#[test]
fn errors_name_the_problem() {
    use skiff_codec::CodecError;
    let cr = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    assert!(matches!(
        skiff_codec::encode(&cr),
        Err(CodecError::UnknownKind { .. })
    ));
    assert!(matches!(
        skiff_codec::decode(b"{\"kind\":\"Pod\"}"),
        Err(CodecError::MissingMagic)
    ));
    assert!(matches!(
        skiff_codec::encode(&json!({"kind": "Pod"})),
        Err(CodecError::MissingTypeMeta("apiVersion"))
    ));
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": 5}]}});
    let e = skiff_codec::encode(&bad).unwrap_err().to_string();
    assert!(
        e.contains("$.spec.containers[0].name") && e.contains("expected a string"),
        "{e}"
    );
    let bad =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"creationTimestamp": "yesterday"}});
    let e = skiff_codec::encode(&bad).unwrap_err().to_string();
    assert!(
        e.contains("$.metadata.creationTimestamp") && e.contains("RFC 3339"),
        "{e}"
    );
    let typo = json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containerz": []}});
    assert!(
        skiff_codec::encode(&typo).is_ok(),
        "the lenient encoder drops unknown fields"
    );
    let e = skiff_codec::encode_strict(&typo).unwrap_err().to_string();
    assert!(e.contains("$.spec.containerz"), "{e}");
    // Truncated bytes.
    let mut b = skiff_codec::encode(&pod()).unwrap();
    b.truncate(b.len() - 30);
    assert!(matches!(
        skiff_codec::decode(&b),
        Err(CodecError::Wire { .. })
    ));
    assert!(
        skiff_codec::supports("v1", "Pod") && !skiff_codec::supports("example.com/v1", "Widget")
    );
}

#[test]
fn every_kind_encodes_an_empty_object() {
    let kinds = skiff_codec::kinds();
    assert!(kinds.len() > 400, "{}", kinds.len());
    for (api_version, kind) in kinds {
        let obj = json!({"apiVersion": api_version, "kind": kind});
        let back = round_trip(&obj);
        assert_eq!(back["kind"], kind);
    }
}

#[test]
#[ignore = "timing print, run with --ignored --nocapture (use --release for real figures)"]
fn bench_pod() {
    let p = pod();
    let bytes = skiff_codec::encode(&p).unwrap();
    let n = 20_000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(skiff_codec::encode(std::hint::black_box(&p)).unwrap());
    }
    let enc = t.elapsed() / n;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(skiff_codec::decode(std::hint::black_box(&bytes)).unwrap());
    }
    let dec = t.elapsed() / n;
    let json = serde_json::to_vec(&p).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(serde_json::from_slice::<Value>(std::hint::black_box(&json)).unwrap());
    }
    let js = t.elapsed() / n;
    println!(
        "pod: {} protobuf bytes ({} JSON); encode {enc:?}, decode {dec:?}, serde_json parse {js:?} per op",
        bytes.len(),
        json.len()
    );
}
