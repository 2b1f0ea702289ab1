//! `nft list ruleset` (Debian 12's nftables 1.0.6) prints the proxy's program (issue 15: it
//! aborted in `netlink_parse_concat_expr`). The program is loaded in a network namespace of the
//! test's own with every shape a node has: ClusterIP and NodePort services, session affinity,
//! a service without endpoints, hairpin elements. Needs root and `nft`.

use std::process::Command;

use skiff_netfilter::nft::Nft;
use skiff_proxy::rules::{self, Group, Program};

fn program() -> Program {
    let mut p = Program {
        cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
        ..Default::default()
    };
    p.add_group(&Group {
        id: 1,
        endpoints: vec![
            ("10.244.0.5".parse().unwrap(), 8080),
            ("10.244.0.6".parse().unwrap(), 8080),
        ],
        affinity_timeout_s: None,
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
        1,
        rules::Masq::Always,
    );
    p.add_group(&Group {
        id: 2,
        endpoints: vec![("10.244.0.7".parse().unwrap(), 8080)],
        affinity_timeout_s: Some(10800),
    });
    p.expose(
        rules::Src::Ips,
        rules::key_ip_proto_port("10.43.0.6".parse().unwrap(), 17, 53),
        2,
        rules::Masq::Never,
    );
    p.expose(
        rules::Src::NodePorts,
        rules::key_proto_port(17, 30053),
        2,
        rules::Masq::Never,
    );
    for (port, kind) in [(54, rules::Masq::UnlessFromPods), (55, rules::Masq::Always)] {
        p.expose(
            rules::Src::Ips,
            rules::key_ip_proto_port("10.43.0.6".parse().unwrap(), 17, port),
            2,
            kind,
        );
    }
    p.no_ep_services.insert(rules::key_ip_proto_port(
        "10.43.0.7".parse().unwrap(),
        6,
        80,
    ));
    p.no_ep_nodeports.insert(rules::key_proto_port(6, 30081));
    p
}

#[test]
fn nft_lists_the_program() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "needs root (unshare, nftables)"
    );
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread (and what it spawns) into a new
        // network namespace.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET)"
        );
        let mut nft = Nft::open_large().expect("netlink");
        nft.commit_bulk("full", &rules::full("sk-list", &program()))
            .expect("load the program");
        let out = Command::new("nft")
            .args(["list", "ruleset"])
            .output()
            .unwrap_or_else(|e| panic!("`nft` (Debian package nftables) is missing: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "nft list ruleset failed ({}): {}\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for needle in [
            "table ip sk-list",
            "chain services",
            "chain nat-postrouting",
            "map service-ips",
            "10.43.0.5",
            "chain aff-1-10800-local",
            "update @affinity",
            "chain np-dnat-2-masq",
            "numgen random mod 2 map @endpoints",
        ] {
            assert!(text.contains(needle), "no {needle:?} in:\n{text}");
        }
    })
    .join()
    .expect("the namespace thread");
}
