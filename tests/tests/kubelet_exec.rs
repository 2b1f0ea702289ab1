//! `kubectl exec`, `attach`, `port-forward`, `cp` and `logs -f` against a whole `skiff server`:
//! the API server's `pods/exec|attach|portforward|log` proxied to the kubelet's :10250, the
//! kubelet asking the CRI for a streaming URL and proxying there. kubectl 1.32 speaks WebSocket
//! (`v5.channel.k8s.io`, and SPDY tunnelled in a WebSocket for port-forward); kubectl 1.32 with
//! WebSockets turned off and kubectl 1.27 speak SPDY/3.1. Needs root, docker-registry,
//! busybox-static, kubectl 1.32 and 1.27; builds on `cargo build --workspace --bins`.

use skiff_tests::control_plane::{kubectl_bin, ControlPlane};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// kubectl `bin` with `args`, `stdin` and `env`: (exit code, stdout, stderr).
fn run(
    cp: &ControlPlane,
    bin: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", &cp.kubeconfig)
        .env("HOME", cp.dir())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run kubectl");
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

/// The three ways kubectl streams: 1.32 over WebSocket, 1.32 with SPDY forced, 1.27 (SPDY only).
/// A client: its name, binary and extra environment.
type Client = (
    &'static str,
    std::path::PathBuf,
    Vec<(&'static str, &'static str)>,
);

fn clients() -> Vec<Client> {
    vec![
        ("kubectl 1.32 (websocket)", kubectl_bin(None), vec![]),
        (
            "kubectl 1.32 (spdy)",
            kubectl_bin(None),
            vec![
                ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
                ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
            ],
        ),
        ("kubectl 1.27 (spdy)", kubectl_bin(Some("1.27")), vec![]),
    ]
}

fn server_pod(cp: &ControlPlane, name: &str) {
    let image = &cp.agent.as_ref().expect("a whole cluster").busybox;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo hello-through-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply: {}", o.stderr);
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=90s",
    ]);
}

#[test]
fn exec_output_stdin_exit_codes_and_tty() {
    let cp = ControlPlane::start_cluster();
    server_pod(&cp, "sk-exec");
    for (who, bin, env) in clients() {
        let (code, out, err) = run(
            &cp,
            &bin,
            &["exec", "sk-exec", "--", "echo", "hi"],
            None,
            &env,
        );
        assert_eq!((code, out.as_str()), (0, "hi\n"), "{who}: exec echo: {err}");

        let (code, _, err) = run(
            &cp,
            &bin,
            &["exec", "sk-exec", "--", "sh", "-c", "exit 3"],
            None,
            &env,
        );
        assert_eq!(code, 3, "{who}: the exit code of the command: {err}");

        let (code, out, err) = run(
            &cp,
            &bin,
            &[
                "exec",
                "sk-exec",
                "--",
                "sh",
                "-c",
                "echo to-out; echo to-err >&2",
            ],
            None,
            &env,
        );
        assert_eq!(code, 0, "{who}: {err}");
        assert_eq!(out, "to-out\n", "{who}: stdout");
        assert!(err.contains("to-err"), "{who}: stderr is {err:?}");

        let (code, out, err) = run(
            &cp,
            &bin,
            &[
                "exec",
                "-i",
                "sk-exec",
                "--",
                "sh",
                "-c",
                "tr a-z A-Z; echo end",
            ],
            Some(b"from stdin\n"),
            &env,
        );
        assert_eq!(code, 0, "{who}: exec -i: {err}");
        assert_eq!(out, "FROM STDIN\nend\n", "{who}: exec -i output");

        let (code, _, err) = run(
            &cp,
            &bin,
            &["exec", "sk-exec", "--", "/no/such/binary"],
            None,
            &env,
        );
        assert_ne!(code, 0, "{who}: exec of a missing binary succeeded: {err}");
    }

    // A terminal: `script` gives kubectl one, the shell in the pod sees a tty.
    let bin = kubectl_bin(None);
    let out = Command::new("script")
        .args([
            "-qec",
            &format!(
                "{} exec -it sk-exec -- sh -c 'tty; stty size'",
                bin.display()
            ),
            "/dev/null",
        ])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HOME", cp.dir())
        .stdin(Stdio::null())
        .output()
        .expect("`script` (bsdutils) runs kubectl on a terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("/dev/pts/"),
        "exec -it: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A container that does not exist, and a pod that does not.
    let err = cp.fails(&["exec", "sk-exec", "-c", "nope", "--", "true"]);
    assert!(
        err.contains("container nope is not valid for pod sk-exec"),
        "{err}"
    );
    let err = cp.fails(&["exec", "sk-nothere", "--", "true"]);
    assert!(err.contains("pods \"sk-nothere\" not found"), "{err}");
}

#[test]
fn port_forward_cp_attach_and_logs_follow() {
    let cp = ControlPlane::start_cluster();
    server_pod(&cp, "sk-pf");
    for (who, bin, env) in clients() {
        let mut child = Command::new(&bin)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("HOME", cp.dir())
            .envs(env.iter().copied())
            .args(["port-forward", "pod/sk-pf", ":8080"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl port-forward");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
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
                let _ = child.kill();
                let mut e = String::new();
                let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut e));
                panic!("{who}: port-forward printed {first:?}: {e}")
            });
        // Two requests through the same forward: each is its own stream pair.
        for _ in 0..2 {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                .expect("send");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            assert!(
                resp.contains("hello-through-port-forward"),
                "{who}: answer through port-forward: {resp:?}"
            );
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    // kubectl cp both ways (tar through exec).
    let src = cp.dir().join("sk-cp-in.txt");
    std::fs::write(&src, "copied into the pod\n").expect("write");
    cp.ok(&["cp", src.to_str().unwrap(), "sk-pf:/tmp/in.txt"]);
    assert_eq!(
        cp.ok(&["exec", "sk-pf", "--", "cat", "/tmp/in.txt"]),
        "copied into the pod\n"
    );
    let dst = cp.dir().join("sk-cp-out.txt");
    cp.ok(&["cp", "sk-pf:/www/index.html", dst.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(&dst).expect("copied file"),
        "hello-through-port-forward\n"
    );

    // attach -i: the container waits for a line on its stdin and answers it.
    let image = &cp.agent.as_ref().unwrap().busybox;
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-attach
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "read line; echo got:$line"]
"#
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply: {}", o.stderr);
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/sk-attach",
        "--timeout=90s",
    ]);
    let (code, out, err) = run(
        &cp,
        &kubectl_bin(None),
        &["attach", "-i", "sk-attach"],
        Some(b"ping\n"),
        &[],
    );
    assert!(
        out.contains("got:ping"),
        "attach -i printed {out:?} (exit {code}): {err}"
    );

    // logs -f follows until the container exits.
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-follow
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done"]
"#
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply: {}", o.stderr);
    cp.wait_for("sk-follow to start", Duration::from_secs(90), || {
        cp.kubectl(&["get", "pod", "sk-follow", "-o", "jsonpath={.status.phase}"])
            .stdout
            != "Pending"
    });
    let out = cp.ok(&["logs", "-f", "sk-follow"]);
    assert_eq!(out, "line-1\nline-2\nline-3\nline-4\nline-5\n");
    assert_eq!(
        cp.ok(&["logs", "--tail=2", "sk-follow"]),
        "line-4\nline-5\n"
    );
    assert_eq!(
        cp.ok(&["logs", "--since=1h", "sk-follow"]),
        "line-1\nline-2\nline-3\nline-4\nline-5\n"
    );
    assert_eq!(
        cp.ok(&["logs", "--since-time=2099-01-01T00:00:00Z", "sk-follow"]),
        ""
    );
    let err = cp.fails(&["logs", "--previous", "sk-follow"]);
    assert!(
        err.contains("previous terminated container \"main\" in pod \"sk-follow\" not found"),
        "{err}"
    );
}

