//! Dual-stack Services (issue 15): `--service-cidr`/`--cluster-cidr` as an IPv4,IPv6 pair,
//! `ipFamilyPolicy`/`ipFamilies`/`clusterIPs` allocated and validated as upstream (field errors
//! through kubectl), the start-up repair events of Services whose IPs the ranges no longer
//! cover, and on a whole dual-stack cluster: pods with two podIPs, EndpointSlices per family,
//! both ClusterIPs answering from the host (IPv6 through the proxy's `ip6` table), AAAA
//! answers of cluster DNS, and `--nodeport-addresses` narrowing where NodePorts answer.
//! The whole-cluster test needs root, docker-registry, busybox-static and nft.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use skiff_tests::control_plane::ControlPlane;

const DUAL_RANGES: &str = "10.96.0.0/24,fd00:96::/112";

fn service(name: &str, spec_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector:
    app: {name}
  ports:
  - port: 80
    targetPort: 8080
{spec_extra}"#
    )
}

fn create(c: &ControlPlane, manifest: &str) {
    let o = c.with_stdin(&["create", "-f", "-"], manifest);
    assert!(o.ok, "create failed: {}\n{manifest}", o.stderr);
}

/// Creating `manifest` fails with all of `want` in kubectl's message.
fn create_fails(c: &ControlPlane, manifest: &str, want: &[&str]) {
    let o = c.with_stdin(&["create", "-f", "-"], manifest);
    assert!(!o.ok, "create should fail:\n{manifest}\n{}", o.stdout);
    for w in want {
        assert!(
            o.stderr.contains(w),
            "kubectl's error lacks {w:?}:\n{}",
            o.stderr
        );
    }
}

fn jsonpath(c: &ControlPlane, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend(["-o", p.as_str()]);
    c.ok(&args)
}

#[test]
fn dual_stack_allocation_field_errors_and_repair_events() {
    let mut c = ControlPlane::start_with_args(&["--service-cidr", DUAL_RANGES]);

    // SingleStack stays the default: one IPv4 address.
    create(&c, &service("sk-single", ""));
    let fams = jsonpath(&c, &["svc", "sk-single"], "{.spec.ipFamilies}");
    assert_eq!(fams, r#"["IPv4"]"#);
    assert_eq!(
        jsonpath(&c, &["svc", "sk-single"], "{.spec.ipFamilyPolicy}"),
        "SingleStack"
    );

    // PreferDualStack: one address per family, IPv4 (the primary range) first.
    create(
        &c,
        &service("sk-prefer", "  ipFamilyPolicy: PreferDualStack\n"),
    );
    let ips = jsonpath(&c, &["svc", "sk-prefer"], "{.spec.clusterIPs[*]}");
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips[0].starts_with("10.96.0."), "{ips:?}");
    assert!(ips[1].starts_with("fd00:96::"), "{ips:?}");
    assert_eq!(
        jsonpath(&c, &["svc", "sk-prefer"], "{.spec.ipFamilies}"),
        r#"["IPv4","IPv6"]"#
    );
    assert_eq!(
        jsonpath(&c, &["svc", "sk-prefer"], "{.spec.clusterIP}"),
        ips[0]
    );
    // kubectl shows both addresses.
    let wide = c.ok(&["get", "svc", "sk-prefer", "-o", "wide"]);
    assert!(wide.contains(ips[0]), "{wide}");

    // RequireDualStack with IPv6 first: the primary follows ipFamilies[0].
    create(
        &c,
        &service(
            "sk-v6first",
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6]\n",
        ),
    );
    assert_eq!(
        jsonpath(&c, &["svc", "sk-v6first"], "{.spec.ipFamilies}"),
        r#"["IPv6","IPv4"]"#
    );
    assert!(jsonpath(&c, &["svc", "sk-v6first"], "{.spec.clusterIP}").contains(':'));

    // A given IPv6 address: its family is inferred.
    create(&c, &service("sk-given6", "  clusterIP: fd00:96::77\n"));
    assert_eq!(
        jsonpath(&c, &["svc", "sk-given6"], "{.spec.ipFamilies}"),
        r#"["IPv6"]"#
    );

    // Upstream's field errors.
    create_fails(
        &c,
        &service(
            "sk-bad1",
            "  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv4, IPv6]\n",
        ),
        &[
            "spec.ipFamilyPolicy",
            "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
        ],
    );
    create_fails(
        &c,
        &service(
            "sk-bad2",
            "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv4]\n",
        ),
        &["spec.ipFamilies[1]", "Duplicate value"],
    );
    create_fails(
        &c,
        &service(
            "sk-bad3",
            "  ipFamilyPolicy: PreferDualStack\n  clusterIP: 10.96.0.50\n  clusterIPs: [10.96.0.50, 10.96.0.51]\n",
        ),
        &["may specify no more than one IP for each IP family"],
    );
    create_fails(
        &c,
        &service("sk-bad4", "  ipFamilyPolicy: DualStackPlease\n"),
        &[
            "spec.ipFamilyPolicy",
            "Unsupported value",
            "\"DualStackPlease\"",
        ],
    );
    create_fails(
        &c,
        &service(
            "sk-bad5",
            "  clusterIP: fd00:96::78\n  ipFamilies: [IPv4]\n",
        ),
        &["expected an IPv4 value as indicated by `ipFamilies[0]`"],
    );
    create_fails(
        &c,
        &service("sk-bad6", "  clusterIP: fd00:97::1\n"),
        &[
            "failed to allocate IP fd00:97::1",
            "The range of valid IPs is fd00:96::/112",
        ],
    );

    // Downgrade: SingleStack releases the secondary address (it can be taken again).
    let secondary = ips[1].to_string();
    c.ok(&[
        "patch",
        "svc",
        "sk-prefer",
        "--type=merge",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"SingleStack"}}"#,
    ]);
    assert_eq!(
        jsonpath(&c, &["svc", "sk-prefer"], "{.spec.clusterIPs[*]}"),
        ips[0]
    );
    assert_eq!(
        jsonpath(&c, &["svc", "sk-prefer"], "{.spec.ipFamilies}"),
        r#"["IPv4"]"#
    );
    create(
        &c,
        &service("sk-reuse", &format!("  clusterIP: {secondary}\n")),
    );

    // The cluster goes back to IPv4 only: at the next start the repair check warns about the
    // Services holding IPv6 addresses, as kube-apiserver's repair controller does.
    c.set_server_flag("--service-cidr", "10.96.0.0/24");
    c.kill_and_restart();
    let mut describe = String::new();
    c.wait_for(
        "the ClusterIPNotValid event on sk-given6",
        Duration::from_secs(60),
        || {
            describe = c.kubectl(&["describe", "svc", "sk-given6"]).stdout;
            describe.contains("ClusterIPNotValid")
        },
    );
    assert!(
        describe.contains(
            "Cluster IP fd00:96::77(IPv6) is of ip family that is no longer configured on cluster; please recreate service"
        ),
        "{describe}"
    );
    assert!(
        describe.contains("ipallocator-repair-controller"),
        "{describe}"
    );
    // A single-stack cluster refuses what needs IPv6, with upstream's words.
    create_fails(
        &c,
        &service("sk-req", "  ipFamilyPolicy: RequireDualStack\n"),
        &["this cluster is not configured for dual-stack services"],
    );
    create_fails(
        &c,
        &service("sk-v6only", "  ipFamilies: [IPv6]\n"),
        &["spec.ipFamilies[0]", "not configured on this cluster"],
    );
    // PreferDualStack on a single-stack cluster: one family.
    create(
        &c,
        &service("sk-prefer1", "  ipFamilyPolicy: PreferDualStack\n"),
    );
    assert_eq!(
        jsonpath(&c, &["svc", "sk-prefer1"], "{.spec.ipFamilies}"),
        r#"["IPv4"]"#
    );
    c.ok(&[
        "delete",
        "svc",
        "sk-single",
        "sk-prefer",
        "sk-v6first",
        "sk-given6",
        "sk-reuse",
        "sk-prefer1",
    ]);
}

