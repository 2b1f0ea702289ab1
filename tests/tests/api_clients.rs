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
    curl_accept(cp, method, path, ct, "application/json", body)
}

/// [`curl`] with an Accept header.
fn curl_accept(
    cp: &ControlPlane,
    method: &str,
    path: &str,
    ct: &str,
    accept: &str,
    body: &[u8],
) -> (u16, String) {
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
        .args(["-H", &format!("Accept: {accept}")])
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

/// A plain JSON list is written from the stored bytes (resourceVersion spliced in): pages with
/// `limit`/`continue` stay at the first page's revision, and every item is the object a GET
/// returns.
#[test]
fn json_list_pages_are_consistent_and_match_gets() {
    use serde_json::Value;
    let cp = ControlPlane::start();
    let get = |path: &str| -> Value {
        let (code, body) = curl(&cp, "GET", path, "application/json", b"");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    };
    cp.ok(&["create", "namespace", "sk-pages"]);
    let cms = "/api/v1/namespaces/sk-pages/configmaps";
    for i in 0..24 {
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("sk-cm-{i:02}"), "labels": {"i": i.to_string()},
                "annotations": {"note": "\"quoted\" \\ \u{e9} \u{2028}"}},
            "data": {"k": "v".repeat(i * 10)}
        });
        let (code, body) = curl(
            &cp,
            "POST",
            cms,
            "application/json",
            cm.to_string().as_bytes(),
        );
        assert_eq!(code, 201, "{body}");
    }
    let all = get(cms);
    assert_eq!(all["kind"], "ConfigMapList");
    assert_eq!(all["apiVersion"], "v1");
    let items = all["items"].as_array().unwrap();
    // The 24 and kube-root-ca.crt.
    assert_eq!(items.len(), 25, "{all}");
    for it in items {
        let name = it["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            it,
            &get(&format!("{cms}/{name}")),
            "list item {name} differs from its GET"
        );
        assert!(it["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
    }
    // The same as metadata only (what metadata informers and the garbage collector list).
    let (code, body) = curl_accept(
        &cp,
        "GET",
        cms,
        "application/json",
        "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["kind"], "PartialObjectMetadataList");
    assert_eq!(meta["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        meta["metadata"]["resourceVersion"],
        all["metadata"]["resourceVersion"]
    );
    let metas = meta["items"].as_array().unwrap();
    assert_eq!(metas.len(), items.len());
    for (m, it) in metas.iter().zip(items) {
        assert_eq!(m["kind"], "PartialObjectMetadata");
        assert_eq!(m["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(m["metadata"], it["metadata"]);
        assert_eq!(
            m.as_object().unwrap().len(),
            3,
            "only kind, apiVersion, metadata: {m}"
        );
    }
    // Pages of 10 while objects change in between: every page is at the first one's revision.
    let first = get(&format!("{cms}?limit=10"));
    let rv = first["metadata"]["resourceVersion"].clone();
    let mut token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let mut names: Vec<String> = Vec::new();
    let mut seen = first["items"].as_array().unwrap().clone();
    let patch = br#"{"data":{"k":"changed"}}"#;
    let (code, body) = curl(
        &cp,
        "PATCH",
        &format!("{cms}/sk-cm-20"),
        "application/merge-patch+json",
        patch,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        &cp,
        "DELETE",
        &format!("{cms}/sk-cm-21"),
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    loop {
        let page = get(&format!("{cms}?limit=10&continue={token}"));
        assert_eq!(
            page["metadata"]["resourceVersion"], rv,
            "a page at another revision"
        );
        seen.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => token = c.to_string(),
            _ => break,
        }
    }
    names.extend(
        seen.iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
    );
    let want: Vec<String> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, want, "the pages list what the full list did");
    assert_eq!(
        seen, *items,
        "the pages hold the objects as they were at the first page"
    );
    // The change shows in a new list.
    let now = get(cms);
    let twenty = now["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["metadata"]["name"] == "sk-cm-20");
    assert_eq!(twenty.unwrap()["data"]["k"], "changed");
    assert_eq!(now["items"].as_array().unwrap().len(), 24);
    // deletecollection with a selector answers the list of what it deleted.
    let (code, body) = curl(
        &cp,
        "DELETE",
        &format!("{cms}?labelSelector=i%20in%20(1,2,3)"),
        "application/json",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let gone: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(gone["kind"], "ConfigMapList");
    let names: Vec<&str> = gone["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sk-cm-01", "sk-cm-02", "sk-cm-03"]);
    assert_eq!(get(cms)["items"].as_array().unwrap().len(), 21);
}
