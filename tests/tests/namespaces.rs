//! Namespace deletion through kubectl, done by the namespace controller as upstream's: the API
//! server only marks the namespace Terminating; the controller deletes everything in it
//! (built-in kinds, workloads and their pods, custom resources), reports what remains in the
//! namespace's conditions (upstream's types, reasons and messages), survives a `kill -9` of the
//! server, and finalizes the namespace when it is empty. On a whole cluster, a running pod is
//! stopped by the kubelet within its grace period and its containers leave the node.
//! The cluster case needs root, docker-registry and busybox-static; builds on
//! `cargo build --bin skiff --bin skiff-monitor --bin skiff-runtime --bin skiff-cni`.

use std::time::Duration;

use skiff_proto::cri;
use skiff_tests::control_plane::ControlPlane;

const WAIT: Duration = Duration::from_secs(90);

fn jp(c: &ControlPlane, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &p]);
    c.ok(&args)
}

/// Deletes the namespace without waiting, and checks that the API server only marked it.
fn delete_namespace(c: &ControlPlane, ns: &str) {
    c.ok(&["delete", "namespace", ns, "--wait=false"]);
}

fn wait_gone(c: &ControlPlane, ns: &str) {
    c.wait_for(&format!("namespace {ns} to go"), WAIT, || {
        let o = c.kubectl(&["get", "namespace", ns]);
        !o.ok && o.stderr.contains("NotFound")
    });
}

