//! Service proxy and cluster DNS benchmark (bench/proxy/run.sh).
//!
//! Proxy: 1,000 Services x 10 endpoints programmed by skiff-proxy's syncer (nftables over
//! netlink) against the rules upstream kube-proxy's iptables mode writes for the same set
//! (generated here: KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-* with the statistic probabilities,
//! masquerade marks) loaded with `iptables-restore` in the same run; full sync and one endpoint
//! change. Everything runs in a network namespace of the bench's own (unshare), so the host's
//! tables are untouched.
//!
//! DNS: the same 1,000 names (`svc-N.bench.svc.cluster.local`) served by skiff-dns's server and
//! by Debian's dnsmasq (a hosts file) on loopback addresses; closed-loop UDP clients measure
//! queries/s and p99 latency.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skiff_bench::{line, median, percentile, rss_kib};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;
const TABLE: &str = "skbench";

fn svc_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 43, 100 + (i / 250) as u8, (i % 250) as u8 + 1)
}

fn ep_ip(i: usize, j: usize) -> Ipv4Addr {
    let n = i * ENDPOINTS + j;
    Ipv4Addr::new(10, 244, (n / 250) as u8, (n % 250) as u8 + 1)
}

fn objects(changed: Option<Ipv4Addr>) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..SERVICES {
        let name = format!("svc-{i}");
        svcs.push(Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("bench".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(svc_ip(i).to_string()),
                cluster_ips: Some(vec![svc_ip(i).to_string()]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }));
        let endpoints = (0..ENDPOINTS)
            .map(|j| {
                let ip = match changed {
                    Some(c) if i == 0 && j == 0 => c,
                    _ => ep_ip(i, j),
                };
                Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/service-name".to_string(), name.clone());
        slices.push(Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-abc")),
                namespace: Some("bench".into()),
                labels: Some(labels),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }));
    }
    (svcs, slices)
}

/// kube-proxy's iptables-mode chain name for a service port or endpoint (a hash, as upstream).
fn chain(prefix: &str, s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{prefix}-{:016X}", h.finish())
}

/// The nat-table rules upstream's iptables mode writes for service `i` (SVC chain and its SEP
/// chains), in iptables-restore syntax; returns (chain declarations, rules, rule count).
fn iptables_service(i: usize, changed: Option<Ipv4Addr>) -> (String, String, usize) {
    let name = format!("bench/svc-{i}:http");
    let svc = chain("KUBE-SVC", &name);
    let mut decl = format!(":{svc} - [0:0]\n");
    let mut rules = String::new();
    let mut n = 0;
    rules += &format!("-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n", svc_ip(i));
    n += 1;
    for j in 0..ENDPOINTS {
        let ip = match changed {
            Some(c) if i == 0 && j == 0 => c,
            _ => ep_ip(i, j),
        };
        let sep = chain("KUBE-SEP", &format!("{name}{ip}"));
        decl += &format!(":{sep} - [0:0]\n");
        let left = ENDPOINTS - j;
        if left > 1 {
            rules += &format!("-A {svc} -m comment --comment \"{name} -> {ip}:8080\" -m statistic --mode random --probability {:.10} -j {sep}\n", 1.0 / left as f64);
        } else {
            rules += &format!("-A {svc} -m comment --comment \"{name} -> {ip}:8080\" -j {sep}\n");
        }
        rules +=
            &format!("-A {sep} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n");
        rules += &format!("-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ip}:8080\n");
        n += 3;
    }
    (decl, rules, n)
}

fn kube_services(changed: Option<Ipv4Addr>) -> (String, String, usize) {
    let _ = changed;
    let mut rules = String::new();
    for i in 0..SERVICES {
        let name = format!("bench/svc-{i}:http");
        rules += &format!("-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j {}\n", svc_ip(i), chain("KUBE-SVC", &name));
    }
    rules += "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    (
        ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n".into(),
        rules,
        SERVICES + 1,
    )
}

/// Upstream's full sync: every chain.
fn iptables_full(changed: Option<Ipv4Addr>) -> (String, usize) {
    let (mut decl, mut rules, mut n) = kube_services(changed);
    decl += ":KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n";
    rules += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    rules += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    rules += "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";
    rules += "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n";
    rules += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    rules += "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n";
    rules += "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n";
    n += 7;
    for i in 0..SERVICES {
        let (d, r, k) = iptables_service(i, changed);
        decl += &d;
        rules += &r;
        n += k;
    }
    (format!("*nat\n{decl}{rules}COMMIT\n"), n)
}

