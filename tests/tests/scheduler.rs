//! The scheduler's decisions on fake nodes (Node objects only, no kubelet), driven through
//! kubectl against `skiff server --disable-agent`: resources, selectors and affinity, taints,
//! cordoned nodes, host ports, pod (anti-)affinity, topology spread, preemption, scheduler
//! names, and upstream's FailedScheduling messages. Every test runs its own control plane.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Creates a Ready node with the given capacity and labels (status set through the status
/// subresource, as a kubelet would).
fn node(
    cp: &ControlPlane,
    name: &str,
    cpu: &str,
    memory: &str,
    labels: &[(&str, &str)],
    taints: &str,
) {
    let mut l = format!("\"kubernetes.io/hostname\": \"{name}\"");
    for (k, v) in labels {
        l.push_str(&format!(", \"{k}\": \"{v}\""));
    }
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{name}", "labels": {{{l}}}}},
            "spec": {{"taints": [{taints}]}}}}"#
    );
    let o = cp.with_stdin(&["create", "-f", "-"], &manifest);
    assert!(o.ok, "create node {name}: {}", o.stderr);
    let now = "2026-01-01T00:00:00Z";
    let status = format!(
        r#"{{"status": {{"capacity": {{"cpu": "{cpu}", "memory": "{memory}", "pods": "110"}},
            "allocatable": {{"cpu": "{cpu}", "memory": "{memory}", "pods": "110"}},
            "conditions": [{{"type": "Ready", "status": "True", "reason": "KubeletReady",
                             "message": "fake node", "lastHeartbeatTime": "{now}", "lastTransitionTime": "{now}"}}]}}}}"#
    );
    cp.ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

fn pod(cp: &ControlPlane, name: &str, extra_spec: &str, cpu: &str) {
    pod_with(cp, name, "{}", extra_spec, cpu, "");
}

fn pod_with(
    cp: &ControlPlane,
    name: &str,
    labels: &str,
    extra_spec: &str,
    cpu: &str,
    container_extra: &str,
) {
    let manifest = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "labels": {labels}}},
            "spec": {{{extra_spec} "containers": [{{"name": "c", "image": "sk-busybox",
              "resources": {{"requests": {{"cpu": "{cpu}"}}}} {container_extra}}}]}}}}"#
    );
    let o = cp.with_stdin(&["create", "-f", "-"], &manifest);
    assert!(o.ok, "create pod {name}: {}\n{manifest}", o.stderr);
}

fn node_of(cp: &ControlPlane, pod: &str) -> String {
    cp.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"])
}

fn wait_bound(cp: &ControlPlane, pod: &str) -> String {
    cp.wait_for(&format!("pod {pod} to be scheduled"), WAIT, || {
        !node_of(cp, pod).is_empty()
    });
    node_of(cp, pod)
}

/// Waits for the pod's FailedScheduling event and returns its message; the pod stays unbound.
fn wait_unschedulable(cp: &ControlPlane, pod: &str) -> String {
    let mut msg = String::new();
    cp.wait_for(&format!("FailedScheduling for {pod}"), WAIT, || {
        // kubectl's jsonpath fails on an empty list: print every message, keep the last.
        let o = cp.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={pod},reason=FailedScheduling"),
            "-o",
            "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
        ]);
        msg = o.stdout.lines().last().unwrap_or("").to_string();
        o.ok && !msg.is_empty()
    });
    assert_eq!(
        node_of(cp, pod),
        "",
        "{pod} was bound although unschedulable"
    );
    let cond = cp.ok(&[
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
    ]);
    assert_eq!(cond, "Unschedulable");
    msg
}

