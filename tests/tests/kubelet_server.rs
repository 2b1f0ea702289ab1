//! The kubelet's :10250 server in `skiff server`: authentication (client certificates from the
//! cluster CA, bearer tokens through TokenReviews, no anonymous access) and authorization
//! (SubjectAccessReviews on `nodes/<subresource>`), then the monitoring endpoints (`/metrics`,
//! `/metrics/resource`, `/stats/summary`, `/configz`, `/runningpods/`) through the API server's
//! `nodes/<node>/proxy`. Needs root, docker-registry, busybox-static, kubectl and curl; builds on
//! `cargo build --bin skiff --bin skiff-monitor --bin skiff-runtime --bin skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use std::process::Command;
use std::time::Duration;

/// `curl` to the kubelet: (HTTP status, body).
fn curl(port: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "-o", "-", "-w", "\n%{http_code}", "--max-time", "30"])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl is needed (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn kubelet_port(cp: &ControlPlane, node: &str) -> String {
    cp.ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
    ])
}

fn run_pod(cp: &ControlPlane, name: &str) {
    let image = &cp.agent.as_ref().expect("a whole cluster").busybox;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo started; while true; do sleep 1; done\"]\n    readinessProbe:\n      exec:\n        command: [\"true\"]\n      periodSeconds: 2\n"
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply: {}", o.stderr);
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=90s",
    ]);
}