/// Upstream's partial sync after one endpoint change (MinimizeIPTablesRestore, 1.28+): the
/// top-level chains and the changed service's chains (and the deleted endpoint's chain).
fn iptables_partial(changed: Ipv4Addr) -> String {
    let (decl, rules, _) = kube_services(Some(changed));
    let (d2, r2, _) = iptables_service(0, Some(changed));
    let old = chain("KUBE-SEP", &format!("bench/svc-0:http{}", ep_ip(0, 0)));
    format!("*nat\n{decl}{d2}:{old} - [0:0]\n{rules}{r2}-X {old}\nCOMMIT\n")
}

fn iptables_restore(input: &str) -> f64 {
    let start = Instant::now();
    let mut c = Command::new("iptables-restore")
        .args(["--noflush", "-w"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run iptables-restore (Debian's iptables)");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("feed iptables-restore");
    let st = c.wait().expect("wait for iptables-restore");
    assert!(st.success(), "iptables-restore failed");
    start.elapsed().as_secs_f64() * 1000.0
}

fn unshare_net() {
    // SAFETY: unshare(2) on the calling thread before any other thread is started.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "unshare(CLONE_NEWNET) needs root");
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
}

fn proxy_bench(rounds: usize) {
    let (svcs, slices) = objects(None);
    let changed_ip = Ipv4Addr::new(10, 244, 250, 250);
    // As the reflector does: unchanged objects keep their `Arc`; only service 0's slice is new.
    let svcs2 = svcs.clone();
    let mut slices2 = slices.clone();
    slices2[0] = objects(Some(changed_ip)).1[0].clone();
    let mut full_ms = Vec::new();
    let mut inc_ms = Vec::new();
    let mut stats = None;
    let mut inc_stats = None;
    for _ in 0..rounds {
        let _ = skiff_proxy::cleanup(TABLE);
        let mut cfg = skiff_proxy::ProxyConfig::new("bench-node");
        cfg.table = TABLE.into();
        cfg.cluster_cidr = Some("10.244.0.0/16".into());
        let mut s = skiff_proxy::Syncer::new(cfg).expect("proxy syncer");
        let f = s.sync_objects(&svcs, &slices).expect("full sync");
        full_ms.push(f.duration.as_secs_f64() * 1000.0);
        stats = Some(f);
        // One endpoint changes, then changes back: two incremental syncs.
        let a = s.sync_objects(&svcs2, &slices2).expect("incremental sync");
        let b = s.sync_objects(&svcs, &slices).expect("incremental sync");
        inc_ms.push(a.duration.as_secs_f64() * 1000.0);
        inc_ms.push(b.duration.as_secs_f64() * 1000.0);
        inc_stats = Some(a);
    }
    let rss = rss_kib(std::process::id());
    let kernel_rules = {
        let mut nft = skiff_netfilter::nft::Nft::open().expect("netlink");
        nft.rules(skiff_netfilter::nft::NFPROTO_IPV4, TABLE)
            .expect("list rules")
            .len()
    };
    let _ = skiff_proxy::cleanup(TABLE);
    let (full_input, ipt_rules) = iptables_full(None);
    let partial_input = iptables_partial(changed_ip);
    let mut ipt_full = Vec::new();
    let mut ipt_inc = Vec::new();
    for _ in 0..rounds {
        // A fresh nat table each round: flush the chains the previous round made.
        let _ = Command::new("iptables").args(["-t", "nat", "-F"]).status();
        let _ = Command::new("iptables").args(["-t", "nat", "-X"]).status();
        ipt_full.push(iptables_restore(&full_input));
        ipt_inc.push(iptables_restore(&partial_input));
    }
    let stats = stats.expect("a round");
    let inc_stats = inc_stats.expect("a round");
    let fm = median(&mut full_ms).unwrap_or(f64::NAN);
    let im = median(&mut inc_ms).unwrap_or(f64::NAN);
    let ifm = median(&mut ipt_full).unwrap_or(f64::NAN);
    let iim = median(&mut ipt_inc).unwrap_or(f64::NAN);
    println!("# {SERVICES} services x {ENDPOINTS} endpoints, {rounds} rounds, medians; peer: upstream iptables-mode rules via {}", String::from_utf8_lossy(&Command::new("iptables-restore").arg("--version").output().map(|o| o.stdout).unwrap_or_default()).trim());
    println!(
        "{}",
        line("proxy_full_sync_ms", fm, "iptables_restore", ifm)
    );
    println!(
        "{}",
        line("proxy_incremental_sync_ms", im, "iptables_restore", iim)
    );
    println!(
        "{}",
        line(
            "proxy_rules",
            kernel_rules as f64,
            "iptables",
            ipt_rules as f64
        )
    );
    println!(
        "proxy_elements skiff={} (rules in the program: {})",
        stats.elements, stats.rules
    );
    println!(
        "proxy_full_sync_messages skiff={} proxy_incremental_sync_messages skiff={}",
        stats.messages, inc_stats.messages
    );
    println!("proxy_bench_process_rss_kib skiff={rss} (syncer + the generated objects)");
}

fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encode")
}

/// Whether the load generator encodes every query and parses every answer with hickory
/// (`SK_DNS_CLIENT=hickory`, the bench's first client) or sends pre-encoded queries with a
/// new ID and checks the answers' headers (default, like dnsperf): the client's own CPU
/// shares the two cores with the server measured, so a lighter client measures the server
/// more and itself less.
fn hickory_client() -> bool {
    std::env::var("SK_DNS_CLIENT").is_ok_and(|v| v == "hickory")
}

/// Closed-loop UDP load: `clients` threads for `secs`; (queries/s, p99 ms, answered ok).
fn dns_load(server: SocketAddr, clients: usize, secs: f64) -> (f64, f64, bool) {
    let names: Arc<Vec<String>> = Arc::new(
        (0..SERVICES)
            .map(|i| format!("svc-{i}.bench.svc.cluster.local."))
            .collect(),
    );
    let encoded: Arc<Vec<Vec<u8>>> = Arc::new(names.iter().map(|n| dns_query(n, 0)).collect());
    let hickory = hickory_client();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let names = names.clone();
            let encoded = encoded.clone();
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").expect("udp");
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let mut lat = Vec::new();
                let mut ok = true;
                let mut buf = [0u8; 1500];
                let mut i = c * 7919;
                while Instant::now() < deadline {
                    i += 1;
                    let id = (i & 0xffff) as u16;
                    let q = if hickory {
                        dns_query(&names[i % names.len()], id)
                    } else {
                        let mut q = encoded[i % encoded.len()].clone();
                        q[..2].copy_from_slice(&id.to_be_bytes());
                        q
                    };
                    let t = Instant::now();
                    s.send_to(&q, server).expect("send");
                    match s.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                            if hickory {
                                if let Ok(m) = Message::from_vec(&buf[..n]) {
                                    ok &= !m.answers().is_empty();
                                }
                            } else {
                                // Same ID, a response, NOERROR, at least one answer record.
                                ok &= n >= 12
                                    && buf[..2] == id.to_be_bytes()
                                    && buf[2] & 0x80 != 0
                                    && buf[3] & 0x0f == 0
                                    && u16::from_be_bytes([buf[6], buf[7]]) > 0;
                            }
                        }
                        Err(_) => lat.push(500.0),
                    }
                }
                (lat, ok)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut ok = true;
    for h in handles {
        let (l, o) = h.join().expect("client thread");
        all.extend(l);
        ok &= o;
    }
    all.sort_by(|a, b| a.total_cmp(b));
    (all.len() as f64 / secs, percentile(&all, 0.99), ok)
}

