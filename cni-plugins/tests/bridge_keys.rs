//! The less common `bridge` keys (`mac` via CNI_ARGS and capabilities, `macspoofchk`,
//! `promiscMode`, `enabledad`, `disableContainerInterface`, `dns`, `vlan`/`vlanTrunk`), STATUS,
//! and results in every spec version.

mod common;

use common::{our_plugins, run_plugin, run_plugin_env, Ns};
use serde_json::{json, Value};

fn conf(bridge: &str, subnet: &str, data: &std::path::Path, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "skkeys",
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": data,
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn flags(ns: &Ns, dev: &str) -> Vec<Value> {
    ns.ip_json(&["link", "show", dev])[0]["flags"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn mac_spoofchk_promisc_dad_dns() {
    require_root!();
    let host = Ns::new("skh51");
    let cont = Ns::new("skc51");
    let plugins = our_plugins();
    let p = plugins.path();
    let data = tempfile::tempdir().unwrap();
    let c = conf(
        "skbr51",
        "10.244.51.0/24",
        data.path(),
        json!({"macspoofchk": true, "promiscMode": true, "ipMasq": true,
               "dns": {"nameservers": ["10.43.0.10"], "search": ["svc.cluster.local"]}}),
    );
    let run = |cmd: &str, c: &Value, env: &[(&str, &str)]| {
        run_plugin_env(
            Some(&host),
            &p.join("bridge"),
            cmd,
            "skc51",
            &cont.path(),
            "eth0",
            p,
            c,
            env,
        )
    };
    let add = run(
        "ADD",
        &c,
        &[("CNI_ARGS", "IgnoreUnknown=1;MAC=02:51:00:00:00:01")],
    );
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let r = add.json();
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][2]["mac"], "02:51:00:00:00:01");
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.43.0.10"], "search": ["svc.cluster.local"]})
    );
    let l = cont.ip_json(&["link", "show", "eth0"]);
    assert_eq!(l[0]["address"], "02:51:00:00:00:01");
    assert!(flags(&host, "skbr51").contains(&json!("PROMISC")));
    // DAD off by default, arp_notify on (container sysctls).
    let (_, v) = cont.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"]);
    assert_eq!(v.trim(), "0");
    let (_, v) = cont.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(v.trim(), "1");

    let host_veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let (_, rules) = host.exec(&["nft", "list", "table", "bridge", "skiff-cni"]);
    assert!(
        rules.contains(&format!(
            "iifname \"{host_veth}\" ether saddr != 02:51:00:00:00:01 drop comment \"skiff-cni bridge net=skkeys id=skc51 if=eth0\""
        )),
        "{rules}"
    );
    // STATUS: ready.
    let st = run("STATUS", &c, &[]);
    assert_eq!(st.code, 0, "{}", st.stdout);
    assert!(st.stdout.is_empty());

    // GC with this attachment valid keeps its rules; DEL removes spoof-check and masquerade.
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "skc51", "ifname": "eth0"}]);
    assert_eq!(run("GC", &gc, &[]).code, 0);
    assert!(host
        .exec(&["nft", "list", "table", "bridge", "skiff-cni"])
        .1
        .contains("drop"));
    // CHECK sees the spoof-check rule, and misses it once it is gone.
    let mut prev = c.clone();
    prev["prevResult"] = r.clone();
    let check = run("CHECK", &prev, &[]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    let (_, listing) = host.exec(&[
        "nft",
        "-a",
        "list",
        "chain",
        "bridge",
        "skiff-cni",
        "prerouting",
    ]);
    let handle = listing
        .lines()
        .find(|l| l.contains(&host_veth))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_string())
        .expect("the spoof-check rule's handle");
    let (ok, out) = host.exec(&[
        "nft",
        "delete",
        "rule",
        "bridge",
        "skiff-cni",
        "prerouting",
        "handle",
        &handle,
    ]);
    assert!(ok, "{out}");
    let check = run("CHECK", &prev, &[]);
    assert_ne!(check.code, 0, "CHECK must miss the spoof-check rule");
    assert!(check.stdout.contains("spoof-check"), "{}", check.stdout);
    assert_eq!(run("DEL", &c, &[]).code, 0);
    assert!(!host.exec(&["nft", "list", "ruleset"]).1.contains("comment"));

    // runtimeConfig.mac (the "mac" capability) wins over CNI_ARGS; enabledad turns DAD on.
    let mut c2 = c.clone();
    c2["runtimeConfig"] = json!({"mac": "02:51:00:00:00:02"});
    c2["enabledad"] = json!(true);
    let add = run("ADD", &c2, &[("CNI_ARGS", "MAC=02:51:00:00:00:01")]);
    assert_eq!(add.code, 0, "{}", add.stdout);
    assert_eq!(add.json()["interfaces"][2]["mac"], "02:51:00:00:00:02");
    let (_, v) = cont.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"]);
    assert_eq!(v.trim(), "1");
    // GC with no valid attachment removes the rules and frees the address.
    let mut gc = c2.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(run("GC", &gc, &[]).code, 0);
    assert!(!host.exec(&["nft", "list", "ruleset"]).1.contains("comment"));
    assert!(!data.path().join("skkeys/10.244.51.3").exists());
    assert_eq!(run("DEL", &c2, &[]).code, 0);

    // A bad MAC is a config error.
    let add = run("ADD", &c, &[("CNI_ARGS", "MAC=zz")]);
    assert_eq!(add.code, 1);
    assert_eq!(add.json()["code"], 7, "{}", add.stdout);
}

