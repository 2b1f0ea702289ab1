//! Pod admission by the kubelet and node-level reclaim before disk eviction, through a whole
//! `skiff server` and kubectl (pods name their node, so the kubelet decides, not the scheduler):
//! - under MemoryPressure (a soft threshold above the host's memory with a long grace period),
//!   a BestEffort pod is rejected (phase Failed, reason `Evicted`, `Pod was rejected: The node
//!   had condition: [MemoryPressure]. `, a Warning `Evicted` event), a BestEffort pod tolerating
//!   the memory-pressure taint and a Burstable pod run; a pod asking for more cpu than the node
//!   has is `OutOfcpu`, a pod whose nodeSelector does not match is `NodeAffinity`;
//! - under DiskPressure (`nodefs.available<99%` set on a restart, after the pods started), the
//!   eviction manager first removes unused images, then (the pressure staying) evicts the running
//!   pod; a new pod, even tolerating the taint, is rejected with `[DiskPressure]`, and a
//!   `system-node-critical` pod is admitted.
//!
//! Needs root, docker-registry, busybox-static and kubectl; builds on
//! `cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni`.

use skiff_proto::cri;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn apply(cp: &ControlPlane, manifest: &str) {
    let o = cp.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply: {}\n{manifest}", o.stderr);
}

fn get(cp: &ControlPlane, kind: &str, name: &str, path: &str) -> String {
    cp.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
        .stdout
}

fn mem_total_kib() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    m.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn condition(cp: &ControlPlane, node: &str, kind: &str) -> String {
    get(
        cp,
        "node",
        node,
        &format!("{{.status.conditions[?(@.type==\"{kind}\")].status}}"),
    )
}

fn event_messages(cp: &ControlPlane, pod: &str, reason: &str) -> String {
    cp.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason={reason}"),
        "-o",
        "jsonpath={.items[*].type} {.items[*].message}",
    ])
    .stdout
}

/// Waits for `pod` to be rejected with `reason`; returns the status message.
fn wait_rejected(cp: &ControlPlane, pod: &str, reason: &str) -> String {
    cp.wait_for(&format!("{pod} rejected ({reason})"), WAIT, || {
        get(cp, "pod", pod, "{.status.phase}") == "Failed"
    });
    assert_eq!(get(cp, "pod", pod, "{.status.reason}"), reason, "{pod}");
    // Its containers never ran.
    assert_eq!(
        get(cp, "pod", pod, "{.status.containerStatuses}"),
        "",
        "{pod}"
    );
    get(cp, "pod", pod, "{.status.message}")
}

fn pod(name: &str, node: &str, image: &str, extra: &str, resources: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
{extra}  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    resources: {resources}
"#
    )
}

#[test]
fn memory_pressure_and_predicate_admission() {
    // Always met (above the host's memory), and a grace period longer than the test: pressure
    // without evictions.
    let ki = (mem_total_kib() + 1024 * 1024) | 1;
    let cp = ControlPlane::start_cluster_with(&[
        "--eviction-soft",
        &format!("memory.available<{ki}Ki"),
        "--eviction-soft-grace-period",
        "memory.available=30m",
    ]);
    let agent = cp.agent.as_ref().expect("a whole cluster");
    let image = agent.busybox.clone();
    let node = agent.node.clone();
    cp.wait_for("MemoryPressure=True", WAIT, || {
        condition(&cp, &node, "MemoryPressure") == "True"
    });
    let tolerate = "  tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]\n";
    let manifests = [
        pod("sk-adm-be", &node, &image, "", "{}"),
        pod("sk-adm-be-tol", &node, &image, tolerate, "{}"),
        pod(
            "sk-adm-b",
            &node,
            &image,
            "",
            "{requests: {cpu: 10m, memory: 8Mi}}",
        ),
        pod(
            "sk-adm-cpu",
            &node,
            &image,
            "",
            "{requests: {cpu: \"1000\", memory: 8Mi}}",
        ),
        pod(
            "sk-adm-aff",
            &node,
            &image,
            "  nodeSelector: {sk-admission: none}\n",
            "{requests: {cpu: 10m, memory: 8Mi}}",
        ),
    ];
    apply(&cp, &manifests.join("---\n"));

    let msg = wait_rejected(&cp, "sk-adm-be", "Evicted");
    assert_eq!(
        msg,
        "Pod was rejected: The node had condition: [MemoryPressure]. "
    );
    cp.wait_for("Evicted event of the rejected pod", WAIT, || {
        event_messages(&cp, "sk-adm-be", "Evicted")
            == "Warning The node had condition: [MemoryPressure]. "
    });
    for p in ["sk-adm-be-tol", "sk-adm-b"] {
        cp.wait_for(&format!("{p} Running"), WAIT, || {
            get(&cp, "pod", p, "{.status.phase}") == "Running"
        });
    }
    let msg = wait_rejected(&cp, "sk-adm-cpu", "OutOfcpu");
    assert!(
        msg.starts_with(
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000, used: "
        ),
        "{msg}"
    );
    let msg = wait_rejected(&cp, "sk-adm-aff", "NodeAffinity");
    assert_eq!(
        msg,
        "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
    );
    let ev = event_messages(&cp, "sk-adm-aff", "NodeAffinity");
    assert!(
        ev.starts_with("Warning Predicate NodeAffinity failed"),
        "{ev}"
    );
    // `kubectl get pods` shows the reason as the status, as upstream.
    let line = cp.ok(&["get", "pod", "sk-adm-cpu", "--no-headers"]);
    assert!(line.contains("OutOfcpu"), "{line}");

    cp.ok(&[
        "delete",
        "pod",
        "sk-adm-be",
        "sk-adm-be-tol",
        "sk-adm-b",
        "sk-adm-cpu",
        "sk-adm-aff",
        "--wait=true",
        "--timeout=90s",
    ]);
}

