//! kubectl compatibility: the installed kubectl 1.32 (and 1.27 / 1.33 spot checks) against
//! `skiff server --disable-agent`, the way a user works: typed `create` generators (protobuf
//! bodies), apply (client- and server-side), get output formats, edit/replace/patch/label/
//! annotate/scale, cascading and namespace deletion, discovery, proxy, wait.

use serde_json::Value;
use skiff_tests::control_plane::{kubectl_bin, ControlPlane};
use std::time::Duration;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

#[test]
fn typed_create_generators() {
    let cp = ControlPlane::start();
    let n = "-n=sk-gen";
    cp.ok(&["create", "namespace", "sk-gen"]);
    let cmds: &[&[&str]] = &[
        &[
            "create",
            "configmap",
            "sk-cm",
            "--from-literal=a=b",
            "--from-literal=c=d",
            n,
        ],
        &[
            "create",
            "secret",
            "generic",
            "sk-sec",
            "--from-literal=pw=s3cr3t",
            n,
        ],
        &[
            "create",
            "secret",
            "docker-registry",
            "sk-reg",
            "--docker-server=r.example",
            "--docker-username=u",
            "--docker-password=p",
            n,
        ],
        &["create", "serviceaccount", "sk-sa", n],
        &[
            "create",
            "deployment",
            "sk-dep",
            "--image=busybox",
            "--replicas=2",
            n,
        ],
        &[
            "create",
            "job",
            "sk-job",
            "--image=busybox",
            n,
            "--",
            "true",
        ],
        &[
            "create",
            "cronjob",
            "sk-cj",
            "--image=busybox",
            "--schedule=*/5 * * * *",
            n,
            "--",
            "true",
        ],
        &[
            "create",
            "service",
            "clusterip",
            "sk-svc",
            "--tcp=80:8080",
            n,
        ],
        &["create", "service", "nodeport", "sk-np", "--tcp=80:8080", n],
        &[
            "create",
            "service",
            "loadbalancer",
            "sk-lb",
            "--tcp=80:8080",
            n,
        ],
        &[
            "create",
            "service",
            "externalname",
            "sk-ext",
            "--external-name=example.com",
            n,
        ],
        &[
            "create",
            "role",
            "sk-role",
            "--verb=get,list",
            "--resource=pods",
            n,
        ],
        &[
            "create",
            "rolebinding",
            "sk-rb",
            "--role=sk-role",
            "--user=alice",
            n,
        ],
        &[
            "create",
            "clusterrole",
            "sk-cr",
            "--verb=get",
            "--resource=nodes",
        ],
        &[
            "create",
            "clusterrolebinding",
            "sk-crb",
            "--clusterrole=sk-cr",
            "--group=devs",
        ],
        &["create", "quota", "sk-quota", "--hard=pods=10,cpu=2", n],
        &[
            "create",
            "priorityclass",
            "sk-pc",
            "--value=1000",
            "--description=test",
        ],
        &[
            "create",
            "poddisruptionbudget",
            "sk-pdb",
            "--selector=app=x",
            "--min-available=1",
            n,
        ],
        &[
            "create",
            "ingress",
            "sk-ing",
            "--rule=foo.example/bar=svc1:8080",
            n,
        ],
    ];
    for c in cmds {
        cp.ok(c);
    }
    // What they made reads back as upstream defaults it.
    let dep = json(&cp.ok(&["get", "deploy", "sk-dep", n, "-o", "json"]));
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    assert_eq!(dep["metadata"]["generation"], 1);
    let svc = json(&cp.ok(&["get", "svc", "sk-np", n, "-o", "json"]));
    let np = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort allocated");
    assert!((30000..=32767).contains(&np), "{np}");
    assert!(svc["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10.43."));
    let job = json(&cp.ok(&["get", "job", "sk-job", n, "-o", "json"]));
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(job["spec"]["backoffLimit"], 6);
    let sec = json(&cp.ok(&["get", "secret", "sk-sec", n, "-o", "json"]));
    assert_eq!(sec["data"]["pw"], "czNjcjN0");
    assert_eq!(sec["type"], "Opaque");
    // Printer columns as kubectl shows them.
    let table = cp.ok(&[
        "get",
        "deploy,svc,cm,secret,job,cronjob,pdb,ingress,quota,role,rolebinding",
        n,
    ]);
    for want in [
        "deployment.apps/sk-dep",
        "0/2",
        "service/sk-lb",
        "<pending>",
        "80:",
        "configmap/sk-cm",
        "kubernetes.io/dockerconfigjson",
        "*/5 * * * *",
        "foo.example",
        "Role/sk-role",
    ] {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
    // Duplicates are 409 AlreadyExists with upstream's message.
    let err = cp.fails(&["create", "configmap", "sk-cm", n]);
    assert!(err.contains("configmaps \"sk-cm\" already exists"), "{err}");
    // Bad input is 422 with the field named.
    let err = cp.fails(&["create", "deployment", "Bad_Name", "--image=x", n]);
    assert!(
        err.contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{err}"
    );
    // Service-account tokens: issued, reviewed, and dead once their service account is gone.
    let token = cp.ok(&[
        "create",
        "token",
        "sk-sa",
        n,
        "--duration=1h",
        "--audience=sk-aud",
    ]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let review = |tok: &str| {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": tok, "audiences": ["sk-aud"]}});
        json(
            &cp.with_stdin(&["create", "-f", "-", "-o", "json"], &body.to_string())
                .stdout,
        )
    };
    let r = review(token);
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:sk-gen:sk-sa"
    );
    let jwks = json(&cp.ok(&["get", "--raw", "/openid/v1/jwks"]));
    assert_eq!(jwks["keys"][0]["alg"], "ES256", "{jwks}");
    cp.ok(&["delete", "sa", "sk-sa", n]);
    let r = review(token);
    assert_eq!(r["status"]["authenticated"], false, "{r}");
}

const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sk-web
  labels: {app: sk-web, tier: front}
spec:
  replicas: 2
  selector: {matchLabels: {app: sk-web}}
  template:
    metadata: {labels: {app: sk-web}}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: sk-conf, labels: {app: sk-web}}