/// With `enabledad`, ADD returns only once duplicate address detection has finished: the
/// container's IPv6 addresses (its link-local one too) are no longer tentative.
#[test]
fn enabledad_waits_for_dad() {
    require_root!();
    let host = Ns::new("skh55");
    let cont = Ns::new("skc55");
    let plugins = our_plugins();
    let p = plugins.path();
    let data = tempfile::tempdir().unwrap();
    let c = conf(
        "skbr55",
        "fd00:10:244:55::/64",
        data.path(),
        json!({"enabledad": true}),
    );
    let add = run_plugin(
        Some(&host),
        &p.join("bridge"),
        "ADD",
        "skc55",
        &cont.path(),
        "eth0",
        p,
        &c,
    );
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let ip = add.json()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let addrs = cont.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
    let infos = addrs[0]["addr_info"].as_array().unwrap();
    assert!(
        infos
            .iter()
            .any(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]) == ip),
        "{ip} not on eth0: {addrs}"
    );
    assert!(
        infos.len() >= 2,
        "the link-local address is there too: {addrs}"
    );
    for a in infos {
        assert!(
            a.get("tentative").is_none() && a.get("dadfailed").is_none(),
            "still in DAD after ADD returned: {a}"
        );
    }
    let (_, v) = cont.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"]);
    assert_eq!(v.trim(), "1");
    let del = run_plugin(
        Some(&host),
        &p.join("bridge"),
        "DEL",
        "skc55",
        &cont.path(),
        "eth0",
        p,
        &c,
    );
    assert_eq!(del.code, 0, "{}", del.stdout);
}

#[test]
fn disable_container_interface_and_vlans() {
    require_root!();
    let host = Ns::new("skh52");
    let cont = Ns::new("skc52");
    let plugins = our_plugins();
    let p = plugins.path();
    let data = tempfile::tempdir().unwrap();
    let run = |cmd: &str, c: &Value| {
        run_plugin(
            Some(&host),
            &p.join("bridge"),
            cmd,
            "skc52",
            &cont.path(),
            "eth0",
            p,
            c,
        )
    };
    // With IPAM it is refused (reference wording).
    let c = conf(
        "skbr52",
        "10.244.52.0/24",
        data.path(),
        json!({"disableContainerInterface": true}),
    );
    let r = run("ADD", &c);
    assert_eq!(r.json()["code"], 7, "{}", r.stdout);
    assert!(r
        .stdout
        .contains("cannot use IPAM when DisableContainerInterface"));
    // Layer 2 only: the interface is left down.
    let l2 = json!({"cniVersion": "1.0.0", "name": "skkeys", "type": "bridge", "bridge": "skbr52",
                    "disableContainerInterface": true});
    let r = run("ADD", &l2);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(!flags(&cont, "eth0").contains(&json!("UP")));
    assert_eq!(run("DEL", &l2).code, 0);

    // vlanTrunk validation, as the reference words it.
    for (trunk, msg) in [
        (json!([{"minID": 10}]), "maxID is missing"),
        (json!([{"maxID": 10}]), "minID is missing"),
        (
            json!([{"minID": 20, "maxID": 10}]),
            "minID is greater than maxID",
        ),
        (json!([{"id": 5000}]), "incorrect trunk id parameter"),
    ] {
        let c = conf(
            "skbr52",
            "10.244.52.0/24",
            data.path(),
            json!({"vlanTrunk": trunk}),
        );
        let r = run("ADD", &c);
        assert_eq!(r.json()["code"], 7, "{}", r.stdout);
        assert!(r.stdout.contains(msg), "{}", r.stdout);
    }
    let c = conf(
        "skbr52",
        "10.244.52.0/24",
        data.path(),
        json!({"vlan": 5000}),
    );
    assert!(run("ADD", &c).stdout.contains("invalid VLAN ID 5000"));

    // A VLAN: needs CONFIG_BRIDGE_VLAN_FILTERING; without it the error says so.
    let c = conf(
        "skbr52v",
        "10.244.52.0/24",
        data.path(),
        json!({"vlan": 100, "vlanTrunk": [{"id": 200}]}),
    );
    let r = run("ADD", &c);
    if r.code != 0 {
        assert!(
            r.stdout.contains("CONFIG_BRIDGE_VLAN_FILTERING"),
            "{}",
            r.stdout
        );
    } else {
        let (_, v) = host.exec(&["bridge", "vlan", "show"]);
        assert!(v.contains("100 PVID Egress Untagged"), "{v}");
        assert!(v.contains("200"), "{v}");
        assert!(host.exec(&["ip", "link", "show", "skbr52v.100"]).0);
        assert_eq!(run("DEL", &c).code, 0);
    }
}

