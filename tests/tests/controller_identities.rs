//! Each controller talks to the API server as its own service account (upstream's
//! kube-controller-manager with `--use-service-account-credentials`): the audit log of a whole
//! cluster shows the ReplicaSet made by `kube-system:deployment-controller`, its pods by
//! `kube-system:replicaset-controller`, a Job's pod by `kube-system:job-controller` and so on, and
//! no controller request is refused, while the controller manager's own identity may not write
//! workloads at all.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"#;

const WORKLOADS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: sk-ids}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sk-web, namespace: sk-ids}
spec:
  replicas: 2
  selector: {matchLabels: {app: sk-web}}
  template:
    metadata: {labels: {app: sk-web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: main, image: IMG, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Service
metadata: {name: sk-web, namespace: sk-ids}
spec:
  selector: {app: sk-web}
  ports: [{port: 80}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: sk-job, namespace: sk-ids}
spec:
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers: [{name: main, image: IMG, command: ["true"]}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: sk-ds, namespace: sk-ids}
spec:
  selector: {matchLabels: {app: sk-ds}}
  template:
    metadata: {labels: {app: sk-ds}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: main, image: IMG, command: ["sleep", "3600"]}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: sk-pdb, namespace: sk-ids}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: sk-web}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: sk-claim, namespace: sk-ids}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Mi}}
"#;

