//! The proxy's program leaves traffic that is not for a Service alone: in a network namespace
//! of the test's own (root), with the program loaded, a UDP datagram and a TCP connection from
//! 127.0.0.1 to 127.0.0.1 keep their source address, although lo also holds another address
//! (as it does on a node where the cluster DNS address sits on lo) that a masquerade would pick.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::Command;

use skiff_netfilter::nft::Nft;
use skiff_proxy::rules::{self, Group, Program};

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn program() -> Program {
    let mut p = Program {
        cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
        ..Default::default()
    };
    let g = p.add_group(&Group {
        id: 1,
        endpoints: vec![("10.244.0.5".parse().unwrap(), 8080)],
        affinity_timeout_s: None,
    });
    p.route(1, g, rules::Src::Ips);
    p.route(1, g, rules::Src::NodePorts);
    p.service_ips.insert(
        rules::key_ip_proto_port("10.43.0.5".parse().unwrap(), 6, 80),
        rules::group_kind(1, rules::Masq::UnlessFromPods),
    );
    p.service_nodeports.insert(
        rules::key_proto_port(6, 30080),
        rules::group_kind(1, rules::Masq::Always),
    );
    p
}

#[test]
fn loopback_traffic_keeps_its_source_address() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "needs root (unshare, nftables)"
    );
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new network namespace.
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET)"
        );
        ip(&["link", "set", "lo", "up"]);
        ip(&["addr", "add", "10.43.0.10/32", "dev", "lo"]);
        let mut nft = Nft::open_large().expect("netlink");
        nft.commit_bulk("full", &rules::full("sk-loopback", &program()))
            .expect("load the program");

        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"x", server.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        let (_, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(from, client.local_addr().unwrap(), "UDP source rewritten");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap(), "TCP source rewritten");
        c.write_all(b"y").unwrap();
        s.read_exact(&mut buf[..1]).unwrap();
    })
    .join()
    .expect("the namespace thread");
}
