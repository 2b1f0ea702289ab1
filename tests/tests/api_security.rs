//! API security against `skiff server --disable-agent`, driven with the installed kubectl and
//! curl the way a user would: service-account tokens as credentials (allowed vs forbidden with
//! upstream's messages), `kubectl auth can-i` (incl. `--list` and `--as`), `auth whoami`,
//! impersonation, RBAC escalation prevention, the node authorizer with the kubelet's
//! certificate, bootstrap and legacy tokens, admission (ServiceAccount, PodSecurity), and bad
//! credentials (malformed, unsigned, wrongly signed, expired, wrong audience, revoked, another
//! CA's certificate) getting 401.

use base64::Engine;
use serde_json::{json, Value};
use skiff_tests::control_plane::{kubectl_bin, ControlPlane};
use std::path::PathBuf;
use std::process::Command;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// curl with a bearer token (or none); returns (HTTP code, body).
fn curl_token(cp: &ControlPlane, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    let (_, _, ca) = cp.admin_pems();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--cacert")
        .arg(ca);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd
        .arg(format!("{}{path}", cp.url()))
        .output()
        .expect("curl on PATH");
    split(&out.stdout)
}

/// curl with a client certificate and key.
fn curl_cert(
    cp: &ControlPlane,
    crt: &std::path::Path,
    key: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let (_, _, ca) = cp.admin_pems();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--cacert")
        .arg(ca)
        .arg("--cert")
        .arg(crt)
        .arg("--key")
        .arg(key);
    if let Some(b) = body {
        cmd.args([
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data-binary",
            b,
        ]);
    }
    let out = cmd
        .arg(format!("{}{path}", cp.url()))
        .output()
        .expect("curl on PATH");
    split(&out.stdout)
}

fn split(out: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(out).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// A kubeconfig that authenticates with `token` only.
fn token_kubeconfig(cp: &ControlPlane, name: &str, token: &str) -> PathBuf {
    let (_, _, ca) = cp.admin_pems();
    let path = cp.dir().join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n",
        cp.url(),
        ca.display()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// kubectl with another kubeconfig.
fn kubectl_as(
    cp: &ControlPlane,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> skiff_tests::control_plane::Out {
    let kc = kubeconfig.display().to_string();
    let mut all = vec!["--kubeconfig", kc.as_str()];
    all.extend_from_slice(args);
    cp.kubectl_with(&kubectl_bin(None), &all, None, &[])
}

fn unauthorized(code: u16, body: &str, what: &str) {
    assert_eq!(code, 401, "{what}: expected 401, got {code}: {body}");
    let v = json(body);
    assert_eq!(v["reason"], "Unauthorized", "{what}: {body}");
    assert_eq!(v["message"], "Unauthorized", "{what}: {body}");
    assert_eq!(v["kind"], "Status", "{what}: {body}");
}

#[test]
fn service_account_tokens_with_rbac_roles() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "namespace", "sk-sec"]);
    cp.ok(&["create", "serviceaccount", "sk-app", "-n", "sk-sec"]);
    let token = cp.ok(&["create", "token", "sk-app", "-n", "sk-sec"]);
    let token = token.trim();

    // Authenticated, but no role yet: 403 with upstream's message.
    let (code, body) = curl_token(&cp, Some(token), "GET", "/api/v1/namespaces/sk-sec/pods");
    assert_eq!(code, 403, "{body}");
    let v = json(&body);
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(
        v["message"],
        "pods is forbidden: User \"system:serviceaccount:sk-sec:sk-app\" cannot list resource \"pods\" in API group \"\" in the namespace \"sk-sec\""
    );
    assert_eq!(v["details"]["kind"], "pods");

    // Discovery and whoami work for any authenticated user (system:discovery, basic-user).
    let (code, body) = curl_token(&cp, Some(token), "GET", "/apis");
    assert_eq!(code, 200, "{body}");
    let kc = token_kubeconfig(&cp, "sk-app", token);
    let who = kubectl_as(&cp, &kc, &["auth", "whoami", "-o", "json"]);
    assert!(who.ok, "{}", who.stderr);
    let who = json(&who.stdout);
    assert_eq!(
        who["status"]["userInfo"]["username"],
        "system:serviceaccount:sk-sec:sk-app"
    );
    let groups = who["status"]["userInfo"]["groups"].to_string();
    for g in [
        "system:serviceaccounts",
        "system:serviceaccounts:sk-sec",
        "system:authenticated",
    ] {
        assert!(groups.contains(g), "{groups}");
    }

    // A Role and RoleBinding later: 200 for what the role grants, 403 for the rest.
    cp.ok(&[
        "create",
        "role",
        "sk-pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
        "-n",
        "sk-sec",
    ]);
    cp.ok(&[
        "create",
        "rolebinding",
        "sk-pod-reader",
        "--role=sk-pod-reader",
        "--serviceaccount=sk-sec:sk-app",
        "-n",
        "sk-sec",
    ]);
    let (code, body) = curl_token(&cp, Some(token), "GET", "/api/v1/namespaces/sk-sec/pods");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["kind"], "PodList");
    let (code, body) = curl_token(&cp, Some(token), "GET", "/api/v1/namespaces/default/pods");
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl_token(
        &cp,
        Some(token),
        "DELETE",
        "/api/v1/namespaces/sk-sec/pods/sk-x",
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "pods \"sk-x\" is forbidden: User \"system:serviceaccount:sk-sec:sk-app\" cannot delete resource \"pods\" in API group \"\" in the namespace \"sk-sec\""
    );
    let (code, body) = curl_token(&cp, Some(token), "GET", "/api/v1/nodes");
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "nodes is forbidden: User \"system:serviceaccount:sk-sec:sk-app\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
    );
    let (code, body) = curl_token(&cp, Some(token), "GET", "/metrics");
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "forbidden: User \"system:serviceaccount:sk-sec:sk-app\" cannot get path \"/metrics\""
    );
    // kubectl with the token sees the same.
    let out = kubectl_as(&cp, &kc, &["get", "pods", "-n", "sk-sec"]);
    assert!(out.ok, "{}", out.stderr);
    let out = kubectl_as(&cp, &kc, &["get", "secrets", "-n", "sk-sec"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("Error from server (Forbidden): secrets is forbidden: User \"system:serviceaccount:sk-sec:sk-app\" cannot list resource \"secrets\" in API group \"\" in the namespace \"sk-sec\""),
        "{}",
        out.stderr
    );

    // Removing the binding takes the permission away at once.
    cp.ok(&["delete", "rolebinding", "sk-pod-reader", "-n", "sk-sec"]);
    let (code, _) = curl_token(&cp, Some(token), "GET", "/api/v1/namespaces/sk-sec/pods");
    assert_eq!(code, 403);
    cp.ok(&["delete", "namespace", "sk-sec", "--wait=false"]);
}

