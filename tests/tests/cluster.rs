//! The whole-cluster test harness: two single-node clusters on one host at once, each in its own
//! slot (bridge, pod and service ranges, cgroup root), each running a pod to completion through
//! kubectl, the scheduler, the kubelet and the CRI server. Needs root, docker-registry and
//! busybox-static; builds on `cargo build --workspace --bins`.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

fn run_pod_to_completion(c: &ControlPlane, name: &str) -> String {
    let agent = c.agent.as_ref().expect("a whole cluster");
    c.ok(&[
        "run",
        name,
        "--image",
        &agent.busybox,
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo hello from $(hostname)",
    ]);
    c.wait_for(
        &format!("pod {name} to succeed"),
        Duration::from_secs(90),
        || c.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]) == "Succeeded",
    );
    c.ok(&["logs", name])
}

#[test]
fn two_clusters_run_side_by_side() {
    let a = ControlPlane::start_cluster();
    let b = ControlPlane::start_cluster();
    let (aa, ba) = (a.agent.as_ref().unwrap(), b.agent.as_ref().unwrap());
    assert_ne!(aa.slot, ba.slot);
    assert_eq!(run_pod_to_completion(&a, "sk-a").trim(), "hello from sk-a");
    assert_eq!(run_pod_to_completion(&b, "sk-b").trim(), "hello from sk-b");
    // The CNI plugin made each cluster's own bridge on its first pod.
    assert!(skiff_tests::netns::link_exists(&aa.bridge));
    assert!(skiff_tests::netns::link_exists(&ba.bridge));
    let ip = a.ok(&["get", "pod", "sk-a", "-o", "jsonpath={.status.podIP}"]);
    let prefix = aa.pod_cidr.trim_end_matches("0/24");
    assert!(
        ip.starts_with(prefix),
        "pod IP {ip} outside {}",
        aa.pod_cidr
    );
    let bridge_a = aa.bridge.clone();
    drop(a);
    assert!(
        !skiff_tests::netns::link_exists(&bridge_a),
        "the first cluster's bridge {bridge_a} is still there after it stopped"
    );
    // The second cluster is unaffected by the first one's cleanup.
    assert_eq!(
        run_pod_to_completion(&b, "sk-b2").trim(),
        "hello from sk-b2"
    );
}