#[test]
fn resources_selectors_and_node_affinity() {
    let cp = ControlPlane::start();
    node(&cp, "sk-n1", "2", "4Gi", &[("disk", "ssd")], "");
    node(&cp, "sk-n2", "4", "8Gi", &[("disk", "hdd")], "");
    pod(&cp, "sk-big", "", "3");
    assert_eq!(wait_bound(&cp, "sk-big"), "sk-n2");
    pod(&cp, "sk-ssd", r#""nodeSelector": {"disk": "ssd"},"#, "100m");
    assert_eq!(wait_bound(&cp, "sk-ssd"), "sk-n1");
    pod(
        &cp,
        "sk-aff",
        r#""affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}]}}},"#,
        "100m",
    );
    assert_eq!(wait_bound(&cp, "sk-aff"), "sk-n2");
    pod(
        &cp,
        "sk-pref",
        r#""affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}},"#,
        "100m",
    );
    assert_eq!(wait_bound(&cp, "sk-pref"), "sk-n1");

    // Too big for any node: upstream's message, then bound once a big enough node appears.
    pod(&cp, "sk-huge", "", "10");
    let msg = wait_unschedulable(&cp, "sk-huge");
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    pod(
        &cp,
        "sk-nowhere",
        r#""nodeSelector": {"disk": "tape"},"#,
        "100m",
    );
    let msg = wait_unschedulable(&cp, "sk-nowhere");
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
    node(&cp, "sk-n3", "16", "32Gi", &[], "");
    assert_eq!(wait_bound(&cp, "sk-huge"), "sk-n3");
    let scheduled = cp.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-huge,reason=Scheduled",
        "-o",
        "jsonpath={.items[0].message}",
    ]);
    assert_eq!(scheduled, "Successfully assigned default/sk-huge to sk-n3");
}

#[test]
fn taints_cordons_ports_and_scheduler_names() {
    let cp = ControlPlane::start();
    node(
        &cp,
        "sk-t1",
        "2",
        "4Gi",
        &[],
        r#"{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}"#,
    );
    node(&cp, "sk-t2", "2", "4Gi", &[], "");
    cp.ok(&["cordon", "sk-t2"]);
    pod(&cp, "sk-plain", "", "100m");
    let msg = wait_unschedulable(&cp, "sk-plain");
    assert!(
        msg.starts_with("0/2 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) were unschedulable."),
        "{msg}"
    );
    pod(
        &cp,
        "sk-tolerant",
        r#""tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],"#,
        "100m",
    );
    assert_eq!(wait_bound(&cp, "sk-tolerant"), "sk-t1");
    cp.ok(&["uncordon", "sk-t2"]);
    assert_eq!(wait_bound(&cp, "sk-plain"), "sk-t2");

    // Host ports: the second pod claiming 8080 on the only untainted node cannot go there.
    let port = r#", "ports": [{"containerPort": 80, "hostPort": 8080}]"#;
    pod_with(&cp, "sk-port1", "{}", "", "100m", port);
    assert_eq!(wait_bound(&cp, "sk-port1"), "sk-t2");
    pod_with(&cp, "sk-port2", "{}", "", "100m", port);
    let msg = wait_unschedulable(&cp, "sk-port2");
    assert!(
        msg.contains("1 node(s) didn't have free ports for the requested pod ports"),
        "{msg}"
    );

    // A pod for another scheduler is left alone.
    pod(
        &cp,
        "sk-other",
        r#""schedulerName": "sk-elsewhere","#,
        "100m",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_of(&cp, "sk-other"), "");
    let events = cp.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-other",
        "-o",
        "name",
    ]);
    assert_eq!(
        events.trim(),
        "",
        "the default scheduler touched another scheduler's pod"
    );
}