fn sign_es256(key_pkcs8: &[u8], header: &Value, claims: &Value) -> String {
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key_pkcs8, &rng)
        .expect("P-256 PKCS#8 key");
    let msg = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let sig = key.sign(&rng, msg.as_bytes()).expect("sign");
    format!("{msg}.{}", B64URL.encode(sig.as_ref()))
}

#[test]
fn bad_credentials_get_401() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "serviceaccount", "sk-bad"]);
    let path = "/api/v1/namespaces/default/pods";
    // Anonymous: 401 except the public endpoints.
    let (code, body) = curl_token(&cp, None, "GET", path);
    unauthorized(code, &body, "anonymous");
    let (code, body) = curl_token(&cp, None, "GET", "/apis");
    unauthorized(code, &body, "anonymous discovery");
    for public in [
        "/healthz",
        "/livez",
        "/readyz",
        "/version",
        "/.well-known/openid-configuration",
        "/openid/v1/jwks",
    ] {
        let (code, body) = curl_token(&cp, None, "GET", public);
        assert_eq!(code, 200, "{public}: {body}");
    }

    let good = cp.ok(&["create", "token", "sk-bad"]).trim().to_string();
    let (code, body) = curl_token(&cp, Some(&good), "GET", "/api");
    assert_eq!(code, 200, "{body}");
    let parts: Vec<&str> = good.split('.').collect();
    let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();

    // Malformed.
    for t in [
        "garbage",
        "a.b.c",
        "abcdef.0123456789abcdef",
        &"x".repeat(20000),
    ] {
        let (code, body) = curl_token(&cp, Some(t), "GET", path);
        unauthorized(code, &body, "malformed token");
    }
    // Unsigned (alg none) with the real claims.
    let none = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none"}).to_string()),
        parts[1]
    );
    let (code, body) = curl_token(&cp, Some(&none), "GET", path);
    unauthorized(code, &body, "unsigned token");
    // Signed by another key.
    let rng = ring::rand::SystemRandom::new();
    let other = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let forged = sign_es256(other.as_ref(), &json!({"alg": "ES256"}), &claims);
    let (code, body) = curl_token(&cp, Some(&forged), "GET", path);
    unauthorized(code, &body, "wrongly signed token");
    // Tampered claims under the real signature.
    let mut c2 = claims.clone();
    c2["sub"] = json!("system:serviceaccount:kube-system:default");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64URL.encode(c2.to_string()),
        parts[2]
    );
    let (code, body) = curl_token(&cp, Some(&tampered), "GET", path);
    unauthorized(code, &body, "tampered token");
    // Expired, signed with the server's own key.
    let key = std::fs::read(cp.dir().join("data/tls/service-account.key")).expect("signing key");
    let header: Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    let mut expired = claims.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 60);
    let (code, body) = curl_token(&cp, Some(&sign_es256(&key, &header, &expired)), "GET", path);
    unauthorized(code, &body, "expired token");
    // The same key and claims, not expired: accepted (so the two above fail for their reason).
    let mut fresh = claims.clone();
    fresh["exp"] = json!(chrono::Utc::now().timestamp() + 600);
    let (code, body) = curl_token(&cp, Some(&sign_es256(&key, &header, &fresh)), "GET", "/api");
    assert_eq!(code, 200, "{body}");
    // Wrong audience.
    let aud = cp.ok(&["create", "token", "sk-bad", "--audience", "sk-elsewhere"]);
    let (code, body) = curl_token(&cp, Some(aud.trim()), "GET", path);
    unauthorized(code, &body, "wrong-audience token");
    // Revoked: bound to a secret that is then deleted; and the service account deleted.
    cp.ok(&[
        "create",
        "secret",
        "generic",
        "sk-bound",
        "--from-literal=a=b",
    ]);
    let bound = cp.ok(&[
        "create",
        "token",
        "sk-bad",
        "--bound-object-kind",
        "Secret",
        "--bound-object-name",
        "sk-bound",
    ]);
    let (code, body) = curl_token(&cp, Some(bound.trim()), "GET", "/api");
    assert_eq!(code, 200, "{body}");
    cp.ok(&["delete", "secret", "sk-bound"]);
    let (code, body) = curl_token(&cp, Some(bound.trim()), "GET", "/api");
    unauthorized(code, &body, "token bound to a deleted secret");
    cp.ok(&["delete", "serviceaccount", "sk-bad"]);
    let (code, body) = curl_token(&cp, Some(&good), "GET", "/api");
    unauthorized(code, &body, "token of a deleted service account");

    // A client certificate from another CA: 401, not a handshake failure.
    let dir = cp.dir();
    let key = dir.join("sk-other.key");
    let crt = dir.join("sk-other.crt");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", "/CN=system:admin/O=system:masters", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl on PATH");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (code, body) = curl_cert(&cp, &crt, &key, "GET", path, None);
    unauthorized(code, &body, "certificate from another CA");
    // The server logs the rejection at debug without any token's secret part: nothing of the
    // tokens above is in the log at the default level either.
    let log = std::fs::read_to_string(cp.dir().join("server.log")).unwrap_or_default();
    assert!(!log.contains(parts[2]), "a token signature was logged");
}

