//! Static pods in `skiff server --pod-manifest-path DIR`: a manifest dropped in the folder runs
//! without the API, with a mirror pod in the API (annotations, owner reference to the Node);
//! `kubectl logs`/`exec` reach it through the mirror; a deleted mirror pod comes back without
//! the containers restarting; an edit restarts the pod, a removal stops it and deletes the mirror.
//! NodeRestriction lets the node's identity create only mirror pods bound to itself. Needs root,
//! docker-registry, busybox-static and kubectl; builds on
//! `cargo build --bin skiff --bin skiff-monitor --bin skiff-runtime --bin skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

fn manifest(image: &str, word: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sk-static\n  labels:\n    app: sk-static\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo {word}; while true; do sleep 1; done\"]\n"
    )
}

#[test]
fn static_pods_run_from_the_folder_with_mirror_pods() {
    let dir = tempfile::Builder::new()
        .prefix("sk-manifests")
        .tempdir()
        .expect("manifest dir");
    let cp = ControlPlane::start_cluster_with(&[
        "--pod-manifest-path",
        dir.path().to_str().expect("a UTF-8 temp path"),
    ]);
    let agent = cp.agent.as_ref().expect("agent");
    let node = agent.node.clone();
    let image = agent.busybox.clone();
    let mirror = format!("sk-static-{node}");
    let file = dir.path().join("sk-static.yaml");
    std::fs::write(&file, manifest(&image, "first-version")).expect("write manifest");

    let get = |path: &str| {
        cp.kubectl(&["get", "pod", &mirror, "-o", &format!("jsonpath={path}")])
            .stdout
    };
    cp.wait_for("the mirror pod to run", Duration::from_secs(90), || {
        get("{.status.phase}") == "Running"
    });
    let ann = |k: &str| {
        get(&format!(
            "{{.metadata.annotations.{}}}",
            k.replace('.', "\\.")
        ))
    };
    let hash = ann("kubernetes.io/config.hash");
    assert_eq!(hash.len(), 32, "config.hash {hash:?}");
    assert_eq!(ann("kubernetes.io/config.mirror"), hash);
    assert_eq!(ann("kubernetes.io/config.source"), "file");
    assert_eq!(
        get("{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}"),
        format!("Node/{node}/true")
    );
    assert_eq!(get("{.spec.nodeName}"), node);
    let mirror_uid = get("{.metadata.uid}");
    assert_ne!(mirror_uid, hash, "the mirror pod has its own uid");

    // logs and exec reach the static pod through its mirror's name.
    cp.wait_for("the static pod's log", Duration::from_secs(60), || {
        cp.kubectl(&["logs", &mirror])
            .stdout
            .contains("first-version")
    });
    let out = cp.ok(&["exec", &mirror, "--", "echo", "sk-static-exec"]);
    assert_eq!(out.trim(), "sk-static-exec");

    // Deleting the mirror pod brings it back; the containers do not restart.
    let container = get("{.status.containerStatuses[0].containerID}");
    assert!(!container.is_empty());
    // (No --wait: the kubelet finishes the deletion and recreates the mirror under the same
    // name at once, and kubectl's wait then depends on which of the two its list sees.)
    cp.ok(&["delete", "pod", &mirror, "--wait=false"]);
    cp.wait_for(
        "the mirror pod to come back",
        Duration::from_secs(60),
        || {
            let uid = get("{.metadata.uid}");
            !uid.is_empty() && uid != mirror_uid && get("{.status.phase}") == "Running"
        },
    );
    assert_eq!(
        get("{.status.containerStatuses[0].containerID}"),
        container,
        "the static pod kept running"
    );
    assert_eq!(get("{.status.containerStatuses[0].restartCount}"), "0");

    // The mirror annotation cannot be taken away through the API.
    let err = cp.fails(&["annotate", "pod", &mirror, "kubernetes.io/config.mirror-"]);
    assert!(err.contains("field is immutable"), "{err}");

    // NodeRestriction: the node's identity creates only mirror pods bound to itself.
    let node_kubeconfig = cp.dir().join("data/agent/kubelet.kubeconfig");
    let kc = node_kubeconfig.to_str().expect("path");
    let pod = |name: &str, node_name: &str, mirror: bool| {
        let ann = if mirror {
            "  annotations:\n    kubernetes.io/config.mirror: x\n"
        } else {
            ""
        };
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{ann}spec:\n  nodeName: {node_name}\n  containers:\n  - name: c\n    image: {image}\n")
    };
    let o = cp.with_stdin(
        &["--kubeconfig", kc, "create", "-f", "-"],
        &pod("sk-not-mirror", &node, false),
    );
    assert!(!o.ok, "a plain pod from the node");
    assert!(
        o.stderr.contains("can only create mirror pods"),
        "{}",
        o.stderr
    );
    let o = cp.with_stdin(
        &["--kubeconfig", kc, "create", "-f", "-"],
        &pod("sk-other-node", "sk-elsewhere", true),
    );
    assert!(!o.ok, "a mirror pod for another node");
    assert!(
        o.stderr
            .contains("can only create pods with spec.nodeName set to itself"),
        "{}",
        o.stderr
    );

    // An edit is a new static pod: new hash, new container, new output.
    std::fs::write(&file, manifest(&image, "second-version")).expect("edit manifest");
    cp.wait_for("the edited static pod", Duration::from_secs(90), || {
        let h = ann("kubernetes.io/config.hash");
        !h.is_empty() && h != hash && get("{.status.phase}") == "Running"
    });
    cp.wait_for("the edited pod's log", Duration::from_secs(60), || {
        cp.kubectl(&["logs", &mirror])
            .stdout
            .contains("second-version")
    });
    assert_ne!(get("{.status.containerStatuses[0].containerID}"), container);

    // Removing the file stops the pod and deletes the mirror.
    std::fs::remove_file(&file).expect("remove manifest");
    cp.wait_for("the mirror pod to go", Duration::from_secs(90), || {
        let o = cp.kubectl(&["get", "pod", &mirror]);
        !o.ok && o.stderr.contains("NotFound")
    });
}
