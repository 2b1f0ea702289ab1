//! Concurrency and crash safety: 50 parallel ADDs on one network get 50 distinct addresses, and an
//! ADD killed with SIGKILL at random points leaves nothing that DEL (or GC) cannot clean.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{our_plugins, run_plugin, Ns};
use serde_json::{json, Value};

fn conf(bridge: &str, subnet: &str, data: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "skconc",
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data,
        }
    })
}

/// Allocation files (not lock/last_reserved/temp files) in the store.
fn allocations(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n == "lock" || n.starts_with("last_reserved_ip.") {
                        return None;
                    }
                    Some((n, std::fs::read_to_string(e.path()).unwrap_or_default()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fifty_parallel_adds_get_distinct_ips() {
    require_root!();
    let host = Ns::new("skh61");
    let plugins = our_plugins();
    let p = plugins.path().to_path_buf();
    let data = tempfile::tempdir().unwrap();
    let c = conf("skbr61", "10.244.61.0/24", data.path());
    let conts: Vec<Ns> = (0..50).map(|i| Ns::new(&format!("skc61x{i}"))).collect();

    let results: Vec<common::Run> = std::thread::scope(|s| {
        let hs: Vec<_> = conts
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (host, p, c) = (&host, &p, &c);
                s.spawn(move || {
                    run_plugin(
                        Some(host),
                        &p.join("bridge"),
                        "ADD",
                        &format!("skc61id{i}"),
                        &ns.path(),
                        "eth0",
                        p,
                        c,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = HashSet::new();
    for r in &results {
        assert_eq!(r.code, 0, "ADD failed: {} {}", r.stdout, r.stderr);
        ips.insert(r.json()["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 50, "{ips:?}");
    assert_eq!(allocations(&data.path().join("skconc")).len(), 50);
    let (_, rules) = host.exec(&["nft", "list", "table", "inet", "skiff-cni"]);
    assert_eq!(rules.matches("masquerade").count(), 50, "{rules}");

    // Parallel DELs clean everything.
    let dels: Vec<common::Run> = std::thread::scope(|s| {
        let hs: Vec<_> = conts
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (host, p, c) = (&host, &p, &c);
                s.spawn(move || {
                    run_plugin(
                        Some(host),
                        &p.join("bridge"),
                        "DEL",
                        &format!("skc61id{i}"),
                        &ns.path(),
                        "eth0",
                        p,
                        c,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &dels {
        assert_eq!(r.code, 0, "DEL failed: {} {}", r.stdout, r.stderr);
    }
    assert!(allocations(&data.path().join("skconc")).is_empty());
    let (_, rules) = host.exec(&["nft", "list", "table", "inet", "skiff-cni"]);
    assert_eq!(rules.matches("masquerade").count(), 0, "{rules}");
    let ports = host.ip_json(&["link", "show", "master", "skbr61"]);
    assert_eq!(ports.as_array().map(Vec::len).unwrap_or(0), 0);
}

/// Starts an ADD in the host netns and SIGKILLs it after `delay`; returns whether it finished.
fn add_and_kill(host: &Ns, p: &Path, id: &str, netns: &str, c: &Value, delay: Duration) -> bool {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.0])
        .arg(p.join("bridge"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", p)
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(c.to_string().as_bytes())
        .unwrap();
    std::thread::sleep(delay);
    let done = matches!(child.try_wait(), Ok(Some(_)));
    // `ip netns exec` execs the plugin, so this PID is the plugin (or ip just before exec).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    done
}

fn rules_of(host: &Ns, id: &str) -> usize {
    host.exec(&["nft", "list", "ruleset"])
        .1
        .matches(&format!("id={id} "))
        .count()
}

/// Polls `f` for up to 3 s (netns teardown is asynchronous in the kernel).
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn sigkill_during_add_leaves_nothing_del_or_gc_cannot_clean() {
    require_root!();
    let host = Ns::new("skh62");
    let plugins = our_plugins();
    let p = plugins.path().to_path_buf();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("skconc");
    let c = conf("skbr62", "10.244.62.0/24", data.path());

    // How long one ADD takes here, to spread the kill points over it.
    let cont = Ns::new("skc62t");
    let t = Instant::now();
    let r = run_plugin(
        Some(&host),
        &p.join("bridge"),
        "ADD",
        "skc62t",
        &cont.path(),
        "eth0",
        &p,
        &c,
    );
    let full = t.elapsed();
    assert_eq!(r.code, 0, "{}", r.stdout);
    let r = run_plugin(
        Some(&host),
        &p.join("bridge"),
        "DEL",
        "skc62t",
        &cont.path(),
        "eth0",
        &p,
        &c,
    );
    assert_eq!(r.code, 0);
    drop(cont);

    let mut seed = (std::process::id() as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let mut killed_mid = 0;
    let (mut left_alloc, mut left_rules) = (0, 0);
    for i in 0..24 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (full.as_micros() as u64 * 3 / 2 + 1));
        let id = format!("skc62k{i}");
        let cont = Ns::new(&format!("skc62k{i}"));
        let finished = add_and_kill(&host, &p, &id, &cont.path(), &c, delay);
        if !finished {
            killed_mid += 1;
        }
        // What the kill left behind, for the record.
        if !allocations(&store).is_empty() {
            left_alloc += 1;
        }
        if rules_of(&host, &id) > 0 {
            left_rules += 1;
        }
        if i % 2 == 0 {
            // The runtime's cleanup: DEL with the same config, then the netns goes.
            let r = run_plugin(
                Some(&host),
                &p.join("bridge"),
                "DEL",
                &id,
                &cont.path(),
                "eth0",
                &p,
                &c,
            );
            assert_eq!(r.code, 0, "DEL after kill at {delay:?}: {}", r.stdout);
            assert!(
                !cont.exec(&["ip", "link", "show", "eth0"]).0,
                "eth0 left after DEL (kill at {delay:?})"
            );
            drop(cont);
        } else {
            // The sandbox is gone without a DEL: GC with no valid attachment cleans up.
            drop(cont);
            let mut gc = c.clone();
            gc["cni.dev/valid-attachments"] = json!([]);
            let r = run_plugin(
                Some(&host),
                &p.join("bridge"),
                "GC",
                "",
                "",
                "eth0",
                &p,
                &gc,
            );
            assert_eq!(r.code, 0, "GC after kill at {delay:?}: {}", r.stdout);
        }
        let left = allocations(&store);
        assert!(
            left.is_empty(),
            "allocations left after kill at {delay:?}: {left:?}"
        );
        assert_eq!(rules_of(&host, &id), 0, "rules left (kill at {delay:?})");
        assert!(
            eventually(|| host
                .ip_json(&["link", "show", "master", "skbr62"])
                .as_array()
                .map(Vec::is_empty)
                .unwrap_or(true)),
            "bridge ports left (kill at {delay:?})"
        );
    }
    eprintln!(
        "{killed_mid} of 24 ADDs were killed before they finished (one ADD: {full:?}); \
         {left_alloc} left an allocation and {left_rules} left NAT rules to clean"
    );
    assert!(killed_mid > 0, "no kill landed inside an ADD");
}