#[test]
fn auth_can_i_whoami_and_impersonation() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "namespace", "sk-can"]);
    cp.ok(&["create", "serviceaccount", "sk-sa", "-n", "sk-can"]);
    cp.ok(&[
        "create",
        "rolebinding",
        "sk-edit",
        "--clusterrole=edit",
        "--serviceaccount=sk-can:sk-sa",
        "-n",
        "sk-can",
    ]);
    cp.ok(&[
        "create",
        "clusterrole",
        "sk-node-viewer",
        "--verb=get,list",
        "--resource=nodes",
    ]);
    cp.ok(&[
        "create",
        "clusterrolebinding",
        "sk-bob-nodes",
        "--clusterrole=sk-node-viewer",
        "--user=sk-bob",
    ]);
    cp.ok(&[
        "create",
        "clusterrolebinding",
        "sk-team-view",
        "--clusterrole=view",
        "--group=sk-team",
    ]);

    let sa = "system:serviceaccount:sk-can:sk-sa";
    let node = ["--as=system:node:sk-node", "--as-group=system:nodes"];
    // (args, expected answer)
    let matrix: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "pods"], "yes"),
        (vec!["*", "*"], "yes"),
        (vec!["create", "pods", "-n", "sk-can", "--as", sa], "yes"),
        (
            vec!["create", "deployments.apps", "-n", "sk-can", "--as", sa],
            "yes",
        ),
        (vec!["create", "pods", "-n", "default", "--as", sa], "no"),
        (vec!["create", "roles", "-n", "sk-can", "--as", sa], "no"),
        (vec!["get", "secrets", "-n", "sk-can", "--as", sa], "yes"),
        (vec!["list", "nodes", "--as", sa], "no"),
        (vec!["list", "nodes", "--as", "sk-bob"], "yes"),
        (vec!["delete", "nodes", "--as", "sk-bob"], "no"),
        (vec!["list", "pods", "-n", "sk-can", "--as", "sk-bob"], "no"),
        (
            vec![
                "list",
                "pods",
                "-A",
                "--as",
                "sk-carol",
                "--as-group",
                "sk-team",
            ],
            "yes",
        ),
        (
            vec![
                "list",
                "secrets",
                "-A",
                "--as",
                "sk-carol",
                "--as-group",
                "sk-team",
            ],
            "no",
        ),
        (vec!["get", "nodes", node[0], node[1]], "yes"),
        (vec!["update", "nodes/status", node[0], node[1]], "yes"),
        (
            vec!["list", "secrets", "-n", "default", node[0], node[1]],
            "no",
        ),
        (vec!["delete", "namespaces", node[0], node[1]], "no"),
        (vec!["get", "/healthz", "--as", "sk-nobody"], "yes"),
        (vec!["get", "/metrics", "--as", "sk-nobody"], "no"),
    ];
    for (args, want) in &matrix {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = cp.kubectl(&all);
        // A denial may carry the authorizer's reason: "no - <reason>".
        let got = out.stdout.split_whitespace().next().unwrap_or("");
        assert_eq!(
            got,
            *want,
            "kubectl {}: {}{}",
            all.join(" "),
            out.stdout,
            out.stderr
        );
        assert_eq!(
            out.ok,
            *want == "yes",
            "kubectl auth can-i exit code for {}",
            all.join(" ")
        );
    }

    // --list for the service account in its namespace: edit's rules, aggregated from the
    // system:aggregate-to-edit and -view roles.
    let list = cp.ok(&["auth", "can-i", "--list", "-n", "sk-can", "--as", sa]);
    assert!(list.starts_with("Resources"), "{list}");
    for want in [
        "pods ",
        "deployments.apps",
        "secrets",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "[/api/*]",
    ] {
        assert!(list.contains(want), "can-i --list lacks {want}:\n{list}");
    }
    let list = cp.ok(&["auth", "can-i", "--list", "--as", "sk-bob"]);
    assert!(list.contains("nodes "), "{list}");
    assert!(!list.contains("secrets"), "{list}");
    // The aggregated roles carry their rules, as upstream's aggregation controller writes them.
    cp.wait_for(
        "edit's aggregated rules",
        std::time::Duration::from_secs(10),
        || {
            cp.kubectl(&["get", "clusterrole", "edit", "-o", "json"])
                .stdout
                .contains("\"deployments\"")
        },
    );

    // whoami, plain and impersonated.
    let who = cp.ok(&["auth", "whoami"]);
    assert!(
        who.contains("system:admin") && who.contains("system:masters"),
        "{who}"
    );
    let who = cp.ok(&[
        "auth",
        "whoami",
        "--as",
        "sk-bob",
        "--as-group",
        "sk-team",
        "--as-uid",
        "sk-1234",
        "-o",
        "json",
    ]);
    let who = json(&who);
    assert_eq!(who["status"]["userInfo"]["username"], "sk-bob");
    assert_eq!(who["status"]["userInfo"]["uid"], "sk-1234");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!(["sk-team", "system:authenticated"])
    );

    // Impersonation needs the impersonate verb: the service account has none for users.
    let token = cp.ok(&["create", "token", "sk-sa", "-n", "sk-can"]);
    let kc = token_kubeconfig(&cp, "sk-sa", token.trim());
    let out = kubectl_as(
        &cp,
        &kc,
        &["get", "pods", "-n", "sk-can", "--as", "system:admin"],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("users \"system:admin\" is forbidden: User \"system:serviceaccount:sk-can:sk-sa\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        out.stderr
    );
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "get",
            "pods",
            "-n",
            "sk-can",
            "--as",
            sa,
            "--as-group",
            "system:masters",
        ],
    );
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("cannot impersonate resource \"groups\""),
        "{}",
        out.stderr
    );
    // A namespace's own URL is in that namespace: edit there may read the Namespace object.
    let out = kubectl_as(&cp, &kc, &["get", "namespace", "sk-can"]);
    assert!(out.ok, "{}", out.stderr);
    let out = kubectl_as(&cp, &kc, &["get", "namespace", "default"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("namespaces \"default\" is forbidden: User \"system:serviceaccount:sk-can:sk-sa\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"default\""),
        "{}",
        out.stderr
    );
    // edit grants impersonating service accounts of the namespace.
    cp.ok(&["create", "serviceaccount", "sk-other", "-n", "sk-can"]);
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "auth",
            "whoami",
            "--as",
            "system:serviceaccount:sk-can:sk-other",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("system:serviceaccount:sk-can:sk-other"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("system:serviceaccounts:sk-can"),
        "{}",
        out.stdout
    );

    // SubjectAccessReview as a webhook client would send it.
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "sk-bob", "resourceAttributes": {"verb": "list", "resource": "nodes"}}});
    let out = cp.with_stdin(&["create", "-f", "-", "-o", "json"], &sar.to_string());
    assert!(out.ok, "{}", out.stderr);
    let v = json(&out.stdout);
    assert_eq!(v["status"]["allowed"], true, "{v}");
    assert!(
        v["status"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("sk-bob-nodes"),
        "{v}"
    );
    cp.ok(&["delete", "namespace", "sk-can", "--wait=false"]);
    cp.ok(&[
        "delete",
        "clusterrolebinding",
        "sk-bob-nodes",
        "sk-team-view",
    ]);
    cp.ok(&["delete", "clusterrole", "sk-node-viewer"]);
}