/// One HTTP GET over TCP from the host; the body, or the error.
fn http_get(addr: std::net::SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_string())
}

fn http_get_eventually(c: &ControlPlane, addr: std::net::SocketAddr) -> String {
    let mut got = String::new();
    let mut last = String::new();
    c.wait_for(
        &format!("http://{addr}/ to answer"),
        Duration::from_secs(60),
        || match http_get(addr) {
            Ok(b) if !b.is_empty() => {
                got = b;
                true
            }
            Ok(_) => false,
            Err(e) => {
                last = e;
                false
            }
        },
    );
    assert!(!got.is_empty(), "{addr}: {last}");
    got
}

/// `busybox nslookup -type=<ty> <name> <server>` on the host (busybox-static is a test
/// dependency): the addresses of the answer.
fn lookup(name: &str, ty: &str, server: &str) -> Vec<String> {
    let out = Command::new("busybox")
        .args(["nslookup", &format!("-type={ty}"), name, server])
        .output()
        .expect("busybox is missing: install busybox-static");
    let text = String::from_utf8_lossy(&out.stdout);
    // Skip the server's own lines ("Server:", "Address: <server>#53").
    text.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect()
}

#[test]
fn dual_stack_cluster_serves_both_families() {
    // The bridge plugin turns on IPv6 forwarding for the whole host (as upstream's does): put
    // back what the host had when the test ends.
    let _forwarding = Ipv6Forwarding::save();
    let c = ControlPlane::start_cluster_dual_stack(&["--nodeport-addresses", "127.0.0.0/8"]);
    let agent = c.agent.as_ref().expect("a whole cluster");
    let (pods6, _) = agent.dual_stack.clone().expect("dual-stack ranges");
    let pods6_prefix = pods6.trim_end_matches("::/64").to_string();
    let image = agent.busybox.clone();

    // The node has both pod ranges.
    let cidrs = jsonpath(&c, &["node", &agent.node], "{.spec.podCIDRs}");
    assert!(cidrs.contains(&pods6), "{cidrs}");

    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: sk-web
  labels:
    app: sk-web
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {image}
    command: ["sh", "-c", "mkdir -p /www && echo sk-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
"#
    );
    create(&c, &pod);
    c.wait_for("pod sk-web Ready", Duration::from_secs(120), || {
        jsonpath(
            &c,
            &["pod", "sk-web"],
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        ) == "True"
    });
    // Two podIPs, one per family.
    let pod_ips = jsonpath(&c, &["pod", "sk-web"], "{.status.podIPs[*].ip}");
    let pod_ips: Vec<String> = pod_ips.split_whitespace().map(String::from).collect();
    assert_eq!(pod_ips.len(), 2, "{pod_ips:?}");
    assert!(pod_ips[0].starts_with("10.244."), "{pod_ips:?}");
    assert!(pod_ips[1].starts_with(&pods6_prefix), "{pod_ips:?}");

    create(
        &c,
        &format!(
            "{}  type: NodePort\n  ipFamilyPolicy: PreferDualStack\n",
            service("sk-web", "")
        ),
    );
    let ips = jsonpath(&c, &["svc", "sk-web"], "{.spec.clusterIPs[*]}");
    let ips: Vec<String> = ips.split_whitespace().map(String::from).collect();
    assert_eq!(ips.len(), 2, "{ips:?}");

    // One EndpointSlice per address family.
    c.wait_for(
        "an IPv4 and an IPv6 EndpointSlice with the pod",
        Duration::from_secs(60),
        || {
            let out = c.ok(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=sk-web",
                "-o",
                "jsonpath={range .items[*]}{.addressType}={.endpoints[*].addresses[0]} {end}",
            ]);
            out.contains(&format!("IPv4={}", pod_ips[0]))
                && out.contains(&format!("IPv6={}", pod_ips[1]))
        },
    );

    // Both ClusterIPs answer from the host: IPv4 through the ip table, IPv6 through ip6.
    for ip in &ips {
        let addr = std::net::SocketAddr::new(ip.parse().expect("an IP"), 80);
        assert_eq!(http_get_eventually(&c, addr), "sk-web", "via {addr}");
    }
    let table = &agent.proxy_table;
    let listed = Command::new("nft")
        .args(["list", "table", "ip6", table])
        .output()
        .expect("nft is missing: install nftables");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&ips[1]) || listed.contains("service-ips"),
        "ip6 {table}:\n{listed}"
    );

    // --nodeport-addresses 127.0.0.0/8: the NodePort answers on 127.0.0.1 and not on the
    // host's address on the cluster bridge.
    let np: u16 = jsonpath(&c, &["svc", "sk-web"], "{.spec.ports[0].nodePort}")
        .parse()
        .expect("a nodePort");
    let lo = std::net::SocketAddr::from(([127, 0, 0, 1], np));
    assert_eq!(http_get_eventually(&c, lo), "sk-web");
    let bridge_ip: std::net::IpAddr = pod_ips[0]
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1"))
        .expect("an IPv4 pod address")
        .parse()
        .expect("the bridge address");
    let other = std::net::SocketAddr::new(bridge_ip, np);
    assert!(
        http_get(other).is_err(),
        "the NodePort answered on {other} outside --nodeport-addresses"
    );

    // Cluster DNS answers AAAA for the dual-stack Service and for a headless one's pods.
    create(
        &c,
        &format!(
            "{}  clusterIP: None\n  ipFamilyPolicy: PreferDualStack\n",
            service("sk-headless", "").replace("app: sk-headless", "app: sk-web")
        ),
    );
    let dns = format!("{}.10", agent.service_cidr.trim_end_matches(".0/24"));
    let name = "sk-web.default.svc.cluster.local";
    let mut got = vec![];
    c.wait_for("AAAA of the service", Duration::from_secs(60), || {
        got = lookup(name, "AAAA", &dns);
        got.contains(&ips[1])
    });
    assert_eq!(lookup(name, "A", &dns), vec![ips[0].clone()]);
    let headless = "sk-headless.default.svc.cluster.local";
    c.wait_for(
        "AAAA of the headless service",
        Duration::from_secs(60),
        || lookup(headless, "AAAA", &dns).contains(&pod_ips[1]),
    );
    c.ok(&["delete", "svc", "sk-web", "sk-headless"]);
    c.ok(&["delete", "pod", "sk-web", "--wait=false"]);
}

/// `net.ipv6.conf.all.forwarding` as the test found it, written back on drop.
struct Ipv6Forwarding(Option<String>);

impl Ipv6Forwarding {
    const PATH: &'static str = "/proc/sys/net/ipv6/conf/all/forwarding";

    fn save() -> Self {
        Self(std::fs::read_to_string(Self::PATH).ok())
    }
}

impl Drop for Ipv6Forwarding {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            if let Err(e) = std::fs::write(Self::PATH, v.trim()) {
                eprintln!("restoring {}: {e}", Self::PATH);
            }
        }
    }
}
