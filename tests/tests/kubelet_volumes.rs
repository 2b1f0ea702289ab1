//! configMap, secret, downwardAPI and projected volumes (with a service-account token), subPath,
//! env from ConfigMaps/Secrets/fields/resources, a ConfigMap update reaching the mounted files
//! through the `..data` swap, and the upstream errors for a missing ConfigMap (FailedMount) and a
//! missing key (CreateContainerConfigError), through a whole `skiff server` and kubectl. Needs
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

fn sh(cp: &ControlPlane, pod: &str, script: &str) -> String {
    cp.ok(&["exec", pod, "--", "sh", "-c", script])
}

#[test]
fn config_secret_downward_projected_and_env() {
    let cp = ControlPlane::start_cluster();
    let image = cp.agent.as_ref().expect("a whole cluster").busybox.clone();
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-cm
data:
  a: alpha
  b: beta
---
apiVersion: v1
kind: Secret
metadata:
  name: sk-sec
stringData:
  pw: s3cret
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: sk-sa
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-vol
  labels:
    app: sk-vol
spec:
  terminationGracePeriodSeconds: 1
  serviceAccountName: sk-sa
  automountServiceAccountToken: false
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    resources:
      limits:
        memory: 64Mi
    env:
    - name: FROM_CM
      valueFrom:
        configMapKeyRef: {{name: sk-cm, key: a}}
    - name: FROM_SECRET
      valueFrom:
        secretKeyRef: {{name: sk-sec, key: pw}}
    - name: POD_NAME
      valueFrom:
        fieldRef: {{fieldPath: metadata.name}}
    - name: MEM_MI
      valueFrom:
        resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}
    - name: GREETING
      value: "hello $(POD_NAME)"
    envFrom:
    - prefix: CM_
      configMapRef: {{name: sk-cm}}
    volumeMounts:
    - {{name: cm, mountPath: /cm}}
    - {{name: items, mountPath: /items}}
    - {{name: sec, mountPath: /sec}}
    - {{name: dapi, mountPath: /dapi}}
    - {{name: proj, mountPath: /proj}}
    - {{name: cm, mountPath: /etc/a.conf, subPath: a}}
    - {{name: mem, mountPath: /mem}}
  volumes:
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 8Mi}}
  - name: cm
    configMap: {{name: sk-cm}}
  - name: items
    configMap:
      name: sk-cm
      items:
      - {{key: b, path: nested/b.txt, mode: 0600}}
  - name: sec
    secret: {{secretName: sk-sec, defaultMode: 0400}}
  - name: dapi
    downwardAPI:
      items:
      - path: labels
        fieldRef: {{fieldPath: metadata.labels}}
      - path: name
        fieldRef: {{fieldPath: metadata.name}}
      - path: mem
        resourceFieldRef: {{containerName: main, resource: limits.memory, divisor: 1Mi}}
  - name: proj
    projected:
      sources:
      - serviceAccountToken: {{path: token, expirationSeconds: 3600}}
      - configMap:
          name: sk-cm
          items: [{{key: b, path: b}}]
      - downwardAPI:
          items:
          - path: namespace
            fieldRef: {{fieldPath: metadata.namespace}}
