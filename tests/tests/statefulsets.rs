//! StatefulSets end to end, with their PVCs bound by the PV binder and the local-path
//! provisioner: kubectl against a whole single-node cluster (the real kubelet and CRI server).
//! Needs root, docker-registry and busybox-static; builds on `cargo build --workspace --bins`.

use serde_json::Value;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(150);

fn get_json(c: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl -o json")
}

fn apply(c: &ControlPlane, manifest: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply failed: {}\n{manifest}", o.stderr);
}

fn ready_time(pod: &Value) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
}

fn rollout_status(c: &ControlPlane, what: &str) {
    let o = c.kubectl(&["rollout", "status", what, "--timeout=150s"]);
    assert!(
        o.ok,
        "rollout status {what}: {}\n{}",
        o.stderr,
        c.log_tail()
    );
}

fn env_of(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap_or(""),
                e["value"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn statefulset_ordered_start_claims_rollout_and_scale_down() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let node = c.agent.as_ref().unwrap().node.clone();

    // The default StorageClass exists, like k3s's local-path (made by the PV controller once
    // it holds the controller lease).
    c.wait_for(
        "the local-path StorageClass",
        Duration::from_secs(60),
        || c.kubectl(&["get", "storageclass", "local-path"]).ok,
    );
    let sc = get_json(&c, &["storageclass", "local-path"]);
    assert_eq!(
        sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");

    apply(
        &c,
        &format!(
            r#"apiVersion: v1
kind: Service
metadata:
  name: sk-web
spec:
  clusterIP: None
  selector:
    app: sk-web
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: sk-web
spec:
  serviceName: sk-web
  replicas: 3
  selector:
    matchLabels:
      app: sk-web
  template:
    metadata:
      labels:
        app: sk-web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {img}
        command: ["sh", "-c", "hostname; sleep 3600"]
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 10Mi
"#
        ),
    );
    rollout_status(&c, "sts/sk-web");
    let s = get_json(&c, &["sts", "sk-web"]);
    assert_eq!(s["status"]["readyReplicas"], 3);
    assert_eq!(s["status"]["replicas"], 3);
    assert_eq!(
        s["status"]["observedGeneration"],
        s["metadata"]["generation"]
    );
    let rev1 = s["status"]["updateRevision"].as_str().unwrap().to_string();
    assert_eq!(s["status"]["currentRevision"], rev1.as_str());

    // Stable names, labels, hostnames; each pod created only once the one before was Ready.
    let mut prev_ready: Option<String> = None;
    for i in 0..3 {
        let name = format!("sk-web-{i}");
        let p = get_json(&c, &["pod", &name]);
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            name.as_str()
        );
        assert_eq!(
            p["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            i.to_string()
        );
        assert_eq!(
            p["metadata"]["labels"]["controller-revision-hash"],
            rev1.as_str()
        );
        assert_eq!(p["spec"]["hostname"], name.as_str());
        assert_eq!(p["spec"]["subdomain"], "sk-web");
        assert_eq!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            format!("data-sk-web-{i}")
        );
        if let Some(prev) = &prev_ready {
            let created = p["metadata"]["creationTimestamp"].as_str().unwrap();
            assert!(
                created >= prev.as_str(),
                "{name} created at {created}, before its predecessor was Ready at {prev}"
            );
        }
        prev_ready = ready_time(&p);
        c.wait_for(&format!("{name} to print its hostname"), WAIT, || {
            c.kubectl(&["logs", &name]).stdout.trim() == name
        });
    }

    // Claims bound to provisioned hostPath volumes with the node's affinity.
    for i in 0..3 {
        let claim = format!("data-sk-web-{i}");
        c.wait_for(&format!("{claim} to be Bound"), WAIT, || {
            c.ok(&["get", "pvc", &claim, "-o", "jsonpath={.status.phase}"]) == "Bound"
        });
        let pvc = get_json(&c, &["pvc", &claim]);
        assert_eq!(pvc["spec"]["storageClassName"], "local-path");
        assert_eq!(
            pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
            node.as_str()
        );
        assert_eq!(pvc["metadata"]["labels"]["app"], "sk-web");
        let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
        assert_eq!(
            pv_name,
            format!("pvc-{}", pvc["metadata"]["uid"].as_str().unwrap())
        );
        let pv = get_json(&c, &["pv", &pv_name]);
        assert_eq!(pv["status"]["phase"], "Bound");
        assert_eq!(pv["spec"]["claimRef"]["name"], claim.as_str());
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
        let path = pv["spec"]["hostPath"]["path"].as_str().unwrap().to_string();
        assert!(
            path.starts_with(c.dir().join("data/storage").to_str().unwrap()),
            "{path}"
        );
        assert!(std::path::Path::new(&path).is_dir(), "{path} missing");
        assert_eq!(
            pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
                ["values"][0],
            node.as_str()
        );
    }

    // The claim's volume is mounted: what a pod writes is on the PV's host path, and the
    // pod that replaces it (the rollout below) finds it again.
    c.ok(&[
        "exec",
        "sk-web-0",
        "--",
        "sh",
        "-c",
        "echo kept > /data/sk-file",
    ]);
    let pv0 = get_json(&c, &["pvc", "data-sk-web-0"])["spec"]["volumeName"]
        .as_str()
        .unwrap()
        .to_string();
    let host0 = get_json(&c, &["pv", &pv0])["spec"]["hostPath"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&host0).join("sk-file")).unwrap(),
        "kept\n"
    );
    let uid0 = get_json(&c, &["pod", "sk-web-0"])["metadata"]["uid"].clone();

    // A new template rolls out from the highest ordinal down; history and undo.
    c.ok(&["set", "env", "sts/sk-web", "SK_V=2"]);
    rollout_status(&c, "sts/sk-web");
    assert_ne!(get_json(&c, &["pod", "sk-web-0"])["metadata"]["uid"], uid0);
    assert_eq!(
        c.ok(&["exec", "sk-web-0", "--", "cat", "/data/sk-file"]),
        "kept\n"
    );
    let s = get_json(&c, &["sts", "sk-web"]);
    let rev2 = s["status"]["updateRevision"].as_str().unwrap().to_string();
    assert_ne!(rev1, rev2);
    assert_eq!(s["status"]["currentRevision"], rev2.as_str());
    assert_eq!(s["status"]["updatedReplicas"], 3);
    for i in 0..3 {
        let p = get_json(&c, &["pod", &format!("sk-web-{i}")]);
        assert_eq!(env_of(&p), vec!["SK_V=2".to_string()]);
    }
    let hist = c.ok(&["rollout", "history", "sts/sk-web"]);
    assert!(hist.contains('1') && hist.contains('2'), "{hist}");
    // The revision's data is the template kubectl shows.
    let r2 = c.ok(&["rollout", "history", "sts/sk-web", "--revision=2"]);
    assert!(r2.contains("SK_V:") && r2.contains('2'), "{r2}");
    c.ok(&["rollout", "undo", "sts/sk-web"]);
    rollout_status(&c, "sts/sk-web");
    let s = get_json(&c, &["sts", "sk-web"]);
    assert_eq!(s["status"]["updateRevision"], rev1.as_str());
    for i in 0..3 {
        let p = get_json(&c, &["pod", &format!("sk-web-{i}")]);
        assert!(
            env_of(&p).is_empty(),
            "sk-web-{i} still has {:?}",
            env_of(&p)
        );
    }
    let crs = get_json(&c, &["controllerrevisions", "-l", "app=sk-web"]);
    let revs: Vec<i64> = crs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revs.len(), 2, "{revs:?}");
    assert!(
        revs.contains(&3),
        "the undone-to revision is renumbered: {revs:?}"
    );

    // Scale down removes the highest ordinals; claims are retained (whenScaled: Retain).
    c.ok(&["scale", "sts/sk-web", "--replicas=1"]);
    c.wait_for("sk-web to scale down to 1", WAIT, || {
        let live = |n: &str| {
            let o = c.kubectl(&[
                "get",
                "pod",
                n,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ]);
            o.ok && o.stdout.trim().is_empty()
        };
        let (one, two) = (live("sk-web-1"), live("sk-web-2"));
        // Highest ordinal first: sk-web-1 is never deleted while sk-web-2 is still running.
        assert!(one || !two, "sk-web-1 deleted before sk-web-2");
        !c.kubectl(&["get", "pod", "sk-web-1"]).ok && !c.kubectl(&["get", "pod", "sk-web-2"]).ok
    });
    assert!(c.kubectl(&["get", "pod", "sk-web-0"]).ok);
    assert!(c.kubectl(&["get", "pvc", "data-sk-web-2"]).ok);
}

