//! A pod's own identity end to end on a real node: the kubelet mounts a bound service-account
//! token (projected volume with the token, the cluster CA and the namespace), the API server
//! accepts that token as the pod's service account with RBAC applied, and refuses it once the
//! pod is gone.

use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[test]
fn a_pod_talks_to_the_api_as_its_service_account() {
    let cp = ControlPlane::start_cluster();
    let img = cp.agent.as_ref().unwrap().busybox.clone();
    let o = cp.with_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: sk-reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: sk-pod-reader}}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: sk-pod-reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sk-pod-reader}}
subjects:
- {{kind: ServiceAccount, name: sk-reader, namespace: default}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-id}}
spec:
  serviceAccountName: sk-reader
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {img}
    command: ["sleep", "3600"]
"#
        ),
    );
    assert!(o.ok, "{}", o.stderr);
    cp.wait_for("sk-id to run", Duration::from_secs(90), || {
        cp.ok(&["get", "pod", "sk-id", "-o", "jsonpath={.status.phase}"]) == "Running"
    });
    let read = |file: &str| cp.ok(&["exec", "sk-id", "--", "cat", &format!("{SA_DIR}/{file}")]);
    assert_eq!(read("namespace"), "default");
    assert!(read("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let token = read("token");
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");

    // kubectl with nothing but the pod's token and the cluster CA.
    let (_, _, ca) = cp.admin_pems();
    let server = cp.url();
    let as_pod = |args: &[&str]| {
        let mut a = vec![
            "--server",
            &server,
            "--certificate-authority",
            ca.to_str().unwrap(),
            "--token",
            &token,
        ];
        a.extend_from_slice(args);
        cp.kubectl_with(
            &skiff_tests::control_plane::kubectl_bin(None),
            &a,
            None,
            &[("KUBECONFIG", "/dev/null")],
        )
    };
    let who = as_pod(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username} {.status.userInfo.extra.authentication\\.kubernetes\\.io/pod-name}",
    ]);
    assert!(who.ok, "{}", who.stderr);
    assert_eq!(
        who.stdout.trim(),
        "system:serviceaccount:default:sk-reader [\"sk-id\"]"
    );
    let pods = as_pod(&["get", "pods", "-o", "name"]);
    assert!(pods.ok, "{}", pods.stderr);
    assert!(pods.stdout.contains("pod/sk-id"), "{}", pods.stdout);
    let secrets = as_pod(&["get", "secrets"]);
    assert!(!secrets.ok);
    assert!(
        secrets.stderr.contains(
            "User \"system:serviceaccount:default:sk-reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        secrets.stderr
    );

    // The token is bound to the pod: once the pod is gone, it no longer authenticates.
    cp.ok(&["delete", "pod", "sk-id", "--wait=true", "--timeout=60s"]);
    let after = as_pod(&["get", "pods"]);
    assert!(!after.ok);
    assert!(
        after.stderr.contains("Unauthorized"),
        "a deleted pod's token still works: {}",
        after.stderr
    );
}
