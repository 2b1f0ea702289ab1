//! Client libraries and bad input against `skiff server --disable-agent`: the official Python
//! `kubernetes` client (CRUD, patch, scale/status subresources, watch), and malformed requests
//! (wrong types, over-size bodies, deep nesting, invalid UTF-8, unknown kinds, bad selectors)
//! that must get a Status error with the right code, store nothing and leave the server serving.

use skiff_tests::control_plane::ControlPlane;
use std::process::Command;

#[test]
fn python_kubernetes_client() {
    let cp = ControlPlane::start();
    let check = Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .expect("python3 on PATH");
    assert!(
        check.status.success(),
        "the Python `kubernetes` package is missing (pip install kubernetes): {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client_test.py");
    let out = Command::new("python3")
        .arg(script)
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "Python client checks failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cp.log_tail()
    );
}

/// POSTs/GETs with curl and the admin certificate; returns (HTTP code, body).
fn curl(cp: &ControlPlane, method: &str, path: &str, ct: &str, body: &[u8]) -> (u16, String) {
    let (crt, key, ca) = cp.admin_pems();
    let file = cp.dir().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--cert")
        .arg(crt)
        .arg("--key")
        .arg(key)
        .arg("--cacert")
        .arg(ca)
        .args(["-H", &format!("Content-Type: {ct}")])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}{path}", cp.url()))
        .output()
        .expect("curl on PATH");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// What is sent, and the code and reason expected back.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: impl Into<Vec<u8>>,
    code: u16,
    reason: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        body: body.into(),
        code,
        reason,
    }
}

#[test]
fn bad_input_gets_status_errors() {
    let cp = ControlPlane::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    let json = "application/json";
    let cases = vec![
        case("wrong type", "POST", cms, br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"sk-bad"},"data":{"a":1}}"#, 400, "BadRequest"),
        case("not an object", "POST", cms, b"[1,2]", 400, "BadRequest"),
        case("invalid JSON", "POST", cms, b"{\"apiVersion\":", 400, "BadRequest"),
        case("invalid UTF-8", "POST", cms, b"{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"sk-\xff\"}}", 400, "BadRequest"),
        case("deep nesting", "POST", cms, format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(), 400, "BadRequest"),
        case("over 3 MiB", "POST", cms, format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"sk-big\"}},\"data\":{{\"a\":\"{}\"}}}}", "x".repeat(3 * 1024 * 1024 + 10)).into_bytes(), 413, "RequestEntityTooLarge"),
        case("invalid name", "POST", cms, br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Sk_Bad"}}"#, 422, "Invalid"),
        case("kind mismatch", "POST", cms, br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"sk-x"}}"#, 400, "BadRequest"),
        case("unknown kind", "POST", "/api/v1/namespaces/default/skwidgets", b"{}", 404, "NotFound"),
        case("bad label selector", "GET", format!("{cms}?labelSelector=a%20in%20(b"), Vec::new(), 400, "BadRequest"),
        case("unsupported field label", "GET", format!("{cms}?fieldSelector=data.a%3Db"), Vec::new(), 400, "BadRequest"),
        case("bad field selector", "GET", format!("{cms}?fieldSelector=nonsense"), Vec::new(), 400, "BadRequest"),
        case("bad continue token", "GET", format!("{cms}?limit=1&continue=%%%"), Vec::new(), 400, "BadRequest"),
        case("unsupported media type", "POST", cms, b"a=b", 415, "UnsupportedMediaType"),
    ];
    for Case {
        what,
        method,
        path,
        body,
        code,
        reason,
    } in cases
    {
        let ct = if what == "unsupported media type" {
            "text/plain"
        } else {
            json
        };
        let (got, text) = curl(&cp, method, &path, ct, &body);
        assert_eq!(got, code, "{what}: expected {code}, got {got}: {text}");
        let status: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not a Status ({e}): {text}"));
        assert_eq!(status["kind"], "Status", "{what}: {text}");
        assert_eq!(status["reason"], reason, "{what}: {text}");
        assert_eq!(status["code"], code, "{what}: {text}");
    }
    // Field causes on 422.
    let (_, text) = curl(
        &cp,
        "POST",
        cms,
        json,
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Sk_Bad"}}"#,
    );
    let st: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        st["details"]["causes"][0]["field"], "metadata.name",
        "{text}"
    );
    // Nothing was stored and the server still serves.
    let names = cp.ok(&["get", "cm", "-o", "name"]);
    assert_eq!(names.trim(), "configmap/kube-root-ca.crt", "{names}");
    assert!(cp.ok(&["get", "--raw", "/readyz"]).contains("ok"));
}