#[test]
fn statefulset_parallel_partition_and_claim_retention() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    apply(
        &c,
        &format!(
            r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: sk-par
spec:
  serviceName: sk-par
  replicas: 3
  podManagementPolicy: Parallel
  ordinals:
    start: 5
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Delete
    whenScaled: Delete
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      partition: 1
  selector:
    matchLabels:
      app: sk-par
  template:
    metadata:
      labels:
        app: sk-par
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {img}
        command: ["sleep", "3600"]
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 1Mi
"#
        ),
    );
    c.wait_for("sk-par's 3 pods Ready", WAIT, || {
        c.ok(&[
            "get",
            "sts",
            "sk-par",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]) == "3"
    });
    for ord in 5..8 {
        assert!(c.kubectl(&["get", "pod", &format!("sk-par-{ord}")]).ok);
        let claim = get_json(&c, &["pvc", &format!("www-sk-par-{ord}")]);
        assert_eq!(
            claim["metadata"]["ownerReferences"][0]["kind"],
            "StatefulSet"
        );
    }
    // Partition 1 counts from ordinals.start, as upstream's: ordinals 6 and 7 update, 5 stays.
    let rev1 = c.ok(&[
        "get",
        "sts",
        "sk-par",
        "-o",
        "jsonpath={.status.updateRevision}",
    ]);
    c.ok(&["set", "env", "sts/sk-par", "SK_V=2"]);
    c.wait_for("ordinals 6 and 7 updated", WAIT, || {
        let s = get_json(&c, &["sts", "sk-par"]);
        s["status"]["updatedReplicas"] == 2 && s["status"]["readyReplicas"] == 3
    });
    let rev2 = c.ok(&[
        "get",
        "sts",
        "sk-par",
        "-o",
        "jsonpath={.status.updateRevision}",
    ]);
    assert_ne!(rev1, rev2);
    let hash = |n: &str| {
        c.ok(&[
            "get",
            "pod",
            n,
            "-o",
            "jsonpath={.metadata.labels.controller-revision-hash}",
        ])
    };
    assert_eq!(hash("sk-par-5"), rev1);
    assert_eq!(hash("sk-par-6"), rev2);
    assert_eq!(hash("sk-par-7"), rev2);
    assert_eq!(
        c.ok(&[
            "get",
            "sts",
            "sk-par",
            "-o",
            "jsonpath={.status.currentRevision}"
        ]),
        rev1
    );
    // OnDelete: a new template replaces only the pods the user deletes.
    c.ok(&[
        "patch",
        "sts/sk-par",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"type":"OnDelete","rollingUpdate":null}}}"#,
    ]);
    c.ok(&["set", "env", "sts/sk-par", "SK_V=3"]);
    c.wait_for("the set to observe the OnDelete template", WAIT, || {
        let s = get_json(&c, &["sts", "sk-par"]);
        s["status"]["observedGeneration"] == s["metadata"]["generation"]
    });
    let rev3 = c.ok(&[
        "get",
        "sts",
        "sk-par",
        "-o",
        "jsonpath={.status.updateRevision}",
    ]);
    assert_ne!(rev3, rev2);
    assert_eq!(hash("sk-par-7"), rev2);
    c.ok(&["delete", "pod", "sk-par-5", "--wait=false"]);
    c.wait_for("sk-par-5 recreated at the new revision", WAIT, || {
        let o = c.kubectl(&[
            "get",
            "pod",
            "sk-par-5",
            "-o",
            "jsonpath={.metadata.labels.controller-revision-hash}",
        ]);
        o.ok && o.stdout == rev3
    });
    assert_eq!(hash("sk-par-6"), rev2);

    // whenScaled: Delete: the claim of a scaled-away ordinal goes with its pod.
    c.ok(&["scale", "sts/sk-par", "--replicas=2"]);
    c.wait_for("www-sk-par-7 deleted with its pod", WAIT, || {
        !c.kubectl(&["get", "pvc", "www-sk-par-7"]).ok && !c.kubectl(&["get", "pod", "sk-par-7"]).ok
    });
    assert!(c.kubectl(&["get", "pvc", "www-sk-par-6"]).ok);
    // whenDeleted: Delete: the claims go with the set, and their volumes (reclaim policy
    // Delete) with them, directories included.
    c.wait_for("www-sk-par-6 bound", WAIT, || {
        c.ok(&[
            "get",
            "pvc",
            "www-sk-par-6",
            "-o",
            "jsonpath={.status.phase}",
        ]) == "Bound"
    });
    let pv = c.ok(&[
        "get",
        "pvc",
        "www-sk-par-6",
        "-o",
        "jsonpath={.spec.volumeName}",
    ]);
    let path = c.ok(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"]);
    assert!(std::path::Path::new(&path).is_dir(), "{path}");
    c.ok(&["delete", "sts", "sk-par"]);
    c.wait_for("the set's claims deleted", WAIT, || {
        c.ok(&["get", "pvc", "-l", "app=sk-par", "-o", "name"])
            .trim()
            .is_empty()
    });
    c.wait_for("the released volume deleted", WAIT, || {
        !c.kubectl(&["get", "pv", &pv]).ok
    });
    assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
}

