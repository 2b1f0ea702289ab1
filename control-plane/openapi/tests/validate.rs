//! Strict field validation and document shape.

use serde_json::{json, Value};
use skiff_openapi::{
    crd_schemas, duplicate_fields, register_crd, unknown_fields, unregister_crd, v2,
    v3_group_version, v3_index, Resource,
};

/// Serializes the tests that register CRDs with those that compare cached documents.
static CRD_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn unknown_fields_in_a_pod() {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"any": "thing"}, "annotations": {"a": "b"}, "bogus": 1,
            "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]},
        "spec": {
            "containers": [
                {"name": "a", "image": "busybox", "resources": {"limits": {"cpu": "1"}}},
                {"name": "b", "image": "busybox", "foo": true, "ports": [{"containerPort": 80, "bar": 1}]}
            ],
            "nodeSelector": {"disk": "ssd"},
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi", "medium2": ""}}]
        },
        "status": {"phase": "Running"},
        "extra": {}
    });
    let mut got = unknown_fields("", "v1", "Pod", &pod);
    got.sort();
    assert_eq!(
        got,
        vec![
            "unknown field \"extra\"",
            "unknown field \"metadata.bogus\"",
            "unknown field \"spec.containers[1].foo\"",
            "unknown field \"spec.containers[1].ports[0].bar\"",
            "unknown field \"spec.volumes[0].emptyDir.medium2\"",
        ]
    );
}

#[test]
fn unknown_fields_deployment_template_and_lists() {
    let d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1, "x": 1}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy2": "x"}]}}}
    });
    let mut got = unknown_fields("apps", "v1", "Deployment", &d);
    got.sort();
    assert_eq!(
        got,
        vec![
            "unknown field \"spec.strategy.rollingUpdate.x\"",
            "unknown field \"spec.template.spec.containers[0].imagePullPolicy2\"",
        ]
    );
    let list = json!({"apiVersion": "v1", "kind": "ConfigMapList", "items": [{"data": {"k": "v"}, "oops": 1}]});
    assert_eq!(
        unknown_fields("", "v1", "ConfigMapList", &list),
        vec!["unknown field \"items[0].oops\""]
    );
    // Unknown kinds are not checked.
    assert!(unknown_fields("nope", "v1", "Thing", &json!({"x": 1})).is_empty());
}

#[test]
fn raw_extensions_and_json_are_free_form() {
    // ControllerRevision.data is a RawExtension: anything goes inside.
    let cr = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"},
        "revision": 1, "data": {"spec": {"whatever": [1, {"deep": true}]}}});
    assert!(unknown_fields("apps", "v1", "ControllerRevision", &cr).is_empty());
    // A CRD's default values are JSON.
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "xs.e.com"},
        "spec": {"group": "e.com", "scope": "Cluster", "names": {"kind": "X", "plural": "xs"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "properties": {"a": {"type": "object", "default": {"any": {"thing": 1}}}}, "unknownKeyword": 1}}}]}});
    let got = unknown_fields(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        &crd,
    );
    assert_eq!(
        got,
        vec!["unknown field \"spec.versions[0].schema.openAPIV3Schema.unknownKeyword\""]
    );
}

