//! The API server over real HTTPS with client certificates: authentication, CRUD, optimistic
//! concurrency, validation errors, selectors and watch semantics (resourceVersion = store
//! revision, 410 for compacted revisions).

use serde_json::{json, Value};
use skiff_apiserver::{pki::Pki, serve, ApiServerConfig};
use skiff_store::{EmbeddedStore, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct Api {
    base: String,
    client: reqwest::Client,
    anonymous: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start() -> Api {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::Builder::new().prefix("sk-api").tempdir().unwrap();
    let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let pki = Pki::ensure(&dir.path().join("tls"), "sk-node", &sans, &sans).unwrap();
    let db = dir.path().join("db");
    {
        // Some history before a restart: revisions before the reopen are no longer watchable.
        let s = EmbeddedStore::open(&db).unwrap();
        for i in 0..3 {
            s.create(&format!("/sk-test/{i}"), b"x".to_vec())
                .await
                .unwrap();
        }
    }
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&db).unwrap());
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = ApiServerConfig::new(addr, addr, pki.clone());
    tokio::spawn(serve(cfg, store, async {
        let _ = rx.await;
    }));
    let ca = reqwest::Certificate::from_pem(pki.ca.cert_pem().unwrap().as_bytes()).unwrap();
    let ident = format!(
        "{}{}",
        pki.admin.cert_pem().unwrap(),
        pki.admin.key_pem().unwrap()
    );
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .identity(reqwest::Identity::from_pem(ident.as_bytes()).unwrap())
        .build()
        .unwrap();
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", addr.port());
    for _ in 0..100 {
        if anonymous
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Api {
        base,
        client,
        anonymous,
        _stop: tx,
        _dir: dir,
    }
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>, ct: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method.parse().unwrap(), url)
            .header("content-type", ct);
        if let Some(b) = body {
            req = req.body(serde_json::to_vec(&b).unwrap());
        }
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (code, v)
    }
    async fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, body, "application/json").await
    }
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

const PODS: &str = "/api/v1/namespaces/default/pods";

#[tokio::test]
async fn crud_conflicts_validation_and_watch() {
    let api = start().await;

    // Authentication: no client certificate, no API.
    let r = api
        .anonymous
        .get(format!("{}{PODS}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (code, v) = api.json("GET", "/api", None).await;
    assert_eq!((code, v["versions"][0].as_str()), (200, Some("v1")));

    // Create, duplicate, get.
    let (code, created) = api
        .json("POST", PODS, Some(pod("sk-a", json!({"app": "web"}))))
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["spec"]["restartPolicy"], "Always");
    let rv: i64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (code, dup) = api.json("POST", PODS, Some(pod("sk-a", json!({})))).await;
    assert_eq!((code, dup["reason"].as_str()), (409, Some("AlreadyExists")));
    let (code, _) = api
        .json(
            "POST",
            "/api/v1/namespaces/sk-nope/pods",
            Some(pod("sk-x", json!({}))),
        )
        .await;
    assert_eq!(code, 404, "namespace must exist");

    // Validation: 422 Invalid with a field cause.
    let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sk-bad"}, "spec": {"containers": []}});
    let (code, st) = api.json("POST", PODS, Some(bad)).await;
    assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(st["details"]["causes"][0]["field"], "spec.containers");

    // A watch from the create's revision sees later changes, in order.
    let watch_url = format!("{}{PODS}?watch=true&resourceVersion={rv}", api.base);
    let mut watch = api.client.get(watch_url).send().await.unwrap();
    assert_eq!(watch.status().as_u16(), 200);

    // Merge patch, then a PUT with the stale resourceVersion conflicts.
    let (code, patched) = api
        .call(
            "PATCH",
            &format!("{PODS}/sk-a"),
            Some(json!({"metadata": {"labels": {"tier": "fe"}}})),
            "application/merge-patch+json",
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["metadata"]["labels"]["tier"], "fe");
    let mut stale = created.clone();
    stale["metadata"]["labels"] = json!({"x": "y"});
    let (code, st) = api.json("PUT", &format!("{PODS}/sk-a"), Some(stale)).await;
    assert_eq!((code, st["reason"].as_str()), (409, Some("Conflict")));

    // Selectors.
    api.json("POST", PODS, Some(pod("sk-b", json!({"app": "db"}))))
        .await;
    let (_, list) = api
        .json("GET", &format!("{PODS}?labelSelector=app%3Dweb"), None)
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sk-a"]);
    let (_, list) = api
        .json(
            "GET",
            &format!("{PODS}?fieldSelector=metadata.name%3Dsk-b"),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Delete an unscheduled pod: gone at once.
    let (code, _) = api.json("DELETE", &format!("{PODS}/sk-b"), None).await;
    assert_eq!(code, 200);
    let (code, _) = api.json("GET", &format!("{PODS}/sk-b"), None).await;
    assert_eq!(code, 404);

    // The watch saw MODIFIED (sk-a), ADDED (sk-b), DELETED (sk-b), in that order.
    let mut seen = Vec::new();
    let mut buf = Vec::new();
    while seen.len() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
            .await
            .expect("watch event")
            .unwrap()
            .expect("stream open");
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let ev: Value = serde_json::from_slice(&line).unwrap();
            seen.push(format!(
                "{} {}",
                ev["type"].as_str().unwrap(),
                ev["object"]["metadata"]["name"].as_str().unwrap()
            ));
        }
    }
    assert_eq!(seen, ["MODIFIED sk-a", "ADDED sk-b", "DELETED sk-b"]);

    // A revision older than the server's history is 410 Expired: clients relist.
    let mut r = api
        .client
        .get(format!("{}{PODS}?watch=true&resourceVersion=1", api.base))
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);

    // Table output for kubectl get.
    let r = api
        .client
        .get(format!("{}{PODS}", api.base))
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap();
    let table: Value = r.json().await.unwrap();
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["columnDefinitions"][0]["name"], "Name");
    assert_eq!(table["rows"][0]["cells"][2], "Pending");
}
