//! Serves the documents from a tiny plain-HTTP server on 127.0.0.1 (with the discovery endpoints
//! kubectl needs) and runs the installed kubectl binaries against it. These tests FAIL when
//! kubectl is missing.

use serde_json::{json, Value};
use skiff_openapi::Resource;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

fn resources() -> Vec<Resource> {
    let mut pods = Resource::new("", "v1", "Pod", "pods", true);
    pods.subresources = vec!["status".into()];
    let mut deployments = Resource::new("apps", "v1", "Deployment", "deployments", true);
    deployments.subresources = vec!["status".into(), "scale".into()];
    vec![
        pods,
        Resource::new("", "v1", "ConfigMap", "configmaps", true),
        Resource::new("", "v1", "Namespace", "namespaces", false),
        deployments,
    ]
}

fn crontab_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "crontabs.stable.example.com"},
        "spec": {
            "group": "stable.example.com",
            "scope": "Namespaced",
            "names": {"kind": "CronTab", "plural": "crontabs", "singular": "crontab", "listKind": "CronTabList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A crontab runs a command on schedule.",
                    "properties": {"spec": {
                        "type": "object",
                        "description": "The wanted schedule.",
                        "properties": {
                            "cronSpec": {"type": "string", "description": "Schedule in cron format."},
                            "replicas": {"type": "integer", "description": "How many at once."}
                        }
                    }}
                }}
            }]
        }
    })
}

fn api_resource(r: &Resource) -> Value {
    json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced, "kind": r.kind, "verbs": r.verbs})
}

/// Minimal legacy discovery for `resources` and the CronTab CRD.
fn discovery(path: &str, rs: &[Resource]) -> Option<Value> {
    let crd = skiff_openapi::crd_schemas(&crontab_crd()).ok()?;
    let crd_r = &crd[0].resource;
    let mut groups: Vec<(String, String)> = rs
        .iter()
        .filter(|r| !r.group.is_empty())
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    groups.push((crd_r.group.clone(), crd_r.version.clone()));
    groups.sort();
    groups.dedup();
    // Group name -> versions, preferred first (GA before beta before alpha, newest first).
    let rank = |v: &str| {
        let stability = if v.contains("alpha") {
            0
        } else if v.contains("beta") {
            1
        } else {
            2
        };
        let n: u32 = v
            .trim_start_matches('v')
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        (stability, n)
    };
    let mut by_group: Vec<(String, Vec<String>)> = Vec::new();
    for (g, v) in &groups {
        match by_group.iter_mut().find(|(n, _)| n == g) {
            Some((_, vs)) => vs.push(v.clone()),
            None => by_group.push((g.clone(), vec![v.clone()])),
        }
    }
    for (_, vs) in &mut by_group {
        vs.sort_by_key(|v| std::cmp::Reverse(rank(v)));
    }
    let list = |g: &str, v: &str| {
        let mut out: Vec<Value> = rs
            .iter()
            .filter(|r| r.group == g && r.version == v)
            .map(api_resource)
            .collect();
        if crd_r.group == g && crd_r.version == v {
            out.push(api_resource(crd_r));
        }
        let gv = if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out})
    };
    match path {
        "/api" => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:0"}]}),
        ),
        "/api/v1" => Some(list("", "v1")),
        "/apis" => Some(
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": by_group.iter().map(|(g, vs)| {
            let gvs: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
        }).collect::<Vec<_>>()}),
        ),
        "/version" => Some(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0+skiff"})),
        _ => {
            let rest = path.strip_prefix("/apis/")?;
            let (g, v) = rest.split_once('/')?;
            groups
                .iter()
                .any(|(gg, vv)| gg == g && vv == v)
                .then(|| list(g, v))
        }
    }
}

