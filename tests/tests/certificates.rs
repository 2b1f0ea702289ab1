//! CertificateSigningRequests end to end on the control plane: keys and requests made with
//! openssl, `kubectl certificate approve|deny`, the signer issuing from the cluster CA (usages,
//! expirationSeconds, refusals with the Failed condition), the kubelet client auto-approver, and
//! the issued certificates authenticating to the API server (`kubectl auth whoami`).

use serde_json::{json, Value};
use skiff_tests::control_plane::{kubectl_bin, ControlPlane};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is missing: these tests make keys and requests with it");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new RSA key and a PKCS#10 request for `subject` (with extra `-addext` SANs); returns the
/// key's path and the request PEM.
fn key_and_request(dir: &Path, name: &str, subject: &str, san: Option<&str>) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    openssl(&["genrsa", "-out", key.to_str().unwrap(), "2048"]);
    let mut args = vec![
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        subject,
        "-out",
        csr.to_str().unwrap(),
    ];
    let addext;
    if let Some(s) = san {
        addext = format!("subjectAltName={s}");
        args.extend_from_slice(&["-addext", &addext]);
    }
    openssl(&args);
    (key, std::fs::read_to_string(csr).expect("read the request"))
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= if c == b'=' { 0 } else { val(c) } << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn create_csr(
    c: &ControlPlane,
    kubeconfig: Option<&Path>,
    name: &str,
    request: &str,
    signer: &str,
    usages: &[&str],
    expiration: Option<i64>,
) {
    let mut spec =
        json!({"request": b64(request.as_bytes()), "signerName": signer, "usages": usages});
    if let Some(e) = expiration {
        spec["expirationSeconds"] = json!(e);
    }
    let manifest =
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name}, "spec": spec})
        .to_string();
    let env: Vec<(&str, &str)> = match kubeconfig {
        Some(k) => vec![("KUBECONFIG", k.to_str().unwrap())],
        None => vec![],
    };
    let o = c.kubectl_with(
        &kubectl_bin(None),
        &["create", "-f", "-"],
        Some(&manifest),
        &env,
    );
    assert!(o.ok, "create csr {name}: {}", o.stderr);
}

fn csr(c: &ControlPlane, name: &str) -> Value {
    serde_json::from_str(&c.ok(&["get", "csr", name, "-o", "json"])).expect("csr json")
}

fn condition(v: &Value, type_: &str) -> Option<Value> {
    v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == type_).cloned())
}

/// Waits for the certificate and writes it beside the key; returns its path.
fn wait_certificate(c: &ControlPlane, name: &str) -> PathBuf {
    let mut pem = Vec::new();
    c.wait_for(&format!("csr {name} to be issued"), WAIT, || {
        let v = csr(c, name);
        match v["status"]["certificate"].as_str() {
            Some(s) if !s.is_empty() => {
                pem = unb64(s);
                true
            }
            _ => false,
        }
    });
    let path = c.dir().join(format!("{name}.crt"));
    std::fs::write(&path, &pem).expect("write the certificate");
    path
}

