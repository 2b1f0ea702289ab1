//! End-to-end tests of `bridge` + `host-local` (+ `loopback`, `portmap`) on real namespaces.
//! The bridge lives in a scratch "host" netns so nothing on the machine changes.

mod common;

use std::path::Path;

use common::{our_plugins, reference_dir, run_plugin, Ns};
use serde_json::{json, Value};

fn bridge_conf(version: &str, bridge: &str, subnet: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "sknet",
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir,
        }
    })
}

#[test]
fn bridge_add_check_del() {
    require_root!();
    let host = Ns::new("skh21");
    let cont = Ns::new("skcni21");
    let plugins = our_plugins();
    let data = tempfile::tempdir().unwrap();
    let bridge = plugins.path().join("bridge");
    let mut conf = bridge_conf("1.0.0", "skbr21", "10.244.21.0/24", data.path());
    let run = |cmd: &str, conf: &Value| {
        run_plugin(
            Some(&host),
            &bridge,
            cmd,
            "skc21",
            &cont.path(),
            "eth0",
            plugins.path(),
            conf,
        )
    };

    let add = run("ADD", &conf);
    assert_eq!(add.code, 0, "ADD failed: {} {}", add.stdout, add.stderr);
    let r = add.json();
    assert_eq!(r["cniVersion"], "1.0.0");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3);
    assert_eq!(ifs[0]["name"], "skbr21");
    let host_veth = ifs[1]["name"].as_str().unwrap().to_string();
    assert!(host_veth.starts_with("veth"));
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], cont.path());
    let cont_mac = ifs[2]["mac"].as_str().unwrap().to_string();
    assert_eq!(
        r["ips"],
        json!([{"interface": 2, "address": "10.244.21.2/24", "gateway": "10.244.21.1"}])
    );
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]));
    assert_eq!(r["dns"], json!({}));

    // The container side: address, MAC, state, routes.
    let addr = cont.ip_json(&["addr", "show", "dev", "eth0"]);
    let link = &addr[0];
    assert_eq!(link["address"], cont_mac);
    assert!(link["flags"].as_array().unwrap().contains(&json!("UP")));
    let v4: Vec<_> = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    assert_eq!(v4, vec!["10.244.21.2/24"]);
    let routes = cont.ip_json(&["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.244.21.1");
    assert_eq!(routes[0]["dev"], "eth0");
    let (ok, out) = cont.exec(&["ip", "route", "get", "10.244.21.1"]);
    assert!(ok && out.contains("dev eth0"), "{out}");

    // The host side: veth on the bridge with hairpin, gateway address, forwarding.
    let ports = host.ip_json(&["-d", "link", "show", "master", "skbr21"]);
    let port = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ifname"] == host_veth.as_str())
        .unwrap_or_else(|| panic!("{host_veth} not on skbr21: {ports}"));
    assert_eq!(port["linkinfo"]["info_slave_data"]["hairpin"], true);
    let br = host.ip_json(&["addr", "show", "dev", "skbr21"]);
    assert!(br[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["local"] == "10.244.21.1" && a["prefixlen"] == 24));
    let (_, fwd) = host.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1");

    // The host-local store, in the reference format.
    let store = data.path().join("sknet");
    assert_eq!(
        std::fs::read_to_string(store.join("10.244.21.2")).unwrap(),
        "skc21\r\neth0"
    );
    assert_eq!(
        std::fs::read_to_string(store.join("last_reserved_ip.0")).unwrap(),
        "10.244.21.2"
    );
    assert!(store.join("lock").exists());

    // CHECK against the result.
    conf["prevResult"] = r.clone();
    let check = run("CHECK", &conf);
    assert_eq!(check.code, 0, "CHECK failed: {}", check.stdout);

    // DEL removes everything; DEL again and DEL without the netns succeed.
    let del = run("DEL", &conf);
    assert_eq!(del.code, 0, "DEL failed: {} {}", del.stdout, del.stderr);
    assert!(del.stdout.is_empty());
    assert!(cont
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["ifname"] != "eth0"));
    assert!(host
        .ip_json(&["link", "show", "master", "skbr21"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(!store.join("10.244.21.2").exists());
    let check = run("CHECK", &conf);
    assert_ne!(check.code, 0, "CHECK after DEL must fail");
    assert_eq!(run("DEL", &conf).code, 0, "second DEL");
    let gone = run_plugin(
        Some(&host),
        &bridge,
        "DEL",
        "skc21",
        "/var/run/netns/skcni21-gone",
        "eth0",
        plugins.path(),
        &conf,
    );
    assert_eq!(gone.code, 0, "DEL with a missing netns: {}", gone.stdout);

    // A second ADD gets the next address (round robin, as the reference does).
    conf.as_object_mut().unwrap().remove("prevResult");
    let add2 = run("ADD", &conf);
    assert_eq!(add2.code, 0, "{}", add2.stdout);
    assert_eq!(add2.json()["ips"][0]["address"], "10.244.21.3/24");
    // ADD again for the same interface fails and leaves the first one intact.
    let dup = run("ADD", &conf);
    assert_ne!(dup.code, 0);
    assert!(store.join("10.244.21.3").exists());
    assert_eq!(run("DEL", &conf).code, 0);
    assert!(!store.join("10.244.21.3").exists());
}

#[test]
fn old_result_shape_and_chain() {
    require_root!();
    let host = Ns::new("skh22");
    let cont = Ns::new("skcni22");
    let plugins = our_plugins();
    let data = tempfile::tempdir().unwrap();
    let p = plugins.path();
    let conf = bridge_conf("0.4.0", "skbr22", "10.244.22.0/24", data.path());

    let lo = run_plugin(
        Some(&host),
        &p.join("loopback"),
        "ADD",
        "skc22",
        &cont.path(),
        "lo",
        p,
        &json!({"cniVersion": "0.4.0", "name": "sknet", "type": "loopback"}),
    );
    assert_eq!(lo.code, 0, "{}", lo.stdout);
    assert_eq!(lo.json()["interfaces"][0]["name"], "lo");
    let l = cont.ip_json(&["link", "show", "lo"]);
    assert!(l[0]["flags"].as_array().unwrap().contains(&json!("UP")));

    let add = run_plugin(
        Some(&host),
        &p.join("bridge"),
        "ADD",
        "skc22",
        &cont.path(),
        "eth0",
        p,
        &conf,
    );
    assert_eq!(add.code, 0, "{}", add.stdout);
    let r = add.json();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][0]["interface"], 2);

    // portmap passes the previous result through.
    let pm_conf = json!({"cniVersion": "0.4.0", "name": "sknet", "type": "portmap",
        "capabilities": {"portMappings": true}, "prevResult": r});
    let pm = run_plugin(
        Some(&host),
        &p.join("portmap"),
        "ADD",
        "skc22",
        &cont.path(),
        "eth0",
        p,
        &pm_conf,
    );
    assert_eq!(pm.code, 0, "{}", pm.stdout);
    assert_eq!(pm.json(), r);
    assert_eq!(
        run_plugin(
            Some(&host),
            &p.join("portmap"),
            "DEL",
            "skc22",
            &cont.path(),
            "eth0",
            p,
            &pm_conf
        )
        .code,
        0
    );
    assert_eq!(
        run_plugin(
            Some(&host),
            &p.join("bridge"),
            "DEL",
            "skc22",
            &cont.path(),
            "eth0",
            p,
            &conf
        )
        .code,
        0
    );
    assert_eq!(
        run_plugin(
            Some(&host),
            &p.join("loopback"),
            "DEL",
            "skc22",
            &cont.path(),
            "lo",
            p,
            &json!({"cniVersion": "0.4.0", "name": "sknet", "type": "loopback"})
        )
        .code,
        0
    );
    assert!(std::fs::read_dir(data.path().join("sknet"))
        .unwrap()
        .all(|e| {
            let n = e.unwrap().file_name();
            n == "lock" || n.to_string_lossy().starts_with("last_reserved_ip.")
        }));
}

