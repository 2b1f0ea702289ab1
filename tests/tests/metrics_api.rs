//! `kubectl top` on a real node: the API server serves metrics.k8s.io (NodeMetrics and
//! PodMetrics) from the kubelet's Summary API, as k3s's bundled metrics-server does.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

#[test]
fn kubectl_top_nodes_and_pods() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let node = c.agent.as_ref().unwrap().node.clone();
    let o = c.with_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-busy}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: spin
    image: {img}
    command: ["sh", "-c", "while :; do :; done"]
"#
        ),
    );
    assert!(o.ok, "{}", o.stderr);
    c.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/sk-busy",
        "--timeout=90s",
    ]);
    let groups = c.ok(&["api-versions"]);
    assert!(groups.contains("metrics.k8s.io/v1beta1"), "{groups}");

    // `kubectl top node`: NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%).
    let mut top = String::new();
    c.wait_for("kubectl top node", Duration::from_secs(60), || {
        let o = c.kubectl(&["top", "node", "--no-headers"]);
        top = o.stdout;
        o.ok && top.starts_with(&node)
    });
    let cols: Vec<&str> = top.split_whitespace().collect();
    assert_eq!(cols.len(), 5, "{top}");
    assert!(cols[1].ends_with('m') && cols[3].ends_with("Mi"), "{top}");

    // The spinning container uses CPU (well over 100 millicores once the kubelet has two
    // samples).
    c.wait_for(
        "sk-busy's CPU in kubectl top pod",
        Duration::from_secs(60),
        || {
            let o = c.kubectl(&["top", "pod", "sk-busy", "--no-headers", "--containers"]);
            let cols: Vec<String> = o.stdout.split_whitespace().map(str::to_string).collect();
            o.ok && cols.len() == 4
                && cols[0] == "sk-busy"
                && cols[1] == "spin"
                && cols[2]
                    .trim_end_matches('m')
                    .parse::<u64>()
                    .is_ok_and(|m| m > 100)
        },
    );
    // The raw objects, as clients read them.
    let raw = c.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/sk-busy",
    ]);
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["kind"], "PodMetrics");
    assert_eq!(v["containers"][0]["name"], "spin");
    assert!(v["containers"][0]["usage"]["memory"]
        .as_str()
        .is_some_and(|m| m.ends_with("Ki")));
    let missing = c.kubectl(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/sk-nope",
    ]);
    assert!(
        !missing.ok && missing.stderr.contains("NotFound"),
        "{}",
        missing.stderr
    );
    c.ok(&["delete", "pod", "sk-busy", "--wait=false"]);
}