#[test]
fn escalation_is_refused() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "namespace", "sk-esc"]);
    cp.ok(&["create", "serviceaccount", "sk-mgr", "-n", "sk-esc"]);
    cp.ok(&[
        "create", "role", "sk-rbac-writer", "-n", "sk-esc", "--verb=create,get,list,update,patch",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io,configmaps",
    ]);
    cp.ok(&[
        "create",
        "rolebinding",
        "sk-rbac-writer",
        "-n",
        "sk-esc",
        "--role=sk-rbac-writer",
        "--serviceaccount=sk-esc:sk-mgr",
    ]);
    let token = cp.ok(&["create", "token", "sk-mgr", "-n", "sk-esc"]);
    let kc = token_kubeconfig(&cp, "sk-mgr", token.trim());
    let groups = r#"(groups=["system:serviceaccounts" "system:serviceaccounts:sk-esc" "system:authenticated"])"#;

    // A role within what it holds: fine.
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "create",
            "role",
            "sk-cm-reader",
            "-n",
            "sk-esc",
            "--verb=get",
            "--resource=configmaps",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    // More than it holds: refused, listing what it lacks.
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "create",
            "role",
            "sk-secret-reader",
            "-n",
            "sk-esc",
            "--verb=get,delete",
            "--resource=secrets",
        ],
    );
    assert!(!out.ok);
    let want = format!(
        "roles.rbac.authorization.k8s.io \"sk-secret-reader\" is forbidden: user \"system:serviceaccount:sk-esc:sk-mgr\" {groups} is attempting to grant RBAC permissions not currently held:\n{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}}\n{{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"delete\"]}}"
    );
    assert!(out.stderr.contains(&want), "{}\nwanted: {want}", out.stderr);
    // Binding a role it does not hold: refused; one it holds: fine.
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "create",
            "rolebinding",
            "sk-admin",
            "-n",
            "sk-esc",
            "--clusterrole=admin",
            "--user=sk-eve",
        ],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("rolebindings.rbac.authorization.k8s.io \"sk-admin\" is forbidden: user \"system:serviceaccount:sk-esc:sk-mgr\"")
            && out.stderr.contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        out.stderr
    );
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "create",
            "rolebinding",
            "sk-cm",
            "-n",
            "sk-esc",
            "--role=sk-cm-reader",
            "--user=sk-eve",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    // Updating a role to grant more is refused the same way.
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "patch",
            "role",
            "sk-cm-reader",
            "-n",
            "sk-esc",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/rules/-","value":{"apiGroups":[""],"resources":["pods"],"verbs":["delete"]}}]"#,
        ],
    );
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("is attempting to grant RBAC permissions not currently held"),
        "{}",
        out.stderr
    );
    // With `bind` on the admin ClusterRole, the binding is allowed; with `escalate`, the role.
    cp.ok(&[
        "create",
        "role",
        "sk-binder",
        "-n",
        "sk-esc",
        "--verb=bind",
        "--resource=clusterroles.rbac.authorization.k8s.io",
        "--resource-name=admin",
    ]);
    cp.ok(&[
        "create",
        "rolebinding",
        "sk-binder",
        "-n",
        "sk-esc",
        "--role=sk-binder",
        "--serviceaccount=sk-esc:sk-mgr",
    ]);
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "create",
            "rolebinding",
            "sk-admin",
            "-n",
            "sk-esc",
            "--clusterrole=admin",
            "--user=sk-eve",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    cp.ok(&[
        "create",
        "role",
        "sk-escalator",
        "-n",
        "sk-esc",
        "--verb=escalate",
        "--resource=roles.rbac.authorization.k8s.io",
    ]);
    cp.ok(&[
        "create",
        "rolebinding",
        "sk-escalator",
        "-n",
        "sk-esc",
        "--role=sk-escalator",
        "--serviceaccount=sk-esc:sk-mgr",
    ]);
    let out = kubectl_as(
        &cp,
        &kc,
        &[
            "create",
            "role",
            "sk-secret-reader",
            "-n",
            "sk-esc",
            "--verb=get,delete",
            "--resource=secrets",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    cp.ok(&["delete", "namespace", "sk-esc", "--wait=false"]);
}

#[test]
fn node_identity_and_restriction() {
    let cp = ControlPlane::start();
    let tls = cp.dir().join("data/tls");
    let (crt, key) = (
        tls.join("client-kubelet.crt"),
        tls.join("client-kubelet.key"),
    );
    // The kubelet's certificate names the node.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&crt)
        .output()
        .expect("openssl");
    let subject = String::from_utf8_lossy(&out.stdout);
    assert!(
        subject.contains("system:node:sk-node") && subject.contains("system:nodes"),
        "{subject}"
    );

    cp.ok(&["create", "namespace", "sk-nodes"]);
    for s in ["sk-mine", "sk-theirs", "sk-unused"] {
        cp.ok(&[
            "create",
            "secret",
            "generic",
            s,
            "--from-literal=a=b",
            "-n",
            "sk-nodes",
        ]);
    }
    cp.ok(&[
        "create",
        "configmap",
        "sk-mine-cm",
        "--from-literal=a=b",
        "-n",
        "sk-nodes",
    ]);
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: sk-here, namespace: sk-nodes}
spec:
  nodeName: sk-node
  volumes: [{name: s, secret: {secretName: sk-mine}}, {name: c, configMap: {name: sk-mine-cm}}]
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: sk-there, namespace: sk-nodes}
spec:
  nodeName: sk-other-node
  containers: [{name: c, image: busybox, env: [{name: A, valueFrom: {secretKeyRef: {name: sk-theirs, key: a}}}]}]
