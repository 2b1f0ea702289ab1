//! PodDisruptionBudgets and the eviction subresource end to end: the disruption controller's
//! status (currentHealthy, desiredHealthy, expectedPods, disruptionsAllowed, observedGeneration,
//! the DisruptionAllowed condition, disruptedPods) and `pods/eviction` honouring the budgets,
//! driven through kubectl (and curl for the raw Status body). The control-plane-only test marks
//! pods Ready through the status subresource (no node); the cluster test drains a real node.

use serde_json::{json, Value};
use skiff_tests::control_plane::{ControlPlane, Out};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn get_json(c: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let o = c.kubectl(&a);
    if !o.ok {
        return Value::Null;
    }
    serde_json::from_str(&o.stdout).unwrap_or(Value::Null)
}

fn apply(c: &ControlPlane, manifest: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply failed: {}\n{manifest}", o.stderr);
}

fn eviction_body(pod: &str) -> String {
    json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": "default"}})
        .to_string()
}

/// `kubectl create --raw` of an Eviction (what `kubectl drain` posts).
fn evict(c: &ControlPlane, pod: &str, dry_run: bool) -> Out {
    let q = if dry_run { "?dryRun=All" } else { "" };
    let path = format!("/api/v1/namespaces/default/pods/{pod}/eviction{q}");
    c.with_stdin(&["create", "--raw", &path, "-f", "-"], &eviction_body(pod))
}

/// The raw answer of an eviction: (HTTP code, body).
fn evict_raw(c: &ControlPlane, pod: &str) -> (u16, Value) {
    let (crt, key, ca) = c.admin_pems();
    let url = format!("{}/api/v1/namespaces/default/pods/{pod}/eviction", c.url());
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", "Content-Type: application/json"])
        .arg("--cacert")
        .arg(&ca)
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .args(["-d", &eviction_body(pod), &url])
        .output()
        .expect("curl is missing: the raw eviction checks need curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn pdb_status(c: &ControlPlane, name: &str) -> Value {
    get_json(c, &["pdb", name])["status"].clone()
}

fn condition(st: &Value) -> (String, String) {
    st["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed"))
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

/// Waits for the budget's status to show these counts (and the matching condition).
fn wait_status(
    c: &ControlPlane,
    name: &str,
    healthy: i64,
    desired: i64,
    expected: i64,
    allowed: i64,
) {
    let mut last = Value::Null;
    let what = format!(
        "pdb {name}: currentHealthy {healthy}, desiredHealthy {desired}, expectedPods {expected}, disruptionsAllowed {allowed}"
    );
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        let st = pdb_status(c, name);
        let want_cond = if allowed > 0 {
            ("True".to_string(), "SufficientPods".to_string())
        } else {
            ("False".to_string(), "InsufficientPods".to_string())
        };
        let gen = get_json(c, &["pdb", name])["metadata"]["generation"].clone();
        if st["currentHealthy"] == healthy
            && st["desiredHealthy"] == desired
            && st["expectedPods"] == expected
            && st["disruptionsAllowed"] == allowed
            && st["observedGeneration"] == gen
            && condition(&st) == want_cond
        {
            return;
        }
        last = st;
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "timed out waiting for {what}; last status {last}\n{}",
        c.log_tail()
    );
}

/// A bare pod (no controller) with `app=<app>`, marked Running (and Ready when `ready`) through
/// the status subresource, as a kubelet would.
fn bare_pod(c: &ControlPlane, name: &str, app: &str, ready: bool) {
    apply(
        c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: {app}
spec:
  containers:
  - name: main
    image: sk-none:latest
"#
        ),
    );
    set_phase(c, name, "Running", ready);
}

