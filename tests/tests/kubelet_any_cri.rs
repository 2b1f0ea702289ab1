//! The kubelet on any CRI: one scenario list run twice, by `skiff kubelet` as its own process
//! beside a `skiff server --disable-agent`, once over Skiff's CRI server (bridge `skbr44`,
//! 10.244.44.0/24) and once over Debian's containerd 1.6 with runc and Skiff's CNI plugins
//! (bridge `skbr45`, 10.244.45.0/24), through `--container-runtime-endpoint`. Each scenario is
//! a pod (created with `spec.nodeName`, so the kubelet alone runs it) and a check through kubectl:
//! Running/Ready with a pod IP, env + configMap/secret volumes, init containers in order, an exec
//! readiness probe, restartPolicy OnFailure with an exit code, `kubectl logs` (and `--previous`),
//! `kubectl exec` (stdin, exit code), `kubectl port-forward`, and deletion removing the sandbox
//! from the runtime. Needs root, docker-registry, busybox-static, kubectl, curl and (for the
//! second half) Debian's `containerd`; builds on
//! `cargo build --bin skiff --bin skiff-monitor --bin skiff-runtime --bin skiff-cni`.

use skiff_proto::cri;
use skiff_tests::control_plane::{kubectl_bin, ControlPlane};
use skiff_tests::cri_env::containerd::ContainerdEnv;
use skiff_tests::standalone::{start_kubelet, CgroupRoot, KubeletNode, Proc, SkiffCri};
use skiff_tests::Registry;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(90);

/// One node under test: the shared standalone-kubelet helper, plus the runtime's socket and the
/// test image.
struct Node<'a> {
    k: KubeletNode<'a>,
    socket: PathBuf,
    busybox: String,
}

impl<'a> std::ops::Deref for Node<'a> {
    type Target = KubeletNode<'a>;
    fn deref(&self) -> &KubeletNode<'a> {
        &self.k
    }
}

impl Node<'_> {
    /// kubectl with stdin: (exit code, stdout, stderr).
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        let mut child = Command::new(kubectl_bin(None))
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .env("HOME", self.cp.dir())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            let mut si = child.stdin.take().expect("stdin");
            si.write_all(input).expect("write stdin");
        }
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn wait_phase(&self, pod: &str, phase: &str) {
        self.wait_for(&format!("pod {pod} to be {phase}"), || {
            self.get(pod, "{.status.phase}") == phase
        });
    }

    fn wait_ready(&self, pod: &str) {
        self.wait_for(&format!("pod {pod} to be Ready"), || {
            self.get(pod, "{.status.conditions[?(@.type==\"Ready\")].status}") == "True"
        });
    }
}

/// A pod of the scenario list: its manifest (given the node and the image) and its check.
struct Scenario {
    name: &'static str,
    manifest: fn(&str, &str) -> String,
    check: fn(&Node),
}