/// CPU time (user + system, clock ticks) of `/proc/<pid>/task/<tid>/stat`.
fn task_ticks(stat: &str) -> u64 {
    // Fields after the `(comm)`: state is the 3rd field, utime the 14th, stime the 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// CPU ticks the skiff DNS server's UDP workers (threads `skiff-dns-udp*` of this process)
/// have used.
fn skiff_dns_ticks() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.starts_with("skiff-dns-udp"))
        })
        .map(|t| task_ticks(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default()))
        .sum()
}

fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU ticks a process has used.
fn process_ticks(pid: u32) -> u64 {
    task_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// The DNS server's UDP workers: `SK_DNS_WORKERS`, else the node agent's default.
fn dns_workers() -> usize {
    std::env::var("SK_DNS_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(skiff_dns::default_udp_workers)
}

fn dns_bench(secs: f64, clients: usize) {
    let (svcs, slices) = objects(None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let skiff_addr: SocketAddr = "127.0.0.1:10053".parse().unwrap();
    let before = rss_kib(std::process::id());
    rt.block_on(async {
        let server = Arc::new(
            skiff_dns::Server::new("cluster.local", Vec::new()).with_udp_workers(dns_workers()),
        );
        server.set_index(skiff_dns::index::Index::build(
            "cluster.local",
            &svcs,
            &slices,
        ));
        let _ = server.listen(skiff_addr).await.expect("listen");
    });
    let dns_rss_delta = rss_kib(std::process::id()).saturating_sub(before);
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = dir.path().join("hosts");
    let mut h = String::new();
    for i in 0..SERVICES {
        h += &format!("{} svc-{i}.bench.svc.cluster.local\n", svc_ip(i));
    }
    std::fs::write(&hosts, h).expect("hosts file");
    let mut dm = Command::new("dnsmasq")
        .args(["-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
        .args([
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--port=10054",
            "--pid-file=",
        ])
        .arg(format!("--addn-hosts={}", hosts.display()))
        .args(["--cache-size=10000", "--dns-forward-max=1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq (Debian's dnsmasq-base)");
    std::thread::sleep(Duration::from_millis(500));
    let dm_addr: SocketAddr = "127.0.0.1:10054".parse().unwrap();
    // Warm both, then measure, interleaved.
    let _ = dns_load(skiff_addr, 1, 0.3);
    let _ = dns_load(dm_addr, 1, 0.3);
    let mut sq = Vec::new();
    let mut sp = Vec::new();
    let mut dq = Vec::new();
    let mut dp = Vec::new();
    let mut ok = (true, true);
    // Server CPU per query (ticks), which the other load on a shared machine disturbs far less
    // than queries/s.
    let (mut skiff_cpu, mut dm_cpu) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t0 = skiff_dns_ticks();
        let (q, p, o) = dns_load(skiff_addr, clients, secs);
        skiff_cpu.push((skiff_dns_ticks() - t0) as f64 / (q * secs));
        sq.push(q);
        sp.push(p);
        ok.0 &= o;
        let t0 = process_ticks(dm.id());
        let (q, p, o) = dns_load(dm_addr, clients, secs);
        dm_cpu.push((process_ticks(dm.id()) - t0) as f64 / (q * secs));
        dq.push(q);
        dp.push(p);
        ok.1 &= o;
    }
    let dm_rss = rss_kib(dm.id());
    let _ = dm.kill();
    let _ = dm.wait();
    println!(
        "# DNS: {SERVICES} names, {clients} closed-loop UDP clients ({} client), skiff UDP workers {}, 3 x {secs} s interleaved, medians; answers ok: skiff={} dnsmasq={}",
        if hickory_client() { "hickory" } else { "pre-encoded" },
        dns_workers(),
        ok.0,
        ok.1
    );
    println!(
        "{}",
        line(
            "dns_queries_per_s",
            median(&mut sq).unwrap_or(f64::NAN),
            "dnsmasq",
            median(&mut dq).unwrap_or(f64::NAN)
        )
    );
    println!(
        "{}",
        line(
            "dns_p99_ms",
            median(&mut sp).unwrap_or(f64::NAN),
            "dnsmasq",
            median(&mut dp).unwrap_or(f64::NAN)
        )
    );
    // Clock ticks per query -> microseconds of server CPU per query.
    let tick_us = 1e6 / clock_ticks_per_s();
    println!(
        "{}",
        line(
            "dns_server_cpu_us_per_query",
            median(&mut skiff_cpu).unwrap_or(f64::NAN) * tick_us,
            "dnsmasq",
            median(&mut dm_cpu).unwrap_or(f64::NAN) * tick_us
        )
    );
    println!("dns_rss_kib skiff_index_and_server_delta={dns_rss_delta} dnsmasq={dm_rss}");
}

fn main() {
    unshare_net();
    let rounds: usize = std::env::var("SK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // SK_BENCH_ONLY=dns or =proxy runs one half.
    let only = std::env::var("SK_BENCH_ONLY").unwrap_or_default();
    if only != "dns" {
        proxy_bench(rounds);
    }
    if only != "proxy" {
        dns_bench(2.0, 4);
    }
}