fn images(rt: &tokio::runtime::Runtime, cp: &ControlPlane) -> Vec<String> {
    rt.block_on(async {
        let (_, mut img) = skiff_cri::client::connect(&cp.cri_socket())
            .await
            .expect("connecting to the cluster's CRI socket");
        img.list_images(cri::ListImagesRequest { filter: None })
            .await
            .expect("ListImages")
            .into_inner()
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect()
    })
}

#[test]
fn disk_pressure_reclaims_images_then_evicts_and_rejects() {
    // No pressure at first; image GC off (high threshold 100), no minimum image age.
    let mut cp = ControlPlane::start_cluster_with(&[
        "--eviction-hard",
        "nodefs.available<1%",
        "--image-gc-high-threshold=100",
        "--image-gc-low-threshold=0",
        "--minimum-image-ttl-duration=0s",
    ]);
    let agent = cp.agent.as_ref().expect("a whole cluster");
    let image = agent.busybox.clone();
    let node = agent.node.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A second image that only a finished (then deleted) pod used.
    let registry = image.split('/').next().unwrap().to_string();
    let base = skiff_tests::image::build_busybox_image().expect("busybox image");
    let other = skiff_tests::image::with_layer(&base, &[("sk-reclaim", 0o644, 0, b"r\n")])
        .expect("image with a layer");
    rt.block_on(skiff_tests::image::push(&registry, "sk-reclaim:v1", &other))
        .expect("push");
    let unused = format!("{registry}/sk-reclaim:v1");
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-rc-once}}
spec:
  nodeName: {node}
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {unused}, command: ["cat", "/sk-reclaim"]}}
---
{}"#,
            pod("sk-rc-run", &node, &image, "", "{}")
        ),
    );
    cp.wait_for("sk-rc-once Succeeded", WAIT, || {
        get(&cp, "pod", "sk-rc-once", "{.status.phase}") == "Succeeded"
    });
    cp.ok(&["delete", "pod", "sk-rc-once", "--wait=true"]);
    cp.wait_for("sk-rc-run Running", WAIT, || {
        get(&cp, "pod", "sk-rc-run", "{.status.phase}") == "Running"
    });
    assert!(
        images(&rt, &cp).contains(&unused),
        "image GC is off: the unused image is still there: {:?}",
        images(&rt, &cp)
    );

    // Disk pressure from now on (met on any host with data on its root filesystem).
    cp.set_server_flag("--eviction-hard", "nodefs.available<99%");
    cp.kill_and_restart();
    cp.wait_for("DiskPressure=True", WAIT, || {
        condition(&cp, &node, "DiskPressure") == "True"
    });
    cp.wait_for("the running pod evicted", WAIT, || {
        get(&cp, "pod", "sk-rc-run", "{.status.phase}") == "Failed"
    });
    assert_eq!(get(&cp, "pod", "sk-rc-run", "{.status.reason}"), "Evicted");
    let msg = get(&cp, "pod", "sk-rc-run", "{.status.message}");
    assert!(
        msg.starts_with("The node was low on resource: ephemeral-storage. Threshold quantity: "),
        "{msg}"
    );
    // Node-level resources went first: the unused image is gone, and the log has the reclaim
    // before the eviction.
    assert!(
        !images(&rt, &cp).contains(&unused),
        "the unused image was reclaimed before pods were evicted: {:?}",
        images(&rt, &cp)
    );
    let log = std::fs::read_to_string(cp.dir().join("server.log")).unwrap();
    let reclaim = log
        .find("reclaim: removing unused image")
        .expect("the server log shows the image reclaim");
    let evict = log[reclaim..].find("evicting pod");
    assert!(
        evict.is_some(),
        "eviction after the reclaim in the log:\n{}",
        cp.log_tail()
    );

    // New pods: rejected under disk pressure even when tolerating the taint; node-critical
    // pods are admitted.
    let tolerate = "  tolerations: [{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}]\n";
    apply(
        &cp,
        &[
            pod("sk-rc-new", &node, &image, tolerate, "{}"),
            pod(
                "sk-rc-crit",
                &node,
                &image,
                "  priorityClassName: system-node-critical\n",
                "{}",
            ),
        ]
        .join("---\n"),
    );
    let msg = wait_rejected(&cp, "sk-rc-new", "Evicted");
    assert_eq!(
        msg,
        "Pod was rejected: The node had condition: [DiskPressure]. "
    );
    cp.wait_for("sk-rc-crit Running", WAIT, || {
        get(&cp, "pod", "sk-rc-crit", "{.status.phase}") == "Running"
    });
    cp.ok(&[
        "delete",
        "pod",
        "sk-rc-run",
        "sk-rc-new",
        "sk-rc-crit",
        "--wait=true",
        "--timeout=90s",
    ]);
}