#[test]
fn kubelet_authn_authz_and_monitoring_endpoints() {
    let cp = ControlPlane::start_cluster();
    let node = cp.agent.as_ref().expect("agent").node.clone();
    let port = kubelet_port(&cp, &node);
    assert!(!port.is_empty(), "kubelet port in the node status");

    // No credentials: 401, on every path.
    for path in ["/pods", "/healthz", "/stats/summary", "/exec/default/x/c"] {
        let (code, body) = curl(&port, path, &[]);
        assert_eq!(code, 401, "{path} without credentials: {body}");
        assert_eq!(body.trim(), "Unauthorized");
    }
    // An invalid bearer token: 401.
    let (code, _) = curl(
        &port,
        "/pods",
        &["-H", "Authorization: Bearer sk-not-a-token"],
    );
    assert_eq!(code, 401, "invalid token");

    // A certificate of the cluster CA (the admin's: system:masters) is allowed.
    let (cert, key, _) = cp.admin_pems();
    let cert_args = [
        "--cert",
        cert.to_str().expect("path"),
        "--key",
        key.to_str().expect("path"),
    ];
    let (code, body) = curl(&port, "/pods", &cert_args);
    assert_eq!(code, 200, "admin certificate: {body}");
    assert!(body.contains("\"kind\":\"PodList\""), "{body}");

    // A service account without RBAC: authenticated by TokenReview, then 403.
    cp.ok(&["create", "serviceaccount", "sk-kubelet-reader"]);
    let token = cp.ok(&["create", "token", "sk-kubelet-reader"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = curl(&port, "/pods", &["-H", &bearer]);
    assert_eq!(code, 403, "service account without RBAC: {body}");
    assert_eq!(
        body.trim(),
        "Forbidden (user=system:serviceaccount:default:sk-kubelet-reader, verb=get, resource=nodes, subresource(s)=[pods proxy])"
    );
    let (code, body) = curl(&port, "/exec/default/x/c", &["-X", "POST", "-H", &bearer]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("verb=create"), "{body}");

    // nodes/proxy granted (to another account: denials are cached 30 s, like upstream's):
    // /pods answers.
    cp.ok(&["create", "serviceaccount", "sk-kubelet-proxy"]);
    cp.ok(&[
        "create",
        "clusterrole",
        "sk-kubelet-proxy",
        "--verb=get",
        "--resource=nodes/proxy",
    ]);
    cp.ok(&[
        "create",
        "clusterrolebinding",
        "sk-kubelet-proxy",
        "--clusterrole=sk-kubelet-proxy",
        "--serviceaccount=default:sk-kubelet-proxy",
    ]);
    let token = cp.ok(&["create", "token", "sk-kubelet-proxy"]);
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let mut body = String::new();
    cp.wait_for(
        "the service account with nodes/proxy to read /pods",
        Duration::from_secs(90),
        || {
            let (code, b) = curl(&port, "/pods", &["-H", &bearer]);
            body = b;
            code == 200
        },
    );
    assert!(body.contains("\"kind\":\"PodList\""), "{body}");
    // ... but not /stats (subresource stats) nor /metrics.
    let (code, body) = curl(&port, "/stats/summary", &["-H", &bearer]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subresource(s)=[stats]"), "{body}");
    let (code, _) = curl(&port, "/metrics", &["-H", &bearer]);
    assert_eq!(code, 403);
    let (code, body) = curl(&port, "/logs/", &["-H", &bearer]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subresource(s)=[log]"), "{body}");

    // Monitoring through the API server, with a running pod.
    run_pod(&cp, "sk-stats");
    let uid = cp.ok(&["get", "pod", "sk-stats", "-o", "jsonpath={.metadata.uid}"]);
    let raw = |p: &str| cp.ok(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy{p}")]);

    let mut summary = serde_json::Value::Null;
    cp.wait_for(
        "the pod in /stats/summary with container stats",
        Duration::from_secs(60),
        || {
            summary = serde_json::from_str(&raw("/stats/summary")).unwrap_or_default();
            summary["pods"].as_array().into_iter().flatten().any(|p| {
                p["podRef"]["uid"] == uid.as_str()
                    && p["containers"][0]["memory"]["workingSetBytes"].is_u64()
            })
        },
    );
    assert_eq!(summary["node"]["nodeName"], node.as_str());
    assert!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"].is_u64(),
        "{summary}"
    );
    assert!(
        summary["node"]["memory"]["workingSetBytes"].is_u64(),
        "{summary}"
    );
    assert!(summary["node"]["fs"]["capacityBytes"].is_u64(), "{summary}");
    assert!(
        summary["node"]["network"]["interfaces"].is_array(),
        "{summary}"
    );
    let pod = summary["pods"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["podRef"]["uid"] == uid.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(pod["podRef"]["name"], "sk-stats");
    assert_eq!(pod["podRef"]["namespace"], "default");
    assert_eq!(pod["containers"][0]["name"], "main");
    assert!(
        pod["containers"][0]["cpu"]["usageCoreNanoSeconds"].is_u64(),
        "{pod}"
    );
    assert!(pod["memory"]["workingSetBytes"].is_u64(), "{pod}");
    assert!(pod["network"]["interfaces"].is_array(), "{pod}");

    let resource = raw("/metrics/resource");
    for needle in [
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        "container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"sk-stats\"} ",
        "container_memory_working_set_bytes{container=\"main\",namespace=\"default\",pod=\"sk-stats\"} ",
        "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"sk-stats\"} ",
        "pod_memory_working_set_bytes{namespace=\"default\",pod=\"sk-stats\"} ",
        "resource_scrape_error 0",
    ] {
        assert!(resource.contains(needle), "{needle} in:\n{resource}");
    }

    let cadvisor = raw("/metrics/cadvisor");
    for needle in [
        "container_cpu_usage_seconds_total{container=\"main\",image=\"",
        "container_memory_working_set_bytes{container=\"main\",image=\"",
        ",namespace=\"default\",pod=\"sk-stats\"} ",
        "container_network_receive_bytes_total{container=\"\",image=\"\",interface=\"eth0\",",
        "machine_cpu_cores ",
    ] {
        assert!(cadvisor.contains(needle), "{needle} in:\n{cadvisor}");
    }

    let probes = raw("/metrics/probes");
    let series = format!("prober_probe_total{{container=\"main\",namespace=\"default\",pod=\"sk-stats\",pod_uid=\"{uid}\",probe_type=\"Readiness\",result=\"successful\"}} ");
    assert!(probes.contains(&series), "{series} in:\n{probes}");

    let metrics = raw("/metrics");
    for needle in [
        "kubernetes_build_info{",
        "kubelet_running_containers{container_state=\"running\"} ",
        "kubelet_pod_start_duration_seconds_bucket{le=\"+Inf\"} ",
        "kubelet_pleg_relist_duration_seconds_count ",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(needle), "{needle} in:\n{metrics}");
    }
    let running: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_running_pods "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(running >= 1, "kubelet_running_pods:\n{metrics}");
    let started: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_pod_start_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(started >= 1, "pod start observed:\n{metrics}");

    let configz: serde_json::Value = serde_json::from_str(&raw("/configz")).expect("configz JSON");
    assert_eq!(configz["kubeletconfig"]["authorization"]["mode"], "Webhook");
    assert_eq!(
        configz["kubeletconfig"]["authentication"]["anonymous"]["enabled"],
        false
    );
    assert_eq!(
        configz["kubeletconfig"]["authentication"]["webhook"]["cacheTTL"],
        "2m0s"
    );

    let listing = raw("/logs/");
    assert!(
        listing.starts_with("<pre>") && listing.contains("</pre>"),
        "{listing}"
    );

    let running: serde_json::Value =
        serde_json::from_str(&raw("/runningpods/")).expect("runningpods JSON");
    assert!(
        running["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["metadata"]["uid"] == uid.as_str()
                && p["spec"]["containers"][0]["name"] == "main"),
        "{running}"
    );

    // kubectl logs and exec still go through the API server's kubelet-client identity.
    let logs = cp.ok(&["logs", "sk-stats"]);
    assert!(logs.contains("started"), "{logs}");
    let out = cp.ok(&["exec", "sk-stats", "--", "echo", "sk-exec-ok"]);
    assert_eq!(out.trim(), "sk-exec-ok");

    cp.ok(&["delete", "pod", "sk-stats", "--wait=true"]);
    cp.ok(&["delete", "clusterrolebinding", "sk-kubelet-proxy"]);
    cp.ok(&["delete", "clusterrole", "sk-kubelet-proxy"]);
    cp.ok(&[
        "delete",
        "serviceaccount",
        "sk-kubelet-reader",
        "sk-kubelet-proxy",
    ]);
}
