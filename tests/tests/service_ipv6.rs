//! The IPv6 side of Services (issue 15's remaining gaps), on a whole dual-stack cluster whose
//! node has a dual `--node-ip` (127.0.0.1 and an IPv6 address on lo, put there by the test):
//!
//! - the Node lists both InternalIPs and pods both as `status.hostIPs`; a dual-stack LoadBalancer Service gets both as
//!   `status.loadBalancer.ingress` and answers on the IPv6 one; its NodePort answers on both;
//! - the `kube-dns` Service is dual-stack (PreferDualStack, a ClusterIP per family), the DNS
//!   server answers on the IPv6 one, and pods get both nameservers in resolv.conf;
//! - conntrack entries of a removed IPv6 UDP endpoint are flushed: a client that keeps sending
//!   from one source port moves to the new endpoint (upstream's "preserve UDP traffic when
//!   server pod cycles" e2e);
//! - a clean stop (SIGTERM) of `skiff server` takes both cluster DNS addresses off the host;
//!
//! and, on a control plane alone, the node port repair events of a restart
//! (`PortOutOfRange`, `PortNotAllocated`, and `PortAlreadyAllocated` for a node port two
//! stored Services hold).
//! The cluster test needs root, docker-registry, busybox-static and iproute2.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use skiff_tests::control_plane::ControlPlane;

fn create(c: &ControlPlane, manifest: &str) {
    let o = c.with_stdin(&["create", "-f", "-"], manifest);
    assert!(o.ok, "create failed: {}\n{manifest}", o.stderr);
}

fn jsonpath(c: &ControlPlane, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let p = format!("jsonpath={path}");
    args.extend(["-o", p.as_str()]);
    c.ok(&args)
}

fn node_port_service(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: NodePort
  selector:
    app: {name}
  ports:
  - port: 80
    targetPort: 8080
    nodePort: {port}
"#
    )
}

/// The events of `kubectl describe svc <name>`.
fn describe(c: &ControlPlane, name: &str) -> String {
    c.kubectl(&["describe", "svc", name]).stdout
}

/// Waits for the node port repair controller's `reason` event on Service `name` saying
/// `message`; the describe text.
fn wait_for_repair_event(c: &ControlPlane, name: &str, reason: &str, message: &str) -> String {
    let mut d = String::new();
    c.wait_for(
        &format!("the {reason} event on {name}"),
        Duration::from_secs(60),
        || {
            d = describe(c, name);
            d.contains(reason)
        },
    );
    assert!(d.contains(message), "{d}");
    assert!(d.contains("portallocator-repair-controller"), "{d}");
    d
}

#[test]
fn node_port_repair_events_on_start() {
    let mut c = ControlPlane::start_with_args(&["--service-node-port-range", "30000-30999"]);
    create(&c, &node_port_service("sk-np-out", 30900));
    create(&c, &node_port_service("sk-np-in", 30100));

    // The range shrinks: the port outside it gets kube-apiserver's repair Warning.
    c.set_server_flag("--service-node-port-range", "30000-30499");
    c.kill_and_restart();
    wait_for_repair_event(
        &c,
        "sk-np-out",
        "PortOutOfRange",
        "Port 30900 is not within the port range 30000-30499; please recreate service",
    );
    let inside = describe(&c, "sk-np-in");
    assert!(
        !inside.contains("PortOutOfRange") && !inside.contains("PortNotAllocated"),
        "a port in range got a repair event:\n{inside}"
    );

    // The range grows back: the port is no longer recorded (the narrower range could not hold
    // it), so the repair records it again and says so.
    c.set_server_flag("--service-node-port-range", "30000-30999");
    c.kill_and_restart();
    wait_for_repair_event(
        &c,
        "sk-np-out",
        "PortNotAllocated",
        "Port 30900 is not allocated; repairing",
    );
    // Repaired: nobody else can take it now.
    let o = c.with_stdin(
        &["create", "-f", "-"],
        &node_port_service("sk-np-dup", 30900),
    );
    assert!(!o.ok, "a second Service took node port 30900");
    assert!(
        o.stderr.contains("provided port is already allocated"),
        "{}",
        o.stderr
    );
    c.ok(&["delete", "svc", "sk-np-out", "sk-np-in"]);
}

