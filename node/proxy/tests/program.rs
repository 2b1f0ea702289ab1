//! The proxy's nftables program loads into the kernel (root; a table of the test's own).

use skiff_netfilter::nft::{Batch, Nft, NFPROTO_IPV4};
use skiff_proxy::rules::{self, Group, Program};

#[test]
fn program_loads_and_updates() {
    assert!(nix_root(), "needs root (CAP_NET_ADMIN) to load nftables");
    let table = "sk-proxy-unit";
    let mut nft = Nft::open_large().expect("netlink");
    let mut p = Program {
        cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
        ..Default::default()
    };
    p.add_group(&Group {
        id: 1,
        endpoints: vec![("10.244.0.5".parse().unwrap(), 8080)],
        affinity_timeout_s: None,
    });
    p.add_group(&Group {
        id: 2,
        endpoints: vec![
            ("10.244.0.5".parse().unwrap(), 8080),
            ("10.244.0.6".parse().unwrap(), 8080),
        ],
        affinity_timeout_s: Some(10800),
    });
    p.expose(
        rules::Src::Ips,
        rules::key_ip_proto_port("10.43.0.5".parse().unwrap(), 6, 80),
        1,
        rules::Masq::UnlessFromPods,
    );
    p.expose(
        rules::Src::NodePorts,
        rules::key_proto_port(6, 30080),
        2,
        rules::Masq::Always,
    );
    p.no_ep_services.insert(rules::key_ip_proto_port(
        "10.43.0.6".parse().unwrap(),
        6,
        80,
    ));
    let b = rules::full(table, &p);
    if let Err(e) = nft.commit_bulk("full", &b) {
        // Find the first message the kernel refuses.
        for n in 1..=b.len() {
            let part = b.prefix(n);
            if let Err(e2) = nft.commit("part", &part) {
                let _ = nft.commit("cleanup", &rules::delete(table));
                panic!(
                    "full sync failed ({e}); message {n} of {}: {e2}: {:?}",
                    b.len(),
                    b.describe(n - 1)
                );
            }
            let _ = nft.commit("cleanup", &rules::delete(table));
        }
        panic!("full sync failed: {e}");
    }
    let mut q = p.clone();
    q.add_group(&Group {
        id: 1,
        endpoints: vec![
            ("10.244.0.5".parse().unwrap(), 8080),
            ("10.244.0.7".parse().unwrap(), 8080),
        ],
        affinity_timeout_s: None,
    });
    q.expose(
        rules::Src::Ips,
        rules::key_ip_proto_port("10.43.0.5".parse().unwrap(), 6, 80),
        1,
        rules::Masq::UnlessFromPods,
    );
    let inc = rules::incremental(table, &p, &q);
    let r = nft.commit_bulk("incremental", &inc);
    let _ = nft.commit("cleanup", &rules::delete(table));
    r.expect("incremental sync");
    let _ = Batch::new(NFPROTO_IPV4);
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
