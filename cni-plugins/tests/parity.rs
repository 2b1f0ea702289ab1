//! Parity with Debian's reference plugins in /usr/lib/cni: the same ADD/CHECK/DEL inputs go to
//! both, each in its own scratch "host" netns; the result JSON, the resulting state (addresses,
//! routes, bridge, hairpin flag, forwarding sysctl) and which packets get NATed (seen with real
//! traffic from the container to an "outside" netns, and from outside to a mapped host port) must
//! be the same.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::traffic::{tcp_client, tcp_server, udp_send, udp_server, Topo};
use common::Ns;
use serde_json::{json, Value};

fn reference() -> Option<PathBuf> {
    let d = common::reference_dir()?;
    d.join("portmap").is_file().then_some(d)
}

/// Replaces per-run values (MACs, veth names, netns paths) with placeholders.
fn normalize(v: &Value, netns: &str) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "mac" => json!("MAC"),
                        "sandbox" => json!(v.as_str().map(|s| s.replace(netns, "NETNS"))),
                        "name" if v.as_str().is_some_and(|s| s.starts_with("veth")) => {
                            json!("VETH")
                        }
                        _ => normalize(v, netns),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| normalize(x, netns)).collect()),
        other => other.clone(),
    }
}

/// (address/prefix) of a link, link-local ones left out.
fn addrs(ns: &Ns, dev: &str) -> Vec<String> {
    let mut v: Vec<String> = ns.ip_json(&["addr", "show", "dev", dev])[0]["addr_info"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    v.sort();
    v
}

/// The container's routes as "dst via gw dev" strings, both families.
fn routes(ns: &Ns) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        for r in ns
            .ip_json(&[fam, "route", "show"])
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let dst = r["dst"].as_str().unwrap_or("").to_string();
            if dst.starts_with("fe80") || r["type"] == "multicast" {
                continue;
            }
            out.push(format!(
                "{dst} via {} dev {}",
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("")
            ));
        }
    }
    out.sort();
    out
}

fn sysctl(ns: &Ns, key: &str) -> String {
    ns.exec(&["cat", &format!("/proc/sys/{key}")])
        .1
        .trim()
        .to_string()
}

/// Everything compared between the two implementations for one bridge config.
#[derive(Debug, PartialEq)]
struct State {
    result: Value,
    check_ok: bool,
    cont_addrs: Vec<String>,
    cont_routes: Vec<String>,
    bridge_addrs: Vec<String>,
    hairpin: Value,
    ip_forward: String,
    cont_sysctls: Vec<String>,
    seen_outside: Option<String>,
}

fn observe(t: &Topo, conf: &Value, traffic: bool) -> State {
    let add = t.run("bridge", "ADD", conf);
    let res = add.json();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = res.clone();
    let check_ok = t.try_run("bridge", "CHECK", &with_prev).code == 0;
    let veth = res["interfaces"][1]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let link = t.host.ip_json(&["-d", "link", "show", &veth]);
    let hairpin = link[0]["linkinfo"]["info_slave_data"]["hairpin"].clone();
    let bridge = conf["bridge"].as_str().unwrap();
    let seen_outside = traffic.then(|| {
        let dst = SocketAddr::new(t.out_ip(), 8080);
        let srv = tcp_server(&t.out.0, dst);
        let got = tcp_client(&t.cont.0, dst);
        srv.join().unwrap();
        got.unwrap_or_else(|| "no connection".into())
    });
    let s = State {
        result: normalize(&res, &t.cont.path()),
        check_ok,
        cont_addrs: addrs(&t.cont, "eth0"),
        cont_routes: routes(&t.cont),
        bridge_addrs: addrs(&t.host, bridge),
        hairpin,
        ip_forward: sysctl(&t.host, "net/ipv4/ip_forward"),
        cont_sysctls: [
            "net/ipv6/conf/eth0/accept_dad",
            "net/ipv4/conf/eth0/arp_notify",
            "net/ipv6/conf/eth0/disable_ipv6",
        ]
        .iter()
        .map(|k| format!("{k}={}", sysctl(&t.cont, k)))
        .collect(),
        seen_outside,
    };
    t.run("bridge", "DEL", &with_prev);
    assert!(!t.cont.exec(&["ip", "link", "show", "eth0"]).0);
    // DEL is idempotent on both.
    t.run("bridge", "DEL", conf);
    s
}

fn compare(tag: &str, conf_for: impl Fn(&Topo) -> Value, traffic: bool) {
    let Some(refdir) = reference() else {
        panic!("missing prerequisite: reference plugins not installed in /usr/lib/cni");
    };
    let theirs = {
        let t = Topo::with_plugins(&format!("{tag}r"), 72, 172, Some(&refdir));
        observe(&t, &conf_for(&t), traffic)
    };
    let ours = {
        let t = Topo::with_plugins(&format!("{tag}s"), 72, 172, None);
        observe(&t, &conf_for(&t), traffic)
    };
    eprintln!("{tag}: {ours:?}");
    assert_eq!(
        ours, theirs,
        "{tag}: ours (left) differs from the reference"
    );
}

#[test]
fn parity_ipv4_masq_hairpin() {
    require_root!();
    compare("71", |t| t.bridge_conf(true), true);
}

