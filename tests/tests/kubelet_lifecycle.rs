//! Pod lifecycle through a whole `skiff server` and kubectl: init containers in order, postStart
//! (and its failure, with upstream's event), preStop and SIGTERM within the grace period on
//! deletion, observed from a hostPath folder the test owns. Needs root, docker-registry,
//! busybox-static and kubectl 1.32; builds on `cargo build --workspace --bins`.

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

#[test]
fn init_containers_hooks_and_graceful_termination() {
    let cp = ControlPlane::start_cluster();
    let image = cp.agent.as_ref().expect("a whole cluster").busybox.clone();
    let host = cp.dir().join("sk-lifecycle");
    std::fs::create_dir_all(&host).expect("host dir");
    let host = host.to_str().unwrap().to_string();
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-life
spec:
  terminationGracePeriodSeconds: 20
  initContainers:
  - name: i1
    image: {image}
    command: ["sh", "-c", "echo i1 >> /work/order"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  - name: i2
    image: {image}
    command: ["sh", "-c", "echo i2 >> /work/order"]
    volumeMounts: [{{name: work, mountPath: /work}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "trap 'echo term >> /host/log; exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      postStart:
        exec:
          command: ["sh", "-c", "echo post-start > /work/poststart"]
      preStop:
        exec:
          command: ["sh", "-c", "echo pre-stop >> /host/log"]
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: host, mountPath: /host}}
  volumes:
  - name: work
    emptyDir: {{}}
  - name: host
    hostPath: {{path: {host}, type: Directory}}
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-side
spec:
  terminationGracePeriodSeconds: 20
  initContainers:
  - name: side
    image: {image}
    restartPolicy: Always
    command: ["sh", "-c", "echo side-up > /work/side; trap 'echo side-term >> /host/order; exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: host, mountPath: /host}}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "trap 'sleep 1; echo main-term >> /host/order; exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts:
    - {{name: work, mountPath: /work}}
    - {{name: host, mountPath: /host}}
  volumes:
  - name: work
    emptyDir: {{}}
  - name: host
    hostPath: {{path: {host}, type: Directory}}
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-deadline
spec:
  terminationGracePeriodSeconds: 1
  activeDeadlineSeconds: 3
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-badhook
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    lifecycle:
      postStart:
        exec:
          command: ["sh", "-c", "exit 7"]
"#
        ),
    );
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/sk-life",
        "--timeout=90s",
    ]);
    assert_eq!(
        cp.ok(&[
            "exec",
            "sk-life",
            "--",
            "cat",
            "/work/order",
            "/work/poststart"
        ]),
        "i1\ni2\npost-start\n"
    );
    assert_eq!(
        get(
            &cp,
            "sk-life",
            "{.status.initContainerStatuses[*].state.terminated.reason}"
        ),
        "Completed Completed"
    );
    assert_eq!(
        get(
            &cp,
            "sk-life",
            "{.status.conditions[?(@.type==\"Initialized\")].status}"
        ),
        "True"
    );

    // A sidecar: started before the app, running beside it, stopped after it.
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/sk-side",
        "--timeout=90s",
    ]);
    assert_eq!(
        cp.ok(&["exec", "sk-side", "-c", "main", "--", "cat", "/work/side"]),
        "side-up\n"
    );
    assert_eq!(
        get(
            &cp,
            "sk-side",
            "{.status.initContainerStatuses[0].started} {.status.initContainerStatuses[0].ready}"
        ),
        "true true"
    );
    assert!(!get(
        &cp,
        "sk-side",
        "{.status.initContainerStatuses[0].state.running.startedAt}"
    )
    .is_empty());
    cp.ok(&["delete", "pod", "sk-side", "--wait=true"]);
    assert_eq!(
        std::fs::read_to_string(format!("{host}/order")).unwrap_or_default(),
        "main-term\nside-term\n",
        "the app stops before its sidecar"
    );

    // A failing postStart hook: upstream's event, and the container is killed and restarted.
    let uid = get(&cp, "sk-badhook", "{.metadata.uid}");
    let want = format!(
        "Exec lifecycle hook ([sh -c exit 7]) for Container \"main\" in Pod \"sk-badhook_default({uid})\" failed - error: command 'sh -c exit 7' exited with 7: , message: \"\""
    );
    cp.wait_for("the FailedPostStartHook event", WAIT, || {
        cp.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-badhook,reason=FailedPostStartHook",
            "-o",
            "jsonpath={.items[0].message}",
        ])
        .stdout
            == want
    });
    cp.wait_for("sk-badhook restarted", WAIT, || {
        get(
            &cp,
            "sk-badhook",
            "{.status.containerStatuses[0].restartCount}",
        )
        .parse::<u32>()
        .unwrap_or(0)
            >= 1
    });

    // activeDeadlineSeconds: the pod fails with upstream's reason and message.
    cp.wait_for("sk-deadline to fail", WAIT, || {
        get(&cp, "sk-deadline", "{.status.phase}") == "Failed"
    });
    assert_eq!(
        get(&cp, "sk-deadline", "{.status.reason}: {.status.message}"),
        "DeadlineExceeded: Pod was active on the node longer than the specified deadline"
    );
    cp.ok(&["delete", "pod", "sk-deadline", "--wait=true"]);

    // Deletion: preStop runs first, then SIGTERM reaches the container, which exits cleanly
    // long before the 20 s grace period.
    cp.ok(&["delete", "pod", "sk-life", "sk-badhook", "--wait=true"]);
    let log = std::fs::read_to_string(format!("{host}/log")).unwrap_or_default();
    assert_eq!(log, "pre-stop\nterm\n");
    let _ = std::fs::remove_dir_all(&host);
}