/// A second Service holding a node port another one has, written straight into the store of
/// a stopped server (as a restored backup or a hand edit can leave it; the API refuses it):
/// the repair at the next start records kube-apiserver's `PortAlreadyAllocated` Warning on the
/// copy (it comes after the original in key order, as upstream's rebuilt bitmap sees it).
#[test]
fn node_port_assigned_twice_in_the_store_gets_port_already_allocated() {
    use skiff_store::Store;
    let mut c = ControlPlane::start();
    create(&c, &node_port_service("sk-np-a", 30777));
    let pid = nix::unistd::Pid::from_raw(c.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill the server");
    c.wait_for("skiff server to die", Duration::from_secs(60), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });

    let db = c.dir().join("data/db");
    // The store's lock goes with the last thread of the killed process, which can outlive the
    // zombie leader for a moment.
    let mut opened = None;
    let mut last = String::new();
    c.wait_for(
        "the killed server's store lock to be released",
        Duration::from_secs(60),
        || match skiff_store::EmbeddedStore::open(&db) {
            Ok(s) => {
                opened = Some(s);
                true
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        },
    );
    let store = opened.unwrap_or_else(|| panic!("open the stopped server's store: {last}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let (kvs, _) = store.list("/registry/").await.expect("list the store");
        let orig = kvs
            .iter()
            .find(|kv| kv.key.ends_with("/services/default/sk-np-a"))
            .unwrap_or_else(|| {
                panic!(
                    "no stored sk-np-a among {:?}",
                    kvs.iter().map(|k| &k.key).collect::<Vec<_>>()
                )
            });
        let mut svc: serde_json::Value =
            serde_json::from_slice(&orig.value).expect("a stored Service is JSON");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30777, "{svc}");
        svc["metadata"]["name"] = "sk-np-b".into();
        svc["metadata"]["uid"] = format!("sk-copy-{}", std::process::id()).into();
        // Its own cluster IP (the repair records it), the same node port.
        svc["spec"]["clusterIP"] = serde_json::Value::Null;
        svc["spec"]["clusterIPs"] = serde_json::Value::Null;
        let key = orig.key.replace("/sk-np-a", "/sk-np-b");
        store
            .create(&key, serde_json::to_vec(&svc).expect("json"))
            .await
            .expect("write the copy");
    });
    drop(store);
    drop(rt);
    c.kill_and_restart();

    wait_for_repair_event(
        &c,
        "sk-np-b",
        "PortAlreadyAllocated",
        "Port 30777 was assigned to multiple services; please recreate service",
    );
    let a = describe(&c, "sk-np-a");
    assert!(
        !a.contains("PortAlreadyAllocated"),
        "the original got the event too:\n{a}"
    );
    c.ok(&["delete", "svc", "sk-np-a", "sk-np-b"]);
}

/// One HTTP GET over TCP from the host; the body, or the error.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_string())
}

fn http_get_eventually(c: &ControlPlane, addr: SocketAddr) -> String {
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

/// `busybox nslookup -type=<ty> <name> <server>` on the host: the addresses of the answer.
fn lookup(name: &str, ty: &str, server: &str) -> Vec<String> {
    let out = Command::new("busybox")
        .args(["nslookup", &format!("-type={ty}"), name, server])
        .output()
        .expect("busybox is missing: install busybox-static");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect()
}

fn pod(name: &str, app: &str, image: &str, command: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    app: {app}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "{command}"]
"#
    )
}

fn wait_ready(c: &ControlPlane, name: &str) {
    c.wait_for(
        &format!("pod {name} Ready"),
        Duration::from_secs(120),
        || {
            jsonpath(
                c,
                &["pod", name],
                "{.status.conditions[?(@.type==\"Ready\")].status}",
            ) == "True"
        },
    );
}

/// UDP datagrams that reached a closed port in the pod's network namespace
/// (`Udp6NoPorts` of its /proc/net/snmp6).
fn udp6_no_ports(c: &ControlPlane, pod: &str) -> u64 {
    let o = c.kubectl(&["exec", pod, "--", "cat", "/proc/net/snmp6"]);
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Udp6NoPorts"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An IPv6 address on lo (the node's second `--node-ip`; kernels without dummy links have
/// nothing else to hold it), removed on drop.
struct V6Address {
    cidr: String,
}

impl V6Address {
    fn add(addr: &str) -> V6Address {
        let cidr = format!("{addr}/128");
        let _ = Command::new("ip")
            .args(["addr", "del", &cidr, "dev", "lo"])
            .output();
        let o = Command::new("ip")
            .args(["addr", "add", &cidr, "dev", "lo", "nodad"])
            .output()
            .expect("ip is missing: install iproute2");
        assert!(
            o.status.success(),
            "ip addr add {cidr} dev lo: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        V6Address { cidr }
    }
}

impl Drop for V6Address {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &self.cidr, "dev", "lo"])
            .output();
    }
}

