//! Pod and container securityContext through kubectl on a real node: users, groups (fsGroup and
//! supplementalGroups), capabilities, allowPrivilegeEscalation, seccomp, sysctls, runAsNonRoot
//! against the image's user, and shareProcessNamespace, observed from inside the containers.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn apply(c: &ControlPlane, yaml: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], yaml);
    assert!(o.ok, "{}", o.stderr);
}

fn logs_when(c: &ControlPlane, pod: &str, container: &str, marker: &str) -> String {
    let mut out = String::new();
    c.wait_for(
        &format!("{pod}/{container} to print {marker}"),
        WAIT,
        || {
            out = c.kubectl(&["logs", pod, "-c", container]).stdout;
            out.contains(marker)
        },
    );
    out
}

#[test]
fn security_contexts_reach_the_containers() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-sec}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    supplementalGroups: [4000]
    seccompProfile: {{type: RuntimeDefault}}
    sysctls:
    - {{name: net.ipv4.ping_group_range, value: "0 2147483647"}}
  containers:
  - name: main
    image: {img}
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL], add: [NET_BIND_SERVICE]}}
    command: ["sh", "-c", "id; grep -E '^(Seccomp|NoNewPrivs|CapBnd):' /proc/self/status; cat /proc/sys/net/ipv4/ping_group_range; echo END; sleep 3600"]
  - name: root
    image: {img}
    securityContext: {{runAsUser: 0, runAsGroup: 0}}
    command: ["sh", "-c", "id; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; echo END; sleep 3600"]
"#
        ),
    );
    let main = logs_when(&c, "sk-sec", "main", "END");
    assert!(main.contains("uid=1000 gid=3000"), "{main}");
    let groups = main.lines().next().unwrap_or("");
    assert!(
        groups.contains("2000") && groups.contains("4000"),
        "fsGroup and supplementalGroups missing: {groups}"
    );
    assert!(main.contains("Seccomp:\t2"), "{main}");
    assert!(main.contains("NoNewPrivs:\t1"), "{main}");
    // Only NET_BIND_SERVICE (bit 10) is left in the bounding set.
    assert!(main.contains("CapBnd:\t0000000000000400"), "{main}");
    assert!(main.contains("0\t2147483647"), "{main}");
    // The container's own settings override the pod's; no seccomp profile asked for by it
    // still gets the pod's.
    let root = logs_when(&c, "sk-sec", "root", "END");
    assert!(root.contains("uid=0(root) gid=0(root)"), "{root}");
    assert!(root.contains("Seccomp:\t2"), "{root}");
    assert!(root.contains("NoNewPrivs:\t0"), "{root}");

    // runAsNonRoot with an image that runs as root: refused before the container is made.
    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-nonroot}}
spec:
  securityContext: {{runAsNonRoot: true}}
  containers:
  - {{name: main, image: {img}, command: ["sleep", "3600"]}}
"#
        ),
    );
    let uid = c.ok(&["get", "pod", "sk-nonroot", "-o", "jsonpath={.metadata.uid}"]);
    c.wait_for("CreateContainerConfigError", WAIT, || {
        c.ok(&[
            "get",
            "pod",
            "sk-nonroot",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ]) == "CreateContainerConfigError"
    });
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "sk-nonroot",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.message}",
        ]),
        format!("container has runAsNonRoot and image will run as root (pod: \"sk-nonroot_default({uid})\", container: main)")
    );

    // shareProcessNamespace: one PID namespace for the pod, the pause process as PID 1.
    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-shared}}
spec:
  terminationGracePeriodSeconds: 1
  shareProcessNamespace: true
  containers:
  - {{name: a, image: {img}, command: ["sleep", "3601"]}}
  - {{name: b, image: {img}, command: ["sh", "-c", "sleep 2; ps -o pid,args; echo END; sleep 3600"]}}
"#
        ),
    );
    let ps = logs_when(&c, "sk-shared", "b", "END");
    assert!(
        ps.contains("sleep 3601"),
        "the other container's process is not visible:\n{ps}"
    );
    let pid1 = ps
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or("");
    assert!(!pid1.contains("sleep"), "PID 1 is not the sandbox's: {ps}");
    c.ok(&[
        "delete",
        "pod",
        "sk-sec",
        "sk-nonroot",
        "sk-shared",
        "--wait=false",
    ]);
}
