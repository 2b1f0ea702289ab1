//! Services through kubectl, API objects only (no node): bad specs are refused with upstream's
//! field errors, and changing a Service's type allocates and releases its NodePorts as upstream
//! does (`kubectl patch ... type: NodePort`, a common tutorial step).

use serde_json::Value;
use skiff_tests::control_plane::ControlPlane;

fn svc(cp: &ControlPlane, name: &str) -> Value {
    serde_json::from_str(&cp.ok(&["get", "svc", name, "-o", "json"])).expect("service JSON")
}

fn node_ports(s: &Value) -> Vec<u64> {
    s["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["nodePort"].as_u64())
        .collect()
}

#[test]
fn bad_service_specs_get_field_errors() {
    let cp = ControlPlane::start();
    let cases: &[(&str, &str)] = &[
        (
            "ports: [{name: a, port: 80}, {name: b, port: 80}]",
            "spec.ports[1]: Duplicate value",
        ),
        (
            "ports: [{port: 80}]\n  externalIPs: [not-an-ip]",
            "spec.externalIPs[0]: Invalid value: \"not-an-ip\": must be a valid IP address",
        ),
        (
            "ports: [{port: 80}]\n  externalIPs: [127.0.0.1]",
            "may not be in the loopback range",
        ),
        (
            "ports: [{port: 80, targetPort: 70000}]",
            "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "ports: [{port: 80, targetPort: Not_A_Name}]",
            "spec.ports[0].targetPort: Invalid value: \"Not_A_Name\"",
        ),
        (
            "ports: [{port: 80}]\n  sessionAffinity: Sticky",
            "spec.sessionAffinity: Unsupported value: \"Sticky\"",
        ),
        (
            "ports: [{port: 80}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0",
        ),
        (
            "ports: [{port: 80}]\n  externalTrafficPolicy: Local",
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ),
        (
            "type: LoadBalancer\n  ports: [{port: 80}]\n  loadBalancerSourceRanges: [10.0.0.0/99]",
            "spec.loadBalancerSourceRanges[0]: Invalid value: \"10.0.0.0/99\"",
        ),
    ];
    for (i, (spec, want)) in cases.iter().enumerate() {
        let manifest = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: sk-bad-{i}}}\nspec:\n  {spec}\n"
        );
        let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
        assert!(!o.ok, "case {i} was accepted:\n{manifest}");
        assert!(
            o.stderr.contains("is invalid") && o.stderr.contains(want),
            "case {i}: want {want:?} in:\n{}",
            o.stderr
        );
        assert!(
            !cp.kubectl(&["get", "svc", &format!("sk-bad-{i}")]).ok,
            "case {i}: stored anyway"
        );
    }
}

#[test]
fn changing_the_type_allocates_and_releases_node_ports() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "service", "clusterip", "sk-web", "--tcp=80:8080"]);
    assert!(node_ports(&svc(&cp, "sk-web")).is_empty());

    // ClusterIP -> NodePort: a port from the range is allocated.
    cp.ok(&[
        "patch",
        "svc",
        "sk-web",
        "-p",
        r#"{"spec":{"type":"NodePort"}}"#,
    ]);
    let s = svc(&cp, "sk-web");
    let ports = node_ports(&s);
    assert_eq!(ports.len(), 1, "{s}");
    let np = ports[0];
    assert!((30000..=32767).contains(&np), "{np}");
    assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster", "{s}");

    // The port is this Service's: another may not take it.
    let taken = cp.with_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: sk-other}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {np}}}]\n"
        ),
    );
    assert!(!taken.ok, "a second Service took nodePort {np}");
    assert!(
        taken.stderr.contains("provided port is already allocated"),
        "{}",
        taken.stderr
    );

    // A label change keeps the same port.
    cp.ok(&["label", "svc", "sk-web", "sk=1"]);
    assert_eq!(node_ports(&svc(&cp, "sk-web")), vec![np]);

    // NodePort -> ClusterIP: the port and the external policy go, and the port is free again.
    cp.ok(&[
        "patch",
        "svc",
        "sk-web",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let s = svc(&cp, "sk-web");
    assert!(node_ports(&s).is_empty(), "{s}");
    assert!(s["spec"]["externalTrafficPolicy"].is_null(), "{s}");
    let reuse = cp.with_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: sk-other}}\nspec:\n  type: NodePort\n  ports: [{{port: 80, nodePort: {np}}}]\n"
        ),
    );
    assert!(reuse.ok, "nodePort {np} was not released: {}", reuse.stderr);
    cp.ok(&["delete", "svc", "sk-web", "sk-other"]);
}