#[test]
fn pod_affinity_anti_affinity_and_topology_spread() {
    let cp = ControlPlane::start();
    for (n, zone) in [("sk-a1", "a"), ("sk-a2", "a"), ("sk-b1", "b")] {
        node(
            &cp,
            n,
            "8",
            "16Gi",
            &[("topology.kubernetes.io/zone", zone)],
            "",
        );
    }
    // One web pod per host: the fourth has nowhere to go.
    let anti = r#""affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}},"#;
    let mut hosts = Vec::new();
    for i in 0..3 {
        let name = format!("sk-web{i}");
        pod_with(&cp, &name, r#"{"app": "web"}"#, anti, "100m", "");
        hosts.push(wait_bound(&cp, &name));
    }
    hosts.sort();
    assert_eq!(hosts, ["sk-a1", "sk-a2", "sk-b1"]);
    pod_with(&cp, "sk-web3", r#"{"app": "web"}"#, anti, "100m", "");
    let msg = wait_unschedulable(&cp, "sk-web3");
    assert!(
        msg.starts_with("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."),
        "{msg}"
    );

    // A cache pod must share a zone with the web pod on sk-b1's zone only if told so.
    let aff = r#""affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}},"#;
    pod_with(
        &cp,
        "sk-db",
        r#"{"app": "db"}"#,
        r#""nodeSelector": {"topology.kubernetes.io/zone": "b"},"#,
        "100m",
        "",
    );
    assert_eq!(wait_bound(&cp, "sk-db"), "sk-b1");
    pod_with(&cp, "sk-cache", r#"{"app": "cache"}"#, aff, "100m", "");
    assert_eq!(wait_bound(&cp, "sk-cache"), "sk-b1");

    // Spread over zones with max skew 1: 4 pods land 2 and 2.
    let spread = r#""topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}],"#;
    let mut zones = std::collections::BTreeMap::new();
    for i in 0..4 {
        let name = format!("sk-spread{i}");
        pod_with(&cp, &name, r#"{"app": "spread"}"#, spread, "100m", "");
        let n = wait_bound(&cp, &name);
        *zones
            .entry(if n == "sk-b1" { "b" } else { "a" })
            .or_insert(0) += 1;
    }
    assert_eq!(zones.get("a"), Some(&2), "{zones:?}");
    assert_eq!(zones.get("b"), Some(&2), "{zones:?}");
}

#[test]
fn preemption_evicts_lower_priority_pods() {
    let cp = ControlPlane::start();
    node(&cp, "sk-p1", "1", "4Gi", &[], "");
    let classes = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: sk-low}
value: 10
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: sk-high}
value: 1000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: sk-high-never}
value: 1000
preemptionPolicy: Never
"#;
    let o = cp.with_stdin(&["create", "-f", "-"], classes);
    assert!(o.ok, "{}", o.stderr);
    pod(
        &cp,
        "sk-low",
        r#""priorityClassName": "sk-low", "priority": 10,"#,
        "800m",
    );
    assert_eq!(wait_bound(&cp, "sk-low"), "sk-p1");
    pod(
        &cp,
        "sk-never",
        r#""priorityClassName": "sk-high-never", "priority": 1000,"#,
        "800m",
    );
    let msg = wait_unschedulable(&cp, "sk-never");
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
    );
    cp.ok(&["delete", "pod", "sk-never", "--grace-period=0", "--force"]);

    pod(
        &cp,
        "sk-high",
        r#""priorityClassName": "sk-high", "priority": 1000,"#,
        "800m",
    );
    // The victim is marked and deleted (it stays Terminating: no kubelet here)...
    cp.wait_for("sk-low to be preempted", WAIT, || {
        !cp.ok(&[
            "get",
            "pod",
            "sk-low",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .is_empty()
    });
    let cond = cp.ok(&[
        "get",
        "pod",
        "sk-low",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"DisruptionTarget\")].reason}",
    ]);
    assert_eq!(cond, "PreemptionByScheduler");
    cp.wait_for("sk-high to be nominated", WAIT, || {
        cp.ok(&[
            "get",
            "pod",
            "sk-high",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ]) == "sk-p1"
    });
    assert_eq!(
        node_of(&cp, "sk-high"),
        "",
        "bound before its victim was gone"
    );
    // ...and once it is gone (a kubelet would confirm; force it here), the preemptor binds.
    cp.ok(&["delete", "pod", "sk-low", "--grace-period=0", "--force"]);
    assert_eq!(wait_bound(&cp, "sk-high"), "sk-p1");
    let preempted = cp.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-low,reason=Preempted",
        "-o",
        "jsonpath={.items[0].message}",
    ]);
    assert!(
        preempted.starts_with("Preempted by pod ") && preempted.ends_with(" on node sk-p1"),
        "{preempted}"
    );
}

#[test]
fn volume_binding_follows_claims_and_volume_node_affinity() {
    let cp = ControlPlane::start();
    node(&cp, "sk-v1", "4", "8Gi", &[], "");
    node(&cp, "sk-v2", "4", "8Gi", &[], "");
    let o = cp.with_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: sk-manual}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: sk-immediate}