#[test]
fn kubectl_debug_runs_ephemeral_containers() {
    let cp = ControlPlane::start_cluster();
    server_pod(&cp, "sk-debugged");
    let image = cp.agent.as_ref().unwrap().busybox.clone();
    // A debug container in the target's PID namespace sees the target's processes.
    cp.ok(&[
        "debug",
        "sk-debugged",
        "--image",
        &image,
        "--target=main",
        "-c",
        "sk-dbg",
        "--",
        "sleep",
        "3600",
    ]);
    cp.wait_for("the ephemeral container to run", Duration::from_secs(90), || {
        !cp.ok(&[
            "get",
            "pod",
            "sk-debugged",
            "-o",
            "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"sk-dbg\")].state.running.startedAt}",
        ])
        .is_empty()
    });
    let ps = cp.ok(&[
        "exec",
        "sk-debugged",
        "-c",
        "sk-dbg",
        "--",
        "ps",
        "-o",
        "args",
    ]);
    assert!(
        ps.contains("httpd -f -p 8080"),
        "the target's process is not visible:\n{ps}"
    );
    // The pod itself is untouched: still Ready, main never restarted.
    assert_eq!(
        cp.ok(&[
            "get",
            "pod",
            "sk-debugged",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[0].restartCount}"
        ]),
        "True 0"
    );
    // Interactive: `kubectl debug -i` attaches to the new container's stdin and output.
    let (code, out, err) = run(
        &cp,
        &kubectl_bin(None),
        &[
            "debug",
            "-i",
            "sk-debugged",
            "--image",
            &image,
            "-c",
            "sk-dbg2",
            "--",
            "sh",
        ],
        Some(b"echo hello-from-debug\nexit 0\n"),
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("hello-from-debug"), "{out}\n{err}");
    // An exited ephemeral container is not restarted.
    cp.wait_for("sk-dbg2 to end", Duration::from_secs(60), || {
        cp.ok(&[
            "get",
            "pod",
            "sk-debugged",
            "-o",
            "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"sk-dbg2\")].state.terminated.exitCode}",
        ]) == "0"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        cp.ok(&[
            "get",
            "pod",
            "sk-debugged",
            "-o",
            "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"sk-dbg2\")].restartCount}",
        ]),
        "0"
    );
}