fn respond(mut s: TcpStream, rs: &[Resource], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut accept = String::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(a) = lower.strip_prefix("accept:") {
            accept = a.trim().to_string();
        }
        if let Some(l) = lower.strip_prefix("content-length:") {
            len = l.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(format!(
        "{} {target} [{accept}]",
        line.split_whitespace().next().unwrap_or("")
    ));
    let path = target.split('?').next().unwrap_or("/");
    let method = line.split_whitespace().next().unwrap_or("");
    if method == "PATCH" {
        log.lock()
            .unwrap()
            .push(format!("PATCH-BODY {}", String::from_utf8_lossy(&body)));
    }
    if path == WEB_POD_PATH && (method == "GET" || method == "PATCH") {
        let out = web_pod().to_string();
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}", out.len()).as_bytes());
        return;
    }
    if method == "POST" {
        let (head, out) = create(&target, &body);
        let _ = s.write_all(format!("{head}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", out.len()).as_bytes());
        let _ = s.write_all(&out);
        return;
    }
    let (status, ctype, out): (&str, &str, Vec<u8>) = if path == "/openapi/v3" {
        (
            "200 OK",
            "application/json",
            skiff_openapi::v3_index(rs).to_string().into_bytes(),
        )
    } else if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        let (g, v) = match gv.strip_prefix("api/") {
            Some(v) => ("", v),
            None => gv
                .strip_prefix("apis/")
                .and_then(|x| x.split_once('/'))
                .unwrap_or(("?", "?")),
        };
        match skiff_openapi::cached_v3_group_version(g, v, rs) {
            Some(d) => ("200 OK", "application/json", d.json()),
            None => ("404 Not Found", "application/json", b"{}".to_vec()),
        }
    } else if path == "/openapi/v2" {
        let d = skiff_openapi::cached_v2(rs);
        if accept.contains("protobuf") {
            (
                "200 OK",
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                d.protobuf().unwrap_or_default(),
            )
        } else {
            ("200 OK", "application/json", d.json())
        }
    } else if let Some(v) = discovery(path, rs) {
        ("200 OK", "application/json", v.to_string().into_bytes())
    } else {
        ("404 Not Found", "application/json", json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}).to_string().into_bytes())
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", out.len());
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&out);
}

/// `POST /api/v1/namespaces/<ns>/pods?fieldValidation=...` as the API server would check it with
/// this crate: Strict fails with upstream's message, Warn answers with `Warning` headers.
fn create(target: &str, body: &[u8]) -> (String, Vec<u8>) {
    let obj: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mode = target
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("fieldValidation="))
        .unwrap_or("Ignore")
        .to_string();
    let (group, version) = match obj["apiVersion"].as_str().unwrap_or("").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap_or("").to_string(),
        ),
    };
    let kind = obj["kind"].as_str().unwrap_or("");
    let mut problems = skiff_openapi::duplicate_fields(body);
    problems.extend(skiff_openapi::unknown_fields(&group, &version, kind, &obj));
    match mode.as_str() {
        "Strict" if !problems.is_empty() => {
            let message = format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                problems.join(", ")
            );
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": "BadRequest", "code": 400});
            (
                "HTTP/1.1 400 Bad Request\r\n".into(),
                status.to_string().into_bytes(),
            )
        }
        _ => {
            let mut head = "HTTP/1.1 201 Created\r\n".to_string();
            if mode == "Warn" {
                for p in &problems {
                    head.push_str(&format!(
                        "Warning: 299 - {}\r\n",
                        serde_json::to_string(p).unwrap_or_default()
                    ));
                }
            }
            (head, body.to_vec())
        }
    }
}

const WEB_POD_PATH: &str = "/api/v1/namespaces/default/pods/web";

fn web_pod_config(containers: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"containers": containers.iter().map(|(n, i)| json!({"name": n, "image": i})).collect::<Vec<_>>()}})
}

/// The stored pod: last applied with containers a and b.
fn web_pod() -> Value {
    let mut p = web_pod_config(&[("a", "nginx:1"), ("b", "redis:1")]);
    let last = web_pod_config(&[("a", "nginx:1"), ("b", "redis:1")]).to_string();
    p["metadata"]["annotations"] =
        json!({"kubectl.kubernetes.io/last-applied-configuration": last});
    p["metadata"]["resourceVersion"] = "7".into();
    p
}

struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        Self::serving(resources())
    }

    fn serving(rs: Vec<Resource>) -> Server {
        skiff_openapi::register_crd(&crontab_crd()).expect("register CRD");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            for s in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    respond(s, &rs, &log2);
                }
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
            log,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The kubectl on PATH, resolved; panics (failing the test) when there is none.
fn kubectl() -> PathBuf {
    static K: OnceLock<Option<PathBuf>> = OnceLock::new();
    K.get_or_init(|| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join("kubectl"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    })
    .clone()
    .expect("kubectl is not installed (not on PATH): these tests need it")
}

/// An older kubectl shipped beside the main one (`kubectl.1.27`).
fn kubectl_version(v: &str) -> PathBuf {
    let p = kubectl()
        .parent()
        .expect("dir")
        .join(format!("kubectl.{v}"));
    assert!(
        p.is_file(),
        "{} is not installed: this test needs it",
        p.display()
    );
    p
}

fn run(bin: &Path, server: &Server, args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, stdout, stderr) = run_status(bin, server, args, env);
    assert!(
        ok,
        "{} {args:?} failed: {stderr}\nstdout: {stdout}\nrequests: {:#?}",
        bin.display(),
        server.log.lock().unwrap()
    );
    stdout
}

