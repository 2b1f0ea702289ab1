//! The controllers through kubectl on a whole single-node cluster (real kubelet and CRI server):
//! Deployments heal, scale, roll out (maxUnavailable observed), roll back, pause, resume and
//! restart; Recreate; cascading deletion in the three propagation modes; convergence after a
//! `kill -9` of `skiff server` mid-rollout and mid-scale-up; node lifecycle on a fake node
//! (control plane alone). Needs root, docker-registry and busybox-static; builds on
//! `cargo build --workspace --bins`.

use std::time::Duration;

use skiff_tests::control_plane::ControlPlane;

const LONG: Duration = Duration::from_secs(120);

fn jp(c: &ControlPlane, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &p]);
    c.ok(&args)
}

/// Names of the pods selected by `sel` that are not terminating (one consistent list).
fn live_pods(c: &ControlPlane, sel: &str) -> Vec<String> {
    c.ok(&[
        "get",
        "pods",
        "-l",
        sel,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ])
    .lines()
    .filter_map(|l| {
        let (name, deleting) = l.split_once(' ').unwrap_or((l, ""));
        (!name.is_empty() && deleting.trim().is_empty()).then(|| name.to_string())
    })
    .collect()
}

/// Ready pods selected by `sel` (Ready condition True), terminating ones included.
fn ready_pods(c: &ControlPlane, sel: &str) -> usize {
    c.ok(&[
        "get",
        "pods",
        "-l",
        sel,
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ])
    .lines()
    .filter(|l| *l == "True")
    .count()
}

fn wait_rolled_out(c: &ControlPlane, name: &str, replicas: usize) {
    c.wait_for(
        &format!("deployment {name} to have {replicas} ready, updated replicas"),
        LONG,
        || {
            let d = format!("deploy/{name}");
            let st = jp(
                c,
                &[&d],
                "{.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.status.replicas}/{.metadata.generation}/{.status.observedGeneration}",
            );
            let f: Vec<&str> = st.split('/').collect();
            let n = replicas.to_string();
            let want = if replicas == 0 { "" } else { n.as_str() };
            f[0] == want && f[1] == want && f[2] == want && f[3] == want && f[4] == f[5]
        },
    );
}

fn rs_names(c: &ControlPlane, sel: &str) -> Vec<String> {
    c.ok(&["get", "rs", "-l", sel, "-o", "name"])
        .lines()
        .map(|l| l.trim_start_matches("replicaset.apps/").to_string())
        .collect()
}

/// Pushes the busybox image under a second tag (a different image reference to roll to).
fn second_tag(c: &ControlPlane) -> String {
    let busybox = &c.agent.as_ref().expect("a whole cluster").busybox;
    let registry = busybox.split('/').next().expect("registry").to_string();
    let image = skiff_tests::build_busybox_image().expect("busybox image");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(skiff_tests::push(&registry, "sk-busybox:v2", &image))
        .expect("push sk-busybox:v2");
    format!("{registry}/sk-busybox:v2")
}