fn pod(name: &str, node: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n{spec}\n"
    )
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "sk-run",
            manifest: |node, image| {
                pod(
                    "sk-run",
                    node,
                    &format!("  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'echo started; exec sleep 3600']"),
                )
            },
            check: |n| {
                n.wait_ready("sk-run");
                assert_eq!(n.get("sk-run", "{.status.phase}"), "Running");
                let ip = n.get("sk-run", "{.status.podIP}");
                let subnet = if n.runtime == "skiff" {
                    "10.244.44."
                } else {
                    "10.244.45."
                };
                assert!(ip.starts_with(subnet), "{}: pod IP {ip:?}", n.runtime);
                assert_eq!(
                    n.get("sk-run", "{.status.containerStatuses[0].ready} {.status.containerStatuses[0].restartCount}"),
                    "true 0"
                );
                let id = n.get("sk-run", "{.status.containerStatuses[0].containerID}");
                let scheme = if n.runtime == "skiff" {
                    "skiff://"
                } else {
                    "containerd://"
                };
                assert!(id.starts_with(scheme), "{}: containerID {id:?}", n.runtime);
                n.wait_for("the log line", || {
                    n.cp.kubectl(&["logs", "sk-run"]).stdout == "started\n"
                });
            },
        },
        Scenario {
            name: "sk-env",
            manifest: |node, image| {
                pod(
                    "sk-env",
                    node,
                    &format!(
                        r#"  containers:
  - name: c
    image: {image}
    command: [sh, -c, 'echo "$FOO $FROM_CM $FROM_SECRET `cat /cm/greeting` `cat /sec/password`"; exec sleep 3600']
    env:
    - {{name: FOO, value: bar}}
    - name: FROM_CM
      valueFrom: {{configMapKeyRef: {{name: sk-cm, key: greeting}}}}
    - name: FROM_SECRET
      valueFrom: {{secretKeyRef: {{name: sk-secret, key: password}}}}
    volumeMounts:
    - {{name: cm, mountPath: /cm}}
    - {{name: sec, mountPath: /sec}}
  volumes:
  - name: cm
    configMap: {{name: sk-cm}}
  - name: sec
    secret: {{secretName: sk-secret}}"#
                    ),
                )
            },
            check: |n| {
                n.wait_phase("sk-env", "Running");
                n.wait_for("the env pod's log line", || {
                    n.cp.kubectl(&["logs", "sk-env"]).stdout == "bar hello s3cret hello s3cret\n"
                });
            },
        },
        Scenario {
            name: "sk-init",
            manifest: |node, image| {
                pod(
                    "sk-init",
                    node,
                    &format!(
                        r#"  initContainers:
  - name: one
    image: {image}
    command: [sh, -c, 'echo one >> /work/order']
    volumeMounts: [{{name: w, mountPath: /work}}]
  - name: two
    image: {image}
    command: [sh, -c, 'echo two >> /work/order']
    volumeMounts: [{{name: w, mountPath: /work}}]
  containers:
  - name: app
    image: {image}
    command: [sh, -c, 'cat /work/order; exec sleep 3600']
    volumeMounts: [{{name: w, mountPath: /work}}]
  volumes:
  - name: w
    emptyDir: {{}}"#
                    ),
                )
            },
            check: |n| {
                n.wait_phase("sk-init", "Running");
                assert_eq!(
                    n.get(
                        "sk-init",
                        "{.status.initContainerStatuses[*].state.terminated.reason}"
                    ),
                    "Completed Completed"
                );
                assert_eq!(
                    n.get(
                        "sk-init",
                        "{.status.conditions[?(@.type==\"Initialized\")].status}"
                    ),
                    "True"
                );
                n.wait_for("the app container's log", || {
                    n.cp.kubectl(&["logs", "sk-init", "-c", "app"]).stdout == "one\ntwo\n"
                });
                assert_eq!(n.ok(&["logs", "sk-init", "-c", "two"]), "");
            },
        },
        Scenario {
            name: "sk-probe",
            manifest: |node, image| {
                pod(
                    "sk-probe",
                    node,
                    &format!(
                        r#"  containers:
  - name: c
    image: {image}
    command: [sh, -c, 'exec sleep 3600']
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
    livenessProbe:
      exec: {{command: ['true']}}
      periodSeconds: 1"#
                    ),
                )
            },
            check: |n| {
                n.wait_phase("sk-probe", "Running");
                // Not ready while the file is missing (the probe has run and failed).
                n.wait_for("the readiness probe to fail", || {
                    n.cp.kubectl(&[
                        "get",
                        "events",
                        "--field-selector",
                        "involvedObject.name=sk-probe",
                        "-o",
                        "jsonpath={.items[*].reason}",
                    ])
                    .stdout
                    .contains("Unhealthy")
                });
                assert_eq!(
                    n.get(
                        "sk-probe",
                        "{.status.conditions[?(@.type==\"Ready\")].status}"
                    ),
                    "False"
                );
                n.ok(&["exec", "sk-probe", "--", "touch", "/tmp/ready"]);
                n.wait_ready("sk-probe");
                assert_eq!(
                    n.get("sk-probe", "{.status.containerStatuses[0].restartCount}"),
                    "0"
                );
            },
        },
        Scenario {
            name: "sk-onfail",
            manifest: |node, image| {
                pod(
                    "sk-onfail",
                    node,
                    &format!(
                        r#"  restartPolicy: OnFailure
  containers:
  - name: c
    image: {image}
    command: [sh, -c, 'if [ -f /d/once ]; then echo second; exit 0; fi; touch /d/once; echo first; exit 3']
    volumeMounts: [{{name: d, mountPath: /d}}]
  volumes:
  - name: d
    emptyDir: {{}}"#
                    ),
                )
            },
            check: |n| {
                n.wait_phase("sk-onfail", "Succeeded");
                assert_eq!(
                    n.get(
                        "sk-onfail",
                        "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.exitCode} {.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}"
                    ),
                    "1 3 Error 0 Completed"
                );
                assert_eq!(n.ok(&["logs", "sk-onfail"]), "second\n");
                assert_eq!(n.ok(&["logs", "sk-onfail", "--previous"]), "first\n");
            },
        },
        Scenario {
            name: "sk-exec",
            manifest: |node, image| {
                pod(
                    "sk-exec",
                    node,
                    &format!("  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'exec sleep 3600']"),
                )
            },
            check: |n| {
                n.wait_ready("sk-exec");
                let (code, out, err) = n.run(&["exec", "sk-exec", "--", "echo", "hi"], None);
                assert_eq!(
                    (code, out.as_str()),
                    (0, "hi\n"),
                    "{}: exec: {err}",
                    n.runtime
                );
                let (code, out, err) = n.run(
                    &[
                        "exec",
                        "-i",
                        "sk-exec",
                        "--",
                        "sh",
                        "-c",
                        "read l; echo got:$l; exit 7",
                    ],
                    Some(b"hello\n"),
                );
                assert_eq!(
                    (code, out.as_str()),
                    (7, "got:hello\n"),
                    "{}: exec -i with stdin and exit code: {err}",
                    n.runtime
                );
            },
        },
        Scenario {
            name: "sk-pf",
            manifest: |node, image| {
                pod(
                    "sk-pf",
                    node,
                    &format!(
                        "  containers:\n  - name: web\n    image: {image}\n    command: [sh, -c, 'mkdir -p /www && echo hello-through-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www']\n    readinessProbe:\n      tcpSocket: {{port: 8080}}\n      periodSeconds: 1"
                    ),
                )
            },
            check: |n| {
                n.wait_ready("sk-pf");
                let child = Command::new(kubectl_bin(None))
                    .env("KUBECONFIG", &n.cp.kubeconfig)
                    .env("HOME", n.cp.dir())
                    .args(["port-forward", "pod/sk-pf", ":8080"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run kubectl port-forward");
                let mut child = Proc(child);
                let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
                let first = lines
                    .next()
                    .map(|l| l.unwrap_or_default())
                    .unwrap_or_default();
                // "Forwarding from 127.0.0.1:41234 -> 8080"
                let port: u16 = first
                    .split_whitespace()
                    .nth(2)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: port-forward printed {first:?}\n{}",
                            n.runtime,
                            n.kubelet_log()
                        )
                    });
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .expect("timeout");
                s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                    .expect("send");
                let mut body = String::new();
                let _ = s.read_to_string(&mut body);
                assert!(
                    body.contains("hello-through-port-forward"),
                    "{}: through port-forward: {body:?}\n{}",
                    n.runtime,
                    n.kubelet_log()
                );
            },
        },
    ]
}