data: {k: v}
"#;

#[test]
fn apply_client_side_and_server_side() {
    let cp = ControlPlane::start();
    let out = cp.with_stdin(&["apply", "-f", "-"], DEPLOY);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("deployment.apps/sk-web created"),
        "{}",
        out.stdout
    );
    // Changed and removed fields: replicas 3, env B gone, label tier gone.
    let v2 = DEPLOY
        .replace("replicas: 2", "replicas: 3")
        .replace(", {name: B, value: \"2\"}", "")
        .replace(", tier: front", "");
    let out = cp.with_stdin(&["apply", "-f", "-"], &v2);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("deployment.apps/sk-web configured"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("configmap/sk-conf unchanged"),
        "{}",
        out.stdout
    );
    let d = json(&cp.ok(&["get", "deploy", "sk-web", "-o", "json"]));
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(d["metadata"]["labels"]["tier"].is_null());
    assert_eq!(d["metadata"]["generation"], 2);
    // --prune with a label removes what the manifest no longer has.
    let only_deploy = v2.split("---").next().unwrap().to_string();
    let out = cp.with_stdin(
        &["apply", "--prune", "-l", "app=sk-web", "-f", "-"],
        &only_deploy,
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("configmap/sk-conf pruned"),
        "{}",
        out.stdout
    );

    // Server-side apply: a new object, owned by its manager.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sk-ssa}\ndata: {a: '1', b: '2'}\n";
    let out = cp.with_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("serverside-applied"), "{}", out.stdout);
    let got = json(&cp.ok(&["get", "cm", "sk-ssa", "-o", "json", "--show-managed-fields"]));
    let mf = &got["metadata"]["managedFields"][0];
    assert_eq!(mf["manager"], "kubectl");
    assert_eq!(mf["operation"], "Apply");
    assert!(mf["fieldsV1"]["f:data"]["f:a"].is_object(), "{mf}");
    // Applying without a field drops it.
    let out = cp.with_stdin(
        &["apply", "--server-side", "-f", "-"],
        &cm.replace(", b: '2'", ""),
    );
    assert!(out.ok, "{}", out.stderr);
    let got = json(&cp.ok(&["get", "cm", "sk-ssa", "-o", "json"]));
    assert!(got["data"]["b"].is_null(), "{got}");
    // Another manager changing an owned field conflicts, unless forced.
    let out = cp.with_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        &cm.replace("a: '1'", "a: '9'").replace(", b: '2'", ""),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("conflict with \"kubectl\""),
        "{}",
        out.stderr
    );
    let out = cp.with_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &cm.replace("a: '1'", "a: '9'").replace(", b: '2'", ""),
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        cp.ok(&["get", "cm", "sk-ssa", "-o", "jsonpath={.data.a}"]),
        "9"
    );
}

