//! Graceful node shutdown against a real systemd-logind: a systemd box (tests/src/systemd_box.rs,
//! systemd 252 as PID 1 with dbus and logind) runs `skiff kubelet` with
//! `shutdownGracePeriodByPodPriority` (priority 0: 10 s, priority 1000: 10 s), beside a
//! `skiff server --disable-agent` and Skiff's CRI server on the host (bridge `skbr48`,
//! 10.244.48.0/24). The kubelet raises logind's `InhibitDelayMaxSec` (5 s by default) to 20 s
//! through the drop-in `/etc/systemd/logind.conf.d/99-kubelet.conf` and holds a `delay` lock on
//! `shutdown`. `systemctl poweroff` in the box then: the Node turns NotReady (`node is shutting
//! down`, event `NodeShutdown`), the ordinary pod ends before the priority-1000 one starts ending,
//! both end `Failed` / `Terminated` / `Pod was terminated in response to imminent node
//! shutdown.` with a `DisruptionTarget` condition, and the kubelet releases the lock, so the box
//! powers off.
//!
//! Needs root, systemd, dbus, docker-registry, busybox-static and kubectl; builds on
//! `cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use skiff_tests::standalone::{kubelet_command, with_skiff_cri_node, SkiffCri};
use skiff_tests::systemd_box::SystemdBox;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);
const MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";

