//! Services end to end on a whole cluster (`ControlPlane::start_cluster`): EndpointSlices and
//! Endpoints from the controllers, the service proxy's nftables table (ClusterIP from the host
//! and from pods, NodePort on 127.0.0.1, LoadBalancer, session affinity, hairpin, ready
//! endpoints only) and cluster DNS (service, headless and ExternalName names from a pod,
//! forwarding to an upstream on loopback). Needs root, docker-registry, busybox-static, nft.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use skiff_tests::control_plane::ControlPlane;

/// A busybox pod serving its own name over HTTP on 8080 (port named `http`).
fn web_pod(c: &ControlPlane, name: &str, labels: &str) {
    let image = &c.agent.as_ref().expect("a whole cluster").busybox;
    let labels: String = labels
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            format!("    {k}: \"{v}\"\n")
        })
        .collect();
    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
{labels}spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - name: http
      containerPort: 8080
"#
    );
    let o = c.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply {name}: {}\n{}", o.stderr, c.log_tail());
}

fn wait_running(c: &ControlPlane, name: &str) {
    c.wait_for(
        &format!("pod {name} to be Ready"),
        Duration::from_secs(180),
        || {
            c.kubectl(&[
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
                == "True"
        },
    );
}

/// Ready endpoint addresses of a Service, from its EndpointSlices.
fn ready_endpoints(c: &ControlPlane, svc: &str) -> Vec<String> {
    let out = c.ok(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]} {end}",
    ]);
    let mut v: Vec<String> = out.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

fn wait_endpoints(c: &ControlPlane, svc: &str, n: usize) {
    c.wait_for(
        &format!("{n} ready endpoints of {svc}"),
        Duration::from_secs(60),
        || ready_endpoints(c, svc).len() == n,
    );
}

/// One HTTP GET over TCP from the host; the body, or the error.
fn http_get(addr: &str) -> Result<String, String> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s =
        TcpStream::connect_timeout(&sa, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_string())
}

/// GET that retries while the rules catch up with the API (the proxy syncs asynchronously).
fn http_get_eventually(c: &ControlPlane, addr: &str) -> String {
    let mut last = String::new();
    let mut body = None;
    c.wait_for(
        &format!("http://{addr}/ to answer"),
        Duration::from_secs(30),
        || match http_get(addr) {
            Ok(b) if !b.is_empty() => {
                body = Some(b);
                true
            }
            Ok(_) => false,
            Err(e) => {
                last = e;
                false
            }
        },
    );
    body.unwrap_or(last)
}

/// A shell command for a busybox pod that GETs `/` from `host:port` and prints the body.
/// (Debian's busybox-static `wget` crashes; `nc` speaks the HTTP/1.0 we need.)
fn get_in_pod(host: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port} | tail -n 1")
}

/// Runs a busybox pod to completion with `script` and returns its log.
fn run_script(c: &ControlPlane, name: &str, script: &str) -> String {
    let image = &c.agent.as_ref().expect("a whole cluster").busybox;
    c.ok(&[
        "run",
        name,
        "--image",
        image,
        "--restart=Never",
        "--",
        "sh",
        "-c",
        script,
    ]);
    c.wait_for(
        &format!("pod {name} to finish"),
        Duration::from_secs(180),
        || {
            matches!(
                c.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
                    .as_str(),
                "Succeeded" | "Failed"
            )
        },
    );
    let logs = c.ok(&["logs", name]);
    let phase = c.ok(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]);
    assert_eq!(phase, "Succeeded", "pod {name} failed; its log:\n{logs}");
    logs
}

/// Rules of the proxy's table, counted over netlink (Debian's `nft` 1.0.6 cannot print the
/// concatenations built with register copies).
fn proxy_rules(table: &str) -> usize {
    let mut nft = skiff_netfilter::nft::Nft::open().expect("netfilter netlink socket");
    nft.rules(skiff_netfilter::nft::NFPROTO_IPV4, table)
        .expect("list the proxy's rules")
        .len()
}