"#;
    let out = cp.with_stdin(&["apply", "-f", "-"], pods);
    assert!(out.ok, "{}", out.stderr);
    let base = "/api/v1/namespaces/sk-nodes";
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "GET",
        &format!("{base}/secrets/sk-mine"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "GET",
        &format!("{base}/configmaps/sk-mine-cm"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    for s in ["sk-theirs", "sk-unused"] {
        let (code, body) = curl_cert(&cp, &crt, &key, "GET", &format!("{base}/secrets/{s}"), None);
        assert_eq!(code, 403, "{body}");
        assert_eq!(
            json(&body)["message"],
            format!("secrets \"{s}\" is forbidden: User \"system:node:sk-node\" cannot get resource \"secrets\" in API group \"\" in the namespace \"sk-nodes\": no relationship found between node 'sk-node' and this object")
        );
    }
    let (code, body) = curl_cert(&cp, &crt, &key, "GET", &format!("{base}/secrets"), None);
    assert_eq!(code, 403, "{body}");
    // A list (or watch) selecting one related object by name is a read of that object, as
    // upstream's kubelet watches the Secrets and ConfigMaps its pods use; an unrelated one is not.
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "GET",
        &format!("{base}/secrets?fieldSelector=metadata.name%3Dsk-mine"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["items"][0]["metadata"]["name"], "sk-mine");
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "GET",
        &format!("{base}/configmaps?fieldSelector=metadata.name%3Dsk-mine-cm&watch=true&timeoutSeconds=1"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ADDED\""), "{body}");
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "GET",
        &format!("{base}/secrets?fieldSelector=metadata.name%3Dsk-theirs"),
        None,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "secrets \"sk-theirs\" is forbidden: User \"system:node:sk-node\" cannot list resource \"secrets\" in API group \"\" in the namespace \"sk-nodes\": no relationship found between node 'sk-node' and this object"
    );
    // Pods, nodes: readable (the kubelet's watch).
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dsk-node",
        None,
    );
    assert_eq!(code, 200, "{body}");
    // NodeRestriction: its pods' status yes, another node's pod no; another Node no.
    let patch = r#"{"status":{"message":"sk"}}"#;
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "PATCH",
        &format!("{base}/pods/sk-here/status"),
        Some(patch),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "PATCH",
        &format!("{base}/pods/sk-there/status"),
        Some(patch),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "pods \"sk-there\" is forbidden: node \"sk-node\" can only update pod status for pods with spec.nodeName set to itself"
    );
    let other = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "sk-other-node"}});
    let out = cp.with_stdin(&["create", "-f", "-"], &other.to_string());
    assert!(out.ok, "{}", out.stderr);
    let (code, body) = curl_cert(
        &cp,
        &crt,
        &key,
        "PATCH",
        "/api/v1/nodes/sk-other-node",
        Some(r#"{"metadata":{"labels":{"sk":"x"}}}"#),
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        json(&body)["message"],
        "nodes \"sk-other-node\" is forbidden: node \"sk-node\" is not allowed to modify node \"sk-other-node\""
    );
    // kubectl auth can-i as the node for named objects.
    let node = [
        "--as=system:node:sk-node",
        "--as-group=system:nodes",
        "-n",
        "sk-nodes",
    ];
    let yes = cp.kubectl(&[&["auth", "can-i", "get", "secret/sk-mine"][..], &node[..]].concat());
    assert_eq!(yes.stdout.trim(), "yes", "{}", yes.stderr);
    let no = cp.kubectl(&[&["auth", "can-i", "get", "secret/sk-theirs"][..], &node[..]].concat());
    assert_eq!(
        no.stdout.trim(),
        "no - no relationship found between node 'sk-node' and this object",
        "{}",
        no.stderr
    );
    cp.ok(&["delete", "node", "sk-other-node"]);
    cp.ok(&["delete", "namespace", "sk-nodes", "--wait=false"]);
}

