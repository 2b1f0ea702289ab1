//! Liveness, readiness and startup probes through a whole `skiff server`, as a user sees them
//! with kubectl: the Ready and ContainersReady conditions and `containerStatuses[].ready` /
//! `started` following the probes, a liveness failure restarting the container with upstream's
//! events, a probe against a closed port reported as upstream does, and CrashLoopBackOff. Needs
//! root, docker-registry, busybox-static and kubectl 1.32; builds on
//! `cargo build --workspace --bins`.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn apply(cp: &ControlPlane, manifest: &str) {
    let o = cp.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply: {}\n{manifest}", o.stderr);
}

fn get(cp: &ControlPlane, pod: &str, path: &str) -> String {
    cp.kubectl(&["get", "pod", pod, "-o", &format!("jsonpath={path}")])
        .stdout
}

fn condition(cp: &ControlPlane, pod: &str, t: &str) -> String {
    get(
        cp,
        pod,
        &format!("{{.status.conditions[?(@.type==\"{t}\")].status}}"),
    )
}

fn events(cp: &ControlPlane, pod: &str) -> String {
    cp.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
    ])
}

#[test]
fn readiness_and_startup_probes_drive_ready() {
    let cp = ControlPlane::start_cluster();
    let image = cp.agent.as_ref().expect("a whole cluster").busybox.clone();
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-ready
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && exec httpd -f -p 8080 -h /www"]
    ports:
    - name: http
      containerPort: 8080
    readinessProbe:
      httpGet:
        path: /ready
        port: http
        httpHeaders:
        - name: X-Probe
          value: sk
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-startup
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    startupProbe:
      exec:
        command: ["cat", "/tmp/started"]
      periodSeconds: 1
      failureThreshold: 600
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-closed
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    readinessProbe:
      tcpSocket:
        port: 9999
      periodSeconds: 1
"#
        ),
    );
    for p in ["sk-ready", "sk-startup", "sk-closed"] {
        cp.wait_for(&format!("{p} running"), WAIT, || {
            get(&cp, p, "{.status.phase}") == "Running"
        });
    }

    // Readiness: the file is missing (404), so the running container is not ready.
    cp.wait_for("sk-ready to report a failed readiness probe", WAIT, || {
        events(&cp, "sk-ready").contains(
            "Warning Unhealthy Readiness probe failed: HTTP probe failed with statuscode: 404",
        )
    });
    assert_eq!(condition(&cp, "sk-ready", "Ready"), "False");
    assert_eq!(condition(&cp, "sk-ready", "ContainersReady"), "False");
    assert_eq!(
        get(&cp, "sk-ready", "{.status.containerStatuses[0].ready}"),
        "false"
    );
    assert_eq!(
        get(
            &cp,
            "sk-ready",
            "{.status.conditions[?(@.type==\"Ready\")].message}"
        ),
        "containers with unready status: [web]"
    );
    cp.ok(&["exec", "sk-ready", "--", "touch", "/www/ready"]);
    cp.wait_for("sk-ready Ready", WAIT, || {
        condition(&cp, "sk-ready", "Ready") == "True"
    });
    assert_eq!(condition(&cp, "sk-ready", "ContainersReady"), "True");
    assert_eq!(
        get(&cp, "sk-ready", "{.status.containerStatuses[0].ready}"),
        "true"
    );
    // And back: readiness failing again makes it unready without a restart.
    cp.ok(&["exec", "sk-ready", "--", "rm", "/www/ready"]);
    cp.wait_for("sk-ready unready again", WAIT, || {
        condition(&cp, "sk-ready", "Ready") == "False"
    });
    assert_eq!(
        get(
            &cp,
            "sk-ready",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );

    // Startup: not started nor ready until the startup probe succeeds.
    assert_eq!(
        get(&cp, "sk-startup", "{.status.containerStatuses[0].started}"),
        "false"
    );
    assert_eq!(condition(&cp, "sk-startup", "Ready"), "False");
    cp.ok(&["exec", "sk-startup", "--", "touch", "/tmp/started"]);
    cp.wait_for("sk-startup Ready", WAIT, || {
        condition(&cp, "sk-startup", "Ready") == "True"
    });
    assert_eq!(
        get(&cp, "sk-startup", "{.status.containerStatuses[0].started}"),
        "true"
    );

    // A probe against a closed port: upstream's message, and never ready.
    let ip = get(&cp, "sk-closed", "{.status.podIP}");
    cp.wait_for("the closed-port probe event", WAIT, || {
        events(&cp, "sk-closed").contains(&format!(
            "Warning Unhealthy Readiness probe failed: dial tcp {ip}:9999: connect: connection refused"
        ))
    });
    assert_eq!(condition(&cp, "sk-closed", "Ready"), "False");
    cp.ok(&[
        "delete",
        "pod",
        "sk-ready",
        "sk-startup",
        "sk-closed",
        "--wait=true",
    ]);
}