fn set_phase(c: &ControlPlane, name: &str, phase: &str, ready: bool) {
    let st = if ready { "True" } else { "False" };
    let patch =
        json!({"status": {"phase": phase, "conditions": [{"type": "Ready", "status": st}]}});
    c.ok(&[
        "patch",
        "pod",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
}

fn exists(c: &ControlPlane, kind: &str, name: &str) -> bool {
    c.kubectl(&["get", kind, name, "-o", "name"]).ok
}

#[test]
fn budget_status_and_eviction_without_a_node() {
    let c = ControlPlane::start();

    // Pods a Deployment wants but no node runs: none Ready, so nothing may be disrupted; a
    // percentage counts the Deployment's replicas.
    c.ok(&[
        "create",
        "deployment",
        "sk-nr",
        "--image=sk-none:latest",
        "--replicas=3",
    ]);
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-nr
spec:
  minAvailable: 50%
  selector:
    matchLabels:
      app: sk-nr
"#,
    );
    wait_status(&c, "sk-nr", 0, 2, 3, 0);
    let out = c.ok(&["get", "pdb", "sk-nr"]);
    assert!(
        out.contains("50%") && out.contains("N/A"),
        "kubectl get pdb: {out}"
    );
    // Pending pods are evictable whatever the budget says (upstream's canIgnorePDB).
    let pods = get_json(&c, &["pods", "-l", "app=sk-nr"]);
    let first = pods["items"][0]["metadata"]["name"]
        .as_str()
        .expect("a pod of sk-nr")
        .to_string();
    let o = evict(&c, &first, false);
    assert!(o.ok, "evicting a Pending pod: {}", o.stderr);
    c.wait_for("the evicted pending pod to go", WAIT, || {
        !exists(&c, "pod", &first)
    });
    // maxUnavailable as a percentage resolves against the scale too, rounding up.
    c.ok(&["delete", "pdb", "sk-nr"]);
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-nr-max
spec:
  maxUnavailable: 34%
  selector:
    matchLabels:
      app: sk-nr
"#,
    );
    // 34% of 3 rounds up to 2 unavailable: 1 must stay healthy.
    wait_status(&c, "sk-nr-max", 0, 1, 3, 0);
    c.ok(&["delete", "deployment", "sk-nr"]);
    c.ok(&["delete", "pdb", "sk-nr-max"]);

    // Bare pods: minAvailable as a number counts the selected pods.
    bare_pod(&c, "sk-a", "sk-bare", true);
    bare_pod(&c, "sk-b", "sk-bare", true);
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-bare
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: sk-bare
"#,
    );
    wait_status(&c, "sk-bare", 2, 1, 2, 1);

    // Dry run: allowed, but nothing changes.
    let o = evict(&c, "sk-a", true);
    assert!(o.ok, "dry-run eviction: {}", o.stderr);
    assert!(
        exists(&c, "pod", "sk-a"),
        "a dry-run eviction deleted the pod"
    );
    assert_eq!(pdb_status(&c, "sk-bare")["disruptionsAllowed"], 1);

    // The eviction takes the one allowed disruption: it records the pod and deletes it.
    let o = evict(&c, "sk-a", false);
    assert!(o.ok, "evicting sk-a: {}", o.stderr);
    let st = pdb_status(&c, "sk-bare");
    assert_eq!(
        st["disruptionsAllowed"], 0,
        "status after the eviction: {st}"
    );
    c.wait_for("sk-a to be deleted", WAIT, || !exists(&c, "pod", "sk-a"));
    wait_status(&c, "sk-bare", 1, 1, 1, 0);

    // No disruption left: 429 with upstream's message and the DisruptionBudget cause.
    let o = evict(&c, "sk-b", false);
    assert!(!o.ok, "evicting sk-b should be refused");
    assert!(o.stderr.contains(REFUSED), "kubectl said: {}", o.stderr);
    let (code, body) = evict_raw(&c, "sk-b");
    assert_eq!(code, 429, "raw eviction answer: {body}");
    assert_eq!(body["reason"], "TooManyRequests", "{body}");
    assert_eq!(body["message"], REFUSED, "{body}");
    let cause = &body["details"]["causes"][0];
    assert_eq!(cause["reason"], "DisruptionBudget", "{body}");
    assert_eq!(
        cause["message"], "The disruption budget sk-bare needs 1 healthy pods and has 1 currently",
        "{body}"
    );
    assert!(
        exists(&c, "pod", "sk-b"),
        "a refused eviction deleted the pod"
    );

    // A terminal pod is always evictable.
    set_phase(&c, "sk-b", "Failed", false);
    let o = evict(&c, "sk-b", false);
    assert!(o.ok, "evicting a Failed pod: {}", o.stderr);
    c.wait_for("the failed pod to be deleted", WAIT, || {
        !exists(&c, "pod", "sk-b")
    });

    // Two budgets over one pod: 500, as upstream.
    bare_pod(&c, "sk-c", "sk-bare", true);
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-bare-2
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app: sk-bare
"#,
    );
    let (code, body) = evict_raw(&c, "sk-c");
    assert_eq!(code, 500, "raw eviction answer: {body}");
    assert_eq!(
        body["message"],
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        "{body}"
    );
    // maxUnavailable over a pod without a controller cannot be resolved: SyncFailed.
    c.wait_for("sk-bare-2 to report SyncFailed", WAIT, || {
        let st = pdb_status(&c, "sk-bare-2");
        let cond = st["conditions"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|x| x["type"] == "DisruptionAllowed")
                    .cloned()
            })
            .unwrap_or(Value::Null);
        cond["status"] == "False"
            && cond["reason"] == "SyncFailed"
            && cond["message"] == "found no controller ref for pod \"sk-c\""
            && st["disruptionsAllowed"] == 0
    });
    c.ok(&["delete", "pdb", "sk-bare-2"]);

    // unhealthyPodEvictionPolicy: a pod that is not Ready goes without taking a disruption
    // while the budget is met (IfHealthyBudget, the default); when it is not, only
    // AlwaysAllow lets it go.
    bare_pod(&c, "sk-d", "sk-bare", false);
    wait_status(&c, "sk-bare", 1, 1, 2, 0);
    let o = evict(&c, "sk-d", false);
    assert!(o.ok, "an unready pod with the budget met: {}", o.stderr);
    c.wait_for("sk-d to be deleted", WAIT, || !exists(&c, "pod", "sk-d"));
    bare_pod(&c, "sk-e", "sk-bare", false);
    c.ok(&[
        "patch",
        "pdb",
        "sk-bare",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":2}}"#,
    ]);
    wait_status(&c, "sk-bare", 1, 2, 2, 0);
    let o = evict(&c, "sk-e", false);
    assert!(
        !o.ok && o.stderr.contains(REFUSED),
        "an unready pod with the budget not met: {}",
        o.stderr
    );
    c.ok(&[
        "patch",
        "pdb",
        "sk-bare",
        "--type=merge",
        "-p",
        r#"{"spec":{"unhealthyPodEvictionPolicy":"AlwaysAllow"}}"#,
    ]);
    c.wait_for("the policy change to be observed", WAIT, || {
        let p = get_json(&c, &["pdb", "sk-bare"]);
        p["status"]["observedGeneration"] == p["metadata"]["generation"]
    });
    let o = evict(&c, "sk-e", false);
    assert!(o.ok, "AlwaysAllow evicts an unready pod: {}", o.stderr);
    c.wait_for("sk-e to be deleted", WAIT, || !exists(&c, "pod", "sk-e"));
    // ...but not a Ready one.
    let o = evict(&c, "sk-c", false);
    assert!(!o.ok && o.stderr.contains(REFUSED), "{}", o.stderr);

    c.ok(&["delete", "pdb", "sk-bare"]);
    c.ok(&["delete", "pod", "sk-c", "--wait=false"]);

    // A custom controller with a scale subresource: its `/scale` counts.
    apply(
        &c,
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: skflocks.sk.example.com
spec:
  group: sk.example.com
  scope: Namespaced
  names:
    plural: skflocks
    singular: skflock
    kind: SkFlock
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources:
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
"#,
    );
    c.wait_for("the SkFlock kind to be served", WAIT, || {
        c.kubectl(&["get", "skflocks"]).ok
    });
    apply(
        &c,
        "apiVersion: sk.example.com/v1\nkind: SkFlock\nmetadata:\n  name: sk-flock\nspec:\n  replicas: 3\n",
    );
    let uid = get_json(&c, &["skflock", "sk-flock"])["metadata"]["uid"]
        .as_str()
        .expect("the SkFlock's uid")
        .to_string();
    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-flock-0
  labels:
    app: sk-flock
  ownerReferences:
  - apiVersion: sk.example.com/v1
    kind: SkFlock
    name: sk-flock
    uid: {uid}
    controller: true