#[test]
fn results_in_every_version() {
    require_root!();
    let host = Ns::new("skh53");
    let cont = Ns::new("skc53");
    let plugins = our_plugins();
    let p = plugins.path();
    let data = tempfile::tempdir().unwrap();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let mut c = conf("skbr53", "10.244.53.0/24", data.path(), json!({}));
        c["cniVersion"] = json!(v);
        let run = |cmd: &str| {
            run_plugin(
                Some(&host),
                &p.join("bridge"),
                cmd,
                "skc53",
                &cont.path(),
                "eth0",
                p,
                &c,
            )
        };
        let r = run("ADD");
        assert_eq!(r.code, 0, "{v}: {}", r.stdout);
        let j = r.json();
        assert_eq!(j["cniVersion"], v);
        let old = v.starts_with("0.");
        assert_eq!(j["ips"][0].get("version").is_some(), old, "{v}: {j}");
        assert_eq!(j["ips"][0]["interface"], 2);
        assert_eq!(run("DEL").code, 0);
        // STATUS and GC exist from 1.1.0 on.
        let st = run("STATUS");
        if v == "1.1.0" {
            assert_eq!(st.code, 0, "{}", st.stdout);
        } else {
            assert_eq!(st.json()["code"], 1, "{v}: {}", st.stdout);
        }
    }
}

/// The IPAM plugin exec'd (as with a foreign `host-local`) instead of run in-process, and the
/// rule/link work without detached workers: same outcome.
#[test]
fn exec_delegate_and_no_detach() {
    require_root!();
    let host = Ns::new("skh54");
    let cont = Ns::new("skc54");
    let plugins = our_plugins();
    let p = plugins.path();
    let data = tempfile::tempdir().unwrap();
    let c = conf(
        "skbr54",
        "10.244.54.0/24",
        data.path(),
        json!({"ipMasq": true}),
    );
    let env = [
        ("SKIFF_CNI_EXEC_DELEGATES", "1"),
        ("SKIFF_CNI_NO_DETACH", "1"),
    ];
    let run = |cmd: &str| {
        run_plugin_env(
            Some(&host),
            &p.join("bridge"),
            cmd,
            "skc54",
            &cont.path(),
            "eth0",
            p,
            &c,
            &env,
        )
    };
    let add = run("ADD");
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    assert_eq!(add.json()["ips"][0]["address"], "10.244.54.2/24");
    assert!(data.path().join("skkeys/10.244.54.2").exists());
    assert!(host
        .exec(&["nft", "list", "ruleset"])
        .1
        .contains("id=skc54"));
    assert_eq!(run("DEL").code, 0);
    assert!(!data.path().join("skkeys/10.244.54.2").exists());
    assert!(!host
        .exec(&["nft", "list", "ruleset"])
        .1
        .contains("id=skc54"));
    assert!(!cont.exec(&["ip", "link", "show", "eth0"]).0);
}
