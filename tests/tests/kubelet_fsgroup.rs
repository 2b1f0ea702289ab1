//! fsGroup volume ownership and procMount on a real node, observed from inside containers that
//! run as a non-root user: emptyDir (disk and memory), configMap, secret, downwardAPI, projected
//! and persistentVolumeClaim volumes get group = fsGroup (setgid directories, group rw, group
//! read-only for the atomic-writer volumes); `fsGroupChangePolicy: OnRootMismatch` skips a
//! claim whose root already matches; `procMount: Unmasked` (with `hostUsers: false`) leaves
//! /proc unmasked, `Default` masks it, and the API server refuses Unmasked with host users.

use skiff_tests::control_plane::ControlPlane;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn apply(c: &ControlPlane, yaml: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], yaml);
    assert!(o.ok, "{}", o.stderr);
}

fn logs_when(c: &ControlPlane, pod: &str, marker: &str) -> String {
    let mut out = String::new();
    c.wait_for(&format!("{pod} to print {marker}"), WAIT, || {
        out = c.kubectl(&["logs", pod]).stdout;
        out.contains(marker)
    });
    out
}

/// The value printed after `key ` on its own line.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{out}"))
        .trim()
}

fn claim(c: &ControlPlane, name: &str, path: &std::path::Path) {
    apply(
        c,
        &format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}}}
spec:
  storageClassName: sk-fsg
  capacity: {{storage: 10Mi}}
  accessModes: ["ReadWriteOnce"]
  hostPath: {{path: {}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}}}
spec:
  storageClassName: sk-fsg
  volumeName: {name}
  accessModes: ["ReadWriteOnce"]
  resources: {{requests: {{storage: 10Mi}}}}
"#,
            path.display()
        ),
    );
    c.wait_for(&format!("{name} Bound"), WAIT, || {
        c.kubectl(&["get", "pvc", name, "-o", "jsonpath={.status.phase}"])
            .stdout
            == "Bound"
    });
}

#[test]
fn fs_group_owns_volumes() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let tmp = tempfile::Builder::new()
        .prefix("sk-fsg-")
        .tempdir()
        .expect("temp dir");
    // A claim with content from before the pod (root's, mode 0644), walked by the default
    // policy; and one whose root already matches, left alone by OnRootMismatch.
    let walk = tmp.path().join("walk");
    let skip = tmp.path().join("skip");
    for d in [&walk, &skip] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/old"), b"x").unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::os::unix::fs::chown(&skip, None, Some(2000)).unwrap();
    std::fs::set_permissions(&skip, std::fs::Permissions::from_mode(0o2775)).unwrap();
    claim(&c, "sk-fsg-walk", &walk);
    claim(&c, "sk-fsg-skip", &skip);
    c.ok(&["create", "configmap", "sk-fsg-cm", "--from-literal=key=cm"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "sk-fsg-sec",
        "--from-literal=key=sec",
    ]);
    let script = "for p in /ed /mem /cm /sec /dapi /proj /walk; do echo \"$p $(stat -c %g:%a $p)\"; done; \
        echo \"/sec/key $(stat -L -c %g:%a /sec/key)\"; echo \"/cm/key $(stat -L -c %g:%a /cm/key)\"; \
        echo \"/walk/sub/old $(stat -c %g:%a /walk/sub/old)\"; \
        echo \"secret $(cat /sec/key)\"; \
        touch /ed/new && echo \"/ed/new $(stat -c %g /ed/new)\"; \
        touch /walk/new && echo \"/walk/new $(stat -c %g /walk/new)\"; \
        mkdir /ed/d && echo \"/ed/d $(stat -c %g:%a /ed/d)\"; \
        id; echo END; sleep 3600";
    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-fsg}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
  containers:
  - name: main
    image: {img}
    command: ["sh", "-c", {script:?}]
    volumeMounts:
    - {{name: ed, mountPath: /ed}}
    - {{name: mem, mountPath: /mem}}
    - {{name: cm, mountPath: /cm}}
    - {{name: sec, mountPath: /sec}}
    - {{name: dapi, mountPath: /dapi}}
    - {{name: proj, mountPath: /proj}}
    - {{name: walk, mountPath: /walk}}
  volumes:
  - {{name: ed, emptyDir: {{}}}}
  - {{name: mem, emptyDir: {{medium: Memory}}}}
  - {{name: cm, configMap: {{name: sk-fsg-cm}}}}
  - {{name: sec, secret: {{secretName: sk-fsg-sec, defaultMode: 0400}}}}
  - name: dapi
    downwardAPI:
      items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]
  - name: proj
    projected:
      sources: [{{configMap: {{name: sk-fsg-cm}}}}]
  - {{name: walk, persistentVolumeClaim: {{claimName: sk-fsg-walk}}}}