#[test]
fn custom_resources_after_register() {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.acme.io"},
        "spec": {"group": "acme.io", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets"},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
                    }}}}}},
                {"name": "v0", "served": false, "storage": false}
            ]}
    });
    let _g = CRD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let schemas = crd_schemas(&crd).expect("schemas");
    assert_eq!(schemas.len(), 1);
    assert_eq!(schemas[0].definition, "io.acme.v1.Widget");
    assert_eq!(schemas[0].resource.subresources, vec!["status"]);

    let obj = json!({"apiVersion": "acme.io/v1", "kind": "Widget", "metadata": {"name": "w", "nope": 1},
        "spec": {"size": 1, "labels": {"a": "b"}, "items": [{"n": "x", "m": "y"}], "free": {"a": {"b": 1}},
            "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "zzz": 1}, "spec": {"x": 1}},
            "other": 1}});
    assert!(
        unknown_fields("acme.io", "v1", "Widget", &obj).is_empty(),
        "not registered yet"
    );
    register_crd(&crd).expect("register");
    let mut got = unknown_fields("acme.io", "v1", "Widget", &obj);
    got.sort();
    assert_eq!(
        got,
        vec![
            "unknown field \"metadata.nope\"",
            "unknown field \"spec.items[0].m\"",
            "unknown field \"spec.other\"",
            "unknown field \"spec.template.metadata.zzz\"",
        ]
    );
    // In the documents.
    let index = v3_index(&[]);
    assert!(index["paths"]["apis/acme.io/v1"]["serverRelativeURL"].is_string());
    let doc = v3_group_version("acme.io", "v1", &[]).expect("doc");
    let w = &doc["components"]["schemas"]["io.acme.v1.Widget"];
    assert_eq!(w["x-kubernetes-group-version-kind"][0]["kind"], "Widget");
    assert!(
        doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object()
    );
    assert!(
        doc["paths"]["/apis/acme.io/v1/namespaces/{namespace}/widgets/{name}/status"]["patch"]
            .is_object()
    );
    assert!(v2(&[])["definitions"]["io.acme.v1.WidgetList"].is_object());
    unregister_crd("widgets.acme.io");
    assert!(unknown_fields("acme.io", "v1", "Widget", &obj).is_empty());
    assert!(v3_group_version("acme.io", "v1", &[]).is_none());
}

#[test]
fn invalid_crds_are_errors() {
    assert!(crd_schemas(&json!({"spec": {}})).is_err());
    assert!(register_crd(&json!({"metadata": {}})).is_err());
}

