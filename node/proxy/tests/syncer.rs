//! The syncer's incremental syncs leave the kernel with the table a full sync of the same
//! objects writes (the syncer keeps the objects of each Service, not its program, and rebuilds
//! the old program of a Service that changed). Two tables in a network namespace of the
//! test's own, compared through `nft -j list table`. Needs root and `nft`.

use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use skiff_proxy::{CachedSlice, ProxyConfig, SyncStats, Syncer};

fn service(name: &str, ip: &str, extra: serde_json::Value) -> Arc<Service> {
    let mut v = serde_json::json!({
        "metadata": {"name": name, "namespace": "sk-sync"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    Arc::new(serde_json::from_value(v).unwrap())
}

fn slice(svc: &str, ips: &[&str], proto: &str) -> Arc<CachedSlice> {
    let eps: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "sk-node"}))
        .collect();
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": "sk-sync",
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": proto}],
        }))
        .unwrap(),
    )
}

/// The table as `nft -j` lists it, without handles, with `table` renamed and every list of
/// elements and the entries themselves sorted (creation order differs between the two).
fn listing(table: &str) -> Vec<String> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "ip", table])
        .output()
        .unwrap_or_else(|e| panic!("`nft` (Debian package nftables) is missing: {e}"));
    assert!(
        out.status.success(),
        "nft -j list table ip {table}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    fn norm(v: &mut serde_json::Value, table: &str) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                if m.get("table").and_then(|t| t.as_str()) == Some(table) {
                    m.insert("table".into(), "T".into());
                }
                if m.get("name").and_then(|t| t.as_str()) == Some(table) {
                    m.insert("name".into(), "T".into());
                }
                for (_, x) in m.iter_mut() {
                    norm(x, table);
                }
                if let Some(serde_json::Value::Array(a)) = m.get_mut("elem") {
                    a.sort_by_key(|e| e.to_string());
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| norm(x, table)),
            _ => {}
        }
    }
    let mut entries: Vec<String> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("metainfo").is_none())
        .map(|e| {
            let mut e = e.clone();
            norm(&mut e, table);
            e.to_string()
        })
        .collect();
    entries.sort();
    entries
}

fn syncer(table: &str) -> Syncer {
    let mut cfg = ProxyConfig::new("sk-node");
    cfg.table = table.into();
    cfg.cluster_cidr = Some("10.244.0.0/16".into());
    Syncer::new(cfg).expect("netlink")
}

/// Syncs `objs` incrementally on table A and from scratch on table B; both tables and figures
/// must be the same.
fn check(a: &mut Syncer, objs: &(Vec<Arc<Service>>, Vec<Arc<CachedSlice>>), step: &str) {
    let inc: SyncStats = a.sync_objects(&objs.0, &objs.1).expect("incremental sync");
    assert!(!inc.full, "{step}: an incremental sync");
    let _ = skiff_proxy::cleanup("sk-sync-b");
    let mut b = syncer("sk-sync-b");
    let full = b.sync_objects(&objs.0, &objs.1).expect("full sync");
    assert!(full.full);
    let (la, lb) = (listing("sk-sync-a"), listing("sk-sync-b"));
    assert!(
        la.iter().any(|e| e.contains("\"elem\"")),
        "{step}: no elements listed: {la:?}"
    );
    assert_eq!(la, lb, "{step}");
    assert_eq!(
        (inc.rules, inc.elements),
        (full.rules, full.elements),
        "{step}: rules and elements"
    );
}

#[test]
fn incremental_syncs_match_a_full_sync() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "needs root (unshare, nftables)"
    );
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let _ = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        let none = serde_json::json!({});
        let s0 = service("sk-a", "10.43.0.1", none.clone());
        let s1 = service("sk-b", "10.43.0.2", none.clone());
        let s2 = service("sk-c", "10.43.0.3", none.clone());
        let e0 = slice("sk-a", &["10.244.0.1", "10.244.0.2"], "TCP");
        let e1 = slice("sk-b", &["10.244.0.3", "10.244.0.4"], "TCP");
        let e2 = slice("sk-c", &["10.244.0.5"], "UDP");
        let mut a = syncer("sk-sync-a");
        let first = (
            vec![s0.clone(), s1.clone(), s2.clone()],
            vec![e0.clone(), e1.clone(), e2.clone()],
        );
        assert!(a.sync_objects(&first.0, &first.1).unwrap().full);
        // An endpoint moves (same count); sk-b is gone; sk-d is new with a count no other
        // Service has (a new chain), sk-c gets session affinity.
        let e0b = slice("sk-a", &["10.244.0.1", "10.244.0.9"], "TCP");
        let s2b = service(
            "sk-c",
            "10.43.0.3",
            serde_json::json!({"sessionAffinity": "ClientIP"}),
        );
        let s3 = service("sk-d", "10.43.0.4", none.clone());
        let e3 = slice("sk-d", &["10.244.1.1", "10.244.1.2", "10.244.1.3"], "TCP");
        let second = (
            vec![s0.clone(), s2b.clone(), s3.clone()],
            vec![e0b.clone(), e2.clone(), e3.clone()],
        );
        check(&mut a, &second, "second");
        // sk-d loses its endpoints (reject) and its 3-endpoint chain; sk-b comes back with
        // the endpoints sk-a has (shared hairpin elements); sk-c's UDP endpoint leaves.
        let e3b = slice("sk-d", &[], "TCP");
        let e1b = slice("sk-b", &["10.244.0.1", "10.244.0.9"], "TCP");
        let e2b = slice("sk-c", &[], "UDP");
        let third = (
            vec![s0.clone(), s1.clone(), s2b.clone(), s3.clone()],
            vec![e0b.clone(), e1b.clone(), e2b.clone(), e3b.clone()],
        );
        check(&mut a, &third, "third");
        // Back to the start.
        check(&mut a, &first, "back");
        let _ = skiff_proxy::cleanup("sk-sync-a");
        let _ = skiff_proxy::cleanup("sk-sync-b");
    })
    .join()
    .expect("the namespace thread");
}