#[test]
fn spec_errors() {
    let plugins = our_plugins();
    let p = plugins.path();
    let data = tempfile::tempdir().unwrap();
    let netns = "/var/run/netns/sk-none";
    let go = |bin: &str, cmd: &str, conf: &Value| {
        run_plugin(None, &p.join(bin), cmd, "skc23", netns, "eth0", p, conf)
    };
    // Unsupported version: code 1.
    let mut c = bridge_conf("0.2.0", "skbr23", "10.244.23.0/24", data.path());
    let r = go("bridge", "ADD", &c);
    assert_eq!(r.code, 1);
    assert_eq!(r.json()["code"], 1);
    c["cniVersion"] = json!("7.7.7");
    assert_eq!(go("host-local", "ADD", &c).json()["code"], 1);
    // Invalid configs: code 7 (invalid network config); undecodable: code 6.
    let bad = json!({"cniVersion": "1.0.0", "name": "sknet", "type": "bridge",
        "hairpinMode": true, "promiscMode": true, "ipam": {}});
    let r = go("bridge", "ADD", &bad);
    assert_eq!(
        (r.code, r.json()["code"].clone()),
        (1, json!(7)),
        "{}",
        r.stdout
    );
    assert_eq!(r.json()["cniVersion"], "1.0.0");
    assert!(r.json()["msg"].as_str().unwrap().contains("hairpin"));
    let no_ranges = json!({"cniVersion": "1.0.0", "name": "sknet", "ipam": {"type": "host-local", "dataDir": data.path()}});
    assert_eq!(go("host-local", "ADD", &no_ranges).json()["code"], 7);
    let host_bits = json!({"cniVersion": "1.0.0", "name": "sknet",
        "ipam": {"type": "host-local", "subnet": "10.244.23.5/24", "dataDir": data.path()}});
    assert_eq!(go("host-local", "ADD", &host_bits).json()["code"], 7);
    let no_name = json!({"cniVersion": "1.0.0", "type": "bridge"});
    assert_eq!(go("bridge", "ADD", &no_name).json()["code"], 7);
    // Missing environment: code 4.
    let out = std::process::Command::new(p.join("bridge"))
        .env("CNI_COMMAND", "ADD")
        .env_remove("CNI_CONTAINERID")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 4);
    // VERSION for every plugin.
    for bin in ["bridge", "host-local", "loopback", "portmap"] {
        let r = go(bin, "VERSION", &json!({"cniVersion": "1.0.0"}));
        assert_eq!(r.code, 0);
        assert_eq!(
            r.json()["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
    // host-local alone: ADD, CHECK, DEL (no netns needed), idempotent DEL.
    let hl = json!({"cniVersion": "1.0.0", "name": "sknet",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.23.0/24", "rangeStart": "10.244.23.10"}]],
                 "dataDir": data.path()}});
    let r = go("host-local", "ADD", &hl);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        r.json()["ips"],
        json!([{"address": "10.244.23.10/24", "gateway": "10.244.23.1"}])
    );
    assert_eq!(go("host-local", "CHECK", &hl).code, 0);
    assert_eq!(go("host-local", "DEL", &hl).code, 0);
    assert_ne!(go("host-local", "CHECK", &hl).code, 0);
    assert_eq!(go("host-local", "DEL", &hl).code, 0);
    // GC (spec 1.1) frees what is not in the valid attachments.
    let mut hl11 = hl.clone();
    hl11["cniVersion"] = json!("1.1.0");
    assert_eq!(go("host-local", "ADD", &hl11).code, 0);
    let ip_file = data.path().join("sknet/10.244.23.11");
    assert!(ip_file.exists());
    hl11["cni.dev/valid-attachments"] = json!([{"containerID": "skc23", "ifname": "eth0"}]);
    assert_eq!(go("host-local", "GC", &hl11).code, 0);
    assert!(ip_file.exists(), "GC freed a valid attachment");
    hl11["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(go("host-local", "GC", &hl11).code, 0);
    assert!(!ip_file.exists(), "GC kept a stale attachment");
}

/// Replaces what differs between two runs (MACs, veth names, netns paths) with placeholders.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "mac" => json!("MAC"),
                        "sandbox" => json!("NETNS"),
                        "name" if v.as_str().is_some_and(|s| s.starts_with("veth")) => {
                            json!("VETH")
                        }
                        _ => normalize(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn store_listing(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn parity_with_reference_plugins() {
    require_root!();
    let Some(reference) = reference_dir() else {
        panic!("missing prerequisite: reference plugins not installed in /usr/lib/cni");
    };
    let ours = our_plugins();
    for version in ["1.0.0", "0.4.0"] {
        let mut results = Vec::new();
        let mut stores = Vec::new();
        for (tag, dir) in [("a", reference.as_path()), ("b", ours.path())] {
            let host = Ns::new(&format!("skh24{tag}"));
            let cont = Ns::new(&format!("skcni24{tag}"));
            let data = tempfile::tempdir().unwrap();
            // Identical input apart from the store location (each side has its own host netns).
            let conf = bridge_conf(version, "skbr24", "10.244.24.0/24", data.path());
            let run = |cmd: &str| {
                run_plugin(
                    Some(&host),
                    &dir.join("bridge"),
                    cmd,
                    "skc24",
                    &cont.path(),
                    "eth0",
                    dir,
                    &conf,
                )
            };
            let add = run("ADD");
            assert_eq!(add.code, 0, "{tag} ADD: {} {}", add.stdout, add.stderr);
            results.push(normalize(&add.json()));
            stores.push(store_listing(&data.path().join("sknet")));
            let addrs = cont.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
            assert_eq!(addrs[0]["addr_info"][0]["local"], "10.244.24.2", "{tag}");
            assert_eq!(run("DEL").code, 0, "{tag} DEL");
            stores.push(store_listing(&data.path().join("sknet")));
        }
        assert_eq!(
            results[0], results[1],
            "result shape differs from the reference for {version}"
        );
        assert_eq!(
            stores[0], stores[2],
            "IPAM store after ADD differs from the reference"
        );
        assert_eq!(
            stores[1], stores[3],
            "IPAM store after DEL differs from the reference"
        );
    }
}