/// A kubeconfig for a client certificate against this server.
fn kubeconfig(c: &ControlPlane, name: &str, crt: &Path, key: &Path) -> PathBuf {
    let (_, _, ca) = c.admin_pems();
    let path = c.dir().join(format!("{name}.kubeconfig"));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\n",
        c.url(),
        ca.display(),
        crt.display(),
        key.display()
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

fn whoami(c: &ControlPlane, kubeconfig: &Path) -> Value {
    let o = c.kubectl_with(
        &kubectl_bin(None),
        &["auth", "whoami", "-o", "json"],
        None,
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    assert!(o.ok, "kubectl auth whoami: {}", o.stderr);
    serde_json::from_str(&o.stdout).expect("whoami json")
}

fn epoch(openssl_date: &str) -> i64 {
    let out = Command::new("date")
        .args(["-u", "-d", openssl_date, "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date of {openssl_date:?}"))
}

#[test]
fn csr_approve_sign_deny_and_autoapprove() {
    let c = ControlPlane::start();
    let dir = c.dir().to_path_buf();

    // A client certificate for a person, approved with kubectl.
    let (key, req) = key_and_request(&dir, "sk-alice", "/CN=sk-alice/O=sk-team", None);
    create_csr(
        &c,
        None,
        "sk-alice",
        &req,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        Some(700),
    );
    let v = csr(&c, "sk-alice");
    assert_eq!(v["spec"]["username"], "system:admin", "the requester: {v}");
    let listed = c.ok(&["get", "csr", "sk-alice"]);
    assert!(listed.contains("Pending"), "{listed}");
    let out = c.ok(&["certificate", "approve", "sk-alice"]);
    assert!(out.contains("approved"), "{out}");
    let crt = wait_certificate(&c, "sk-alice");
    let listed = c.ok(&["get", "csr", "sk-alice"]);
    assert!(listed.contains("Approved,Issued"), "{listed}");
    let text = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    let (_, _, ca) = c.admin_pems();
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        crt.to_str().unwrap(),
    ]);
    assert!(verify.contains("OK"), "{verify}");
    // expirationSeconds 700: valid from 5 minutes back to 700 s from signing.
    let start = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-startdate"]);
    let end = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-enddate"]);
    let span = epoch(end.trim().trim_start_matches("notAfter="))
        - epoch(start.trim().trim_start_matches("notBefore="));
    assert_eq!(span, 1000, "validity {start} .. {end}");
    let me = whoami(&c, &kubeconfig(&c, "sk-alice", &crt, &key));
    assert_eq!(me["status"]["userInfo"]["username"], "sk-alice", "{me}");
    let groups = me["status"]["userInfo"]["groups"].to_string();
    assert!(
        groups.contains("sk-team") && groups.contains("system:authenticated"),
        "{me}"
    );

    // Below the minimum is refused at create; the minimum itself is 600 s (plus the 5 minutes
    // of backdating).
    let (_, req) = key_and_request(&dir, "sk-short", "/CN=sk-short", None);
    let manifest = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "sk-short"}, "spec": {"request": b64(req.as_bytes()),
        "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "expirationSeconds": 60}})
    .to_string();
    let o = c.with_stdin(&["create", "-f", "-"], &manifest);
    assert!(
        !o.ok
            && o.stderr.contains(
                "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 600 seconds (10 minutes)"
            ),
        "{}",
        o.stderr
    );
    create_csr(
        &c,
        None,
        "sk-short",
        &req,
        "kubernetes.io/kube-apiserver-client",
        &["client auth", "digital signature"],
        Some(600),
    );
    c.ok(&["certificate", "approve", "sk-short"]);
    let crt = wait_certificate(&c, "sk-short");
    let start = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-startdate"]);
    let end = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-enddate"]);
    let span = epoch(end.trim().trim_start_matches("notAfter="))
        - epoch(start.trim().trim_start_matches("notBefore="));
    assert_eq!(span, 900, "validity {start} .. {end}");

    // Denied: never signed.
    let (_, req) = key_and_request(&dir, "sk-bob", "/CN=sk-bob", None);
    create_csr(
        &c,
        None,
        "sk-bob",
        &req,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
        None,
    );
    // Approving needs `approve` on the signer, beyond updating `/approval` (upstream's
    // CertificateApproval admission).
    c.ok(&[
        "create",
        "clusterrole",
        "sk-csr-updater",
        "--verb=get,list,update",
        "--resource=certificatesigningrequests,certificatesigningrequests/approval",
    ]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "sk-csr-updater",
        "--clusterrole=sk-csr-updater",
        "--user=sk-alice",
    ]);
    let alice = c.dir().join("sk-alice.kubeconfig");
    let o = c.kubectl_with(
        &kubectl_bin(None),
        &["certificate", "approve", "sk-bob"],
        None,
        &[("KUBECONFIG", alice.to_str().unwrap())],
    );
    assert!(
        !o.ok
            && o.stderr.contains(
                "user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""
            ),
        "approving without the signer's approve verb: {}",
        o.stderr
    );
    c.ok(&["delete", "clusterrolebinding", "sk-csr-updater"]);
    c.ok(&["delete", "clusterrole", "sk-csr-updater"]);
    c.ok(&["certificate", "deny", "sk-bob"]);
    let v = csr(&c, "sk-bob");
    assert_eq!(condition(&v, "Denied").unwrap()["reason"], "KubectlDeny");

    // A request the signer's rules refuse: Failed with upstream's reason and message.
    let (_, req) = key_and_request(&dir, "sk-carol", "/CN=sk-carol", None);
    create_csr(
        &c,
        None,
        "sk-carol",
        &req,
        "kubernetes.io/kube-apiserver-client",
        &["client auth", "server auth"],
        None,
    );
    c.ok(&["certificate", "approve", "sk-carol"]);
    c.wait_for("sk-carol to fail", WAIT, || {
        condition(&csr(&c, "sk-carol"), "Failed").is_some_and(|f| {
            f["status"] == "True"
                && f["reason"] == "SignerValidationFailure"
                && f["message"] == "invalid usage for client certificate: server auth"
        })
    });
    assert!(csr(&c, "sk-carol")["status"]["certificate"].is_null());

    // A kubelet serving certificate.
    let (_, req) = key_and_request(
        &dir,
        "sk-serving",
        "/CN=system:node:sk-node/O=system:nodes",
        Some("DNS:sk-node,IP:127.0.0.1"),
    );
    create_csr(
        &c,
        None,
        "sk-serving",
        &req,
        "kubernetes.io/kubelet-serving",
        &["digital signature", "key encipherment", "server auth"],
        None,
    );
    c.ok(&["certificate", "approve", "sk-serving"]);
    let crt = wait_certificate(&c, "sk-serving");
    let text = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"]);
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains("DNS:sk-node")
            && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );

    // The node asks for a client certificate of its own name: approved automatically
    // (selfnodeclient), signed, and it authenticates as the node.
    let node_kubeconfig = dir.join("data/agent/kubelet.kubeconfig");
    assert!(
        node_kubeconfig.exists(),
        "{} is missing: skiff server writes the node's kubeconfig",
        node_kubeconfig.display()
    );
    let (_, other) = key_and_request(
        &dir,
        "sk-other-node",
        "/CN=system:node:sk-other/O=system:nodes",
        None,
    );
    create_csr(
        &c,
        Some(&node_kubeconfig),
        "sk-other-node",
        &other,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "key encipherment", "client auth"],
        None,
    );
    let (nkey, req) = key_and_request(
        &dir,
        "sk-node-client",
        "/CN=system:node:sk-node/O=system:nodes",
        None,
    );
    create_csr(
        &c,
        Some(&node_kubeconfig),
        "sk-node-client",
        &req,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "key encipherment", "client auth"],
        None,
    );
    let crt = wait_certificate(&c, "sk-node-client");
    let v = csr(&c, "sk-node-client");
    let approved = condition(&v, "Approved").expect("approved");
    assert_eq!(approved["reason"], "AutoApproved", "{v}");
    assert_eq!(
        approved["message"],
        "Auto approving self kubelet client certificate after SubjectAccessReview.",
        "{v}"
    );
    let me = whoami(&c, &kubeconfig(&c, "sk-node-client", &crt, &nkey));
    assert_eq!(
        me["status"]["userInfo"]["username"], "system:node:sk-node",
        "{me}"
    );
    // Another node's name is not the node's to ask for: left pending.
    let v = csr(&c, "sk-other-node");
    assert!(
        condition(&v, "Approved").is_none() && v["status"]["certificate"].is_null(),
        "{v}"
    );

    for n in [
        "sk-alice",
        "sk-short",
        "sk-bob",
        "sk-carol",
        "sk-serving",
        "sk-other-node",
        "sk-node-client",
    ] {
        c.ok(&["delete", "csr", n]);
    }
}
