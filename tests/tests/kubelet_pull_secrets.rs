//! imagePullSecrets against a real registry that wants a password (Debian's docker-registry
//! with htpasswd on a free loopback port): without credentials the pod waits in
//! ErrImagePull/ImagePullBackOff; a `kubectl create secret docker-registry` secret named by the
//! pod, the same secret through the pod's ServiceAccount, and a legacy `kubernetes.io/dockercfg`
//! secret each let it run; a wrong password does not.

use base64::Engine;
use skiff_tests::auth_registry::AuthRegistry;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn apply(c: &ControlPlane, yaml: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], yaml);
    assert!(o.ok, "{}", o.stderr);
}

fn pod(name: &str, image: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  {extra}
  containers:
  - name: main
    image: {image}
    imagePullPolicy: Always
    command: ["sh", "-c", "echo PULLED; sleep 3600"]
"#
    )
}

fn wait_running(c: &ControlPlane, name: &str) {
    c.wait_for(&format!("{name} Running"), WAIT, || {
        c.kubectl(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
            .stdout
            == "Running"
    });
}

/// Waits until the container waits for its image; returns (reason, message).
fn wait_pull_failure(c: &ControlPlane, name: &str) -> (String, String) {
    let mut got = (String::new(), String::new());
    c.wait_for(&format!("{name} to fail pulling"), WAIT, || {
        let w = c.kubectl(&[
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}",
        ]);
        let (r, m) = w.stdout.split_once('|').unwrap_or(("", ""));
        got = (r.to_string(), m.to_string());
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    got
}

#[test]
fn pull_secrets_authenticate_to_the_registry() {
    let reg = AuthRegistry::start("skuser", "skpass").expect("authenticated registry");
    let image = skiff_tests::image::build_busybox_image().expect("busybox image");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(skiff_tests::image::push_auth(
        &reg.addr,
        "sk-private/busybox:v1",
        &image,
        Some(("skuser", "skpass")),
    ))
    .expect("pushing with credentials");
    // Anonymous pushes are refused: the registry really wants the password.
    assert!(rt
        .block_on(skiff_tests::image::push(
            &reg.addr,
            "sk-private/anon:v1",
            &image
        ))
        .is_err());
    let img = format!("{}/sk-private/busybox:v1", reg.addr);
    let c = ControlPlane::start_cluster();

    // No credentials: ErrImagePull, then the back-off, with the image named.
    apply(&c, &pod("sk-pull-none", &img, ""));
    let (reason, message) = wait_pull_failure(&c, "sk-pull-none");
    assert!(
        message.contains(&img) || message.contains("sk-private/busybox"),
        "{reason}: {message}"
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-pull-none",
    ]);
    assert!(events.contains("Failed to pull image"), "{events}");

    // A docker-registry secret named by the pod.
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "sk-regcred",
        &format!("--docker-server={}", reg.addr),
        "--docker-username=skuser",
        "--docker-password=skpass",
    ]);
    apply(
        &c,
        &pod(
            "sk-pull-secret",
            &img,
            "imagePullSecrets: [{name: sk-regcred}]",
        ),
    );
    wait_running(&c, "sk-pull-secret");

    // The same secret through the ServiceAccount (copied into the pod by admission).
    apply(
        &c,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sk-puller}\nimagePullSecrets: [{name: sk-regcred}]\n",
    );
    apply(
        &c,
        &pod("sk-pull-sa", &img, "serviceAccountName: sk-puller"),
    );
    wait_running(&c, "sk-pull-sa");
    let copied = c.ok(&[
        "get",
        "pod",
        "sk-pull-sa",
        "-o",
        "jsonpath={.spec.imagePullSecrets[*].name}",
    ]);
    assert_eq!(copied, "sk-regcred");

    // A legacy .dockercfg secret, keyed by URL with a path prefix of the repository.
    let auth = base64::engine::general_purpose::STANDARD.encode("skuser:skpass");
    let cfg = format!(
        r#"{{"http://{}/sk-private":{{"auth":"{auth}"}}}}"#,
        reg.addr
    );
    let cfg64 = base64::engine::general_purpose::STANDARD.encode(cfg);
    apply(
        &c,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: sk-legacy}}\ntype: kubernetes.io/dockercfg\ndata:\n  .dockercfg: {cfg64}\n"
        ),
    );
    apply(
        &c,
        &pod(
            "sk-pull-legacy",
            &img,
            "imagePullSecrets: [{name: sk-legacy}]",
        ),
    );
    wait_running(&c, "sk-pull-legacy");

    // A wrong password, and a missing secret (upstream's warning event).
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "sk-badcred",
        &format!("--docker-server={}", reg.addr),
        "--docker-username=skuser",
        "--docker-password=wrong",
    ]);
    apply(
        &c,
        &pod(
            "sk-pull-bad",
            &img,
            "imagePullSecrets: [{name: sk-badcred}, {name: sk-missing}]",
        ),
    );
    wait_pull_failure(&c, "sk-pull-bad");
    c.wait_for("the FailedToRetrieveImagePullSecret event", WAIT, || {
        c.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-pull-bad,reason=FailedToRetrieveImagePullSecret",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .stdout
        .contains("Unable to retrieve some image pull secrets (sk-missing); attempting to pull the image may not succeed.")
    });
    let _ = reg.log();

    c.ok(&[
        "delete",
        "pod",
        "sk-pull-none",
        "sk-pull-secret",
        "sk-pull-sa",
        "sk-pull-legacy",
        "sk-pull-bad",
        "--grace-period=1",
    ]);
    c.ok(&["delete", "secret", "sk-regcred", "sk-legacy", "sk-badcred"]);
    c.ok(&["delete", "serviceaccount", "sk-puller"]);
}
