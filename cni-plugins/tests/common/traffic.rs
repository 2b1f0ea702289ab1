//! Real traffic between namespaces a test made: TCP/UDP servers and clients run on threads that
//! joined a netns, and a three-namespace topology (host with bridge, container, outside).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{our_plugins, run_plugin, sh, Ns, Run};

/// Runs `f` on a new thread inside the netns `name`.
pub fn in_ns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Accepts one TCP connection on `addr` in netns `ns`; yields the peer's address.
pub fn tcp_server(ns: &str, addr: SocketAddr) -> std::thread::JoinHandle<Option<IpAddr>> {
    let (tx, rx) = mpsc::channel();
    let h = in_ns(ns, move || {
        // A connection of the previous round may still hold the port for a moment.
        let mut tries = 0;
        let l = loop {
            match TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("bind {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                    return Some(peer.ip());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        None
    });
    rx.recv().unwrap();
    h
}

/// Connects from netns `ns` to `to`; returns the peer address the server saw (or None).
pub fn tcp_client(ns: &str, to: SocketAddr) -> Option<String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut b = String::new();
        s.read_to_string(&mut b).ok()?;
        Some(b)
    })
    .join()
    .unwrap()
}

/// Receives one UDP datagram on `addr` in `ns`; yields the sender's address.
pub fn udp_server(ns: &str, addr: SocketAddr) -> std::thread::JoinHandle<Option<IpAddr>> {
    let (tx, rx) = mpsc::channel();
    let h = in_ns(ns, move || {
        let s = UdpSocket::bind(addr).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        tx.send(()).unwrap();
        let mut b = [0u8; 64];
        s.recv_from(&mut b).ok().map(|(_, p)| p.ip())
    });
    rx.recv().unwrap();
    h
}

pub fn udp_send(ns: &str, to: SocketAddr) {
    udp_send_from(ns, 0, to)
}

/// Sends a few datagrams from local port `from_port` (0: any) in `ns` to `to`.
pub fn udp_send_from(ns: &str, from_port: u16, to: SocketAddr) {
    in_ns(ns, move || {
        let s = UdpSocket::bind(SocketAddr::new([0, 0, 0, 0].into(), from_port)).unwrap();
        for _ in 0..3 {
            let _ = s.send_to(b"hi", to);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .join()
    .unwrap();
}

pub struct Topo {
    pub host: Ns,
    pub cont: Ns,
    pub out: Ns,
    /// Our plugins (kept alive) unless `dir` points elsewhere.
    _ours: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub data: tempfile::TempDir,
    pub pod_net: u8,
    pub out_net: u8,
}

impl Topo {
    /// Our plugins.
    pub fn new(tag: &str, pod_net: u8, out_net: u8) -> Topo {
        Self::with_plugins(tag, pod_net, out_net, None)
    }

    /// The plugins in `dir` (e.g. the reference ones), or ours.
    pub fn with_plugins(tag: &str, pod_net: u8, out_net: u8, dir: Option<&Path>) -> Topo {
        let host = Ns::new(&format!("skh{tag}"));
        let cont = Ns::new(&format!("skc{tag}"));
        let out = Ns::new(&format!("sko{tag}"));
        let h = &host.0;
        let o = &out.0;
        for cmd in [
            vec!["ip", "-n", h, "link", "set", "lo", "up"],
            vec!["ip", "-n", o, "link", "set", "lo", "up"],
            vec![
                "ip", "-n", h, "link", "add", "skuplink", "type", "veth", "peer", "name", "eth0",
                "netns", o,
            ],
            vec!["ip", "-n", h, "link", "set", "skuplink", "up"],
            vec!["ip", "-n", o, "link", "set", "eth0", "up"],
        ] {
            let (ok, out) = sh(&cmd);
            assert!(ok, "{cmd:?}: {out}");
        }
        let hs = format!("10.244.{out_net}.1/24");
        let os = format!("10.244.{out_net}.2/24");
        let back = format!("10.244.{pod_net}.0/24");
        let via = format!("10.244.{out_net}.1");
        for cmd in [
            vec!["ip", "-n", h, "addr", "add", &hs, "dev", "skuplink"],
            vec!["ip", "-n", o, "addr", "add", &os, "dev", "eth0"],
            vec!["ip", "-n", o, "route", "add", &back, "via", &via],
        ] {
            let (ok, out) = sh(&cmd);
            assert!(ok, "{cmd:?}: {out}");
        }
        let ours = dir.is_none().then(our_plugins);
        let dir = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ours.as_ref().unwrap().path().to_path_buf());
        Topo {
            host,
            cont,
            out,
            _ours: ours,
            dir,
            data: tempfile::tempdir().unwrap(),
            pod_net,
            out_net,
        }
    }

    pub fn bridge_conf(&self, masq: bool) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "sknatnet",
            "type": "bridge",
            "bridge": format!("skbr{}", self.pod_net),
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": masq,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.244.{}.0/24", self.pod_net)}]],
                "dataDir": self.data.path(),
            }
        })
    }

    /// Runs a plugin command for container `skcnat1`; asserts success.
    pub fn run(&self, plugin: &str, cmd: &str, conf: &Value) -> Run {
        let r = self.try_run(plugin, cmd, conf);
        assert_eq!(
            r.code, 0,
            "{plugin} {cmd} failed: {} {}",
            r.stdout, r.stderr
        );
        r
    }

    /// Runs a plugin command for container `skcnat1`.
    pub fn try_run(&self, plugin: &str, cmd: &str, conf: &Value) -> Run {
        run_plugin(
            Some(&self.host),
            &self.dir.join(plugin),
            cmd,
            "skcnat1",
            &self.cont.path(),
            "eth0",
            &self.dir,
            conf,
        )
    }

    pub fn ruleset(&self) -> String {
        self.host
            .exec(&["nft", "list", "table", "inet", "skiff-cni"])
            .1
    }

    pub fn out_ip(&self) -> IpAddr {
        format!("10.244.{}.2", self.out_net).parse().unwrap()
    }
    pub fn host_ip(&self) -> IpAddr {
        format!("10.244.{}.1", self.out_net).parse().unwrap()
    }
    pub fn gw(&self) -> IpAddr {
        format!("10.244.{}.1", self.pod_net).parse().unwrap()
    }
}