#[test]
fn deployment_heals_scales_rolls_out_and_back() {
    let c = ControlPlane::start_cluster();
    let image = c.agent.as_ref().unwrap().busybox.clone();
    let v2 = second_tag(&c);
    c.ok(&[
        "create",
        "deployment",
        "sk-web",
        "--image",
        &image,
        "--replicas=3",
        "--",
        "sleep",
        "3600",
    ]);
    wait_rolled_out(&c, "sk-web", 3);
    let sel = "app=sk-web";
    let rs = rs_names(&c, sel);
    assert_eq!(rs.len(), 1, "one ReplicaSet: {rs:?}");
    let hash = jp(&c, &["rs", &rs[0]], "{.metadata.labels.pod-template-hash}");
    assert_eq!(rs[0], format!("sk-web-{hash}"));
    assert_eq!(
        jp(&c, &["rs", &rs[0]], "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].controller}/{.metadata.ownerReferences[0].blockOwnerDeletion}"),
        "Deployment/true/true"
    );
    assert_eq!(
        jp(
            &c,
            &["deploy/sk-web"],
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "1"
    );
    assert_eq!(
        jp(&c, &["deploy/sk-web"], "{.status.conditions[?(@.type==\"Available\")].reason}/{.status.conditions[?(@.type==\"Progressing\")].reason}"),
        "MinimumReplicasAvailable/NewReplicaSetAvailable"
    );
    assert!(c
        .ok(&["rollout", "status", "deploy/sk-web", "--timeout=10s"])
        .contains("successfully rolled out"));

    // Self-healing: a deleted pod is replaced, and there are exactly 3 again.
    let before = live_pods(&c, sel);
    assert_eq!(before.len(), 3, "{before:?}");
    c.ok(&["delete", "pod", &before[0], "--wait=false"]);
    c.wait_for("a replacement pod", LONG, || {
        let now = live_pods(&c, sel);
        now.len() == 3 && !now.contains(&before[0])
    });
    wait_rolled_out(&c, "sk-web", 3);
    assert_eq!(live_pods(&c, sel).len(), 3);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={}", rs[0]),
        "-o",
        "jsonpath={range .items[*]}{.reason}:{.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("SuccessfulCreate:Created pod: sk-web-"),
        "{events}"
    );

    // Scale up and down.
    c.ok(&["scale", "deploy/sk-web", "--replicas=5"]);
    wait_rolled_out(&c, "sk-web", 5);
    c.ok(&["scale", "deploy/sk-web", "--replicas=2"]);
    wait_rolled_out(&c, "sk-web", 2);
    c.wait_for("2 pods left", LONG, || live_pods(&c, sel).len() == 2);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={}", rs[0]),
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    assert!(events.contains("SuccessfulDelete"), "{events}");

    // A rolling update with maxUnavailable=1, maxSurge=1 on 4 replicas: never fewer than 3 ready.
    c.ok(&["scale", "deploy/sk-web", "--replicas=4"]);
    wait_rolled_out(&c, "sk-web", 4);
    c.ok(&[
        "patch",
        "deploy/sk-web",
        "--type=merge",
        "-p",
        r#"{"spec":{"strategy":{"rollingUpdate":{"maxUnavailable":1,"maxSurge":1}}}}"#,
    ]);
    c.ok(&[
        "annotate",
        "deploy/sk-web",
        "kubernetes.io/change-cause=sk to v2",
    ]);
    c.ok(&["set", "image", "deploy/sk-web", &format!("sk-busybox={v2}")]);
    let mut min_ready = usize::MAX;
    let mut max_pods = 0;
    c.wait_for("the rollout to v2", LONG, || {
        min_ready = min_ready.min(ready_pods(&c, sel));
        max_pods = max_pods.max(live_pods(&c, sel).len());
        jp(
            &c,
            &["deploy/sk-web"],
            "{.status.updatedReplicas}/{.status.availableReplicas}/{.status.replicas}",
        ) == "4/4/4"
    });
    assert!(
        min_ready >= 3,
        "maxUnavailable=1 of 4 replicas, but only {min_ready} pods were ready at one point"
    );
    assert!(
        max_pods <= 5,
        "maxSurge=1 of 4 replicas, but {max_pods} pods existed at one point"
    );
    assert!(c
        .ok(&["rollout", "status", "deploy/sk-web", "--timeout=60s"])
        .contains("successfully rolled out"));
    assert_eq!(rs_names(&c, sel).len(), 2);
    let hist = c.ok(&["rollout", "history", "deploy/sk-web"]);
    assert!(
        hist.contains("1 ") && hist.contains("2         sk to v2"),
        "{hist}"
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-web,involvedObject.kind=Deployment",
        "-o",
        "jsonpath={range .items[*]}{.reason}:{.message}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("ScalingReplicaSet:Scaled up replica set sk-web-"),
        "{events}"
    );
    assert!(
        events.contains("ScalingReplicaSet:Scaled down replica set sk-web-"),
        "{events}"
    );

    // Undo restores the first template (its ReplicaSet becomes revision 3).
    c.ok(&["rollout", "undo", "deploy/sk-web"]);
    wait_rolled_out(&c, "sk-web", 4);
    c.wait_for("the undo to finish", LONG, || {
        jp(
            &c,
            &["deploy/sk-web"],
            "{.spec.template.spec.containers[0].image}",
        ) == image
            && c.kubectl(&["rollout", "status", "deploy/sk-web", "--timeout=1s"])
                .ok
    });
    assert_eq!(
        jp(
            &c,
            &["rs", &rs[0]],
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "3"
    );
    assert_eq!(
        jp(
            &c,
            &["deploy/sk-web"],
            "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}"
        ),
        "3"
    );
    let images = c.ok(&[
        "get",
        "pods",
        "-l",
        sel,
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    c.wait_for("only first-revision pods", LONG, || {
        live_pods(&c, sel).len() == 4
            && c.ok(&[
                "get",
                "pods",
                "-l",
                &format!("{sel},pod-template-hash={hash}"),
                "-o",
                "name",
            ])
            .lines()
            .count()
                == 4
    });
    assert!(!images.is_empty());

    // Pause: template changes do not roll; resume rolls them.
    c.ok(&["rollout", "pause", "deploy/sk-web"]);
    c.wait_for("the DeploymentPaused condition", LONG, || {
        jp(
            &c,
            &["deploy/sk-web"],
            "{.status.conditions[?(@.type==\"Progressing\")].reason}",
        ) == "DeploymentPaused"
    });
    c.ok(&["set", "env", "deploy/sk-web", "SK_PAUSED=1"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        rs_names(&c, sel).len(),
        2,
        "a paused deployment made a new ReplicaSet"
    );
    c.ok(&["rollout", "resume", "deploy/sk-web"]);
    c.wait_for("the paused change to roll out", LONG, || {
        rs_names(&c, sel).len() == 3
    });
    wait_rolled_out(&c, "sk-web", 4);

    // Restart: a new ReplicaSet whose template carries kubectl's restartedAt annotation.
    c.ok(&["rollout", "restart", "deploy/sk-web"]);
    c.wait_for("the restart's ReplicaSet", LONG, || {
        rs_names(&c, sel).len() == 4
    });
    wait_rolled_out(&c, "sk-web", 4);
    assert!(c
        .ok(&["rollout", "status", "deploy/sk-web", "--timeout=60s"])
        .contains("successfully rolled out"));

    // revisionHistoryLimit: 1 keeps one old ReplicaSet beside the new one.
    c.ok(&[
        "patch",
        "deploy/sk-web",
        "--type=merge",
        "-p",
        r#"{"spec":{"revisionHistoryLimit":1}}"#,
    ]);
    c.wait_for("old ReplicaSets beyond the limit to go", LONG, || {
        rs_names(&c, sel).len() == 2
    });
    c.ok(&["delete", "deploy/sk-web"]);
    c.wait_for("the pods to go with the deployment", LONG, || {
        live_pods(&c, sel).is_empty() && rs_names(&c, sel).is_empty()
    });
}

fn deployment_yaml(name: &str, image: &str, replicas: u32, strategy: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  strategy:
    type: {strategy}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sleep", "3600"]
"#
    )
}

/// `hash name deleting?` of every pod selected by `sel`.
fn pods_by_hash(c: &ControlPlane, sel: &str) -> Vec<(String, String, bool)> {
    c.ok(&[
        "get",
        "pods",
        "-l",
        sel,
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.pod-template-hash} {.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ])
    .lines()
    .filter_map(|l| {
        let mut f = l.split(' ');
        let hash = f.next()?.to_string();
        let name = f.next()?.to_string();
        let deleting = f.next().is_some_and(|d| !d.is_empty());
        Some((hash, name, deleting))
    })
    .collect()
}

#[test]
fn recreate_and_cascading_deletion() {
    let c = ControlPlane::start_cluster();
    let image = c.agent.as_ref().unwrap().busybox.clone();

    // Recreate: every old pod is gone before any new one is created.
    let out = c.with_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("sk-re", &image, 2, "Recreate"),
    );
    assert!(out.ok, "{}", out.stderr);
    wait_rolled_out(&c, "sk-re", 2);
    let old_hash = pods_by_hash(&c, "app=sk-re")[0].0.clone();
    c.ok(&["set", "env", "deploy/sk-re", "SK_V=2"]);
    let mut overlap = None;
    c.wait_for("the Recreate rollout", LONG, || {
        let pods = pods_by_hash(&c, "app=sk-re");
        let old = pods.iter().filter(|p| p.0 == old_hash).count();
        let new = pods.iter().filter(|p| p.0 != old_hash).count();
        if old > 0 && new > 0 {
            overlap.get_or_insert(pods.clone());
        }
        old == 0
            && new == 2
            && jp(
                &c,
                &["deploy/sk-re"],
                "{.status.updatedReplicas}/{.status.availableReplicas}",
            ) == "2/2"
    });
    assert!(
        overlap.is_none(),
        "old and new pods existed together under Recreate: {overlap:?}"
    );

    // Background (kubectl's default): the deployment goes at once, its ReplicaSets and pods after.
    c.ok(&["delete", "deploy/sk-re", "--cascade=background"]);
    c.wait_for("sk-re's ReplicaSets and pods to be collected", LONG, || {
        rs_names(&c, "app=sk-re").is_empty() && pods_by_hash(&c, "app=sk-re").is_empty()
    });

    // Foreground: the deployment stays (with the foregroundDeletion finalizer) until its
    // ReplicaSets and their pods are gone.
    let out = c.with_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("sk-fg", &image, 2, "RollingUpdate"),
    );
    assert!(out.ok, "{}", out.stderr);
    wait_rolled_out(&c, "sk-fg", 2);
    c.ok(&[
        "delete",
        "deploy/sk-fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let fin = jp(
        &c,
        &["deploy/sk-fg", "--ignore-not-found"],
        "{.metadata.finalizers}",
    );
    assert!(
        fin.is_empty() || fin.contains("foregroundDeletion"),
        "{fin}"
    );
    c.wait_for("sk-fg to be deleted", LONG, || {
        c.ok(&["get", "deploy", "sk-fg", "--ignore-not-found", "-o", "name"])
            .is_empty()
    });
    assert!(
        rs_names(&c, "app=sk-fg").is_empty(),
        "a ReplicaSet outlived its foreground-deleted owner"
    );
    assert!(
        pods_by_hash(&c, "app=sk-fg").is_empty(),
        "a pod outlived its foreground-deleted owner"
    );

    // Orphan: ReplicaSet and pods stay, without an owner reference to the deployment.
    let out = c.with_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("sk-or", &image, 2, "RollingUpdate"),
    );
    assert!(out.ok, "{}", out.stderr);
    wait_rolled_out(&c, "sk-or", 2);
    let pods_before: Vec<String> = pods_by_hash(&c, "app=sk-or")
        .into_iter()
        .map(|p| p.1)
        .collect();
    c.ok(&["delete", "deploy/sk-or", "--cascade=orphan"]);
    c.wait_for("sk-or to be deleted", LONG, || {
        c.ok(&["get", "deploy", "sk-or", "--ignore-not-found", "-o", "name"])
            .is_empty()
    });
    let rs = rs_names(&c, "app=sk-or");
    assert_eq!(rs.len(), 1);
    assert_eq!(
        jp(&c, &["rs", &rs[0]], "{.metadata.ownerReferences[*].name}"),
        ""
    );
    std::thread::sleep(Duration::from_secs(2));
    let pods_after: Vec<String> = pods_by_hash(&c, "app=sk-or")
        .into_iter()
        .filter(|p| !p.2)
        .map(|p| p.1)
        .collect();
    assert_eq!(pods_before, pods_after, "orphaned pods changed");
    // A new deployment with the same selector adopts the orphaned ReplicaSet (same template).
    let out = c.with_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("sk-or", &image, 2, "RollingUpdate"),
    );
    assert!(out.ok, "{}", out.stderr);
    c.wait_for("the orphan to be adopted", LONG, || {
        jp(
            &c,
            &["rs", &rs[0]],
            "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
        ) == "Deployment/sk-or"
    });
    wait_rolled_out(&c, "sk-or", 2);
    assert_eq!(
        rs_names(&c, "app=sk-or"),
        rs,
        "adoption made a new ReplicaSet"
    );
    let pods_adopted: Vec<String> = pods_by_hash(&c, "app=sk-or")
        .into_iter()
        .map(|p| p.1)
        .collect();
    assert_eq!(pods_before, pods_adopted, "adoption replaced pods");

    // Dangling owners: an object whose only owner does not exist is collected; one with a
    // live and a missing owner loses the dangling reference.
    let owner_uid = jp(&c, &["deploy/sk-or"], "{.metadata.uid}");
    let cms = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-dangling
  ownerReferences:
  - {{apiVersion: apps/v1, kind: Deployment, name: sk-ghost, uid: 00000000-0000-0000-0000-00000000dead}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-half
  ownerReferences:
  - {{apiVersion: apps/v1, kind: Deployment, name: sk-or, uid: {owner_uid}}}
  - {{apiVersion: apps/v1, kind: Deployment, name: sk-ghost, uid: 00000000-0000-0000-0000-00000000dead}}
"#
    );
    let out = c.with_stdin(&["apply", "-f", "-"], &cms);
    assert!(out.ok, "{}", out.stderr);
    c.wait_for(
        "the garbage collector to act on dangling owners",
        LONG,
        || {
            c.ok(&[
                "get",
                "cm",
                "sk-dangling",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .is_empty()
                && jp(
                    &c,
                    &["cm", "sk-half"],
                    "{.metadata.ownerReferences[*].name}",
                ) == "sk-or"
        },
    );
    c.ok(&["delete", "deploy/sk-or"]);
    c.wait_for("sk-or's pods to be collected", LONG, || {
        pods_by_hash(&c, "app=sk-or").is_empty()
    });
}

#[test]
fn converges_after_kill_9_mid_scale_up_and_mid_rollout() {
    let mut c = ControlPlane::start_cluster();
    let image = c.agent.as_ref().unwrap().busybox.clone();
    let out = c.with_stdin(
        &["apply", "-f", "-"],
        &deployment_yaml("sk-big", &image, 1, "RollingUpdate"),
    );
    assert!(out.ok, "{}", out.stderr);
    wait_rolled_out(&c, "sk-big", 1);
    // Killed right after the scale is accepted: the controllers are creating pods (or about
    // to), the kubelet starting them.
    c.ok(&["scale", "deploy/sk-big", "--replicas=50"]);
    c.kill_and_restart();
    wait_rolled_out(&c, "sk-big", 50);
    let pods = pods_by_hash(&c, "app=sk-big");
    assert_eq!(
        pods.len(),
        50,
        "not exactly 50 pods after the restart: {pods:?}"
    );
    assert_eq!(rs_names(&c, "app=sk-big").len(), 1);

    // Mid-rollout on 10 replicas.
    c.ok(&["scale", "deploy/sk-big", "--replicas=10"]);
    wait_rolled_out(&c, "sk-big", 10);
    c.wait_for("10 pods", LONG, || {
        pods_by_hash(&c, "app=sk-big").len() == 10
    });
    c.ok(&["set", "env", "deploy/sk-big", "SK_V=2"]);
    c.wait_for("the rollout to be under way", LONG, || {
        rs_names(&c, "app=sk-big").len() == 2
    });
    c.kill_and_restart();
    wait_rolled_out(&c, "sk-big", 10);
    c.wait_for("the old pods to go", LONG, || {
        pods_by_hash(&c, "app=sk-big").len() == 10
    });
    let new_hash = jp(
        &c,
        &["deploy/sk-big"],
        "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    );
    assert_eq!(new_hash, "2");
    let rss = rs_names(&c, "app=sk-big");
    assert_eq!(rss.len(), 2, "{rss:?}");
    for rs in &rss {
        assert_eq!(
            jp(&c, &["rs", rs], "{.metadata.ownerReferences[0].name}"),
            "sk-big",
            "ReplicaSet {rs} is orphaned"
        );
    }
    let hashes: std::collections::BTreeSet<String> = pods_by_hash(&c, "app=sk-big")
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(hashes.len(), 1, "pods of two revisions remain: {hashes:?}");
    c.ok(&["delete", "deploy/sk-big"]);
    c.wait_for("sk-big's pods to be collected", LONG, || {
        pods_by_hash(&c, "app=sk-big").is_empty()
    });
}

#[test]
fn node_lifecycle_on_a_fake_node() {
    let c = ControlPlane::start();
    let now = c.ok(&["get", "--raw", "/version"]); // the API answers
    assert!(now.contains("gitVersion"));
    let node = r#"apiVersion: v1
kind: Node
metadata:
  name: sk-fake
  labels: {kubernetes.io/hostname: sk-fake}
"#;
    let out = c.with_stdin(&["apply", "-f", "-"], node);
    assert!(out.ok, "{}", out.stderr);
    let stamp = |secs_ago: i64| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            - secs_ago;
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .expect("date");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let heartbeat = |c: &ControlPlane| {
        let t = stamp(0);
        let lease = format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: sk-fake, namespace: kube-node-lease}}\nspec: {{holderIdentity: sk-fake, leaseDurationSeconds: 40, renewTime: \"{}.000000Z\"}}\n",
            t.trim_end_matches('Z')
        );
        let out = c.with_stdin(&["apply", "-f", "-"], &lease);
        assert!(out.ok, "{}", out.stderr);
        let patch = format!(
            r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet is posting ready status","lastHeartbeatTime":"{t}","lastTransitionTime":"{t}"}}]}}}}"#
        );
        c.ok(&[
            "patch",
            "node",
            "sk-fake",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    };
    heartbeat(&c);
    // Two pods bound to the node: one tolerating unreachable for 2 s, one with the default 300 s.
    let pods = r#"apiVersion: v1
kind: Pod
metadata: {name: sk-short}
spec:
  nodeName: sk-fake
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: sk-default}
spec:
  nodeName: sk-fake
  containers: [{name: c, image: busybox}]
"#;
    let out = c.with_stdin(&["apply", "-f", "-"], pods);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        jp(
            &c,
            &["pod", "sk-default"],
            "{.spec.tolerations[?(@.key==\"node.kubernetes.io/unreachable\")].tolerationSeconds}"
        ),
        "300"
    );
    // The heartbeat stops: after 40 s the node is Unknown and tainted.
    c.wait_for(
        "Ready=Unknown on the silent node",
        Duration::from_secs(90),
        || {
            jp(
                &c,
                &["node", "sk-fake"],
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "Unknown"
        },
    );
    assert_eq!(
        jp(&c, &["node", "sk-fake"], "{.status.conditions[?(@.type==\"Ready\")].reason}|{.status.conditions[?(@.type==\"Ready\")].message}"),
        "NodeStatusUnknown|Kubelet stopped posting node status."
    );
    assert_eq!(
        jp(
            &c,
            &["node", "sk-fake"],
            "{.status.conditions[?(@.type==\"MemoryPressure\")].reason}"
        ),
        "NodeStatusNeverUpdated"
    );
    c.wait_for("the unreachable taints", Duration::from_secs(30), || {
        let t = jp(
            &c,
            &["node", "sk-fake"],
            "{range .spec.taints[*]}{.key}:{.effect} {end}",
        );
        t.contains("node.kubernetes.io/unreachable:NoExecute")
            && t.contains("node.kubernetes.io/unreachable:NoSchedule")
    });
    // The 2 s toleration ran out: that pod is evicted; the 300 s one stays.
    c.wait_for("sk-short to be evicted", Duration::from_secs(30), || {
        let o = c.ok(&[
            "get",
            "pod",
            "sk-short",
            "--ignore-not-found",
            "-o",
            "jsonpath={.metadata.name}/{.metadata.deletionTimestamp}",
        ]);
        o.is_empty() || !o.ends_with('/')
    });
    assert_eq!(
        jp(&c, &["pod", "sk-default"], "{.metadata.deletionTimestamp}"),
        ""
    );
    // Heartbeats again: Ready, taints gone.
    heartbeat(&c);
    c.wait_for("the taints to be removed", Duration::from_secs(30), || {
        !jp(&c, &["node", "sk-fake"], "{.spec.taints}").contains("node.kubernetes.io/unreachable")
    });
    // The node is deleted: pod GC removes its pods.
    c.ok(&["delete", "node", "sk-fake"]);
    c.wait_for(
        "pod GC to remove the deleted node's pods",
        Duration::from_secs(90),
        || {
            c.ok(&[
                "get",
                "pods",
                "sk-default",
                "sk-short",
                "--ignore-not-found",
                "-o",
                "name",
            ])
            .is_empty()
        },
    );
    // `skiff server`'s own controllers do not elect (one server per embedded store, as k3s
    // runs kube-controller-manager on its single-server datastore): no Lease renewed every 2 s.
    let lease = c.ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert!(lease.trim().is_empty(), "leader Lease written: {lease}");
}

#[test]
fn replication_controller_and_replicaset_adopt_release_and_replace() {
    // Control plane alone: pods are created and counted, never started.
    let c = ControlPlane::start();
    let bare = r#"apiVersion: v1
kind: Pod
metadata: {name: sk-bare, labels: {app: sk-rc}}
spec: {containers: [{name: c, image: busybox}]}
"#;
    let out = c.with_stdin(&["apply", "-f", "-"], bare);
    assert!(out.ok, "{}", out.stderr);
    let rc = r#"apiVersion: v1
kind: ReplicationController
metadata: {name: sk-rc}
spec:
  replicas: 3
  selector: {app: sk-rc}
  template:
    metadata: {labels: {app: sk-rc}}
    spec: {containers: [{name: c, image: busybox}]}
"#;
    let out = c.with_stdin(&["apply", "-f", "-"], rc);
    assert!(out.ok, "{}", out.stderr);
    // The matching bare pod is adopted: two more are created, not three.
    c.wait_for("3 pods of sk-rc", LONG, || {
        live_pods(&c, "app=sk-rc").len() == 3
            && jp(&c, &["rc", "sk-rc"], "{.status.replicas}") == "3"
    });
    assert_eq!(
        jp(&c, &["pod", "sk-bare"], "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}"),
        "ReplicationController/sk-rc/true"
    );
    assert_eq!(
        jp(
            &c,
            &["rc", "sk-rc"],
            "{.status.observedGeneration}/{.status.fullyLabeledReplicas}"
        ),
        "1/3"
    );
    // A pod relabelled out of the selector is released and replaced.
    c.ok(&["label", "pod", "sk-bare", "app=sk-other", "--overwrite"]);
    c.wait_for("sk-bare to be released and replaced", LONG, || {
        jp(
            &c,
            &["pod", "sk-bare"],
            "{.metadata.ownerReferences[*].name}",
        )
        .is_empty()
            && live_pods(&c, "app=sk-rc").len() == 3
    });
    c.ok(&["scale", "rc", "sk-rc", "--replicas=1"]);
    c.wait_for("sk-rc at 1", LONG, || live_pods(&c, "app=sk-rc").len() == 1);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-rc",
        "-o",
        "jsonpath={range .items[*]}{.reason} {.source.component}{\"\\n\"}{end}",
    ]);
    assert!(
        events.contains("SuccessfulCreate replication-controller"),
        "{events}"
    );
    assert!(
        events.contains("SuccessfulDelete replication-controller"),
        "{events}"
    );

    // pod-deletion-cost: on scale-down the cheapest pod goes first.
    let rs = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: sk-rs}
spec:
  replicas: 3
  selector: {matchLabels: {app: sk-rs}}
  template:
    metadata: {labels: {app: sk-rs}}
    spec: {containers: [{name: c, image: busybox}]}
"#;
    let out = c.with_stdin(&["apply", "-f", "-"], rs);
    assert!(out.ok, "{}", out.stderr);
    c.wait_for("3 pods of sk-rs", LONG, || {
        live_pods(&c, "app=sk-rs").len() == 3
    });
    let pods = live_pods(&c, "app=sk-rs");
    for (p, cost) in pods.iter().zip(["10", "-5", "20"]) {
        c.ok(&[
            "annotate",
            "pod",
            p,
            &format!("controller.kubernetes.io/pod-deletion-cost={cost}"),
        ]);
    }
    c.ok(&["scale", "rs", "sk-rs", "--replicas=2"]);
    c.wait_for("sk-rs at 2", LONG, || live_pods(&c, "app=sk-rs").len() == 2);
    let left = live_pods(&c, "app=sk-rs");
    assert!(
        !left.contains(&pods[1]),
        "the pod with the lowest deletion cost should have gone: {left:?}"
    );

    // progressDeadlineSeconds: pods that never start (no node here) time the rollout out.
    let d = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: sk-stuck}
spec:
  replicas: 1
  progressDeadlineSeconds: 3
  selector: {matchLabels: {app: sk-stuck}}
  template:
    metadata: {labels: {app: sk-stuck}}
    spec: {containers: [{name: c, image: busybox}]}
"#;
    let out = c.with_stdin(&["apply", "-f", "-"], d);
    assert!(out.ok, "{}", out.stderr);
    c.wait_for("ProgressDeadlineExceeded", LONG, || {
        jp(
            &c,
            &["deploy/sk-stuck"],
            "{.status.conditions[?(@.type==\"Progressing\")].reason}",
        ) == "ProgressDeadlineExceeded"
    });
    assert!(jp(
        &c,
        &["deploy/sk-stuck"],
        "{.status.conditions[?(@.type==\"Progressing\")].message}"
    )
    .ends_with("has timed out progressing."),);
    let err = c.fails(&["rollout", "status", "deploy/sk-stuck", "--timeout=20s"]);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}