fn proxy_rule_count(c: &ControlPlane) -> usize {
    proxy_rules(&c.agent.as_ref().unwrap().proxy_table)
}

fn table_exists(table: &str) -> bool {
    proxy_rules(table) > 0
}

#[test]
fn cluster_ip_node_port_affinity_and_hairpin() {
    let c = ControlPlane::start_cluster();
    let table = c.agent.as_ref().unwrap().proxy_table.clone();
    web_pod(&c, "sk-web-1", "app=sk-web,one=yes");
    web_pod(&c, "sk-web-2", "app=sk-web");
    wait_running(&c, "sk-web-1");
    wait_running(&c, "sk-web-2");

    // kubectl expose; the named target port is resolved per pod.
    c.ok(&[
        "expose",
        "pod",
        "sk-web-1",
        "--name",
        "sk-web",
        "--port",
        "80",
        "--target-port",
        "http",
        "--selector",
        "app=sk-web",
    ]);
    wait_endpoints(&c, "sk-web", 2);
    let slice_ports = c.ok(&[
        "get", "endpointslices", "-l", "kubernetes.io/service-name=sk-web", "-o",
        "jsonpath={.items[0].ports[0].port} {.items[0].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by}",
    ]);
    assert_eq!(slice_ports, "8080 endpointslice-controller.k8s.io");
    let ep = c.ok(&[
        "get",
        "endpoints",
        "sk-web",
        "-o",
        "jsonpath={.subsets[0].addresses[*].ip}",
    ]);
    assert_eq!(ep.split_whitespace().count(), 2, "Endpoints: {ep}");

    // ClusterIP from the host reaches both backends.
    let ip = c.ok(&["get", "svc", "sk-web", "-o", "jsonpath={.spec.clusterIP}"]);
    let first = http_get_eventually(&c, &format!("{ip}:80"));
    assert!(first.starts_with("sk-web-"), "answer {first:?}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(http_get(&format!("{ip}:80")).expect("GET the ClusterIP"));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec!["sk-web-1", "sk-web-2"],
        "both endpoints answer through the ClusterIP"
    );

    // NodePort on 127.0.0.1.
    c.ok(&[
        "expose",
        "pod",
        "sk-web-1",
        "--name",
        "sk-web-np",
        "--type",
        "NodePort",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--selector",
        "app=sk-web",
    ]);
    let np = c.ok(&[
        "get",
        "svc",
        "sk-web-np",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let body = http_get_eventually(&c, &format!("127.0.0.1:{np}"));
    assert!(body.starts_with("sk-web-"), "NodePort answer {body:?}");

    // Session affinity ClientIP: every request of this client goes to one backend.
    let aff = r#"apiVersion: v1
kind: Service
metadata:
  name: sk-aff
spec:
  selector: {app: sk-web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
"#;
    assert!(c.with_stdin(&["apply", "-f", "-"], aff).ok);
    wait_endpoints(&c, "sk-aff", 2);
    let aip = c.ok(&["get", "svc", "sk-aff", "-o", "jsonpath={.spec.clusterIP}"]);
    let first = http_get_eventually(&c, &format!("{aip}:80"));
    for _ in 0..20 {
        assert_eq!(http_get(&format!("{aip}:80")).expect("GET sk-aff"), first);
    }

    // Only ready endpoints: a backend whose pod goes away leaves the rotation.
    c.ok(&["delete", "pod", "sk-web-2", "--wait=true"]);
    wait_endpoints(&c, "sk-web", 1);
    c.wait_for(
        "sk-web-2 to leave the rules",
        Duration::from_secs(30),
        || (0..10).all(|_| http_get(&format!("{ip}:80")).is_ok_and(|b| b == "sk-web-1")),
    );

    // From a pod: by ClusterIP, and hairpin (a backend reaching itself through its Service).
    let out = run_script(&c, "sk-client", &get_in_pod(&ip, 80));
    assert_eq!(out.trim(), "sk-web-1");
    c.ok(&[
        "expose",
        "pod",
        "sk-web-1",
        "--name",
        "sk-hair",
        "--port",
        "80",
        "--target-port",
        "8080",
        "--selector",
        "one=yes",
    ]);
    wait_endpoints(&c, "sk-hair", 1);
    let hip = c.ok(&["get", "svc", "sk-hair", "-o", "jsonpath={.spec.clusterIP}"]);
    let image = c.agent.as_ref().unwrap().busybox.clone();
    let get = get_in_pod(&hip, 80).replace('"', "\\\"");
    let hair = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-hairpin
  labels: {{one: "yes"}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo sk-hairpin > /www/index.html && httpd -p 8080 -h /www && for i in $(seq 1 60); do if {get} > /tmp/out && [ -s /tmp/out ]; then cat /tmp/out; exit 0; fi; sleep 1; done; exit 1"]
"#
    );
    // sk-hair selects `one=yes`: sk-web-1 and now sk-hairpin itself; only its own answer
    // proves hairpin, so sk-web-1 leaves the Service first.
    c.ok(&["label", "pod", "sk-web-1", "one-"]);
    assert!(c.with_stdin(&["apply", "-f", "-"], &hair).ok);
    c.wait_for(
        "the hairpin pod to finish",
        Duration::from_secs(180),
        || {
            matches!(
                c.ok(&["get", "pod", "sk-hairpin", "-o", "jsonpath={.status.phase}"])
                    .as_str(),
                "Succeeded" | "Failed"
            )
        },
    );
    let log = c.ok(&["logs", "sk-hairpin"]);
    assert_eq!(log.trim(), "sk-hairpin", "hairpin through {hip}");

    // A Service without endpoints is rejected at once (ICMP port unreachable), not dropped.
    c.ok(&[
        "create",
        "service",
        "clusterip",
        "sk-empty",
        "--tcp",
        "80:8080",
    ]);
    let eip = c.ok(&["get", "svc", "sk-empty", "-o", "jsonpath={.spec.clusterIP}"]);
    c.wait_for(
        "connections to a Service without endpoints to be refused",
        Duration::from_secs(30),
        || http_get(&format!("{eip}:80")).is_err_and(|e| e.contains("refused")),
    );

    // The rule count does not grow with Services: 20 more, each with the same 1 endpoint.
    let before = proxy_rule_count(&c);
    for i in 0..20 {
        c.ok(&[
            "expose",
            "pod",
            "sk-web-1",
            "--name",
            &format!("sk-many-{i}"),
            "--port",
            "80",
            "--target-port",
            "8080",
            "--selector",
            "app=sk-web",
        ]);
    }
    for i in 0..20 {
        wait_endpoints(&c, &format!("sk-many-{i}"), 1);
    }
    let last = c.ok(&[
        "get",
        "svc",
        "sk-many-19",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(http_get_eventually(&c, &format!("{last}:80")), "sk-web-1");
    assert_eq!(proxy_rule_count(&c), before, "rules after 20 more Services");

    // The table goes with the cluster (the harness runs `skiff proxy --cleanup`).
    assert!(table_exists(&table));
    drop(c);
    assert!(!table_exists(&table), "table ip {table} left behind");
}

#[test]
fn load_balancer_with_local_traffic_policy() {
    let c = ControlPlane::start_cluster();
    web_pod(&c, "sk-lb-1", "app=sk-lb");
    wait_running(&c, "sk-lb-1");
    let lb = r#"apiVersion: v1
kind: Service
metadata:
  name: sk-lb
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: sk-lb}
  ports: [{port: 18081, targetPort: 8080}]
"#;
    let o = c.with_stdin(&["apply", "-f", "-"], lb);
    assert!(o.ok, "apply sk-lb: {}", o.stderr);
    wait_endpoints(&c, "sk-lb", 1);
    // servicelb: the node's address (the harness's --node-ip) as the ingress.
    c.wait_for(
        "status.loadBalancer.ingress",
        Duration::from_secs(30),
        || {
            c.ok(&[
                "get",
                "svc",
                "sk-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ]) == "127.0.0.1"
        },
    );
    assert_eq!(http_get_eventually(&c, "127.0.0.1:18081"), "sk-lb-1");
    // The health-check node port of the Local policy: this node has one endpoint.
    let hc = c.ok(&[
        "get",
        "svc",
        "sk-lb",
        "-o",
        "jsonpath={.spec.healthCheckNodePort}",
    ]);
    assert!(!hc.is_empty(), "no healthCheckNodePort allocated");
    let body = http_get_eventually(&c, &format!("127.0.0.1:{hc}"));
    assert!(
        body.contains("\"localEndpoints\":1") && body.contains("\"name\":\"sk-lb\""),
        "health check answer {body:?}"
    );
}

#[test]
fn proxy_and_dns_survive_kill_9_without_dropping_connections() {
    let mut c = ControlPlane::start_cluster();
    let image = c.agent.as_ref().unwrap().busybox.clone();
    let o = c.with_stdin(
        &["apply", "-f", "-"],
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-echo
  labels: {{app: sk-echo}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: {image}
    command: ["nc", "-ll", "-p", "8080", "-e", "/bin/cat"]
---
apiVersion: v1
kind: Service
metadata: {{name: sk-echo}}
spec:
  selector: {{app: sk-echo}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
        ),
    );
    assert!(o.ok, "{}", o.stderr);
    wait_running(&c, "sk-echo");
    wait_endpoints(&c, "sk-echo", 1);
    let ip = c.ok(&["get", "svc", "sk-echo", "-o", "jsonpath={.spec.clusterIP}"]);
    // An established connection from the host through the ClusterIP (DNAT to the pod).
    let mut conn = None;
    c.wait_for(
        "a connection to the ClusterIP",
        Duration::from_secs(60),
        || {
            let Ok(mut s) = TcpStream::connect_timeout(
                &format!("{ip}:80").parse().unwrap(),
                Duration::from_secs(2),
            ) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 6];
            let ok = s.write_all(b"ping1\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"ping1\n";
            if ok {
                conn = Some(s);
            }
            ok
        },
    );
    let mut conn = conn.unwrap();
    let lookup = |c: &ControlPlane| {
        c.kubectl(&[
            "exec",
            "sk-echo",
            "--",
            "nslookup",
            "sk-echo.default.svc.cluster.local",
        ])
    };
    let before = lookup(&c);
    assert!(
        before.ok && before.stdout.contains(&ip),
        "{}",
        before.stdout
    );

    // kill -9 of the whole server (proxy and DNS with it), then a restart.
    c.kill_and_restart();
    let node = c.agent.as_ref().unwrap().node.clone();
    c.wait_for("the node Ready again", Duration::from_secs(90), || {
        c.ok(&[
            "get",
            "node",
            &node,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]) == "True"
    });
    // The established connection still carries data both ways.
    conn.write_all(b"ping2\n").expect("write after the restart");
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf)
        .expect("the established connection was dropped by the restart");
    assert_eq!(&buf, b"ping2\n");
    // The pod kept running (no restart), and names resolve again.
    assert_eq!(
        c.ok(&[
            "get",
            "pod",
            "sk-echo",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}"
        ]),
        "0"
    );
    c.wait_for(
        "DNS answering after the restart",
        Duration::from_secs(60),
        || {
            let o = lookup(&c);
            o.ok && o.stdout.contains(&ip)
        },
    );
    // New connections work too.
    let mut s =
        TcpStream::connect_timeout(&format!("{ip}:80").parse().unwrap(), Duration::from_secs(5))
            .expect("a new connection after the restart");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping3\n").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping3\n");
}
