//! DaemonSets end to end: kubectl against a whole single-node cluster (the real kubelet and CRI
//! server), plus fake Node objects (API only) for eligibility. Needs root, docker-registry and
//! busybox-static; builds on `cargo build --workspace --bins`.

use serde_json::Value;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(150);

fn get_json(c: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl -o json")
}

fn apply(c: &ControlPlane, manifest: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply failed: {}\n{manifest}", o.stderr);
}

fn pods(c: &ControlPlane) -> Vec<Value> {
    get_json(c, &["pods", "-l", "app=sk-ds"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn rollout_status(c: &ControlPlane) {
    let o = c.kubectl(&["rollout", "status", "ds/sk-ds", "--timeout=150s"]);
    assert!(o.ok, "rollout status: {}\n{}", o.stderr, c.log_tail());
}

#[test]
fn daemonset_runs_on_eligible_nodes_and_rolls() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let node = c.agent.as_ref().unwrap().node.clone();
    // A fake node with a taint the daemon does not tolerate: not eligible.
    apply(
        &c,
        r#"apiVersion: v1
kind: Node
metadata:
  name: sk-fake-tainted
  labels:
    sk-role: daemon
spec:
  taints:
  - key: sk-dedicated
    value: other
    effect: NoSchedule
"#,
    );
    c.ok(&["label", "node", &node, "sk-role=daemon"]);
    apply(
        &c,
        &format!(
            r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: sk-ds
spec:
  selector:
    matchLabels:
      app: sk-ds
  template:
    metadata:
      labels:
        app: sk-ds
    spec:
      nodeSelector:
        sk-role: daemon
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {img}
        command: ["sleep", "3600"]
"#
        ),
    );
    rollout_status(&c);
    let ds = get_json(&c, &["ds", "sk-ds"]);
    let st = &ds["status"];
    assert_eq!(st["desiredNumberScheduled"], 1, "{st}");
    assert_eq!(st["currentNumberScheduled"], 1);
    assert_eq!(st["numberReady"], 1);
    assert_eq!(st["numberAvailable"], 1);
    assert_eq!(st["updatedNumberScheduled"], 1);
    assert_eq!(st["numberMisscheduled"], 0);
    assert_eq!(st["observedGeneration"], ds["metadata"]["generation"]);
    let ps = pods(&c);
    assert_eq!(ps.len(), 1);
    let p = &ps[0];
    assert_eq!(p["spec"]["nodeName"], node.as_str());
    assert_eq!(
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0],
        node.as_str()
    );
    let tols: Vec<String> = p["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap_or(""),
                t["effect"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        "node.kubernetes.io/not-ready:NoExecute",
        "node.kubernetes.io/unreachable:NoExecute",
        "node.kubernetes.io/disk-pressure:NoSchedule",
        "node.kubernetes.io/memory-pressure:NoSchedule",
        "node.kubernetes.io/pid-pressure:NoSchedule",
        "node.kubernetes.io/unschedulable:NoSchedule",
    ] {
        assert!(
            tols.contains(&want.to_string()),
            "{want} missing from {tols:?}"
        );
    }
    assert_eq!(p["metadata"]["labels"]["pod-template-generation"], "1");
    let hash1 = p["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let first_pod = p["metadata"]["name"].as_str().unwrap().to_string();

    // The tainted fake node matched the selector but was not eligible (desired 1 above).
    assert!(ps
        .iter()
        .all(|p| p["spec"]["nodeName"] != "sk-fake-tainted"));
    c.ok(&["label", "node", "sk-fake-tainted", "sk-role-"]);

    // Rolling update: a new revision replaces the pod; history and undo.
    c.ok(&["set", "env", "ds/sk-ds", "SK_V=2"]);
    rollout_status(&c);
    c.wait_for("the old pod to go", WAIT, || {
        let ps = pods(&c);
        ps.len() == 1 && ps[0]["metadata"]["name"] != first_pod.as_str()
    });
    let ps = pods(&c);
    let hash2 = ps[0]["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(hash1, hash2);
    assert_eq!(ps[0]["metadata"]["labels"]["pod-template-generation"], "2");
    assert_eq!(ps[0]["spec"]["containers"][0]["env"][0]["name"], "SK_V");
    let hist = c.ok(&["rollout", "history", "ds/sk-ds"]);
    assert!(hist.contains('1') && hist.contains('2'), "{hist}");
    let crs = get_json(&c, &["controllerrevisions", "-l", "app=sk-ds"]);
    assert_eq!(crs["items"].as_array().unwrap().len(), 2);
    c.ok(&["rollout", "undo", "ds/sk-ds"]);
    rollout_status(&c);
    c.wait_for("the pod back on the first revision", WAIT, || {
        let ps = pods(&c);
        ps.len() == 1
            && ps[0]["metadata"]["labels"]["controller-revision-hash"] == hash1.as_str()
            && ps[0]["status"]["phase"] == "Running"
    });
    assert!(pods(&c)[0]["spec"]["containers"][0]["env"].is_null());

    // Unlabelling the node takes the daemon pod away.
    c.ok(&["label", "node", &node, "sk-role-"]);
    c.wait_for(
        "the daemon pod removed from the unlabelled node",
        WAIT,
        || {
            pods(&c)
                .iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_string())
        },
    );
    let ds = get_json(&c, &["ds", "sk-ds"]);
    assert_eq!(ds["status"]["desiredNumberScheduled"], 0);
    c.ok(&["delete", "node", "sk-fake-tainted"]);
}

fn live_pods(c: &ControlPlane, app: &str) -> Vec<Value> {
    get_json(c, &["pods", "-l", &format!("app={app}")])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

#[test]
fn daemonset_surge_then_on_delete() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    apply(
        &c,
        &format!(
            r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: sk-surge
spec:
  minReadySeconds: 10
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      app: sk-surge
  template:
    metadata:
      labels:
        app: sk-surge
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {img}
        command: ["sleep", "3600"]
"#
        ),
    );
    let o = c.kubectl(&["rollout", "status", "ds/sk-surge", "--timeout=150s"]);
    assert!(o.ok, "{}", o.stderr);
    let old = live_pods(&c, "sk-surge");
    assert_eq!(old.len(), 1);
    let old_name = old[0]["metadata"]["name"].as_str().unwrap().to_string();
    // maxSurge 1, maxUnavailable 0: the new pod runs beside the old one until it has been
    // available for minReadySeconds; only then does the old one go.
    c.ok(&["set", "env", "ds/sk-surge", "SK_V=2"]);
    c.wait_for("the surge pod beside the old one", WAIT, || {
        let ps = live_pods(&c, "sk-surge");
        ps.len() == 2
            && ps
                .iter()
                .any(|p| p["metadata"]["name"] == old_name.as_str())
    });
    let o = c.kubectl(&["rollout", "status", "ds/sk-surge", "--timeout=150s"]);
    assert!(o.ok, "{}", o.stderr);
    c.wait_for("the old pod gone", WAIT, || {
        let ps = live_pods(&c, "sk-surge");
        ps.len() == 1 && ps[0]["metadata"]["name"] != old_name.as_str()
    });

    // OnDelete: a new template does not touch the running pod; deleting it brings the new one.
    c.ok(&[
        "patch",
        "ds/sk-surge",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"OnDelete","rollingUpdate":null}}}"#,
    ]);
    c.ok(&["set", "env", "ds/sk-surge", "SK_V=3"]);
    c.wait_for("the DaemonSet to observe the new template", WAIT, || {
        let ds = get_json(&c, &["ds", "sk-surge"]);
        ds["status"]["observedGeneration"] == ds["metadata"]["generation"]
    });
    let ds = get_json(&c, &["ds", "sk-surge"]);
    assert_eq!(ds["status"]["updatedNumberScheduled"], 0);
    let ps = live_pods(&c, "sk-surge");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["spec"]["containers"][0]["env"][0]["value"], "2");
    let name = ps[0]["metadata"]["name"].as_str().unwrap().to_string();
    c.ok(&["delete", "pod", &name, "--wait=false"]);
    c.wait_for("the replacement at the new revision", WAIT, || {
        let ps = live_pods(&c, "sk-surge");
        ps.len() == 1
            && ps[0]["metadata"]["name"] != name.as_str()
            && ps[0]["spec"]["containers"][0]["env"][0]["value"] == "3"
    });
}
