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
//! `a_kubelet_restarted_during_shutdown_still_knows_it` (bridge `skbr57`, 10.244.57.0/24): a
//! second delay lock (`systemd-inhibit`) holds logind back after `systemctl poweroff`; the kubelet
//! writes its state file (`<root-dir>/graceful_node_shutdown_state`, upstream's) and is killed
//! with SIGKILL while its pod (which ignores SIGTERM) is being terminated. The kubelet started
//! again knows the node is shutting down: it rejects a new pod (`NodeShutdown`), the Node stays
//! NotReady, it ends the pod (`Terminated`), keeps the start time of the file and writes the end.
//!
//! Needs root, systemd, dbus, docker-registry, busybox-static and kubectl; builds on
//! `cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use skiff_tests::standalone::{kubelet_command, with_skiff_cri_node, KubeletNode, SkiffCri};
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

/// The `startTime` and `endTime` of the state file (empty when it does not exist yet).
fn state_times(path: &std::path::Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let get = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (get("startTime"), get("endTime"))
}

const GO_ZERO: &str = "0001-01-01T00:00:00Z";

fn restart_scenario(cp: &ControlPlane, cri: &SkiffCri, busybox: &str, cgroup_root: &str) {
    let dir = cp.dir().join("sk-shutrs");
    let name = format!("sk-shutrs-{}", std::process::id());
    let mut bx = SystemdBox::boot(&[cp.dir(), cri.dir()]).expect("systemd box");
    let n = KubeletNode {
        runtime: "skiff",
        cp,
        name: name.clone(),
        dir: dir.clone(),
    };
    let level = std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into());
    let extra =
        "shutdownGracePeriodByPodPriority:\n- priority: 0\n  shutdownGracePeriodSeconds: 50\n";
    let start = |unit: &str| {
        let wrapper = bx.service(unit, &[("SKIFF_LOG", &level)], &dir.join("kubelet.log"));
        let o = kubelet_command(cp, &cri.socket, &name, cgroup_root, &dir, extra, &wrapper)
            .output()
            .expect("systemd-run skiff kubelet in the box");
        assert!(o.status.success(), "systemd-run {unit}: {}", out(&o));
    };
    let ready = |field: &str| {
        cp.kubectl(&[
            "get",
            "node",
            &name,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
        ])
        .stdout
    };
    let inhibitors = || out(&bx.exec(&["systemd-inhibit", "--list", "--no-pager"]));
    start("sk-kubelet");
    n.wait_for("the node to be Ready", || ready("status") == "True");
    n.wait_for("the kubelet's inhibitor lock", || {
        inhibitors().lines().any(|l| l.starts_with("kubelet"))
    });
    // Ignores SIGTERM: its termination lasts its grace period (15 s, shorter than the group's).
    let pod = |pod: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 15
  containers:
  - name: main
    image: {busybox}
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
"#
        )
    };
    let o = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-shutrs-run"));
    assert!(o.ok, "apply: {}", o.stderr);
    n.wait_for("sk-shutrs-run Running", || {
        n.get("sk-shutrs-run", "{.status.phase}") == "Running"
    });
    // Another delay lock: logind keeps waiting (up to InhibitDelayMaxSec, 50 s) while the
    // kubelet is down.
    let o = bx.exec(&[
        "systemd-run",
        "--unit=sk-inhibit",
        "systemd-inhibit",
        "--what=shutdown",
        "--mode=delay",
        "--who=sk-test",
        "--why=holds the shutdown while the kubelet restarts",
        "sleep",
        "300",
    ]);
    assert!(o.status.success(), "systemd-inhibit: {}", out(&o));
    n.wait_for("the test's inhibitor lock", || {
        inhibitors().contains("sk-test")
    });

    let o = bx.poweroff();
    assert!(o.status.success(), "systemctl poweroff: {}", out(&o));
    n.wait_for("the node NotReady: node is shutting down", || {
        ready("message") == "node is shutting down"
    });
    let state = dir.join("kubelet/graceful_node_shutdown_state");
    n.wait_for("the shutdown state file with a start time", || {
        let (s, e) = state_times(&state);
        !s.is_empty() && s != GO_ZERO && e == GO_ZERO
    });
    let (started, _) = state_times(&state);

    // kill -9 in the middle of the shutdown, then start it again.
    let o = bx.exec(&["systemctl", "kill", "--signal=KILL", "sk-kubelet.service"]);
    assert!(o.status.success(), "systemctl kill: {}", out(&o));
    n.wait_for("the first kubelet gone", || {
        let o = bx.exec(&["systemctl", "is-active", "sk-kubelet.service"]);
        String::from_utf8_lossy(&o.stdout).trim() != "active"
    });
    let first_log = std::fs::read_to_string(dir.join("kubelet.log")).unwrap_or_default();
    std::fs::write(dir.join("kubelet-first.log"), &first_log).unwrap();
    assert!(
        first_log.contains("shutdown manager killing pod"),
        "the first kubelet started the shutdown\n{first_log}"
    );
    start("sk-kubelet2");
    n.wait_for("the restarted kubelet resuming the shutdown", || {
        std::fs::read_to_string(dir.join("kubelet.log"))
            .unwrap_or_default()
            .contains("kubelet restarted during a node shutdown")
    });
    // The restarted kubelet holds its own lock again: the test's lock can go.
    n.wait_for("the restarted kubelet's inhibitor lock", || {
        inhibitors().lines().any(|l| l.starts_with("kubelet"))
    });
    let o = bx.exec(&["systemctl", "stop", "sk-inhibit.service"]);
    assert!(o.status.success(), "systemctl stop sk-inhibit: {}", out(&o));
    // It rejects new pods, as the first one would have.
    let o = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-shutrs-late"));
    assert!(o.ok, "apply: {}", o.stderr);
    n.wait_for("sk-shutrs-late rejected", || {
        n.get("sk-shutrs-late", "{.status.phase}") == "Failed"
    });
    assert_eq!(n.get("sk-shutrs-late", "{.status.reason}"), "NodeShutdown");
    assert_eq!(
        n.get("sk-shutrs-late", "{.status.message}"),
        "Pod was rejected as the node is shutting down."
    );
    assert_eq!(ready("status"), "False", "{}", n.kubelet_log());
    assert_eq!(ready("message"), "node is shutting down");
    // It ends the pod that was being terminated, and writes the end of the same shutdown.
    n.wait_for("sk-shutrs-run Failed", || {
        n.get("sk-shutrs-run", "{.status.phase}") == "Failed"
    });
    assert_eq!(n.get("sk-shutrs-run", "{.status.reason}"), "Terminated");
    assert_eq!(n.get("sk-shutrs-run", "{.status.message}"), MESSAGE);
    n.wait_for("the end time in the state file", || {
        let (_, e) = state_times(&state);
        !e.is_empty() && e != GO_ZERO
    });
    assert_eq!(state_times(&state).0, started, "the start time is kept");
    assert!(
        bx.wait_gone(WAIT),
        "the box did not power off\n{}",
        n.kubelet_log()
    );
    assert!(
        std::fs::read_to_string(dir.join("kubelet.log"))
            .unwrap_or_default()
            .contains("shutdown manager released the inhibitor lock"),
        "{}",
        n.kubelet_log()
    );
    cp.kubectl(&[
        "delete",
        "pod",
        "sk-shutrs-run",
        "sk-shutrs-late",
        "--force",
        "--grace-period=0",
    ]);
    cp.kubectl(&["delete", "node", &name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_restarted_during_shutdown_still_knows_it() {
    with_skiff_cri_node("skbr57", "10.244.57.0/24", "skshutrs", restart_scenario).await;
}