/// Runs kubectl: (success, stdout, stderr).
fn run_status(
    bin: &Path,
    server: &Server,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let home = std::env::temp_dir().join(format!(
        "skiff-openapi-kubectl-{}-{}",
        std::process::id(),
        server.port
    ));
    std::fs::create_dir_all(&home).expect("home");
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--server=http://127.0.0.1:{}", server.port))
        .arg(format!("--cache-dir={}", home.join("cache").display()))
        .args(args)
        .env("HOME", &home)
        .env("KUBECONFIG", home.join("none"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kubectl");
    let _ = std::fs::remove_dir_all(&home);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn assert_has(out: &str, needles: &[&str]) {
    for n in needles {
        assert!(out.contains(n), "missing {n:?} in:\n{out}");
    }
}

#[test]
fn kubectl_explain_pod_containers() {
    let s = Server::start();
    let out = run(&kubectl(), &s, &["explain", "pods.spec.containers"], &[]);
    assert_has(
        &out,
        &[
            "KIND:       Pod",
            "VERSION:    v1",
            "FIELD: containers <[]Container>",
            "List of containers belonging to the pod.",
            "image\t<string>",
            "name\t<string> -required-",
            "resources\t<ResourceRequirements>",
            "ports\t<[]ContainerPort>",
        ],
    );
}

#[test]
fn kubectl_explain_deployment_strategy_recursive() {
    let s = Server::start();
    let out = run(
        &kubectl(),
        &s,
        &["explain", "deployment.spec.strategy", "--recursive"],
        &[],
    );
    assert_has(
        &out,
        &[
            "KIND:       Deployment",
            "GROUP:      apps",
            "FIELD: strategy <DeploymentStrategy>",
            "rollingUpdate\t<RollingUpdateDeployment>",
            "maxSurge\t<IntOrString>",
            "maxUnavailable\t<IntOrString>",
            "type\t<string>",
        ],
    );
}

#[test]
fn kubectl_explain_crd() {
    let s = Server::start();
    let out = run(&kubectl(), &s, &["explain", "crontabs.spec"], &[]);
    assert_has(
        &out,
        &[
            "KIND:       CronTab",
            "GROUP:      stable.example.com",
            "The wanted schedule.",
            "cronSpec\t<string>",
            "replicas\t<integer>",
        ],
    );
}

#[test]
fn kubectl_explain_quantity_map_and_metadata() {
    let s = Server::start();
    let out = run(
        &kubectl(),
        &s,
        &["explain", "pod.spec.containers.resources.limits"],
        &[],
    );
    assert_has(&out, &["FIELD: limits <map[string]Quantity>"]);
    let out = run(
        &kubectl(),
        &s,
        &["explain", "configmap.metadata.labels"],
        &[],
    );
    assert_has(&out, &["FIELD: labels <map[string]string>"]);
}

/// kubectl 1.27 with explain on /openapi/v2 (the protobuf document).
#[test]
fn kubectl_1_27_explain_from_v2() {
    let s = Server::start();
    let bin = kubectl_version("1.27");
    let v2 = "--output=plaintext-openapiv2";
    let out = run(&bin, &s, &["explain", v2, "pods.spec.containers"], &[]);
    assert_has(
        &out,
        &[
            "KIND:     Pod",
            "RESOURCE: containers <[]Object>",
            "List of containers belonging to the pod.",
            "image\t<string>",
        ],
    );
    assert!(
        s.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("GET /openapi/v2") && l.contains("protobuf")),
        "kubectl 1.27 did not read /openapi/v2: {:#?}",
        s.log.lock().unwrap()
    );
    let out = run(
        &bin,
        &s,
        &["explain", v2, "deployment.spec.strategy", "--recursive"],
        &[],
    );
    assert_has(&out, &["rollingUpdate\t<Object>", "maxSurge\t<string>"]);
}

/// kubectl 1.27's default explain (v3).
#[test]
fn kubectl_1_27_explain_default() {
    let s = Server::start();
    let out = run(
        &kubectl_version("1.27"),
        &s,
        &["explain", "deployment.spec.strategy"],
        &[],
    );
    assert_has(&out, &["rollingUpdate", "type"]);
}

const BAD_POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
  "spec": {"containers": [{"name": "c", "image": "busybox", "foo": 1}], "restartPolicy": "Never"}}"#;

/// `kubectl create --validate=strict|warn`: kubectl finds `fieldValidation` in the v3 document,
/// leaves the check to the server, and shows what this crate reports. (kubectl re-encodes the
/// file, so duplicate fields never reach the server from it; `duplicate_fields` is tested on
/// raw bodies in tests/validate.rs.)
#[test]
fn kubectl_create_validate_strict_and_warn() {
    let s = Server::start();
    let dir = std::env::temp_dir().join(format!("skiff-openapi-pod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pod.json");
    std::fs::write(&file, BAD_POD).expect("write");
    let f = file.to_str().expect("path");
    let (ok, out, err) = run_status(
        &kubectl(),
        &s,
        &["create", "--validate=strict", "-f", f],
        &[],
    );
    let warn = run_status(&kubectl(), &s, &["create", "--validate=warn", "-f", f], &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "strict create succeeded: {out}");
    assert_has(
        &err,
        &[
            "strict decoding error",
            "unknown field \"spec.containers[0].foo\"",
        ],
    );
    let log = s.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST ") && l.contains("fieldValidation=Strict")),
        "{log:#?}"
    );
    let (ok, out, err) = warn;
    assert!(ok, "warn create failed: {err}");
    assert_has(&out, &["pod/p created"]);
    assert_has(&err, &["Warning: unknown field \"spec.containers[0].foo\""]);
}

/// Client-side `kubectl apply` computes a strategic merge patch from the v3 schema: with
/// `x-kubernetes-patch-strategy: merge` and the merge key on `spec.containers` the patch keys the
/// containers by name (`$setElementOrder`, `$patch: delete`); without those extensions kubectl
/// sends the whole list (checked by removing them: this test then fails).
#[test]
fn kubectl_apply_uses_the_patch_merge_keys() {
    let s = Server::start();
    let dir = std::env::temp_dir().join(format!("skiff-openapi-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("web.json");
    std::fs::write(
        &file,
        web_pod_config(&[("a", "nginx:2"), ("c", "busybox")]).to_string(),
    )
    .expect("write");
    let res = run_status(
        &kubectl(),
        &s,
        &["apply", "-f", file.to_str().expect("path")],
        &[],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let log = s.log.lock().unwrap().clone();
    assert!(res.0, "apply failed: {}\n{log:#?}", res.2);
    let patch = log
        .iter()
        .find_map(|l| l.strip_prefix("PATCH-BODY "))
        .unwrap_or_else(|| panic!("no PATCH sent: {log:#?}"));
    let patch: Value = serde_json::from_str(patch).expect("patch json");
    assert_eq!(
        patch["spec"]["$setElementOrder/containers"],
        json!([{"name": "a"}, {"name": "c"}]),
        "{patch}"
    );
    let containers = patch["spec"]["containers"].as_array().expect("containers");
    assert!(
        containers.contains(&json!({"$patch": "delete", "name": "b"})),
        "{patch}"
    );
    assert!(
        containers.contains(&json!({"image": "nginx:2", "name": "a"})),
        "{patch}"
    );
}

/// Every built-in kind served: kubectl explains a spread of them (recursive ones included).
#[test]
fn kubectl_explain_many_builtin_kinds() {
    let s = Server::serving(skiff_openapi::builtin_resources());
    for (what, expect) in [
        ("services.spec.ports", "FIELD: ports <[]ServicePort>"),
        (
            "ingresses.networking.k8s.io.spec.rules",
            "KIND:       Ingress",
        ),
        (
            "cronjobs.batch.spec.jobTemplate.spec.template.spec.containers.image",
            "FIELD: image <string>",
        ),
        (
            "horizontalpodautoscalers.autoscaling.spec.metrics",
            "VERSION:    v2",
        ),
        (
            "clusterroles.rbac.authorization.k8s.io.rules",
            "FIELD: rules <[]PolicyRule>",
        ),
        (
            "customresourcedefinitions.spec.versions.schema.openAPIV3Schema.properties",
            "<map[string]JSONSchemaProps>",
        ),
        (
            "statefulsets.apps.spec.volumeClaimTemplates.spec.resources.requests",
            "<map[string]Quantity>",
        ),
        (
            "leases.coordination.k8s.io.spec.renewTime",
            "FIELD: renewTime <string>",
        ),
        (
            "nodes.status.capacity",
            "FIELD: capacity <map[string]Quantity>",
        ),
        (
            "validatingadmissionpolicies.spec.validations",
            "KIND:       ValidatingAdmissionPolicy",
        ),
    ] {
        let out = run(&kubectl(), &s, &["explain", what], &[]);
        assert_has(&out, &[expect, "DESCRIPTION:"]);
    }
    let out = run(
        &kubectl(),
        &s,
        &["explain", "customresourcedefinitions.spec", "--recursive"],
        &[],
    );
    assert_has(
        &out,
        &[
            "openAPIV3Schema\t<JSONSchemaProps>",
            "x-kubernetes-preserve-unknown-fields\t<boolean>",
        ],
    );
}
