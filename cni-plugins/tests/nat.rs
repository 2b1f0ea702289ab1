//! Masquerade (bridge `ipMasq`) and port mapping (`portmap`) with real traffic.
//!
//! Topology, all in namespaces the test makes: a "host" netns holding the bridge and our nftables
//! table, a container netns on the bridge, and an "outside" netns linked to the host by a veth
//! pair (`10.244.<o>.1` host side, `10.244.<o>.2` outside). The outside has a route back to the
//! pod subnet, so without masquerading the container's own address is seen there.

mod common;

use std::net::SocketAddr;

use common::run_plugin;
use common::traffic::{tcp_client, tcp_server, udp_send, udp_send_from, udp_server, Topo};
use serde_json::{json, Value};

/// The address the outside sees for a connection from the container.
fn seen_outside(t: &Topo) -> Option<String> {
    let dst = SocketAddr::new(t.out_ip(), 8080);
    let srv = tcp_server(&t.out.0, dst);
    let got = tcp_client(&t.cont.0, dst);
    srv.join().unwrap();
    got
}

#[test]
fn ipmasq_real_traffic() {
    require_root!();
    let t = Topo::new("41", 41, 141);
    let masq = t.bridge_conf(true);

    let add = t.run("bridge", "ADD", &masq);
    let res = add.json();
    assert_eq!(res["ips"][0]["address"], "10.244.41.2/24");
    let rules = t.ruleset();
    assert!(
        rules.contains("ip saddr 10.244.41.2 ip daddr != 10.244.41.0/24 ip daddr != 224.0.0.0/4 masquerade comment \"skiff-cni bridge net=sknatnet id=skcnat1 if=eth0\""),
        "{rules}"
    );
    // Masqueraded: the outside sees the host's uplink address.
    assert_eq!(seen_outside(&t), Some(t.host_ip().to_string()));

    // CHECK sees the rule.
    let mut with_prev = masq.clone();
    with_prev["prevResult"] = res.clone();
    t.run("bridge", "CHECK", &with_prev);

    assert_eq!(t.ruleset().matches("id=skcnat1").count(), 1);
    t.run("bridge", "DEL", &with_prev);
    assert!(!t.ruleset().contains("skcnat1"), "{}", t.ruleset());
    // DEL twice is fine.
    t.run("bridge", "DEL", &masq);

    // ipMasq off: the container's own address arrives outside.
    let r = t.run("bridge", "ADD", &t.bridge_conf(false)).json();
    let ip = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(ip.starts_with("10.244.41."), "{ip}");
    assert_eq!(seen_outside(&t), Some(ip));
    t.run("bridge", "DEL", &t.bridge_conf(false));

    // GC removes the masquerade rules of attachments that are gone, and keeps valid ones.
    let mut v11 = masq.clone();
    v11["cniVersion"] = json!("1.1.0");
    t.run("bridge", "ADD", &v11);
    let mut gc = v11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "skcnat1", "ifname": "eth0"}]);
    t.run("bridge", "GC", &gc);
    assert_eq!(t.ruleset().matches("id=skcnat1").count(), 1);
    gc["cni.dev/valid-attachments"] = json!([]);
    t.run("bridge", "GC", &gc);
    assert_eq!(t.ruleset().matches("id=skcnat1").count(), 0);
    assert!(std::fs::read_dir(t.data.path().join("sknatnet"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("10.")));
}

fn portmap_conf(prev: &Value, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "sknatnet",
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]},
        "prevResult": prev,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Connects from `client_ns` to `to`, served by the container on port 80; the peer seen there.
fn via_portmap(t: &Topo, client_ns: &str, to: SocketAddr) -> Option<String> {
    let srv = tcp_server(&t.cont.0, "0.0.0.0:80".parse().unwrap());
    let got = tcp_client(client_ns, to);
    srv.join().unwrap();
    got
}