"#
        ),
    );
    let out = logs_when(&c, "sk-fsg", "END");
    assert!(out.contains("uid=1000 gid=3000"), "{out}");
    // emptyDirs: mode 0777 as upstream, plus setgid and the group.
    assert_eq!(field(&out, "/ed"), "2000:2777", "{out}");
    assert_eq!(field(&out, "/mem"), "2000:2777", "{out}");
    // Atomic-writer volumes: group read (and execute on directories), setgid, never write.
    for v in ["/cm", "/sec", "/dapi", "/proj"] {
        assert_eq!(field(&out, v), "2000:2755", "{v}: {out}");
    }
    assert_eq!(field(&out, "/sec/key"), "2000:440", "{out}");
    assert_eq!(field(&out, "/cm/key"), "2000:644", "{out}");
    assert_eq!(field(&out, "secret"), "sec", "{out}");
    // The claim was walked: old content is the group's, group-writable.
    assert_eq!(field(&out, "/walk"), "2000:2775", "{out}");
    assert_eq!(field(&out, "/walk/sub/old"), "2000:664", "{out}");
    // The non-root user writes, and new files and directories inherit the group.
    assert_eq!(field(&out, "/ed/new"), "2000", "{out}");
    assert_eq!(field(&out, "/walk/new"), "2000", "{out}");
    assert!(field(&out, "/ed/d").starts_with("2000:2"), "{out}");
    // OnRootMismatch: the claim's root already has the group and bits, so nothing under it
    // is walked (the old file stays root's, 0644).
    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-fsg-skip}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsUser: 1000
    fsGroup: 2000
    fsGroupChangePolicy: OnRootMismatch
  containers:
  - name: main
    image: {img}
    command: ["sh", "-c", "echo \"/skip $(stat -c %g:%a /skip)\"; echo \"/skip/sub/old $(stat -c %g:%a /skip/sub/old)\"; echo END; sleep 3600"]
    volumeMounts: [{{name: skip, mountPath: /skip}}]
  volumes:
  - {{name: skip, persistentVolumeClaim: {{claimName: sk-fsg-skip}}}}
"#
        ),
    );
    let out2 = logs_when(&c, "sk-fsg-skip", "END");
    assert_eq!(field(&out2, "/skip"), "2000:2775", "{out2}");
    assert_eq!(field(&out2, "/skip/sub/old"), "0:644", "{out2}");
    c.ok(&["delete", "pod", "sk-fsg", "sk-fsg-skip", "--grace-period=1"]);
    c.ok(&["delete", "pvc", "sk-fsg-walk", "sk-fsg-skip"]);
    c.ok(&["delete", "pv", "sk-fsg-walk", "sk-fsg-skip"]);
    c.ok(&["delete", "configmap", "sk-fsg-cm"]);
    c.ok(&["delete", "secret", "sk-fsg-sec"]);
}

/// The mount points under /proc in `out` (lines `M <path>` printed by the pod).
fn proc_mounts(out: &str) -> Vec<&str> {
    out.lines().filter_map(|l| l.strip_prefix("M ")).collect()
}

#[test]
fn proc_mount_default_and_unmasked() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let pod = |name: &str, host_users: &str, proc_mount: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  {host_users}
  containers:
  - name: main
    image: {img}
    securityContext: {{procMount: {proc_mount}}}
    command: ["sh", "-c", "awk '$2 ~ /^\\/proc\\// {{print \"M \" $2}}' /proc/mounts; echo END; sleep 3600"]
"#
        )
    };
    // Upstream's validation: Unmasked needs the pod's own user namespace.
    let o = c.with_stdin(&["apply", "-f", "-"], &pod("sk-proc-bad", "", "Unmasked"));
    assert!(!o.ok, "Unmasked with host users was accepted");
    assert!(
        o.stderr
            .contains("spec.containers[0].securityContext.procMount")
            && o.stderr
                .contains("`hostUsers` must be false to use `Unmasked`"),
        "{}",
        o.stderr
    );
    let o = c.with_stdin(&["apply", "-f", "-"], &pod("sk-proc-bad", "", "Odd"));
    assert!(
        !o.ok && o.stderr.contains("Unsupported value: \"Odd\""),
        "{}",
        o.stderr
    );
    apply(&c, &pod("sk-proc-default", "", "Default"));
    apply(&c, &pod("sk-proc-unmasked", "hostUsers: false", "Unmasked"));
    let def = logs_when(&c, "sk-proc-default", "END");
    let masked = proc_mounts(&def);
    // Upstream's default lists: /proc/sys read-only, /proc/keys (and friends) masked.
    assert!(masked.contains(&"/proc/sys"), "{def}");
    assert!(masked.contains(&"/proc/keys"), "{def}");
    let un = logs_when(&c, "sk-proc-unmasked", "END");
    assert!(
        proc_mounts(&un).is_empty(),
        "Unmasked still has /proc mounts:\n{un}"
    );
    // The pod has its own user namespace: uid 0 inside is not the host's root.
    let map = c.ok(&[
        "exec",
        "sk-proc-unmasked",
        "--",
        "cat",
        "/proc/self/uid_map",
    ]);
    let fields: Vec<&str> = map.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"0"), "{map}");
    assert_ne!(fields.get(1), Some(&"0"), "{map}");
    assert_eq!(fields.get(2), Some(&"65536"), "{map}");
    c.ok(&[
        "delete",
        "pod",
        "sk-proc-default",
        "sk-proc-unmasked",
        "--grace-period=1",
    ]);
}