#[test]
fn bootstrap_and_legacy_tokens() {
    let cp = ControlPlane::start();
    let manifest = r#"
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-skabcd, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  token-id: skabcd
  token-secret: 0123456789abcdef
  usage-bootstrap-authentication: "true"
  auth-extra-groups: system:bootstrappers:sk-join
---
apiVersion: v1
kind: Secret
metadata: {name: bootstrap-token-skold0, namespace: kube-system}
type: bootstrap.kubernetes.io/token
stringData:
  token-id: skold0
  token-secret: 0123456789abcdef
  usage-bootstrap-authentication: "true"
  expiration: "2020-01-01T00:00:00Z"
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sk-legacy}
---
apiVersion: v1
kind: Secret
metadata:
  name: sk-legacy-token
  annotations: {kubernetes.io/service-account.name: sk-legacy}
type: kubernetes.io/service-account-token
"#;
    let out = cp.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.ok, "{}", out.stderr);
    let kc = token_kubeconfig(&cp, "sk-boot", "skabcd.0123456789abcdef");
    let out = kubectl_as(&cp, &kc, &["auth", "whoami", "-o", "json"]);
    assert!(out.ok, "{}", out.stderr);
    let v = json(&out.stdout);
    assert_eq!(
        v["status"]["userInfo"]["username"],
        "system:bootstrap:skabcd"
    );
    assert_eq!(
        v["status"]["userInfo"]["groups"],
        json!([
            "system:bootstrappers",
            "system:bootstrappers:sk-join",
            "system:authenticated"
        ])
    );
    for bad in [
        "skabcd.0123456789abcdee",
        "skold0.0123456789abcdef",
        "sknone.0123456789abcdef",
    ] {
        let (code, body) = curl_token(&cp, Some(bad), "GET", "/api");
        unauthorized(code, &body, bad);
    }
    // The legacy secret was filled with a token, the CA and the namespace.
    let s = json(&cp.ok(&["get", "secret", "sk-legacy-token", "-o", "json"]));
    for k in ["token", "ca.crt", "namespace"] {
        assert!(s["data"][k].is_string(), "no {k} in {s}");
    }
    let uid = cp.ok(&["get", "sa", "sk-legacy", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(
        s["metadata"]["annotations"]["kubernetes.io/service-account.uid"],
        uid.trim()
    );
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(s["data"]["token"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let (code, body) = curl_token(&cp, Some(&token), "GET", "/api");
    assert_eq!(code, 200, "{body}");
    cp.ok(&["delete", "secret", "sk-legacy-token"]);
    let (code, body) = curl_token(&cp, Some(&token), "GET", "/api");
    unauthorized(code, &body, "legacy token of a deleted secret");
    cp.ok(&[
        "delete",
        "secret",
        "-n",
        "kube-system",
        "bootstrap-token-skabcd",
        "bootstrap-token-skold0",
    ]);
    cp.ok(&["delete", "serviceaccount", "sk-legacy"]);
}

#[test]
fn admission_service_account_and_pod_security() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "namespace", "sk-adm"]);
    let pod = |name: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: sk-adm}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n{extra}")
    };
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-auto", ""));
    assert!(out.ok, "{}", out.stderr);
    let p = json(&cp.ok(&["get", "pod", "sk-auto", "-n", "sk-adm", "-o", "json"]));
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let vol = &p["spec"]["volumes"][0];
    let name = vol["name"].as_str().unwrap_or("");
    assert!(
        name.starts_with("kube-api-access-") && name.len() == 21,
        "{vol}"
    );
    assert_eq!(
        vol["projected"],
        json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]})
    );
    assert_eq!(
        p["spec"]["containers"][0]["volumeMounts"],
        json!([{"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}])
    );
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-noauto", "  automountServiceAccountToken: false\n"),
    );
    assert!(out.ok, "{}", out.stderr);
    let p = json(&cp.ok(&["get", "pod", "sk-noauto", "-n", "sk-adm", "-o", "json"]));
    assert!(
        p["spec"]["volumes"].as_array().is_none_or(|v| v.is_empty()),
        "{p}"
    );
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-nosa", "  serviceAccountName: sk-missing\n"),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("pods \"sk-nosa\" is forbidden: error looking up service account sk-adm/sk-missing: serviceaccount \"sk-missing\" not found"),
        "{}",
        out.stderr
    );

    // PodSecurity: a restricted namespace rejects a privileged pod with upstream's message.
    cp.ok(&[
        "label",
        "namespace",
        "sk-adm",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let privileged = pod("sk-priv", "").replace(
        "[{name: c, image: busybox}]",
        "[{name: c, image: busybox, securityContext: {privileged: true}}]",
    );
    let out = cp.with_stdin(&["apply", "-f", "-"], &privileged);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("pods \"sk-priv\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{}",
        out.stderr
    );
    // A pod that meets restricted is admitted.
    let fine = pod("sk-fine", "").replace(
        "[{name: c, image: busybox}]",
        "[{name: c, image: busybox, securityContext: {allowPrivilegeEscalation: false, runAsNonRoot: true, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}}]",
    );
    let out = cp.with_stdin(&["apply", "-f", "-"], &fine);
    assert!(out.ok, "{}", out.stderr);
    // warn: kubectl prints the Warning header; the pod is created.
    cp.ok(&["create", "namespace", "sk-warn"]);
    cp.ok(&[
        "label",
        "namespace",
        "sk-warn",
        "pod-security.kubernetes.io/warn=baseline",
    ]);
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &privileged.replace("sk-adm", "sk-warn"),
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("Warning: would violate PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{}",
        out.stderr
    );
    cp.ok(&["delete", "namespace", "sk-adm", "sk-warn", "--wait=false"]);
}

#[test]
fn admission_quota_limits_and_default_storage_class() {
    let cp = ControlPlane::start();
    cp.ok(&["create", "namespace", "sk-quota"]);
    cp.ok(&[
        "create",
        "quota",
        "sk-q",
        "--hard=pods=2,count/deployments.apps=1",
        "-n",
        "sk-quota",
    ]);
    let pod = |name: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: sk-quota}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n")
    };
    for p in ["sk-p1", "sk-p2"] {
        let out = cp.with_stdin(&["apply", "-f", "-"], &pod(p));
        assert!(out.ok, "{}", out.stderr);
    }
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-p3"));
    assert!(!out.ok);
    assert!(
        out.stderr.contains("pods \"sk-p3\" is forbidden: exceeded quota: sk-q, requested: pods=1, used: pods=2, limited: pods=2"),
        "{}",
        out.stderr
    );
    cp.ok(&[
        "create",
        "deployment",
        "sk-d1",
        "--image=busybox",
        // No pods: the pods quota is full, and the controllers would take the first free slot.
        "--replicas=0",
        "-n",
        "sk-quota",
    ]);
    let err = cp.fails(&[
        "create",
        "deployment",
        "sk-d2",
        "--image=busybox",
        "-n",
        "sk-quota",
    ]);
    assert!(
        err.contains("deployments.apps \"sk-d2\" is forbidden: exceeded quota: sk-q, requested: count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"),
        "{err}"
    );
    cp.wait_for(
        "the quota's status.used",
        std::time::Duration::from_secs(10),
        || {
            cp.kubectl(&[
                "get",
                "quota",
                "sk-q",
                "-n",
                "sk-quota",
                "-o",
                "jsonpath={.status.used.pods}",
            ])
            .stdout
                == "2"
        },
    );
    // Deleting a pod frees its share.
    cp.ok(&["delete", "pod", "sk-p1", "-n", "sk-quota"]);
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-p3"));
    assert!(out.ok, "{}", out.stderr);

    // Compute quota: pods must name what it tracks; LimitRange defaults and limits.
    cp.ok(&["create", "namespace", "sk-limits"]);
    cp.ok(&[
        "create",
        "quota",
        "sk-cpu",
        "--hard=requests.cpu=1",
        "-n",
        "sk-limits",
    ]);
    let pod2 = |name: &str, res: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: sk-limits}}\nspec:\n  containers: [{{name: c, image: busybox{res}}}]\n")
    };
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod2("sk-bare", ""));
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "pods \"sk-bare\" is forbidden: failed quota: sk-cpu: must specify requests.cpu for: c"
        ),
        "{}",
        out.stderr
    );
    let lr = r#"{"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "sk-lr", "namespace": "sk-limits"},
        "spec": {"limits": [{"type": "Container", "defaultRequest": {"cpu": "400m"}, "max": {"memory": "1Gi"}}]}}"#;
    let out = cp.with_stdin(&["create", "-f", "-"], lr);
    assert!(out.ok, "{}", out.stderr);
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod2("sk-defaulted", ""));
    assert!(out.ok, "{}", out.stderr);
    let p = json(&cp.ok(&[
        "get",
        "pod",
        "sk-defaulted",
        "-n",
        "sk-limits",
        "-o",
        "json",
    ]));
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"]["cpu"], "400m",
        "{p}"
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; memory limit for container c"
    );
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod2("sk-second", ""));
    assert!(out.ok, "{}", out.stderr);
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod2("sk-third", ""));
    assert!(!out.ok);
    assert!(
        out.stderr.contains("pods \"sk-third\" is forbidden: exceeded quota: sk-cpu, requested: requests.cpu=400m, used: requests.cpu=800m, limited: requests.cpu=1"),
        "{}",
        out.stderr
    );
    let big = ", resources: {limits: {memory: 2Gi}, requests: {cpu: 100m}}";
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod2("sk-big", big));
    assert!(!out.ok);
    assert!(
        out.stderr.contains("pods \"sk-big\" is forbidden: maximum memory usage per Container is 1Gi, but limit is 2Gi"),
        "{}",
        out.stderr
    );

    // DefaultStorageClass.
    let sc = r#"{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "sk-default", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "sk.example/none"}"#;
    let out = cp.with_stdin(&["create", "-f", "-"], sc);
    assert!(out.ok, "{}", out.stderr);
    let pvc = r#"{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "sk-claim", "namespace": "sk-limits"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}"#;
    let out = cp.with_stdin(&["create", "-f", "-"], pvc);
    assert!(out.ok, "{}", out.stderr);
    let class = cp.ok(&[
        "get",
        "pvc",
        "sk-claim",
        "-n",
        "sk-limits",
        "-o",
        "jsonpath={.spec.storageClassName}",
    ]);
    assert_eq!(class, "sk-default");
    cp.ok(&[
        "delete",
        "namespace",
        "sk-quota",
        "sk-limits",
        "--wait=false",
    ]);
    cp.ok(&["delete", "storageclass", "sk-default"]);
}

