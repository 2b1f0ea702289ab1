//! The audit log (`--audit-policy-file`, `--audit-log-path`) through kubectl: events as
//! `audit.k8s.io/v1` JSON lines, levels and stages from the policy's rules, users and
//! impersonation, request and response bodies at the levels that ask for them, rotation.

use serde_json::Value;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  users: ["system:kube-scheduler", "system:kube-controller-manager", "system:apiserver"]
- level: None
  resources:
  - group: "coordination.k8s.io"
    resources: ["leases"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["configmaps"]
  namespaces: ["sk-audit"]
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
- level: Metadata
  nonResourceURLs: ["/version"]
"#;

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
        .collect()
}

#[test]
fn audit_log_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let log = dir.path().join("audit/audit.log");
    let cp = ControlPlane::start_with_args(&[
        "--audit-policy-file",
        policy.to_str().unwrap(),
        "--audit-log-path",
        log.to_str().unwrap(),
        "--audit-log-maxsize",
        "1",
        "--audit-log-maxbackup",
        "2",
    ]);
    cp.ok(&["create", "namespace", "sk-audit"]);
    cp.ok(&[
        "create",
        "configmap",
        "sk-cm",
        "-n",
        "sk-audit",
        "--from-literal=k=v",
    ]);
    cp.ok(&[
        "create",
        "secret",
        "generic",
        "sk-secret",
        "-n",
        "sk-audit",
        "--from-literal=password=hunter2",
    ]);
    cp.ok(&["get", "--raw", "/version"]);
    let denied = cp.fails(&[
        "get",
        "configmap",
        "sk-cm",
        "-n",
        "sk-audit",
        "--as",
        "sk-nobody",
    ]);
    assert!(denied.contains("forbidden"), "{denied}");
    cp.ok(&["delete", "configmap", "sk-cm", "-n", "sk-audit"]);

    let mut all = vec![];
    cp.wait_for("the audit events", Duration::from_secs(30), || {
        all = events(&log);
        all.iter().any(|e| {
            e["verb"] == "delete"
                && e["objectRef"]["resource"] == "configmaps"
                && e["stage"] == "ResponseComplete"
        })
    });
    for e in &all {
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_ne!(e["stage"], "RequestReceived", "omitted stage logged: {e}");
        assert!(e["auditID"].as_str().is_some_and(|s| s.len() == 36), "{e}");
        assert_ne!(e["user"]["username"], "system:kube-scheduler", "{e}");
        assert_ne!(e["objectRef"]["resource"], "leases", "{e}");
        assert!(e["requestReceivedTimestamp"].is_string() && e["stageTimestamp"].is_string());
    }
    // The configmap create: RequestResponse with both bodies.
    let create = all
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "configmaps")
        .expect("a configmap create event");
    assert_eq!(create["level"], "RequestResponse");
    assert_eq!(create["objectRef"]["namespace"], "sk-audit");
    assert_eq!(create["objectRef"]["name"], "sk-cm");
    assert_eq!(create["objectRef"]["apiVersion"], "v1");
    assert_eq!(create["requestObject"]["data"]["k"], "v");
    assert_eq!(create["responseObject"]["metadata"]["name"], "sk-cm");
    assert_eq!(create["responseStatus"]["code"], 201);
    assert_eq!(create["user"]["username"], "system:admin");
    assert_eq!(
        create["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(
        create["sourceIPs"][0]
            .as_str()
            .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()),
        "{create}"
    );
    assert!(create["userAgent"]
        .as_str()
        .is_some_and(|u| u.starts_with("kubectl")));
    // Secrets: Metadata only, never their data.
    let secret = all
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "secrets")
        .expect("a secret create event");
    assert_eq!(secret["level"], "Metadata");
    assert!(secret.get("requestObject").is_none() && secret.get("responseObject").is_none());
    assert!(!secret.to_string().contains("hunter2"));
    // A non-resource URL.
    assert!(all
        .iter()
        .any(|e| e["requestURI"] == "/version" && e["verb"] == "get" && e["level"] == "Metadata"));
    // Impersonation: the real user, the impersonated one, the denial and its Status.
    let imp = all
        .iter()
        .find(|e| e["impersonatedUser"]["username"] == "sk-nobody")
        .expect("the impersonated request");
    assert_eq!(imp["user"]["username"], "system:admin");
    assert_eq!(imp["responseStatus"]["code"], 403);
    assert_eq!(imp["responseStatus"]["reason"], "Forbidden");
    assert_eq!(
        imp["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    // Nothing of the namespace create: no rule matched it (level None).
    assert!(!all
        .iter()
        .any(|e| e["objectRef"]["resource"] == "namespaces" && e["verb"] == "create"));

    // Rotation at 1 MiB keeps at most two backups.
    let big = dir.path().join("big");
    std::fs::write(&big, "x".repeat(200_000)).unwrap();
    for i in 0..8 {
        let name = format!("sk-big-{i}");
        cp.ok(&[
            "create",
            "configmap",
            &name,
            "-n",
            "sk-audit",
            &format!("--from-file=k={}", big.display()),
        ]);
    }
    let listing = || {
        let mut names: Vec<(String, u64)> = std::fs::read_dir(log.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        names.sort();
        names
    };
    let mut last = vec![];
    for _ in 0..150 {
        last = listing();
        if last.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(last.len(), 3, "audit log and two backups: {last:?}");
    assert!(std::fs::metadata(&log).unwrap().len() <= 1 << 20);
}

#[test]
fn a_bad_audit_policy_stops_the_start_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n",
    )
    .unwrap();
    let out = std::process::Command::new(skiff_tests::workspace_bin("skiff"))
        .args(["server", "--disable-agent", "--https-listen-port", "1"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--audit-policy-file")
        .arg(&policy)
        .arg("--audit-log-path")
        .arg(dir.path().join("audit.log"))
        .output()
        .expect("run skiff server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("policy.yaml") && err.contains("Loud"), "{err}");
}