#[test]
fn portmap_real_traffic() {
    require_root!();
    let t = Topo::new("42", 42, 142);
    let bconf = t.bridge_conf(true);
    let res = t.run("bridge", "ADD", &bconf).json();
    // A UDP flow from outside to the host port, tracked before any mapping exists...
    udp_send_from(&t.out.0, 40053, SocketAddr::new(t.host_ip(), 5353));
    let pconf = portmap_conf(&res, json!({}));
    let out = t.run("portmap", "ADD", &pconf).json();
    assert_eq!(out, res, "portmap passes prevResult through");
    // ...reaches the container once mapped: ADD flushed its stale conntrack entry.
    let srv = udp_server(&t.cont.0, "0.0.0.0:53".parse().unwrap());
    udp_send_from(&t.out.0, 40053, SocketAddr::new(t.host_ip(), 5353));
    assert_eq!(
        srv.join().unwrap(),
        Some(t.out_ip()),
        "stale UDP conntrack entry"
    );
    let rules = t.ruleset();
    assert!(rules.contains("dnat ip to 10.244.42.2:80"), "{rules}");
    assert!(rules.contains("udp dport 5353"), "{rules}");
    t.run("portmap", "CHECK", &pconf);

    let host_port = SocketAddr::new(t.host_ip(), 8080);
    // From outside: DNAT, no SNAT (snat only covers hairpin/localhost).
    assert_eq!(
        via_portmap(&t, &t.out.0, host_port),
        Some(t.out_ip().to_string())
    );
    // Hairpin: the container reaches itself through the host port; masqueraded to the gateway.
    assert_eq!(
        via_portmap(&t, &t.cont.0, host_port),
        Some(t.gw().to_string())
    );
    // From the host itself over loopback (output chain + route_localnet), masqueraded.
    assert_eq!(
        via_portmap(&t, &t.host.0, "127.0.0.1:8080".parse().unwrap()),
        Some(t.gw().to_string())
    );
    // UDP.
    let srv = udp_server(&t.cont.0, "0.0.0.0:53".parse().unwrap());
    udp_send(&t.out.0, SocketAddr::new(t.host_ip(), 5353));
    assert_eq!(srv.join().unwrap(), Some(t.out_ip()));

    // masqAll: even outside connections are masqueraded; markMasqBit picks the mark.
    let pconf2 = portmap_conf(&res, json!({"masqAll": true, "markMasqBit": 5}));
    t.run("portmap", "ADD", &pconf2);
    let rules = t.ruleset();
    assert!(rules.contains("0x00000020"), "{rules}");
    assert!(!rules.contains("0x00002000"), "old rules replaced: {rules}");
    assert_eq!(
        via_portmap(&t, &t.out.0, host_port),
        Some(t.gw().to_string())
    );

    // hostIP restricts the mapping to that address.
    let pconf3 = portmap_conf(
        &res,
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": "10.244.142.1"}]}}),
    );
    t.run("portmap", "ADD", &pconf3);
    assert!(
        t.ruleset().contains("ip daddr 10.244.142.1 "),
        "{}",
        t.ruleset()
    );
    assert_eq!(
        via_portmap(&t, &t.out.0, SocketAddr::new(t.host_ip(), 8081)),
        Some(t.out_ip().to_string())
    );

    // DEL removes exactly portmap's rules; bridge's masquerade rule stays until bridge DEL.
    t.run("portmap", "DEL", &pconf3);
    let rules = t.ruleset();
    assert!(!rules.contains("dnat"), "{rules}");
    assert!(rules.contains("skiff-cni bridge"), "{rules}");
    let r = run_plugin(
        Some(&t.host),
        &t.dir.join("portmap"),
        "CHECK",
        "skcnat1",
        &t.cont.path(),
        "eth0",
        &t.dir,
        &pconf,
    );
    assert_ne!(r.code, 0, "CHECK must fail once the rules are gone");
    t.run("portmap", "DEL", &pconf3);
    t.run("bridge", "DEL", &bconf);
    assert!(!t.ruleset().contains("comment"), "{}", t.ruleset());
}

/// IPv6 (dual-stack network): masquerade, DNAT from outside and hairpin over v6.
#[test]
fn ipv6_masq_and_portmap_real_traffic() {
    require_root!();
    let t = Topo::new("43", 43, 143);
    let (h, o) = (t.host.0.clone(), t.out.0.clone());
    for cmd in [
        vec![
            "ip",
            "-n",
            &h,
            "addr",
            "add",
            "fd00:10:244:143::1/64",
            "dev",
            "skuplink",
            "nodad",
        ],
        vec![
            "ip",
            "-n",
            &o,
            "addr",
            "add",
            "fd00:10:244:143::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
        vec![
            "ip",
            "-n",
            &o,
            "-6",
            "route",
            "add",
            "fd00:10:244:43::/64",
            "via",
            "fd00:10:244:143::1",
        ],
    ] {
        let (ok, out) = common::sh(&cmd);
        assert!(ok, "{cmd:?}: {out}");
    }
    let mut bconf = t.bridge_conf(true);
    bconf["ipam"]["ranges"] = json!([
        [{"subnet": "10.244.43.0/24"}],
        [{"subnet": "fd00:10:244:43::/64"}]
    ]);
    let res = t.run("bridge", "ADD", &bconf).json();
    let pod6 = res["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(pod6.starts_with("fd00:10:244:43::"), "{res}");
    let rules = t.ruleset();
    assert!(
        rules.contains(&format!(
            "ip6 saddr {pod6} ip6 daddr != fd00:10:244:43::/64 masquerade"
        )),
        "{rules}"
    );
    // Masquerade: the outside sees the host's v6 uplink address.
    let out6: std::net::IpAddr = "fd00:10:244:143::2".parse().unwrap();
    let srv = tcp_server(&t.out.0, SocketAddr::new(out6, 8080));
    let got = tcp_client(&t.cont.0, SocketAddr::new(out6, 8080));
    srv.join().unwrap();
    assert_eq!(got.as_deref(), Some("fd00:10:244:143::1"));

    let pconf = portmap_conf(&res, json!({}));
    t.run("portmap", "ADD", &pconf);
    let rules = t.ruleset();
    assert!(
        rules.contains(&format!("dnat ip6 to [{pod6}]:80")),
        "{rules}"
    );
    let host6: std::net::IpAddr = "fd00:10:244:143::1".parse().unwrap();
    let via = |client: &str| {
        let srv = tcp_server(&t.cont.0, "[::]:80".parse().unwrap());
        let got = tcp_client(client, SocketAddr::new(host6, 8080));
        srv.join().unwrap();
        got
    };
    // From outside: DNAT only.
    assert_eq!(via(&t.out.0).as_deref(), Some("fd00:10:244:143::2"));
    // Hairpin: masqueraded to the v6 gateway.
    assert_eq!(via(&t.cont.0).as_deref(), Some("fd00:10:244:43::1"));
    t.run("portmap", "DEL", &pconf);
    t.run("bridge", "DEL", &bconf);
    assert!(!t.ruleset().contains("comment"), "{}", t.ruleset());
}
