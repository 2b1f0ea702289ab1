//! Cluster DNS end to end on a whole cluster: the kube-dns Service (listed by `kubectl
//! cluster-info`), pod resolv.conf per dnsPolicy, names of Services (short, namespaced, FQDN),
//! headless Services and their pods' `<hostname>.<subdomain>` names, SRV for named ports, PTR,
//! ExternalName CNAMEs, and forwarding of other names to the node's resolver (a dnsmasq the test
//! runs on loopback). Needs root, docker-registry, busybox-static and dnsmasq.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skiff_tests::control_plane::ControlPlane;

/// dnsmasq answering `sk-upstream.test` on the cluster's upstream address; stopped by PID.
struct Upstream(Child);

impl Upstream {
    fn start(addr: std::net::Ipv4Addr) -> Upstream {
        let child = Command::new("dnsmasq")
            .args(["-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
            .args(["--bind-interfaces", "--port=53", "--pid-file="])
            .arg(format!("--listen-address={addr}"))
            .arg("--address=/sk-upstream.test/192.0.2.7")
            // Like a real resolver: other names do not exist.
            .arg("--address=/#/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (Debian's dnsmasq-base): the forwarding check needs it");
        Upstream(child)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        skiff_tests::stop_child(&mut self.0, Duration::from_secs(5));
    }
}

fn run_script(c: &ControlPlane, manifest: &str, name: &str) -> String {
    let o = c.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply {name}: {}", o.stderr);
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
    c.ok(&["logs", name])
}

#[test]
fn cluster_dns_names_and_forwarding() {
    let c = ControlPlane::start_cluster();
    let agent = c.agent.as_ref().unwrap();
    let image = agent.busybox.clone();
    let dns_ip = format!("{}.10", agent.service_cidr.trim_end_matches(".0/24"));
    let _upstream = Upstream::start(agent.dns_upstream);

    // The kube-dns Service, as upstream labels it.
    c.wait_for("the kube-dns Service", Duration::from_secs(30), || {
        c.kubectl(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .stdout
            == dns_ip
    });
    let info = c.ok(&["cluster-info"]);
    assert!(
        info.contains("CoreDNS") && info.contains("kube-dns:dns/proxy"),
        "cluster-info lists cluster DNS:\n{info}"
    );

    let objects = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-dns-web
  labels: {{app: sk-dns}}
spec:
  hostname: web-0
  subdomain: sk-headless
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo sk-dns-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: [{{name: http, containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sk-dns-svc}}
spec:
  selector: {{app: sk-dns}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sk-headless}}
spec:
  clusterIP: None
  selector: {{app: sk-dns}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sk-ext}}
spec:
  type: ExternalName
  externalName: sk-upstream.test
"#
    );
    let o = c.with_stdin(&["apply", "-f", "-"], &objects);
    assert!(o.ok, "apply: {}\n{}", o.stderr, c.log_tail());
    c.wait_for("the web pod's endpoint", Duration::from_secs(180), || {
        c.kubectl(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=sk-headless",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].hostname}",
        ])
        .stdout
            == "web-0"
    });
    let svc_ip = c.ok(&[
        "get",
        "svc",
        "sk-dns-svc",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let pod_ip = c.ok(&["get", "pod", "sk-dns-web", "-o", "jsonpath={.status.podIP}"]);

    // From the host, straight to the cluster DNS address.
    let out = Command::new("busybox")
        .args(["nslookup", "sk-dns-svc.default.svc.cluster.local", &dns_ip])
        .output()
        .expect("busybox nslookup on the host (busybox-static)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&svc_ip), "host lookup:\n{text}");

    let script = [
        "cat /etc/resolv.conf",
        "echo ---short; nslookup sk-dns-svc",
        // busybox's nslookup applies the search path only to names without a dot; the name a
        // libc resolver makes of `sk-dns-svc.default` with `svc.cluster.local`:
        "echo ---ns; nslookup sk-dns-svc.default.svc.cluster.local.",
        "echo ---fqdn; nslookup sk-dns-svc.default.svc.cluster.local",
        "echo ---headless; nslookup sk-headless.default.svc.cluster.local",
        "echo ---pod; nslookup web-0.sk-headless.default.svc.cluster.local",
        "echo ---srv; nslookup -type=srv _http._tcp.sk-dns-svc.default.svc.cluster.local",
        &format!("echo ---ptr; nslookup {svc_ip}"),
        "echo ---cname; nslookup -type=cname sk-ext.default.svc.cluster.local",
        "echo ---upstream; nslookup sk-upstream.test",
        "echo ---missing; nslookup sk-nothing.default.svc.cluster.local; echo rc=$?",
        "echo ---end",
    ]
    .join("; ");
    let client = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-dns-client}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: {image}
    command: ["sh", "-c", {script:?}]
"#
    );
    let log = run_script(&c, &client, "sk-dns-client");
    let section = |name: &str| -> String {
        let start = log
            .find(&format!("---{name}"))
            .unwrap_or_else(|| panic!("no section {name} in:\n{log}"));
        let rest = &log[start + 3 + name.len()..];
        rest[..rest.find("---").unwrap_or(rest.len())].to_string()
    };
    let resolv = &log[..log.find("---short").unwrap_or(0)];
    assert!(resolv.contains(&format!("nameserver {dns_ip}")), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    for s in ["short", "ns", "fqdn"] {
        assert!(section(s).contains(&svc_ip), "{s}:\n{}", section(s));
    }
    assert!(
        section("headless").contains(&pod_ip),
        "{}",
        section("headless")
    );
    assert!(section("pod").contains(&pod_ip), "{}", section("pod"));
    let srv = section("srv");
    assert!(
        srv.contains("80") && srv.contains("sk-dns-svc.default.svc.cluster.local"),
        "srv:\n{srv}"
    );
    assert!(
        section("ptr").contains("sk-dns-svc.default.svc.cluster.local"),
        "ptr:\n{}",
        section("ptr")
    );
    assert!(
        section("cname").contains("sk-upstream.test"),
        "cname:\n{}",
        section("cname")
    );
    assert!(
        section("upstream").contains("192.0.2.7"),
        "upstream:\n{}",
        section("upstream")
    );
    assert!(
        section("missing").contains("NXDOMAIN") || section("missing").contains("can't find"),
        "missing:\n{}",
        section("missing")
    );
}