/// The PV binder on API objects alone (control plane without a node): static hostPath volumes,
/// the smallest that fits wins, a deleted claim releases its volume (reclaim Retain).
#[test]
fn static_volumes_bind_and_release() {
    let c = ControlPlane::start();
    apply(
        &c,
        r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: sk-pv-small
spec:
  storageClassName: sk-manual
  capacity:
    storage: 5Mi
  accessModes: ["ReadWriteOnce"]
  hostPath:
    path: /tmp/sk-pv-small
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: sk-pv-big
spec:
  storageClassName: sk-manual
  capacity:
    storage: 1Gi
  accessModes: ["ReadWriteOnce"]
  persistentVolumeReclaimPolicy: Retain
  hostPath:
    path: /tmp/sk-pv-big
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: sk-pv-mid
spec:
  storageClassName: sk-manual
  capacity:
    storage: 100Mi
  accessModes: ["ReadOnlyMany"]
  hostPath:
    path: /tmp/sk-pv-mid
"#,
    );
    c.wait_for("the volumes Available", WAIT, || {
        ["sk-pv-small", "sk-pv-big", "sk-pv-mid"]
            .iter()
            .all(|pv| c.ok(&["get", "pv", pv, "-o", "jsonpath={.status.phase}"]) == "Available")
    });
    apply(
        &c,
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: sk-claim
spec:
  storageClassName: sk-manual
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 10Mi
"#,
    );
    c.wait_for("sk-claim Bound", WAIT, || {
        c.ok(&["get", "pvc", "sk-claim", "-o", "jsonpath={.status.phase}"]) == "Bound"
    });
    let claim = get_json(&c, &["pvc", "sk-claim"]);
    // Too small and wrong access mode lose; the 1Gi volume is the smallest that fits.
    assert_eq!(claim["spec"]["volumeName"], "sk-pv-big");
    assert_eq!(claim["status"]["capacity"]["storage"], "1Gi");
    assert_eq!(
        claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    let pv = get_json(&c, &["pv", "sk-pv-big"]);
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["uid"], claim["metadata"]["uid"]);
    c.ok(&["delete", "pvc", "sk-claim"]);
    c.wait_for("sk-pv-big Released", WAIT, || {
        c.ok(&["get", "pv", "sk-pv-big", "-o", "jsonpath={.status.phase}"]) == "Released"
    });
    c.ok(&["delete", "pv", "sk-pv-small", "sk-pv-big", "sk-pv-mid"]);

    // No class: the default class is filled in, and the claim waits for its first consumer.
    apply(
        &c,
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: sk-wait
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: 1Mi
"#,
    );
    c.wait_for("the default class on sk-wait", WAIT, || {
        c.ok(&[
            "get",
            "pvc",
            "sk-wait",
            "-o",
            "jsonpath={.spec.storageClassName}",
        ]) == "local-path"
    });
    c.wait_for("the WaitForFirstConsumer event", WAIT, || {
        c.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-wait",
        ])
        .contains("waiting for first consumer to be created before binding")
    });
    assert!(c
        .ok(&["get", "pvc", "sk-wait", "-o", "jsonpath={.spec.volumeName}"])
        .is_empty());
    // A consumer bound to a node (there is no kubelet here: the pod only has to be on a node).
    apply(
        &c,
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-consumer
spec:
  nodeName: sk-node
  containers:
  - name: main
    image: sk-none
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: sk-wait
"#,
    );
    c.wait_for("sk-wait Bound", WAIT, || {
        c.ok(&["get", "pvc", "sk-wait", "-o", "jsonpath={.status.phase}"]) == "Bound"
    });
    let claim = get_json(&c, &["pvc", "sk-wait"]);
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        "sk-node"
    );
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"],
        "skiff.io/local-path"
    );
    let pv = get_json(&c, &["pv", claim["spec"]["volumeName"].as_str().unwrap()]);
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "skiff.io/local-path"
    );
    c.ok(&[
        "delete",
        "pod",
        "sk-consumer",
        "--grace-period=0",
        "--force",
    ]);
    c.ok(&["delete", "pvc", "sk-wait"]);
    c.wait_for("the provisioned volume deleted", WAIT, || {
        c.ok(&["get", "pv", "-o", "name"]).trim().is_empty()
    });
}