#[test]
fn parity_ipv4_no_masq() {
    require_root!();
    compare(
        "73",
        |t| {
            let mut c = t.bridge_conf(false);
            c["hairpinMode"] = json!(false);
            c
        },
        true,
    );
}

fn v6_conf(t: &Topo, dual: bool) -> Value {
    let mut ranges = vec![json!([{"subnet": "fd00:10:244:72::/64"}])];
    if dual {
        ranges.insert(0, json!([{"subnet": "10.244.72.0/24"}]));
    }
    json!({
        "cniVersion": "1.0.0",
        "name": "sknatnet",
        "type": "bridge",
        "bridge": "skbr72",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "dataDir": t.data.path(),
        }
    })
}

#[test]
fn parity_ipv6() {
    require_root!();
    compare("74", |t| v6_conf(t, false), false);
}

#[test]
fn parity_dual_stack() {
    require_root!();
    compare("75", |t| v6_conf(t, true), true);
}

/// Port mapping: who the container sees for outside TCP, outside UDP and hairpin connections.
fn portmap_observe(t: &Topo, dir: &Path) -> (Value, Vec<Option<String>>) {
    let _ = dir;
    let bconf = t.bridge_conf(true);
    let res = t.run("bridge", "ADD", &bconf).json();
    let pconf = json!({
        "cniVersion": "1.0.0",
        "name": "sknatnet",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]},
        "prevResult": res,
    });
    let out = t.run("portmap", "ADD", &pconf).json();
    let mut seen = Vec::new();
    let host_port = SocketAddr::new(t.host_ip(), 8080);
    for client in [&t.out.0, &t.cont.0] {
        let srv = tcp_server(&t.cont.0, "0.0.0.0:80".parse().unwrap());
        seen.push(tcp_client(client, host_port));
        srv.join().unwrap();
    }
    let srv = udp_server(&t.cont.0, "0.0.0.0:53".parse().unwrap());
    udp_send(&t.out.0, SocketAddr::new(t.host_ip(), 5353));
    seen.push(srv.join().unwrap().map(|ip| ip.to_string()));
    t.run("portmap", "DEL", &pconf);
    t.run("bridge", "DEL", &bconf);
    (normalize(&out, &t.cont.path()), seen)
}

#[test]
fn parity_portmap_tcp_udp_hairpin() {
    require_root!();
    let Some(refdir) = reference() else {
        panic!("missing prerequisite: reference plugins not installed in /usr/lib/cni");
    };
    let theirs = {
        let t = Topo::with_plugins("76r", 72, 172, Some(&refdir));
        portmap_observe(&t, &refdir)
    };
    let ours = {
        let t = Topo::with_plugins("76s", 72, 172, None);
        let d = t.dir.clone();
        portmap_observe(&t, &d)
    };
    assert_eq!(
        ours, theirs,
        "portmap: ours (left) differs from the reference"
    );
    // And what that is: outside peers keep their address, hairpin is masqueraded.
    assert_eq!(
        ours.1,
        vec![
            Some("10.244.172.2".to_string()),
            Some("10.244.72.1".to_string()),
            Some("10.244.172.2".to_string())
        ]
    );
}

/// The host-local store is shared with the reference plugin both ways: each sees the other's
/// allocations (no double allocation) and releases them by container id.
#[test]
fn host_local_store_interchangeable() {
    let Some(refdir) = reference() else {
        panic!("missing prerequisite: reference plugins not installed in /usr/lib/cni");
    };
    let ours = common::our_plugins();
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "skstore", "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": data.path(),
                 "ranges": [[{"subnet": "10.244.77.0/24"}], [{"subnet": "fd00:10:244:77::/64"}]]}
    });
    let hl = |dir: &Path, cmd: &str, id: &str| {
        let r = common::run_plugin(
            None,
            &dir.join("host-local"),
            cmd,
            id,
            "/dev/null",
            "eth0",
            dir,
            &conf,
        );
        assert_eq!(r.code, 0, "{} {cmd} {id}: {}", dir.display(), r.stdout);
        r
    };
    let ips = |r: &common::Run| -> Vec<String> {
        r.json()["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect()
    };
    let store = data.path().join("skstore");
    let a = ips(&hl(&refdir, "ADD", "skgo1"));
    let b = ips(&hl(ours.path(), "ADD", "skrs1"));
    let c = ips(&hl(&refdir, "ADD", "skgo2"));
    assert_eq!(a, ["10.244.77.2/24", "fd00:10:244:77::2/64"]);
    assert_eq!(
        b,
        ["10.244.77.3/24", "fd00:10:244:77::3/64"],
        "ours skips Go's"
    );
    assert_eq!(
        c,
        ["10.244.77.4/24", "fd00:10:244:77::4/64"],
        "Go skips ours"
    );
    // Each releases the other's allocation by container id.
    hl(ours.path(), "DEL", "skgo1");
    assert!(!store.join("10.244.77.2").exists());
    assert!(!store.join("fd00:10:244:77::2").exists());
    hl(&refdir, "DEL", "skrs1");
    assert!(!store.join("10.244.77.3").exists());
    // CHECK of ours accepts Go's allocation; GC (ours) keeps only valid attachments.
    hl(ours.path(), "CHECK", "skgo2");
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    let r = common::run_plugin(
        None,
        &ours.path().join("host-local"),
        "GC",
        "",
        "",
        "",
        ours.path(),
        &gc,
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    let left: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
