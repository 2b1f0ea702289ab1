//! Admission after a kubelet restart: `skiff kubelet` beside a `skiff server --disable-agent` on
//! Skiff's CRI server (bridge `skbr49`, 10.244.49.0/24) runs a pod, is killed with SIGKILL and
//! comes back with the node under DiskPressure (a soft `nodefs.available<99%` threshold with a
//! one-hour grace period: the condition without evictions). The running pod is accepted again
//! (still Running, same container, no restart), while a new pod is rejected (`Failed`, reason
//! `Evicted`, `Pod was rejected: The node had condition: [DiskPressure]. `). Needs root,
//! docker-registry, busybox-static and kubectl; builds on
//! `cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use skiff_tests::standalone::{kubelet_command, with_skiff_cri_node, KubeletNode, Proc, SkiffCri};

fn pod(name: &str, node: &str, busybox: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {busybox}
    command: ["sleep", "3600"]
"#
    )
}

fn scenario(cp: &ControlPlane, cri: &SkiffCri, busybox: &str, cgroup_root: &str) {
    let dir = cp.dir().join("sk-readm");
    let name = format!("sk-readm-{}", std::process::id());
    let start = |extra: &str| {
        Proc(
            kubelet_command(cp, &cri.socket, &name, cgroup_root, &dir, extra, &[])
                .spawn()
                .expect("start skiff kubelet"),
        )
    };
    let n = KubeletNode {
        runtime: "skiff",
        cp,
        name: name.clone(),
        dir: dir.clone(),
    };
    let condition = |kind: &str| {
        cp.kubectl(&[
            "get",
            "node",
            &name,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}}"),
        ])
        .stdout
    };
    let kubelet = start("");
    n.wait_for("the node to be Ready", || condition("Ready") == "True");
    let o = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-readm-run", &name, busybox));
    assert!(o.ok, "apply: {}", o.stderr);
    n.wait_for("sk-readm-run Running", || {
        n.get("sk-readm-run", "{.status.phase}") == "Running"
    });
    let id = n.get("sk-readm-run", "{.status.containerStatuses[0].containerID}");
    assert!(!id.is_empty());

    // kill -9, then back with the node under disk pressure.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kubelet.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the kubelet");
    drop(kubelet);
    let kubelet = start(
        "evictionSoft:\n  nodefs.available: 99%\nevictionSoftGracePeriod:\n  nodefs.available: 1h\n",
    );
    n.wait_for("DiskPressure=True", || condition("DiskPressure") == "True");
    let o = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-readm-new", &name, busybox));
    assert!(o.ok, "apply: {}", o.stderr);
    n.wait_for("sk-readm-new rejected", || {
        n.get("sk-readm-new", "{.status.phase}") == "Failed"
    });
    assert_eq!(n.get("sk-readm-new", "{.status.reason}"), "Evicted");
    assert_eq!(
        n.get("sk-readm-new", "{.status.message}"),
        "Pod was rejected: The node had condition: [DiskPressure]. "
    );
    // The pod that ran before the restart is still running, untouched.
    assert_eq!(
        n.get("sk-readm-run", "{.status.phase}"),
        "Running",
        "{}",
        n.kubelet_log()
    );
    assert_eq!(
        n.get("sk-readm-run", "{.status.containerStatuses[0].containerID}"),
        id
    );
    assert_eq!(
        n.get(
            "sk-readm-run",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    assert_eq!(
        n.get("sk-readm-run", "{.status.containerStatuses[0].ready}"),
        "true"
    );
    assert!(
        !n.kubelet_log()
            .contains("pod rejected by admission pod=default/sk-readm-run"),
        "{}",
        n.kubelet_log()
    );
    n.ok(&[
        "delete",
        "pod",
        "sk-readm-run",
        "sk-readm-new",
        "--wait=true",
        "--timeout=90s",
    ]);
    drop(kubelet);
    cp.kubectl(&["delete", "node", &name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_survive_a_restart_under_pressure() {
    with_skiff_cri_node("skbr49", "10.244.49.0/24", "skreadm", scenario).await;
}