#[test]
fn liveness_failure_restarts_and_crash_loop_backs_off() {
    let cp = ControlPlane::start_cluster();
    let image = cp.agent.as_ref().expect("a whole cluster").busybox.clone();
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-live
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "touch /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-crash
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "exit 1"]
"#
        ),
    );
    cp.wait_for("sk-live ready", WAIT, || {
        condition(&cp, "sk-live", "Ready") == "True"
    });
    assert_eq!(
        get(
            &cp,
            "sk-live",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    cp.ok(&["exec", "sk-live", "--", "rm", "/tmp/healthy"]);
    cp.wait_for("sk-live restarted by its liveness probe", WAIT, || {
        get(
            &cp,
            "sk-live",
            "{.status.containerStatuses[0].restartCount}",
        ) == "1"
    });
    let ev = events(&cp, "sk-live");
    assert!(
        ev.contains("Warning Unhealthy Liveness probe failed: cat: can't open '/tmp/healthy': No such file or directory"),
        "{ev}"
    );
    assert!(
        ev.contains("Normal Killing Container main failed liveness probe, will be restarted"),
        "{ev}"
    );
    // The restarted container is healthy again (its command recreated the file).
    cp.wait_for("sk-live running again", WAIT, || {
        condition(&cp, "sk-live", "Ready") == "True"
    });
    assert_eq!(
        get(
            &cp,
            "sk-live",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "137"
    );

    // A container that keeps failing: CrashLoopBackOff with upstream's message.
    let uid = get(&cp, "sk-crash", "{.metadata.uid}");
    cp.wait_for("sk-crash in CrashLoopBackOff", WAIT, || {
        get(
            &cp,
            "sk-crash",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CrashLoopBackOff"
    });
    let msg = get(
        &cp,
        "sk-crash",
        "{.status.containerStatuses[0].state.waiting.message}",
    );
    assert_eq!(
        msg,
        format!("back-off 10s restarting failed container=main pod=sk-crash_default({uid})")
    );
    assert_eq!(
        get(
            &cp,
            "sk-crash",
            "{.status.containerStatuses[0].lastState.terminated.reason}"
        ),
        "Error"
    );
    // Its BackOff events are one Event with a count, as upstream's recorder writes them.
    let backoffs = || {
        cp.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-crash,reason=BackOff",
            "-o",
            "jsonpath={range .items[*]}{.count}|{.message}{\"\\n\"}{end}",
        ])
    };
    cp.wait_for("a BackOff event counted twice", WAIT, || {
        backoffs().lines().any(|l| {
            l.split('|')
                .next()
                .unwrap_or("")
                .parse::<u32>()
                .unwrap_or(0)
                >= 2
        })
    });
    let lines = backoffs();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(
        lines.contains(&format!(
            "|Back-off restarting failed container main in pod sk-crash_default({uid})"
        )),
        "{lines}"
    );
    cp.ok(&["delete", "pod", "sk-live", "sk-crash", "--wait=true"]);
}