#[test]
fn get_outputs_edit_replace_patch_label_scale() {
    let cp = ControlPlane::start();
    assert!(cp.with_stdin(&["apply", "-f", "-"], DEPLOY).ok);
    let wide = cp.ok(&["get", "deploy", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("busybox:1.36") && wide.contains("app=sk-web"),
        "{wide}"
    );
    let yaml = cp.ok(&["get", "cm", "sk-conf", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("k: v"),
        "{yaml}"
    );
    assert_eq!(
        cp.ok(&["get", "cm", "sk-conf", "-o", "jsonpath={.data.k}"]),
        "v"
    );
    let cc = cp.ok(&[
        "get",
        "deploy",
        "-o",
        "custom-columns=N:.metadata.name,R:.spec.replicas",
    ]);
    assert!(cc.contains("sk-web   2"), "{cc}");
    assert!(cp
        .ok(&[
            "get",
            "cm",
            "sk-conf",
            "-o",
            "yaml",
            "--show-managed-fields"
        ])
        .contains("managedFields"));

    // label / annotate / scale / patch (all types).
    cp.ok(&["label", "cm", "sk-conf", "color=blue"]);
    cp.ok(&["annotate", "cm", "sk-conf", "note=hi"]);
    assert_eq!(
        cp.ok(&["get", "cm", "-l", "color=blue", "-o", "name"])
            .trim(),
        "configmap/sk-conf"
    );
    cp.ok(&["label", "cm", "sk-conf", "color-"]);
    cp.ok(&["scale", "deploy", "sk-web", "--replicas=4"]);
    assert_eq!(
        cp.ok(&["get", "deploy", "sk-web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    let err = cp.fails(&[
        "scale",
        "deploy",
        "sk-web",
        "--replicas=5",
        "--current-replicas=3",
    ]);
    assert!(err.contains("Expected replicas to be 3, was 4"), "{err}");
    cp.ok(&["patch", "cm", "sk-conf", "-p", r#"{"data":{"m":"1"}}"#]);
    cp.ok(&[
        "patch",
        "cm",
        "sk-conf",
        "--type=merge",
        "-p",
        r#"{"data":{"n":"2"}}"#,
    ]);
    cp.ok(&[
        "patch",
        "cm",
        "sk-conf",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/m"}]"#,
    ]);
    cp.ok(&[
        "patch",
        "deploy",
        "sk-web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#,
    ]);
    let d = json(&cp.ok(&["get", "deploy", "sk-web", "-o", "json"]));
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.37"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let cm = json(&cp.ok(&["get", "cm", "sk-conf", "-o", "json"]));
    assert!(cm["data"]["m"].is_null() && cm["data"]["n"] == "2", "{cm}");

    // edit with EDITOR a script.
    let script = cp.dir().join("editor.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nsed -i 's/^  k: v$/  k: edited/' \"$1\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let o = cp.kubectl_with(
        &kubectl_bin(None),
        &["edit", "cm", "sk-conf"],
        None,
        &[("EDITOR", script.to_str().unwrap())],
    );
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(
        cp.ok(&["get", "cm", "sk-conf", "-o", "jsonpath={.data.k}"]),
        "edited"
    );

    // replace with a stale resourceVersion is a Conflict.
    let mut stale = json(&cp.ok(&["get", "cm", "sk-conf", "-o", "json"]));
    cp.ok(&["label", "cm", "sk-conf", "bump=1"]);
    stale["data"]["k"] = "stale".into();
    let o = cp.with_stdin(&["replace", "-f", "-"], &stale.to_string());
    assert!(!o.ok);
    assert!(
        o.stderr.contains("the object has been modified"),
        "{}",
        o.stderr
    );

    // watch with events: a change shows up as MODIFIED.
    let bin = kubectl_bin(None);
    let kc = cp.kubeconfig.clone();
    let watcher = std::thread::spawn(move || {
        std::process::Command::new(bin)
            .env("KUBECONFIG", kc)
            .args([
                "get",
                "cm",
                "sk-conf",
                "-w",
                "--output-watch-events",
                "--request-timeout=4s",
            ])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    cp.ok(&["label", "cm", "sk-conf", "bump=2", "--overwrite"]);
    let out = String::from_utf8_lossy(&watcher.join().unwrap().stdout).into_owned();
    assert!(out.contains("ADDED") && out.contains("MODIFIED"), "{out}");
}

const OWNED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: sk-child
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: sk-owner, uid: UID, blockOwnerDeletion: true}
"#;

fn make_owner_and_child(cp: &ControlPlane) {
    cp.ok(&["create", "configmap", "sk-owner"]);
    let uid = cp.ok(&["get", "cm", "sk-owner", "-o", "jsonpath={.metadata.uid}"]);
    assert!(
        cp.with_stdin(&["create", "-f", "-"], &OWNED.replace("UID", &uid))
            .ok
    );
}

#[test]
fn deletion_cascades_and_namespaces() {
    let cp = ControlPlane::start();
    // Background (default): the owner goes at once, the dependent after it.
    make_owner_and_child(&cp);
    cp.ok(&["delete", "cm", "sk-owner"]);
    cp.wait_for("dependent collected", Duration::from_secs(10), || {
        !cp.kubectl(&["get", "cm", "sk-child"]).ok
    });
    // Orphan: the dependent stays, without the owner reference.
    make_owner_and_child(&cp);
    cp.ok(&["delete", "cm", "sk-owner", "--cascade=orphan"]);
    cp.wait_for("owner gone", Duration::from_secs(10), || {
        !cp.kubectl(&["get", "cm", "sk-owner"]).ok
    });
    let child = json(&cp.ok(&["get", "cm", "sk-child", "-o", "json"]));
    assert!(
        child["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "{child}"
    );
    cp.ok(&["delete", "cm", "sk-child"]);
    // Foreground: the dependent goes first, then the owner; --wait returns when both are gone.
    make_owner_and_child(&cp);
    cp.ok(&[
        "delete",
        "cm",
        "sk-owner",
        "--cascade=foreground",
        "--wait=true",
        "--timeout=20s",
    ]);
    assert!(!cp.kubectl(&["get", "cm", "sk-child"]).ok);
    assert!(!cp.kubectl(&["get", "cm", "sk-owner"]).ok);

    // Namespaces: Terminating while emptied, new content refused, then gone.
    cp.ok(&["create", "namespace", "sk-ns"]);
    cp.ok(&["create", "configmap", "sk-a", "-n", "sk-ns"]);
    assert!(cp
        .ok(&["get", "sa", "default", "-n", "sk-ns", "-o", "name"])
        .contains("default"));
    assert!(cp
        .ok(&["get", "cm", "kube-root-ca.crt", "-n", "sk-ns", "-o", "name"])
        .contains("kube-root-ca.crt"));
    cp.ok(&["delete", "namespace", "sk-ns", "--timeout=30s"]);
    assert!(!cp.kubectl(&["get", "namespace", "sk-ns"]).ok);
    // deletecollection by label.
    cp.ok(&["create", "configmap", "sk-l1"]);
    cp.ok(&["create", "configmap", "sk-l2"]);
    cp.ok(&["label", "cm", "sk-l1", "sk-l2", "grp=x"]);
    cp.ok(&["delete", "cm", "-l", "grp=x"]);
    assert_eq!(
        cp.ok(&["get", "cm", "-l", "grp=x", "-o", "name"]).trim(),
        ""
    );
}

#[test]
fn discovery_cluster_info_proxy_wait() {
    let cp = ControlPlane::start();
    let res = cp.ok(&["api-resources", "-o", "name"]);
    for r in [
        "pods",
        "services",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "endpoints",
        "events",
        "persistentvolumes",
        "persistentvolumeclaims",
        "resourcequotas",
        "limitranges",
        "replicationcontrollers",
        "podtemplates",
        "deployments.apps",
        "replicasets.apps",
        "statefulsets.apps",
        "daemonsets.apps",
        "controllerrevisions.apps",
        "jobs.batch",
        "cronjobs.batch",
        "horizontalpodautoscalers.autoscaling",
        "leases.coordination.k8s.io",
        "endpointslices.discovery.k8s.io",
        "events.events.k8s.io",
        "ingresses.networking.k8s.io",
        "ingressclasses.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        "poddisruptionbudgets.policy",
        "roles.rbac.authorization.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "storageclasses.storage.k8s.io",
        "csidrivers.storage.k8s.io",
        "volumeattachments.storage.k8s.io",
        "priorityclasses.scheduling.k8s.io",
        "runtimeclasses.node.k8s.io",
        "certificatesigningrequests.certificates.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
        "tokenreviews.authentication.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
    ] {
        assert!(
            res.lines().any(|l| l == r),
            "api-resources lacks {r}:\n{res}"
        );
    }
    let versions = cp.ok(&["api-versions"]);
    assert!(
        versions.contains("autoscaling/v2") && versions.contains("autoscaling/v1"),
        "{versions}"
    );
    let info = cp.ok(&["cluster-info"]);
    assert!(
        info.contains("Kubernetes control plane is running at"),
        "{info}"
    );
    let pcs = cp.ok(&["get", "priorityclass", "-o", "name"]);
    assert!(
        pcs.contains("system-node-critical") && pcs.contains("system-cluster-critical"),
        "{pcs}"
    );
    assert!(cp
        .ok(&["get", "--raw", "/metrics"])
        .contains("apiserver_request_total{"));
    assert!(cp
        .ok(&["get", "--raw", "/readyz?verbose"])
        .contains("readyz check passed"));
    assert!(cp.ok(&["auth", "can-i", "create", "pods"]).contains("yes"));
    assert!(cp.ok(&["auth", "whoami"]).contains("admin"));
    cp.ok(&["config", "view"]);

    // kubectl proxy, then a plain HTTP client through it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut proxy = std::process::Command::new(kubectl_bin(None))
        .env("KUBECONFIG", &cp.kubeconfig)
        .args(["proxy", &format!("--port={port}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /api/v1/namespaces/default HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            s.read_to_string(&mut body).unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(body.contains("\"name\":\"default\""), "{body}");

    // wait --for=jsonpath and --for=condition (a status written through /status).
    cp.ok(&["create", "configmap", "sk-w", "--from-literal=ready=yes"]);
    cp.ok(&[
        "wait",
        "cm/sk-w",
        "--for=jsonpath={.data.ready}=yes",
        "--timeout=10s",
    ]);
    cp.ok(&["create", "namespace", "sk-wait"]);
    let ns_status = cp.ok(&["get", "ns", "sk-wait", "-o", "jsonpath={.status.phase}"]);
    assert_eq!(ns_status, "Active");
}

#[test]
fn older_and_newer_kubectl_spot_checks() {
    let cp = ControlPlane::start();
    for v in ["1.27", "1.33"] {
        let bin = kubectl_bin(Some(v));
        let run = |args: &[&str]| {
            let o = cp.kubectl_with(&bin, args, None, &[]);
            assert!(o.ok, "kubectl {v} {args:?}: {}", o.stderr);
            o.stdout
        };
        let ns = format!("sk-v{}", v.replace('.', ""));
        run(&["create", "namespace", &ns]);
        run(&[
            "create",
            "configmap",
            "sk-c",
            "--from-literal=a=b",
            "-n",
            &ns,
        ]);
        run(&["create", "deployment", "sk-d", "--image=busybox", "-n", &ns]);
        let got = run(&["get", "deploy,cm", "-n", &ns]);
        assert!(got.contains("sk-d") && got.contains("sk-c"), "{got}");
        run(&["api-resources"]);
        run(&["delete", "namespace", &ns, "--timeout=30s"]);
    }
}