"#
        ),
    );
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/sk-vol",
        "--timeout=90s",
    ]);

    assert_eq!(sh(&cp, "sk-vol", "cat /cm/a /cm/b"), "alphabeta");
    assert_eq!(sh(&cp, "sk-vol", "readlink /cm/a"), "..data/a\n");
    assert_eq!(sh(&cp, "sk-vol", "cat /items/nested/b.txt"), "beta");
    assert_eq!(
        sh(&cp, "sk-vol", "stat -L -c %a /items/nested/b.txt /sec/pw"),
        "600\n400\n"
    );
    assert_eq!(sh(&cp, "sk-vol", "cat /sec/pw"), "s3cret");
    // Secrets and memory emptyDirs are tmpfs; the memory one is capped by its sizeLimit.
    assert!(
        sh(&cp, "sk-vol", "grep ' /sec ' /proc/mounts").starts_with("tmpfs /sec tmpfs ro"),
        "the secret volume is not a read-only tmpfs"
    );
    let mem = sh(&cp, "sk-vol", "grep ' /mem ' /proc/mounts");
    assert!(
        mem.starts_with("tmpfs /mem tmpfs rw") && mem.contains("size=8192k"),
        "{mem}"
    );
    assert_eq!(sh(&cp, "sk-vol", "cat /dapi/labels"), "app=\"sk-vol\"");
    assert_eq!(sh(&cp, "sk-vol", "cat /dapi/name /dapi/mem"), "sk-vol64");
    assert_eq!(
        sh(&cp, "sk-vol", "cat /proj/b /proj/namespace"),
        "betadefault"
    );
    let token = sh(&cp, "sk-vol", "cat /proj/token");
    assert_eq!(
        token.split('.').count(),
        3,
        "the projected token is a JWT: {token:?}"
    );
    assert_eq!(sh(&cp, "sk-vol", "cat /etc/a.conf"), "alpha");
    // API data volumes are read-only.
    let o = cp.kubectl(&["exec", "sk-vol", "--", "sh", "-c", "echo x > /cm/new"]);
    assert!(!o.ok, "writing into a configMap volume succeeded");

    let env = sh(&cp, "sk-vol", "env");
    for want in [
        "FROM_CM=alpha",
        "FROM_SECRET=s3cret",
        "POD_NAME=sk-vol",
        "MEM_MI=64",
        "GREETING=hello sk-vol",
        "CM_a=alpha",
        "CM_b=beta",
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "missing {want} in the env:\n{env}"
        );
    }

    // An update of the ConfigMap reaches the mounted files (not the subPath one).
    cp.ok(&[
        "patch",
        "configmap",
        "sk-cm",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"alpha2"}}"#,
    ]);
    cp.wait_for("the new ConfigMap content in the volume", WAIT, || {
        cp.kubectl(&["exec", "sk-vol", "--", "cat", "/cm/a"]).stdout == "alpha2"
    });
    assert_eq!(sh(&cp, "sk-vol", "cat /etc/a.conf"), "alpha");
    // A Secret update too, and a new label reaches the downward API file.
    cp.ok(&[
        "patch",
        "secret",
        "sk-sec",
        "--type=merge",
        "-p",
        r#"{"stringData":{"pw":"s3cret2"}}"#,
    ]);
    cp.ok(&["label", "pod", "sk-vol", "tier=sk"]);
    cp.wait_for("the new Secret content in the volume", WAIT, || {
        cp.kubectl(&["exec", "sk-vol", "--", "cat", "/sec/pw"])
            .stdout
            == "s3cret2"
    });
    cp.wait_for("the new label in the downward API volume", WAIT, || {
        cp.kubectl(&["exec", "sk-vol", "--", "cat", "/dapi/labels"])
            .stdout
            == "app=\"sk-vol\"\ntier=\"sk\""
    });
    cp.ok(&["delete", "pod", "sk-vol", "--wait=true"]);
}

#[test]
fn missing_config_map_and_key_report_upstream_reasons() {
    let cp = ControlPlane::start_cluster();
    let image = cp.agent.as_ref().expect("a whole cluster").busybox.clone();
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-cm2
data:
  a: alpha
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-nocm
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    volumeMounts:
    - {{name: cm, mountPath: /cm}}
  volumes:
  - name: cm
    configMap: {{name: sk-absent}}
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-badhost
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    volumeMounts:
    - {{name: h, mountPath: /h}}
  volumes:
  - name: h
    hostPath: {{path: /nonexistent/sk-hostpath, type: Directory}}
---
apiVersion: v1
kind: Pod
metadata:
  name: sk-nokey
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    env:
    - name: X
      valueFrom:
        configMapKeyRef: {{name: sk-cm2, key: missing}}
"#
        ),
    );
    cp.wait_for("the FailedMount event", WAIT, || {
        cp.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-nocm,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .stdout
            == "MountVolume.SetUp failed for volume \"cm\" : configmap \"sk-absent\" not found"
    });
    assert_eq!(
        get(
            &cp,
            "sk-nocm",
            "{.status.containerStatuses[0].state.waiting.reason}"
        ),
        "ContainerCreating"
    );
    cp.wait_for("the hostPath type check event", WAIT, || {
        cp.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-badhost,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .stdout
            == "MountVolume.SetUp failed for volume \"h\" : hostPath type check failed: /nonexistent/sk-hostpath is not a directory"
    });
    cp.wait_for("CreateContainerConfigError", WAIT, || {
        get(
            &cp,
            "sk-nokey",
            "{.status.containerStatuses[0].state.waiting.reason}",
        ) == "CreateContainerConfigError"
    });
    assert_eq!(
        get(
            &cp,
            "sk-nokey",
            "{.status.containerStatuses[0].state.waiting.message}"
        ),
        "couldn't find key missing in ConfigMap default/sk-cm2"
    );
    // Creating what was missing lets both pods start.
    apply(
        &cp,
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-absent
data:
  k: v
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-cm2
data:
  a: alpha
  missing: found
"#,
    );
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/sk-nocm",
        "pod/sk-nokey",
        "--timeout=90s",
    ]);
    assert_eq!(sh(&cp, "sk-nokey", "echo $X"), "found\n");
    cp.ok(&[
        "delete",
        "pod",
        "sk-nocm",
        "sk-nokey",
        "sk-badhost",
        "--wait=true",
    ]);
}