provisioner: example.com/sk-none
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: sk-pv-on-v2}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: sk-manual
  hostPath: {path: /tmp/sk-pv-on-v2}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [sk-v2]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: sk-wait}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: sk-manual
  resources: {requests: {storage: 500Mi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: sk-too-big}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: sk-manual
  resources: {requests: {storage: 5Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: sk-unbound-immediate}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: sk-immediate
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: sk-provisioned}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    assert!(o.ok, "{}", o.stderr);
    let with_claim = |claim: &str| {
        format!(
            r#""volumes": [{{"name": "d", "persistentVolumeClaim": {{"claimName": "{claim}"}}}}],"#
        )
    };
    // WaitForFirstConsumer with a static volume: only the node the volume reaches.
    pod(&cp, "sk-uses-wait", &with_claim("sk-wait"), "100m");
    assert_eq!(wait_bound(&cp, "sk-uses-wait"), "sk-v2");
    // No volume big enough and no provisioner.
    pod(&cp, "sk-uses-big", &with_claim("sk-too-big"), "100m");
    assert_eq!(
        wait_unschedulable(&cp, "sk-uses-big"),
        "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
    // A missing claim, and an unbound Immediate one.
    pod(&cp, "sk-uses-missing", &with_claim("sk-nope"), "100m");
    let msg = wait_unschedulable(&cp, "sk-uses-missing");
    assert!(
        msg.contains("persistentvolumeclaim \"sk-nope\" not found"),
        "{msg}"
    );
    pod(
        &cp,
        "sk-uses-immediate",
        &with_claim("sk-unbound-immediate"),
        "100m",
    );
    let msg = wait_unschedulable(&cp, "sk-uses-immediate");
    assert!(
        msg.contains("pod has unbound immediate PersistentVolumeClaims"),
        "{msg}"
    );
    // The missing claim appears: the pending pod is scheduled (a claim event moves it).
    let o = cp.with_stdin(
        &["apply", "-f", "-"],
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {name: sk-pv-on-v1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: sk-manual
  hostPath: {path: /tmp/sk-pv-on-v1}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [sk-v1]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: sk-nope}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: sk-manual
  resources: {requests: {storage: 1Gi}}
"#,
    );
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(wait_bound(&cp, "sk-uses-missing"), "sk-v1");
    // A bound claim: its pods follow the volume's node affinity.
    cp.wait_for("sk-wait bound", WAIT, || {
        cp.ok(&["get", "pvc", "sk-wait", "-o", "jsonpath={.spec.volumeName}"]) == "sk-pv-on-v2"
    });
    pod(&cp, "sk-second-user", &with_claim("sk-wait"), "100m");
    assert_eq!(wait_bound(&cp, "sk-second-user"), "sk-v2");
    // The default (local-path) class provisions: the claim learns the chosen node first.
    pod(
        &cp,
        "sk-uses-provisioned",
        &with_claim("sk-provisioned"),
        "100m",
    );
    let n = wait_bound(&cp, "sk-uses-provisioned");
    assert_eq!(
        cp.ok(&[
            "get",
            "pvc",
            "sk-provisioned",
            "-o",
            "jsonpath={.metadata.annotations.volume\\.kubernetes\\.io/selected-node}"
        ]),
        n
    );
}

#[test]
fn preemption_prefers_victims_no_disruption_budget_protects() {
    let cp = ControlPlane::start();
    node(&cp, "sk-pa", "2", "4Gi", &[], "");
    node(&cp, "sk-pb", "2", "4Gi", &[], "");
    let o = cp.with_stdin(
        &["create", "-f", "-"],
        r#"apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: sk-vip}
value: 1000
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: sk-guard}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: sk-guarded}}
"#,
    );
    assert!(o.ok, "{}", o.stderr);
    // One low-priority pod per node; the one on sk-pa is protected by the budget (no pod is
    // Ready without a kubelet, so it allows no disruption).
    pod_with(
        &cp,
        "sk-guarded",
        r#"{"app": "sk-guarded"}"#,
        r#""nodeSelector": {"kubernetes.io/hostname": "sk-pa"},"#,
        "1500m",
        "",
    );
    pod_with(
        &cp,
        "sk-free",
        r#"{"app": "sk-free"}"#,
        r#""nodeSelector": {"kubernetes.io/hostname": "sk-pb"},"#,
        "1500m",
        "",
    );
    assert_eq!(wait_bound(&cp, "sk-guarded"), "sk-pa");
    assert_eq!(wait_bound(&cp, "sk-free"), "sk-pb");
    cp.wait_for("the budget's status", WAIT, || {
        cp.ok(&[
            "get",
            "pdb",
            "sk-guard",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ]) == "0"
    });
    pod(
        &cp,
        "sk-vip",
        r#""priorityClassName": "sk-vip", "priority": 1000,"#,
        "1500m",
    );
    cp.wait_for("sk-vip to be nominated", WAIT, || {
        cp.ok(&[
            "get",
            "pod",
            "sk-vip",
            "-o",
            "jsonpath={.status.nominatedNodeName}",
        ]) == "sk-pb"
    });
    assert!(!cp
        .ok(&[
            "get",
            "pod",
            "sk-free",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ])
        .is_empty());
    assert_eq!(
        cp.ok(&[
            "get",
            "pod",
            "sk-guarded",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}"
        ]),
        "",
        "the budget-protected pod was preempted"
    );
}