fn wait_for(what: &str, log: &dyn Fn() -> String, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out after {WAIT:?} waiting for {what}\n{}", log());
}

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scenario(cp: &ControlPlane, cri: &SkiffCri, busybox: &str, cgroup_root: &str) {
    let dir = cp.dir().join("sk-shut");
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("sk-shut-{}", std::process::id());
    let mut bx = SystemdBox::boot(&[cp.dir(), cri.dir()]).expect("systemd box");
    let log = || {
        let k = std::fs::read_to_string(dir.join("kubelet.log")).unwrap_or_default();
        let lines: Vec<&str> = k.lines().collect();
        format!(
            "--- kubelet log (tail) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    };
    let delay = bx.exec(&[
        "busctl",
        "get-property",
        "org.freedesktop.login1",
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "InhibitDelayMaxUSec",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&delay.stdout).trim(),
        "t 5000000",
        "logind's default InhibitDelayMaxSec in the box"
    );

    // The kubelet as a service of the box's systemd, as on a real node.
    let level = std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into());
    let wrapper = bx.service(
        "sk-kubelet",
        &[("SKIFF_LOG", &level)],
        &dir.join("kubelet.log"),
    );
    let extra = "shutdownGracePeriodByPodPriority:\n- priority: 0\n  shutdownGracePeriodSeconds: 10\n- priority: 1000\n  shutdownGracePeriodSeconds: 10\n";
    let o = kubelet_command(cp, &cri.socket, &name, cgroup_root, &dir, extra, &wrapper)
        .output()
        .expect("systemd-run skiff kubelet in the box");
    assert!(o.status.success(), "systemd-run: {}\n{}", out(&o), log());
    let ready = || {
        cp.kubectl(&[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .stdout
    };
    wait_for("the node to be Ready", &log, || ready() == "True");
    // The kubelet raised logind's delay to the sum of the groups and holds a delay lock.
    wait_for("the kubelet's inhibitor lock", &log, || {
        let o = bx.exec(&["systemd-inhibit", "--list", "--no-pager"]);
        let s = out(&o);
        s.lines()
            .any(|l| l.starts_with("kubelet") && l.contains("shutdown") && l.contains("delay"))
    });
    let dropin = bx.exec(&["cat", "/etc/systemd/logind.conf.d/99-kubelet.conf"]);
    assert!(
        out(&dropin).contains("[Login]\nInhibitDelayMaxSec=20"),
        "the logind drop-in: {}",
        out(&dropin)
    );
    let delay = bx.exec(&[
        "busctl",
        "get-property",
        "org.freedesktop.login1",
        "/org/freedesktop/login1",
        "org.freedesktop.login1.Manager",
        "InhibitDelayMaxUSec",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&delay.stdout).trim(),
        "t 20000000",
        "InhibitDelayMaxSec after the kubelet's reload"
    );

    let o = cp.kubectl(&["create", "priorityclass", "sk-shut-high", "--value=1000"]);
    assert!(o.ok, "priorityclass: {}", o.stderr);
    // Both exit on SIGTERM at once; their grace periods (30 s) are longer than their groups'
    // (10 s), so the groups' apply.
    let pod = |pod: &str, class: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  nodeName: {name}
  {class}
  containers:
  - name: main
    image: {busybox}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
        )
    };
    let manifest = format!(
        "{}---\n{}",
        pod("sk-shut-low", ""),
        pod("sk-shut-high", "priorityClassName: sk-shut-high")
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply: {}", o.stderr);
    let get = |p: &str, path: &str| {
        cp.kubectl(&["get", "pod", p, "-o", &format!("jsonpath={path}")])
            .stdout
    };
    for p in ["sk-shut-low", "sk-shut-high"] {
        wait_for(&format!("{p} Running"), &log, || {
            get(p, "{.status.phase}") == "Running"
        });
    }
    assert_eq!(get("sk-shut-high", "{.spec.priority}"), "1000");

    let o = bx.poweroff();
    assert!(o.status.success(), "systemctl poweroff: {}", out(&o));
    // The node reports the shutdown while the kubelet ends the pods.
    wait_for("the node NotReady: node is shutting down", &log, || {
        cp.kubectl(&[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
        ])
        .stdout
            == "node is shutting down"
    });
    for p in ["sk-shut-low", "sk-shut-high"] {
        wait_for(&format!("{p} Failed"), &log, || {
            get(p, "{.status.phase}") == "Failed"
        });
        assert_eq!(get(p, "{.status.reason}"), "Terminated", "{p}\n{}", log());
        assert_eq!(get(p, "{.status.message}"), MESSAGE, "{p}");
        assert_eq!(
            get(
                p,
                "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
            ),
            "TerminationByKubelet",
            "{p}"
        );
    }
    // Two phases: the ordinary pod's container ended before the high-priority one was stopped.
    let finished = |p: &str| {
        get(
            p,
            "{.status.containerStatuses[0].state.terminated.finishedAt}",
        )
    };
    let (low, high) = (finished("sk-shut-low"), finished("sk-shut-high"));
    assert!(
        !low.is_empty() && !high.is_empty() && low <= high,
        "finishedAt low {low:?} high {high:?}"
    );
    let k = std::fs::read_to_string(dir.join("kubelet.log")).unwrap_or_default();
    let pos = |pod: &str| {
        k.lines()
            .position(|l| l.contains("shutdown manager killing pod") && l.contains(pod))
            .unwrap_or_else(|| panic!("{pod} not killed by the shutdown manager\n{}", log()))
    };
    assert!(
        pos("\"sk-shut-low\"") < pos("\"sk-shut-high\""),
        "the low group is killed first\n{}",
        log()
    );
    // The lock is released: the box powers off without waiting for logind's delay to run out.
    assert!(bx.wait_gone(WAIT), "the box did not power off\n{}", log());
    assert!(
        k.contains("shutdown manager released the inhibitor lock"),
        "{}",
        log()
    );
    let ev = cp.kubectl(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        &format!("involvedObject.kind=Node,involvedObject.name={name},reason=NodeShutdown"),
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        ev.stdout
            .contains("Shutdown manager detected shutdown event"),
        "NodeShutdown event: {} {}",
        ev.stdout,
        ev.stderr
    );
    cp.kubectl(&[
        "delete",
        "pod",
        "sk-shut-low",
        "sk-shut-high",
        "--force",
        "--grace-period=0",
    ]);
    cp.kubectl(&["delete", "priorityclass", "sk-shut-high"]);
    cp.kubectl(&["delete", "node", &name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_node_shutdown_through_logind() {
    with_skiff_cri_node("skbr48", "10.244.48.0/24", "skshut", scenario).await;
}