/// The test's webhook server (tests/python/webhook_server.py), stopped by PID on drop.
struct WebhookServer {
    child: std::process::Child,
    port: u16,
    ca_b64: String,
}

impl WebhookServer {
    fn start(dir: &std::path::Path) -> WebhookServer {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl on PATH");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sk-webhook-ca",
            "-keyout",
            "sk-wh-ca.key",
            "-out",
            "sk-wh-ca.crt",
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "sk-wh.key",
            "-out",
            "sk-wh.csr",
        ]);
        std::fs::write(dir.join("sk-wh.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "sk-wh.csr",
            "-CA",
            "sk-wh-ca.crt",
            "-CAkey",
            "sk-wh-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "sk-wh.ext",
            "-out",
            "sk-wh.crt",
        ]);
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/webhook_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.join("sk-wh.crt"))
            .arg(dir.join("sk-wh.key"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("python3 on PATH");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("webhook port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("webhook server printed {line:?}"));
        let ca = std::fs::read(dir.join("sk-wh-ca.crt")).unwrap();
        WebhookServer {
            child,
            port,
            ca_b64: base64::engine::general_purpose::STANDARD.encode(ca),
        }
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        // Only the process this test started, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn admission_webhooks() {
    let cp = ControlPlane::start();
    let wh = WebhookServer::start(cp.dir());
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", wh.port);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let hook = |name: &str, url: String, extra: Value| {
        let mut h = json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"url": url, "caBundle": wh.ca_b64},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"sk-webhook": "on"}}});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let mutating = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "sk-mutate"}, "webhooks": [hook("sk-mutate.sk.example", url("/mutate"), json!({}))]});
    let validating = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
    "metadata": {"name": "sk-validate"}, "webhooks": [
        hook("sk-validate.sk.example", url("/validate"), json!({})),
        hook("sk-broken.sk.example", format!("https://127.0.0.1:{closed}/validate"),
            json!({"failurePolicy": "Fail", "objectSelector": {"matchLabels": {"sk-broken": "yes"}}})),
        hook("sk-ignored.sk.example", format!("https://127.0.0.1:{closed}/validate"),
            json!({"failurePolicy": "Ignore", "objectSelector": {"matchLabels": {"sk-ignore": "yes"}}})),
        hook("sk-slow.sk.example", url("/slow"),
            json!({"timeoutSeconds": 1, "objectSelector": {"matchLabels": {"sk-slow": "yes"}}})),
    ]});
    for cfg in [&mutating, &validating] {
        let out = cp.with_stdin(&["create", "-f", "-"], &cfg.to_string());
        assert!(out.ok, "{}", out.stderr);
    }
    cp.ok(&["create", "namespace", "sk-hooks"]);
    cp.ok(&["label", "namespace", "sk-hooks", "sk-webhook=on"]);
    cp.ok(&["create", "namespace", "sk-nohooks"]);
    let pod = |ns: &str, name: &str, labels: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec:\n  containers: [{{name: c, image: busybox}}]\n")
    };
    // Mutated and warned.
    let out = cp.with_stdin(&["apply", "-f", "-"], &pod("sk-hooks", "sk-ok", "app: sk"));
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Warning: sk-webhook saw sk-ok as system:admin"),
        "{}",
        out.stderr
    );
    let labels = cp.ok(&[
        "get",
        "pod",
        "sk-ok",
        "-n",
        "sk-hooks",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(
        labels.contains("\"sk-mutated\":\"yes\"") && labels.contains("\"app\":\"sk\""),
        "{labels}"
    );
    // Denied with upstream's message and the webhook's code.
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-hooks", "sk-denied", "sk-deny: \"true\""),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "admission webhook \"sk-validate.sk.example\" denied the request: sk-webhook says no"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("(Forbidden)"), "{}", out.stderr);
    // Outside the selected namespace: neither webhook is called.
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-nohooks", "sk-free", "sk-deny: \"true\""),
    );
    assert!(out.ok, "{}", out.stderr);
    let labels = cp.ok(&[
        "get",
        "pod",
        "sk-free",
        "-n",
        "sk-nohooks",
        "-o",
        "jsonpath={.metadata.labels}",
    ]);
    assert!(!labels.contains("sk-mutated"), "{labels}");
    // failurePolicy Fail on an unreachable webhook refuses; Ignore lets the pod through.
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-hooks", "sk-b", "sk-broken: \"yes\""),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("Internal error occurred: failed calling webhook \"sk-broken.sk.example\": failed to call webhook: Post \"https://127.0.0.1:"),
        "{}",
        out.stderr
    );
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-hooks", "sk-i", "sk-ignore: \"yes\""),
    );
    assert!(out.ok, "{}", out.stderr);
    // timeoutSeconds: 1 against a webhook that answers after 3 s.
    let started = std::time::Instant::now();
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-hooks", "sk-s", "sk-slow: \"yes\""),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("context deadline exceeded"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "the timeout was not applied"
    );
    cp.ok(&["delete", "mutatingwebhookconfiguration", "sk-mutate"]);
    cp.ok(&["delete", "validatingwebhookconfiguration", "sk-validate"]);
    // Gone with their configurations.
    let out = cp.with_stdin(
        &["apply", "-f", "-"],
        &pod("sk-hooks", "sk-after", "sk-deny: \"true\""),
    );
    assert!(out.ok, "{}", out.stderr);
    cp.ok(&[
        "delete",
        "namespace",
        "sk-hooks",
        "sk-nohooks",
        "--wait=false",
    ]);
}