/// `net.ipv6.conf.all.forwarding` as the test found it, written back on drop (the bridge
/// plugin turns it on, as upstream's does).
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

/// Sends a datagram to `to` from one source port every 200 ms until dropped (a UDP "flow"
/// conntrack keeps pinned to one endpoint).
struct UdpFlow {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpFlow {
    fn start(to: SocketAddr) -> UdpFlow {
        let sock = UdpSocket::bind("[::]:0").expect("an IPv6 UDP socket");
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                // Errors (ICMP port unreachable, no endpoints) do not stop the flow.
                let _ = sock.send_to(b"sk-udp-probe", to);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        UdpFlow {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn ipv6_node_ips_load_balancer_dns_and_udp_flush() {
    let _forwarding = Ipv6Forwarding::save();
    let tag = std::process::id() % 10000;
    let node6 = format!("fd00:10:99::{tag:x}");
    let _addr = V6Address::add(&node6);
    let node_ips = format!("127.0.0.1,{node6}");
    let c = ControlPlane::start_cluster_dual_stack(&["--node-ip", &node_ips]);
    let agent = c.agent.as_ref().expect("a whole cluster");
    let (_, svc6) = agent.dual_stack.clone().expect("dual-stack ranges");
    let dns4 = format!("{}.10", agent.service_cidr.trim_end_matches(".0/24"));
    let dns6 = format!("{}a", svc6.trim_end_matches("/112"));
    let image = agent.busybox.clone();
    let node6_ip: IpAddr = node6.parse().expect("an IPv6 address");

    // Dual --node-ip: both InternalIPs, in the given order.
    c.wait_for(
        "both InternalIPs on the Node",
        Duration::from_secs(60),
        || {
            jsonpath(
                &c,
                &["node", &agent.node],
                "{.status.addresses[?(@.type==\"InternalIP\")].address}",
            ) == format!("127.0.0.1 {node6}")
        },
    );

    // kube-dns is dual-stack: a ClusterIP per family, both served.
    c.wait_for(
        "the dual-stack kube-dns Service",
        Duration::from_secs(60),
        || {
            jsonpath(
                &c,
                &["svc", "-n", "kube-system", "kube-dns"],
                "{.spec.clusterIPs[*]}",
            ) == format!("{dns4} {dns6}")
        },
    );
    assert_eq!(
        jsonpath(
            &c,
            &["svc", "-n", "kube-system", "kube-dns"],
            "{.spec.ipFamilyPolicy}"
        ),
        "PreferDualStack"
    );
    let mut got = vec![];
    c.wait_for(
        "an answer of the IPv6 DNS address",
        Duration::from_secs(60),
        || {
            got = lookup("kubernetes.default.svc.cluster.local", "A", &dns6);
            !got.is_empty()
        },
    );
    assert_eq!(
        got,
        vec![format!(
            "{}.1",
            agent.service_cidr.trim_end_matches(".0/24")
        )]
    );

    // A web pod behind a dual-stack LoadBalancer Service.
    // It also gets the downward API's status.hostIPs and status.podIPs as env (every
    // address, primary first, comma-separated, as upstream).
    let web = pod(
        "sk-web6",
        "sk-web6",
        &image,
        "mkdir -p /www && echo sk-web6 > /www/index.html && exec httpd -f -p 8080 -h /www",
    ) + "    env:\n    - name: SK_HOST_IPS\n      valueFrom:\n        fieldRef:\n          fieldPath: status.hostIPs\n"
        + "    - name: SK_POD_IPS\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIPs\n";
    create(&c, &web);
    wait_ready(&c, "sk-web6");
    assert_eq!(
        c.ok(&["exec", "sk-web6", "--", "sh", "-c", "echo $SK_HOST_IPS"])
            .trim(),
        format!("127.0.0.1,{node6}")
    );
    let pod_ips = jsonpath(&c, &["pod", "sk-web6"], "{.status.podIPs[*].ip}");
    assert_eq!(pod_ips.split(' ').count(), 2, "a dual-stack pod: {pod_ips}");
    assert_eq!(
        c.ok(&["exec", "sk-web6", "--", "sh", "-c", "echo $SK_POD_IPS"])
            .trim(),
        pod_ips.replace(' ', ",")
    );
    // A downward API *volume* has no status fields (upstream: env only; its kubelet's volume
    // plugin answers "unsupported fieldPath"), so no file can disagree with the env.
    let dapi = pod("sk-dapi6", "sk-dapi6", &image, "sleep 3600")
        + "    volumeMounts:\n    - name: info\n      mountPath: /info\n"
        + "  volumes:\n  - name: info\n    downwardAPI:\n      items:\n"
        + "      - path: hostips\n        fieldRef:\n          fieldPath: status.hostIPs\n";
    create(&c, &dapi);
    let mut d = String::new();
    c.wait_for(
        "the FailedMount event of sk-dapi6",
        Duration::from_secs(60),
        || {
            d = c.kubectl(&["describe", "pod", "sk-dapi6"]).stdout;
            d.contains("FailedMount")
        },
    );
    assert!(
        d.contains(
            r#"MountVolume.SetUp failed for volume "info" : unsupported fieldPath: status.hostIPs"#
        ),
        "{d}"
    );
    assert_ne!(
        jsonpath(&c, &["pod", "sk-dapi6"], "{.status.phase}"),
        "Running"
    );
    c.ok(&["delete", "pod", "sk-dapi6", "--wait=false"]);
    // The pod's host addresses are the node's, one per family, primary first (upstream's
    // status.hostIPs); hostIP stays the primary one.
    assert_eq!(
        jsonpath(&c, &["pod", "sk-web6"], "{.status.hostIPs[*].ip}"),
        format!("127.0.0.1 {node6}")
    );
    assert_eq!(
        jsonpath(&c, &["pod", "sk-web6"], "{.status.hostIP}"),
        "127.0.0.1"
    );
    // Pods get both cluster DNS addresses, in order, and resolve through the IPv6 one.
    let resolv = c.ok(&["exec", "sk-web6", "--", "cat", "/etc/resolv.conf"]);
    let servers: Vec<&str> = resolv
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver "))
        .map(str::trim)
        .collect();
    assert_eq!(servers, vec![dns4.as_str(), dns6.as_str()], "{resolv}");
    let o = c.kubectl(&[
        "exec",
        "sk-web6",
        "--",
        "nslookup",
        "kubernetes.default.svc.cluster.local",
        &dns6,
    ]);
    assert!(
        o.ok && o.stdout.contains(&format!(
            "{}.1",
            agent.service_cidr.trim_end_matches(".0/24")
        )),
        "nslookup through {dns6} in the pod: {}{}",
        o.stdout,
        o.stderr
    );

    create(
        &c,
        r#"apiVersion: v1
kind: Service
metadata:
  name: sk-web6
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  selector:
    app: sk-web6
  ports:
  - port: 18086
    targetPort: 8080
"#,
    );
    c.wait_for(
        "both node addresses as load balancer ingress",
        Duration::from_secs(60),
        || {
            jsonpath(
                &c,
                &["svc", "sk-web6"],
                "{.status.loadBalancer.ingress[*].ip}",
            ) == format!("127.0.0.1 {node6}")
        },
    );
    assert_eq!(
        http_get_eventually(&c, SocketAddr::new(node6_ip, 18086)),
        "sk-web6",
        "the IPv6 load balancer address"
    );
    assert_eq!(
        http_get_eventually(&c, SocketAddr::from(([127, 0, 0, 1], 18086))),
        "sk-web6"
    );
    // Its NodePort answers on both node addresses.
    let np: u16 = jsonpath(&c, &["svc", "sk-web6"], "{.spec.ports[0].nodePort}")
        .parse()
        .expect("a nodePort");
    assert_eq!(
        http_get_eventually(&c, SocketAddr::from(([127, 0, 0, 1], np))),
        "sk-web6"
    );
    assert_eq!(
        http_get_eventually(&c, SocketAddr::new(node6_ip, np)),
        "sk-web6",
        "the NodePort on the IPv6 node address"
    );
    // An IPv6-only LoadBalancer lists only the IPv6 node address.
    create(
        &c,
        r#"apiVersion: v1
kind: Service
metadata:
  name: sk-web6-only
spec:
  type: LoadBalancer
  ipFamilies: [IPv6]
  selector:
    app: sk-web6
  ports:
  - port: 18087
    targetPort: 8080
"#,
    );
    c.wait_for(
        "the IPv6 node address as the IPv6 service's ingress",
        Duration::from_secs(60),
        || {
            jsonpath(
                &c,
                &["svc", "sk-web6-only"],
                "{.status.loadBalancer.ingress[*].ip}",
            ) == node6
        },
    );
    assert_eq!(
        http_get_eventually(&c, SocketAddr::new(node6_ip, 18087)),
        "sk-web6"
    );

    // UDP over IPv6: a flow pinned by conntrack to endpoint A moves to B once A is gone.
    create(&c, &pod("sk-udp-a", "sk-udp", &image, "exec sleep 3600"));
    wait_ready(&c, "sk-udp-a");
    create(
        &c,
        r#"apiVersion: v1
kind: Service
metadata:
  name: sk-udp
spec:
  ipFamilies: [IPv6]
  selector:
    app: sk-udp
  ports:
  - port: 5399
    targetPort: 5399
    protocol: UDP
"#,
    );
    let udp_ip: IpAddr = jsonpath(&c, &["svc", "sk-udp"], "{.spec.clusterIP}")
        .parse()
        .expect("an IPv6 ClusterIP");
    assert!(udp_ip.is_ipv6(), "{udp_ip}");
    c.wait_for(
        "sk-udp-a as the IPv6 endpoint",
        Duration::from_secs(60),
        || {
            !c.ok(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=sk-udp",
                "-o",
                "jsonpath={.items[*].endpoints[*].addresses[0]}",
            ])
            .is_empty()
        },
    );
    let flow = UdpFlow::start(SocketAddr::new(udp_ip, 5399));
    let a0 = udp6_no_ports(&c, "sk-udp-a");
    c.wait_for(
        "the UDP flow to reach sk-udp-a",
        Duration::from_secs(60),
        || udp6_no_ports(&c, "sk-udp-a") > a0 + 5,
    );
    create(&c, &pod("sk-udp-b", "sk-udp", &image, "exec sleep 3600"));
    wait_ready(&c, "sk-udp-b");
    // Both are endpoints now; conntrack keeps the flow on A.
    c.wait_for("two UDP endpoints", Duration::from_secs(60), || {
        c.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=sk-udp",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ])
        .split_whitespace()
        .count()
            == 2
    });
    c.ok(&["delete", "pod", "sk-udp-a", "--wait=false"]);
    let b0 = udp6_no_ports(&c, "sk-udp-b");
    c.wait_for(
        "the UDP flow to move to sk-udp-b (conntrack entries of sk-udp-a flushed)",
        Duration::from_secs(90),
        || udp6_no_ports(&c, "sk-udp-b") > b0 + 5,
    );
    drop(flow);

    c.ok(&["delete", "svc", "sk-web6", "sk-web6-only", "sk-udp"]);
    c.ok(&[
        "delete",
        "pod",
        "sk-web6",
        "sk-udp-a",
        "sk-udp-b",
        "--grace-period=1",
        "--ignore-not-found",
        "--timeout=60s",
    ]);

    // A clean stop (SIGTERM) takes both cluster DNS addresses off the host: this kernel has
    // them on lo (no dummy links), else on the dummy link, which goes too.
    let held = |ip: &str| {
        let o = Command::new("ip")
            .args(["-o", "addr", "show", "to", ip])
            .output()
            .expect("ip is missing: install iproute2");
        !String::from_utf8_lossy(&o.stdout).trim().is_empty()
    };
    assert!(
        held(&dns4) && held(&dns6),
        "the DNS addresses are not on the host while serving"
    );
    let pid = nix::unistd::Pid::from_raw(c.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM the server");
    c.wait_for("skiff server to exit", Duration::from_secs(60), || {
        // A zombie (not reaped until the harness drops it) or gone: it has exited.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
    assert!(!held(&dns4), "{dns4} stayed on the host after a clean stop");
    assert!(!held(&dns6), "{dns6} stayed on the host after a clean stop");
    let link = Command::new("ip")
        .args(["link", "show", &agent.dns_link])
        .output()
        .expect("ip");
    assert!(
        !link.status.success(),
        "{} stayed after a clean stop",
        agent.dns_link
    );
}