/// The sandboxes and containers the runtime holds for pod `uid`.
async fn runtime_objects(socket: &Path, uid: &str) -> (usize, usize) {
    let (mut rt, _) = skiff_cri::client::connect(socket)
        .await
        .expect("CRI client");
    let labels = HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())]);
    let sandboxes = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: labels.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .len();
    let containers = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: labels,
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len();
    (sandboxes, containers)
}

/// Starts `skiff kubelet` on `socket`, runs every scenario, deletes the pods and checks that the
/// runtime holds nothing of them afterwards.
async fn suite(runtime: &'static str, socket: &Path, busybox: &str, cgroup_root: &str) {
    let cp = ControlPlane::start();
    let dir = cp.dir().join("sk-anycri");
    let name = format!("sk-anycri-{runtime}-{}", std::process::id());
    let kubelet = start_kubelet(&cp, socket, &name, cgroup_root, &dir);
    let n = Node {
        k: KubeletNode {
            runtime,
            cp: &cp,
            name: name.clone(),
            dir: dir.clone(),
        },
        socket: socket.to_path_buf(),
        busybox: busybox.to_string(),
    };
    n.wait_for("the node to be Ready", || {
        cp.kubectl(&[
            "get",
            "node",
            &n.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .stdout
            == "True"
    });
    n.ok(&[
        "create",
        "configmap",
        "sk-cm",
        "--from-literal=greeting=hello",
    ]);
    n.ok(&[
        "create",
        "secret",
        "generic",
        "sk-secret",
        "--from-literal=password=s3cret",
    ]);
    let list = scenarios();
    let manifests: Vec<String> = list
        .iter()
        .map(|s| (s.manifest)(&n.name, &n.busybox))
        .collect();
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifests.join("---\n"));
    assert!(o.ok, "{runtime}: apply: {}", o.stderr);
    for s in &list {
        eprintln!("{runtime}: {}", s.name);
        (s.check)(&n);
    }

    // Deletion stops the containers and removes the sandbox from the runtime.
    let uids: Vec<(String, String)> = list
        .iter()
        .map(|s| (s.name.to_string(), n.get(s.name, "{.metadata.uid}")))
        .collect();
    let mut args = vec!["delete", "pod", "--wait=true", "--timeout=90s"];
    args.extend(list.iter().map(|s| s.name));
    n.ok(&args);
    for (pod, uid) in &uids {
        let start = Instant::now();
        loop {
            let left = runtime_objects(&n.socket, uid).await;
            if left == (0, 0) {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "{runtime}: pod {pod} deleted but the runtime still holds (sandboxes, containers) = {left:?}\n{}",
                n.kubelet_log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    drop(kubelet);
    n.ok(&["delete", "configmap", "sk-cm"]);
    n.ok(&["delete", "secret", "sk-secret"]);
    n.ok(&["delete", "node", &name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_suite_on_skiff_cri() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let busybox = skiff_tests::cri_env::push_busybox(registry.addr(), "sk-busybox:latest").await;
    let cgroups = CgroupRoot(format!("/skanycri{}", std::process::id()));
    let cri = SkiffCri::start("skbr44", "10.244.44.0/24", registry.addr())
        .expect("skiff cri (cargo build --bin skiff --bin skiff-monitor --bin skiff-runtime --bin skiff-cni)");
    suite("skiff", &cri.socket, &busybox, &cgroups.0).await;
    drop(cri);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_suite_on_containerd() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    assert!(
        ContainerdEnv::available(),
        "containerd and containerd-shim-runc-v2 must be installed (Debian's containerd package): this test runs the kubelet on containerd"
    );
    for bin in ["skiff", "skiff-cni"] {
        let p = skiff_tests::workspace_bin(bin);
        assert!(
            p.exists(),
            "{} missing: cargo build --bin {bin}",
            p.display()
        );
    }
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let image = skiff_tests::build_busybox_image().expect("busybox image");
    skiff_tests::push(registry.addr(), "sk-busybox:latest", &image)
        .await
        .expect("push busybox");
    let busybox = format!("{}/sk-busybox:latest", registry.addr());
    let cgroups = CgroupRoot(format!("/skanyctd{}", std::process::id()));
    let ctd = ContainerdEnv::start("skbr45", "10.244.45.0/24", registry.addr(), &image)
        .await
        .expect("containerd");
    suite("containerd", &ctd.socket, &busybox, &cgroups.0).await;
    drop(ctd);
}