#[test]
fn node_component_identities_are_least_privilege() {
    let cp = ControlPlane::start();
    let can = |user: &str, args: &[&str]| {
        let mut a = vec!["auth", "can-i"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--as", user]);
        cp.kubectl(&a).stdout.trim().to_string()
    };
    // The service proxy: upstream's system:node-proxier, plus LoadBalancer statuses.
    let proxy = "system:kube-proxy";
    assert_eq!(can(proxy, &["list", "services", "-A"]), "yes");
    assert_eq!(
        can(proxy, &["watch", "endpointslices.discovery.k8s.io", "-A"]),
        "yes"
    );
    assert_eq!(
        can(proxy, &["patch", "services", "--subresource=status", "-A"]),
        "yes"
    );
    assert_eq!(can(proxy, &["create", "pods", "-A"]), "no");
    assert_eq!(can(proxy, &["get", "secrets", "-A"]), "no");
    assert_eq!(can(proxy, &["patch", "services", "-A"]), "no");
    // The cluster DNS: what CoreDNS reads, and its own kube-dns Service only.
    let dns = "system:skiff-dns";
    assert_eq!(
        can(dns, &["list", "endpointslices.discovery.k8s.io", "-A"]),
        "yes"
    );
    assert_eq!(
        can(dns, &["patch", "service/kube-dns", "-n", "kube-system"]),
        "yes"
    );
    assert_eq!(
        can(dns, &["patch", "service/kubernetes", "-n", "default"]),
        "no"
    );
    assert_eq!(can(dns, &["get", "secrets", "-A"]), "no");
    assert_eq!(can(dns, &["delete", "services", "-A"]), "no");
}