fn audit_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn controllers_act_as_their_own_service_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.path().join("audit.log");
    let cp = ControlPlane::start_cluster_with(&[
        "--audit-policy-file",
        policy.to_str().unwrap(),
        "--audit-log-path",
        log.to_str().unwrap(),
    ]);
    let img = cp.agent.as_ref().unwrap().busybox.clone();
    let o = cp.with_stdin(&["apply", "-f", "-"], &WORKLOADS.replace("IMG", &img));
    assert!(o.ok, "{}", o.stderr);

    // Each controller's service account exists, as upstream's controller manager makes them.
    for sa in [
        "deployment-controller",
        "replicaset-controller",
        "job-controller",
        "daemon-set-controller",
        "endpointslice-controller",
        "namespace-controller",
    ] {
        cp.wait_for(
            &format!("service account {sa}"),
            Duration::from_secs(60),
            || {
                cp.kubectl(&["get", "serviceaccount", sa, "-n", "kube-system"])
                    .ok
            },
        );
    }

    cp.wait_for("the workloads to run", Duration::from_secs(120), || {
        let ready = cp.ok(&[
            "get",
            "deploy",
            "sk-web",
            "-n",
            "sk-ids",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]);
        let job = cp.ok(&[
            "get",
            "job",
            "sk-job",
            "-n",
            "sk-ids",
            "-o",
            "jsonpath={.status.succeeded}",
        ]);
        let ds = cp.ok(&[
            "get",
            "ds",
            "sk-ds",
            "-n",
            "sk-ids",
            "-o",
            "jsonpath={.status.numberReady}",
        ]);
        let slices = cp.ok(&[
            "get",
            "endpointslices",
            "-n",
            "sk-ids",
            "-l",
            "kubernetes.io/service-name=sk-web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ]);
        ready == "2" && job == "1" && ds == "1" && slices.split_whitespace().count() == 2
    });

    // The controller manager's own identity reads everything but writes no workload.
    let can = |verb: &str, what: &str, user: &str| {
        cp.kubectl(&["auth", "can-i", verb, what, "-n", "sk-ids", "--as", user])
            .stdout
            .trim()
            .to_string()
    };
    assert_eq!(can("list", "pods", "system:kube-controller-manager"), "yes");
    assert_eq!(
        can("create", "pods", "system:kube-controller-manager"),
        "no"
    );
    assert_eq!(
        can("create", "replicasets", "system:kube-controller-manager"),
        "no"
    );
    assert_eq!(
        can(
            "create",
            "replicasets",
            "system:serviceaccount:kube-system:deployment-controller"
        ),
        "yes"
    );
    assert_eq!(
        can(
            "create",
            "pods",
            "system:serviceaccount:kube-system:deployment-controller"
        ),
        "no"
    );

    // A controller whose service account is deleted gets 401s, asks for a new token (which
    // makes the account again) and goes on: the Deployment still scales.
    let uid = |cp: &ControlPlane| {
        cp.kubectl(&[
            "get",
            "serviceaccount",
            "replicaset-controller",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .stdout
    };
    let before = uid(&cp);
    cp.ok(&[
        "delete",
        "serviceaccount",
        "replicaset-controller",
        "-n",
        "kube-system",
    ]);
    cp.ok(&["scale", "deploy", "sk-web", "-n", "sk-ids", "--replicas=3"]);
    cp.wait_for(
        "3 replicas after the account was deleted",
        Duration::from_secs(90),
        || {
            cp.ok(&[
                "get",
                "rs",
                "-n",
                "sk-ids",
                "-l",
                "app=sk-web",
                "-o",
                "jsonpath={.items[0].status.replicas}",
            ]) == "3"
        },
    );
    let after = uid(&cp);
    assert!(
        !after.is_empty() && after != before,
        "the account was made again: {before} -> {after}"
    );

    cp.ok(&["delete", "namespace", "sk-ids", "--wait=false"]);
    cp.wait_for("namespace sk-ids to go", Duration::from_secs(120), || {
        !cp.kubectl(&["get", "namespace", "sk-ids"]).ok
    });

    let events = audit_events(&log);
    let by = |verb: &str, resource: &str, sub: Option<&str>| -> Vec<String> {
        events
            .iter()
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    && e["verb"] == verb
                    && e["objectRef"]["resource"] == resource
                    && e["objectRef"]["subresource"].as_str() == sub
                    && (e["objectRef"]["namespace"] == "sk-ids"
                        || e["objectRef"]["name"] == "sk-ids")
            })
            .filter_map(|e| e["user"]["username"].as_str().map(str::to_string))
            .collect()
    };
    let sa = |n: &str| format!("system:serviceaccount:kube-system:{n}");
    let expect = [
        ("create", "replicasets", None, "deployment-controller"),
        ("create", "pods", None, "replicaset-controller"),
        ("create", "endpointslices", None, "endpointslice-controller"),
        (
            "update",
            "poddisruptionbudgets",
            Some("status"),
            "disruption-controller",
        ),
        (
            "update",
            "namespaces",
            Some("finalize"),
            "namespace-controller",
        ),
    ];
    for (verb, resource, sub, who) in expect {
        let users = by(verb, resource, sub);
        assert!(
            users.contains(&sa(who)),
            "{verb} {resource}/{sub:?} by {who}: audit shows {users:?}"
        );
    }
    // Pods of the Job and the DaemonSet, by their own controllers.
    let pod_creators = by("create", "pods", None);
    for who in ["job-controller", "daemon-set-controller"] {
        assert!(pod_creators.contains(&sa(who)), "{who}: {pod_creators:?}");
    }
    // No request of a controller was refused, anywhere in the cluster.
    let refused: Vec<String> = events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete" && e["responseStatus"]["code"] == 403)
        // Creates in the namespace being deleted are refused to everyone (NamespaceLifecycle).
        .filter(|e| {
            !e["responseStatus"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("because it is being terminated")
        })
        .filter(|e| {
            e["user"]["username"].as_str().is_some_and(|u| {
                u.starts_with("system:serviceaccount:kube-system:")
                    || u == "system:kube-controller-manager"
            })
        })
        .map(|e| {
            format!(
                "{} {} {}/{:?}",
                e["user"]["username"],
                e["verb"],
                e["objectRef"]["resource"],
                e["objectRef"]["subresource"]
            )
        })
        .collect();
    assert!(
        refused.is_empty(),
        "controller requests refused: {refused:#?}"
    );
}
