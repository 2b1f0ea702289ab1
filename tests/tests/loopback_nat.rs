//! A running node leaves host traffic that is not for a Service alone, and its firewall can be
//! inspected with `nft` (issue 15). On a whole cluster (`ControlPlane::start_cluster`), once
//! the proxy has programmed the `kubernetes` Service (whose endpoint is the API server on
//! 127.0.0.1): a UDP datagram and a TCP connection from 127.0.0.1 to 127.0.0.1 keep their
//! source address (a masquerade on `lo` would pick a global address of the host), the
//! ClusterIP still answers, and `nft list table` prints the proxy's table and the CNI's.
//! Needs root, docker-registry, busybox-static and `nft` (nftables).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use skiff_tests::control_plane::ControlPlane;

fn nft(args: &[&str]) -> std::process::Output {
    Command::new("nft")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`nft` (Debian package nftables) is needed and missing: {e}"))
}

/// The probe of the issue: what source address a datagram from 127.0.0.1 arrives with.
fn udp_source() -> SocketAddr {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send_to(b"x", server.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 8];
    let (_, from) = server.recv_from(&mut buf).expect("the datagram arrives");
    assert_eq!(
        from.port(),
        client.local_addr().unwrap().port(),
        "UDP source port rewritten"
    );
    from
}

fn tcp_source() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut s, peer) = l.accept().unwrap();
    c.write_all(b"y").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    peer
}

#[test]
fn host_loopback_traffic_is_not_masqueraded() {
    let c = ControlPlane::start_cluster();
    let agent = c.agent.as_ref().unwrap();
    let table = agent.proxy_table.clone();
    let svc_ip = c.ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let ep = c.ok(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}",
    ]);
    assert_eq!(
        ep, "127.0.0.1",
        "the test expects the API server's endpoint on loopback (what made the bug show)"
    );
    // The proxy has programmed the kubernetes Service once its ClusterIP answers.
    let target: SocketAddr = format!("{svc_ip}:443").parse().unwrap();
    c.wait_for(
        "the kubernetes ClusterIP to answer from the host",
        Duration::from_secs(90),
        || TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok(),
    );

    let udp = udp_source();
    assert_eq!(
        udp.ip().to_string(),
        "127.0.0.1",
        "a UDP datagram between two 127.0.0.1 sockets was masqueraded with table ip {table} loaded"
    );
    let tcp = tcp_source();
    assert_eq!(
        tcp.ip().to_string(),
        "127.0.0.1",
        "a TCP connection between two 127.0.0.1 sockets was masqueraded with table ip {table} loaded"
    );
    // Service traffic is still NATed: the ClusterIP answers (DNAT to the API server).
    TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .expect("the kubernetes ClusterIP still answers");

    // An admin can read the node's firewall: the proxy's table and the CNI's.
    for (family, name) in [("ip", table.as_str()), ("inet", "skiff-cni")] {
        let out = nft(&["list", "table", family, name]);
        assert!(
            out.status.success(),
            "nft list table {family} {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = nft(&["list", "table", "ip", &table]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("chain nat-postrouting") && text.contains("masquerade"),
        "nft list table ip {table} shows the program:\n{text}"
    );
}