#[test]
fn duplicates() {
    let body = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","name":"b","labels":{"x":"1","x":"2"}},
        "spec":{"containers":[{"name":"c","image":"i","image":"j"}]},"kind":"Pod","s\u0070ec":{}}"#;
    assert_eq!(
        duplicate_fields(body),
        vec![
            "duplicate field \"metadata.name\"",
            "duplicate field \"metadata.labels.x\"",
            "duplicate field \"spec.containers[0].image\"",
            "duplicate field \"kind\"",
            "duplicate field \"spec\"",
        ]
    );
    assert!(
        duplicate_fields(br#"{"a":[1,2,{"b":"\"}"}],"c":null,"d":-1.5e3,"e":true}"#).is_empty()
    );
    // Values are stepped over, escapes included (an escaped backslash ends before the quote).
    assert_eq!(
        duplicate_fields(br#"{"a":"x\\","b":"\"\u0041","a":1}"#),
        vec!["duplicate field \"a\""]
    );
    // Garbage: reports what it saw before the error, does not panic.
    assert_eq!(
        duplicate_fields(br#"{"a":1,"a":2,"#),
        vec!["duplicate field \"a\""]
    );
    assert!(duplicate_fields(b"").is_empty());
    let deep = "[".repeat(100_000);
    assert!(duplicate_fields(deep.as_bytes()).is_empty());
}

fn pod_resource() -> Resource {
    let mut r = Resource::new("", "v1", "Pod", "pods", true);
    r.subresources = vec!["status".into()];
    r
}

#[test]
fn v3_document_shape() {
    let doc = v3_group_version("", "v1", &[pod_resource()]).expect("doc");
    assert_eq!(doc["openapi"], "3.0.0");
    let s = &doc["components"]["schemas"];
    let pod = &s["io.k8s.api.core.v1.Pod"];
    assert_eq!(
        pod["x-kubernetes-group-version-kind"],
        json!([{"group": "", "kind": "Pod", "version": "v1"}])
    );
    assert_eq!(
        pod["properties"]["spec"]["allOf"][0]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.PodSpec"
    );
    assert!(pod["properties"]["spec"]["description"].is_string());
    let containers = &s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(containers["x-kubernetes-list-type"], "map");
    assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(
        s["io.k8s.api.core.v1.Container"]["properties"]["ports"]["x-kubernetes-list-map-keys"],
        json!(["containerPort", "protocol"])
    );
    assert_eq!(
        s["io.k8s.api.core.v1.Container"]["required"],
        json!(["name"])
    );
    assert_eq!(
        s["io.k8s.api.core.v1.PodList"]["x-kubernetes-group-version-kind"][0]["kind"],
        "PodList"
    );
    assert_eq!(
        s["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]["format"],
        "date-time"
    );
    assert!(s["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["oneOf"].is_array());
    // Only what the paths reach: no apps/v1 kinds here.
    assert!(s.get("io.k8s.api.apps.v1.Deployment").is_none());
    let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-action"], "patch");
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Pod");
    assert_eq!(patch["operationId"], "patchCoreV1NamespacedPod");
    let names: Vec<&str> = patch["parameters"]
        .as_array()
        .expect("params")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for n in ["dryRun", "fieldManager", "fieldValidation", "force"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(patch["requestBody"]["content"]["application/apply-patch+yaml"].is_object());
    let post = &doc["paths"]["/api/v1/namespaces/{namespace}/pods"]["post"];
    assert_eq!(
        post["requestBody"]["content"]["*/*"]["schema"]["$ref"],
        "#/components/schemas/io.k8s.api.core.v1.Pod"
    );
    assert!(doc["paths"]["/api/v1/pods"]["get"].is_object());
    assert!(v3_group_version("nope", "v1", &[pod_resource()]).is_none());
}

#[test]
fn v2_document_shape() {
    let doc: Value = v2(&[pod_resource()]);
    assert_eq!(doc["swagger"], "2.0");
    let d = &doc["definitions"];
    assert_eq!(
        d["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.core.v1.PodSpec"
    );
    assert_eq!(
        d["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
        "int-or-string"
    );
    assert_eq!(
        d["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"]["x-kubernetes-patch-strategy"],
        "merge,retainKeys"
    );
    assert_eq!(
        d["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["finalizers"]
            ["x-kubernetes-patch-strategy"],
        "merge"
    );
    // Every built-in kind is defined, with its group-version-kind.
    assert!(d["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"].is_array());
    assert!(d["io.k8s.api.networking.v1.IngressList"].is_object());
    let delete_gvks = d["io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"]
        ["x-kubernetes-group-version-kind"]
        .as_array()
        .expect("gvks");
    assert!(delete_gvks.len() > 20);
    let body = &doc["paths"]["/api/v1/namespaces/{namespace}/pods"]["post"]["parameters"][0];
    assert_eq!(body["in"], "body");
    let _g = CRD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cached = skiff_openapi::cached_v2(&[pod_resource()]);
    let again = skiff_openapi::cached_v2(&[pod_resource()]);
    assert!(std::sync::Arc::ptr_eq(&cached, &again));
    let json: Value = serde_json::from_slice(&cached.json()).expect("json");
    assert_eq!(
        json["definitions"]["io.k8s.api.core.v1.Pod"],
        d["io.k8s.api.core.v1.Pod"]
    );
    assert!(cached.protobuf().expect("pb").len() > 100_000);
}

#[test]
fn builtin_resources_cover_the_kinds() {
    let rs = skiff_openapi::builtin_resources();
    let find = |g: &str, k: &str| rs.iter().find(|r| r.group == g && r.kind == k);
    assert!(find("", "Pod").expect("pod").namespaced);
    assert!(!find("", "Node").expect("node").namespaced);
    assert_eq!(
        find("apps", "Deployment").expect("deploy").plural,
        "deployments"
    );
    assert_eq!(
        find("authentication.k8s.io", "TokenReview")
            .expect("tr")
            .verbs,
        vec!["create"]
    );
    assert!(rs.len() > 80);
}

#[test]
fn cached_documents_match_the_values() {
    let _g = CRD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut deploy = Resource::new("apps", "v1", "Deployment", "deployments", true);
    deploy.subresources = vec!["status".into(), "scale".into()];
    let rs = vec![
        pod_resource(),
        Resource::new("", "v1", "Node", "nodes", false),
        deploy,
    ];
    for (g, v) in [("", "v1"), ("apps", "v1")] {
        let cached = skiff_openapi::cached_v3_group_version(g, v, &rs).expect("doc");
        let streamed: Value = serde_json::from_slice(&cached.json()).expect("json");
        assert_eq!(
            streamed,
            v3_group_version(g, v, &rs).expect("doc"),
            "{g}/{v}"
        );
        assert_eq!(cached.json_len(), cached.json().len());
    }
    let apps = v3_group_version("apps", "v1", &rs).expect("doc");
    assert!(apps["components"]["schemas"]["io.k8s.api.autoscaling.v1.Scale"].is_object());
    let cached = skiff_openapi::cached_v2(&rs);
    let streamed: Value = serde_json::from_slice(&cached.json()).expect("json");
    assert_eq!(streamed, v2(&rs));
}