/// `type=status reason message` of one namespace condition.
fn condition(c: &ControlPlane, ns: &str, ty: &str) -> String {
    jp(
        c,
        &["namespace", ns],
        &format!(
            "{{.status.conditions[?(@.type==\"{ty}\")].status}} {{.status.conditions[?(@.type==\"{ty}\")].reason}} {{.status.conditions[?(@.type==\"{ty}\")].message}}"
        ),
    )
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: skwidgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: skwidgets, singular: skwidget, kind: SkWidget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

#[test]
fn deleting_a_namespace_removes_everything_in_it() {
    let c = ControlPlane::start();
    let ns = "sk-ns-content";
    c.ok(&["create", "namespace", ns]);
    c.ok(&[
        "create",
        "configmap",
        "sk-cm",
        "-n",
        ns,
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "sk-secret",
        "-n",
        ns,
        "--from-literal=a=b",
    ]);
    c.ok(&[
        "create",
        "deployment",
        "sk-deploy",
        "-n",
        ns,
        "--image=registry.invalid/sk:1",
        "--replicas=2",
    ]);
    c.ok(&[
        "create",
        "service",
        "clusterip",
        "sk-svc",
        "-n",
        ns,
        "--tcp=80:80",
    ]);
    let o = c.with_stdin(&["apply", "-f", "-"], CRD);
    assert!(o.ok, "CRD: {}", o.stderr);
    c.wait_for("the CRD to be served", WAIT, || {
        c.kubectl(&["get", "skwidgets", "-n", ns]).ok
    });
    let cr = format!(
        "apiVersion: example.com/v1\nkind: SkWidget\nmetadata: {{name: sk-widget, namespace: {ns}}}\nspec: {{size: 3}}\n"
    );
    let o = c.with_stdin(&["apply", "-f", "-"], &cr);
    assert!(o.ok, "CR: {}", o.stderr);
    // The deployment's replicaset and pods exist (Pending: no node) before the deletion.
    c.wait_for("the deployment's two pods", WAIT, || {
        jp(&c, &["pods", "-n", ns], "{.items[*].metadata.name}")
            .split_whitespace()
            .count()
            == 2
    });
    assert!(!jp(&c, &["replicasets", "-n", ns], "{.items[*].metadata.name}").is_empty());

    delete_namespace(&c, ns);
    wait_gone(&c, ns);
    for kind in [
        "configmaps",
        "secrets",
        "deployments",
        "replicasets",
        "pods",
        "services",
        "endpointslices",
        "serviceaccounts",
        "skwidgets",
    ] {
        let left = jp(
            &c,
            &[
                kind,
                "-A",
                "--field-selector",
                &format!("metadata.namespace={ns}"),
            ],
            "{.items[*].metadata.name}",
        );
        assert!(left.is_empty(), "{kind} left in {ns}: {left}");
    }
    // The same name can be used again, empty.
    c.ok(&["create", "namespace", ns]);
    assert!(jp(&c, &["configmap", "-n", ns], "{.items[*].metadata.name}") == "kube-root-ca.crt");
    c.ok(&["delete", "namespace", ns, "--wait=false"]);
    wait_gone(&c, ns);
    c.ok(&["delete", "crd", "skwidgets.example.com"]);
}

#[test]
fn finalizers_keep_a_namespace_terminating_with_upstream_conditions_across_a_restart() {
    let mut c = ControlPlane::start();
    let ns = "sk-ns-fin";
    c.ok(&["create", "namespace", ns]);
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sk-held\n  namespace: {ns}\n  finalizers: [example.com/x]\ndata: {{a: b}}\n"
    );
    let o = c.with_stdin(&["apply", "-f", "-"], &cm);
    assert!(o.ok, "configmap: {}", o.stderr);
    c.ok(&["create", "configmap", "sk-free", "-n", ns]);
    delete_namespace(&c, ns);

    c.wait_for("the finalizer to be reported", WAIT, || {
        condition(&c, ns, "NamespaceFinalizersRemaining")
            == "True SomeFinalizersRemain Some content in the namespace has finalizers remaining: example.com/x in 1 resource instances"
    });
    assert_eq!(
        condition(&c, ns, "NamespaceContentRemaining"),
        "True SomeResourcesRemain Some resources are remaining: configmaps. has 1 resource instances"
    );
    assert_eq!(
        condition(&c, ns, "NamespaceDeletionDiscoveryFailure"),
        "False ResourcesDiscovered All resources successfully discovered"
    );
    assert_eq!(
        condition(&c, ns, "NamespaceDeletionGroupVersionParsingFailure"),
        "False ParsedGroupVersions All legacy kube types successfully parsed"
    );
    assert_eq!(
        condition(&c, ns, "NamespaceDeletionContentFailure"),
        "False ContentDeleted All content successfully deleted, may be waiting on finalization"
    );
    assert_eq!(
        jp(&c, &["namespace", ns], "{.status.phase} {.spec.finalizers}"),
        "Terminating [\"kubernetes\"]"
    );
    // New content is refused while the namespace terminates.
    let err = c.fails(&["create", "configmap", "sk-late", "-n", ns]);
    assert!(err.contains("because it is being terminated"), "{err}");
    // Everything without a finalizer went; the held object waits, marked for deletion.
    assert_eq!(
        jp(&c, &["configmaps", "-n", ns], "{.items[*].metadata.name}"),
        "sk-held"
    );
    assert!(!jp(
        &c,
        &["configmap", "sk-held", "-n", ns],
        "{.metadata.deletionTimestamp}"
    )
    .is_empty());

    // A crash while the namespace terminates: the controller picks it up after the restart.
    c.kill_and_restart();
    assert_eq!(jp(&c, &["namespace", ns], "{.status.phase}"), "Terminating");
    c.ok(&[
        "patch",
        "configmap",
        "sk-held",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    wait_gone(&c, ns);
}

/// A `kubectl get -w -o json` running in the background, its output collected by a thread;
/// `stop` kills it (by its PID) and returns everything it printed.
struct Watch {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watch {
    /// Starts the watch and waits until it printed the current state (so it is open).
    fn start(c: &ControlPlane, what: &[&str]) -> Watch {
        use std::io::Read;
        let mut child = std::process::Command::new(skiff_tests::control_plane::kubectl_bin(None))
            .env("KUBECONFIG", &c.kubeconfig)
            .env("HOME", c.dir())
            .arg("get")
            .args(what)
            .args(["-w", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start kubectl get -w");
        let mut stdout = child.stdout.take().expect("kubectl stdout");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        c.wait_for(&format!("kubectl get -w {}", what.join(" ")), WAIT, || {
            !out.lock().unwrap().is_empty()
        });
        Watch { child, out, reader }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        let s = self.out.lock().unwrap().clone();
        s
    }
}

/// The CRI's containers of a namespace's pods on the node: (name, running).
fn node_containers(c: &ControlPlane, ns: &str) -> Vec<(String, bool)> {
    let socket = c.dir().join("run").join("cri.sock");
    assert!(socket.exists(), "no CRI socket at {}", socket.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (mut rt, _) = skiff_cri::client::connect(&socket)
            .await
            .expect("connect to the node's CRI server");
        let list = rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: [("io.kubernetes.pod.namespace".to_string(), ns.to_string())]
                        .into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("ListContainers")
            .into_inner();
        list.containers
            .into_iter()
            .map(|ct| {
                let name = ct.metadata.map(|m| m.name).unwrap_or_default();
                (
                    name,
                    ct.state == cri::ContainerState::ContainerRunning as i32,
                )
            })
            .collect()
    })
}

#[test]
fn deleting_a_namespace_stops_its_running_pod_on_the_node() {
    let c = ControlPlane::start_cluster();
    let agent = c.agent.as_ref().expect("a whole cluster");
    let ns = "sk-ns-node";
    c.ok(&["create", "namespace", ns]);
    c.wait_for("the default service account", WAIT, || {
        c.kubectl(&["get", "serviceaccount", "default", "-n", ns])
            .ok
    });
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sk-sleeper, namespace: {ns}}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: sleeper\n    image: {}\n    command: [sleep, \"3600\"]\n",
        agent.busybox
    );
    let o = c.with_stdin(&["apply", "-f", "-"], &pod);
    assert!(o.ok, "pod: {}", o.stderr);
    c.wait_for("the pod to run", WAIT, || {
        jp(&c, &["pod", "sk-sleeper", "-n", ns], "{.status.phase}") == "Running"
    });
    let before = node_containers(&c, ns);
    assert!(
        before.iter().any(|(n, running)| n == "sleeper" && *running),
        "the pod's container is not running on the node: {before:?}"
    );

    // Watches of the namespace and the pod record every state they pass through.
    let ns_watch = Watch::start(&c, &["namespace", ns]);
    let pod_watch = Watch::start(&c, &["pod", "sk-sleeper", "-n", ns]);
    delete_namespace(&c, ns);
    wait_gone(&c, ns);
    let seen_ns = ns_watch.stop();
    let seen_pod = pod_watch.stop();
    // The pod was deleted with its own grace period, and the controller waited for it.
    assert!(
        seen_pod.contains("\"deletionGracePeriodSeconds\": 2"),
        "the pod was not deleted with its 2 s grace period:\n{seen_pod}"
    );
    assert!(
        seen_ns.contains("Some resources are remaining: pods. has 1 resource instances"),
        "the namespace never reported the terminating pod:\n{seen_ns}"
    );
    let pods = jp(
        &c,
        &[
            "pods",
            "-A",
            "--field-selector",
            &format!("metadata.namespace={ns}"),
        ],
        "{.items[*].metadata.name}",
    );
    assert!(pods.is_empty(), "pods left: {pods}");
    // The kubelet stopped the container (the namespace only went once the pod had).
    c.wait_for("the container to leave the node", WAIT, || {
        node_containers(&c, ns).iter().all(|(_, running)| !running)
    });
}