spec:
  containers:
  - name: main
    image: sk-none:latest
"#
        ),
    );
    set_phase(&c, "sk-flock-0", "Running", true);
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-flock
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app: sk-flock
"#,
    );
    // The SkFlock wants 3: 2 must stay healthy and only 1 is.
    wait_status(&c, "sk-flock", 1, 2, 3, 0);
    c.ok(&["delete", "pdb", "sk-flock"]);
    c.ok(&["delete", "skflock", "sk-flock"]);
    c.ok(&[
        "delete",
        "pod",
        "sk-flock-0",
        "--wait=false",
        "--ignore-not-found",
    ]);
    c.ok(&["delete", "crd", "skflocks.sk.example.com"]);
}

#[test]
fn drain_honours_the_budget_on_a_node() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let node = c.agent.as_ref().unwrap().node.clone();
    apply(
        &c,
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: sk-web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: sk-web
  template:
    metadata:
      labels:
        app: sk-web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {img}
        command: ["sleep", "3600"]
"#
        ),
    );
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-web
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app: sk-web
"#,
    );
    wait_status(&c, "sk-web", 2, 1, 2, 1);
    let names = |c: &ControlPlane| -> Vec<String> {
        get_json(c, &["pods", "-l", "app=sk-web"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let before = names(&c);
    assert_eq!(before.len(), 2, "pods of sk-web: {before:?}");

    // Drain: one pod may go; the other is refused until a replacement is Ready, which cannot
    // happen on the cordoned node, so the drain times out retrying.
    let timeout = "--timeout=25s";
    let o = c.kubectl(&[
        "drain",
        &node,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        timeout,
    ]);
    assert!(!o.ok, "drain should time out on the budget:\n{}", o.stdout);
    assert!(
        o.stderr.contains(REFUSED),
        "drain's retries should show the budget's refusal:\n{}",
        o.stderr
    );
    let unschedulable = get_json(&c, &["node", &node])["spec"]["unschedulable"].clone();
    assert_eq!(unschedulable, true, "drain cordons the node");
    let st = pdb_status(&c, "sk-web");
    assert_eq!(st["disruptionsAllowed"], 0, "{st}");
    let survivors: Vec<String> = before
        .iter()
        .filter(|p| names(&c).contains(p))
        .cloned()
        .collect();
    c.wait_for("exactly one original pod to be evicted", WAIT, || {
        before.iter().filter(|p| exists(&c, "pod", p)).count() == 1
    });
    let survivor = before
        .iter()
        .find(|p| exists(&c, "pod", p))
        .cloned()
        .unwrap_or_else(|| panic!("no survivor among {before:?} ({survivors:?})"));

    // The direct eviction of the survivor is refused with the 429.
    let o = evict(&c, &survivor, false);
    assert!(!o.ok, "evicting the last healthy pod should be refused");
    assert!(o.stderr.contains(REFUSED), "{}", o.stderr);
    let (code, body) = evict_raw(&c, &survivor);
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["details"]["causes"][0]["reason"], "DisruptionBudget");
    wait_status(&c, "sk-web", 1, 1, 2, 0);

    // Uncordon: the replacement runs, the budget allows one disruption again, and the
    // survivor can go.
    c.ok(&["uncordon", &node]);
    wait_status(&c, "sk-web", 2, 1, 2, 1);
    let o = evict(&c, &survivor, false);
    assert!(o.ok, "evicting with a disruption allowed: {}", o.stderr);
    c.wait_for("the survivor to be gone", WAIT, || {
        !exists(&c, "pod", &survivor)
    });
    wait_status(&c, "sk-web", 2, 1, 2, 1);

    // maxUnavailable as a percentage of the Deployment's scale.
    c.ok(&["delete", "pdb", "sk-web"]);
    apply(
        &c,
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: sk-web-max
spec:
  maxUnavailable: 50%
  selector:
    matchLabels:
      app: sk-web
"#,
    );
    wait_status(&c, "sk-web-max", 2, 1, 2, 1);
    c.ok(&["scale", "deployment", "sk-web", "--replicas=3"]);
    // 50% of 3 rounds up to 2: one must stay healthy, so two may go.
    wait_status(&c, "sk-web-max", 3, 1, 3, 2);

    c.ok(&["delete", "pdb", "sk-web-max"]);
    c.ok(&["delete", "deployment", "sk-web"]);
    c.wait_for("the pods of sk-web to go", WAIT, || names(&c).is_empty());
}
