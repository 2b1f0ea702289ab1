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

fn objects(changed: Option<Ipv4Addr>) -> (Vec<Arc<Service>>, Vec<Arc<skiff_proxy::CachedSlice>>) {
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
        slices.push(Arc::new(skiff_proxy::CachedSlice::from(EndpointSlice {
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
        })));
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
    skiff_dns_worker_ticks().iter().sum()
}

/// CPU ticks of each UDP worker thread of this process, in thread-name order.
fn skiff_dns_worker_ticks() -> Vec<u64> {
    let mut w: Vec<(String, u64)> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            comm.starts_with("skiff-dns-udp").then(|| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                (comm, task_ticks(&stat))
            })
        })
        .collect();
    w.sort();
    w.into_iter().map(|(_, t)| t).collect()
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

/// Debian's `dnsperf` (DNS-OARC's load tool, as used to measure CoreDNS and BIND) against
/// `server` for `secs` seconds with up to `outstanding` queries in flight, reading the queries
/// from `queries`; (queries/s, average latency ms, queries lost).
fn dnsperf(
    server: SocketAddr,
    queries: &std::path::Path,
    secs: f64,
    outstanding: usize,
) -> (f64, f64, u64) {
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args(["-l", &format!("{secs}"), "-q", &outstanding.to_string()])
        .stderr(Stdio::null())
        .output()
        .expect("run dnsperf (Debian's dnsperf package)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("Queries per second:"), field("Average Latency (s):")) {
        (Some(q), Some(lat)) => (
            q,
            lat * 1000.0,
            field("Queries lost:").unwrap_or(0.0) as u64,
        ),
        _ => panic!("dnsperf gave no figures (status {}): {text}", out.status),
    }
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
    // Rounds alternate which server goes first, so that a drift of the machine's other load
    // within a round does not always favour the same one; each round's ratio is kept.
    let rounds: usize = std::env::var("SK_DNS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut ratios = Vec::new();
    let mut shares = Vec::new();
    for round in 0..rounds {
        let mut skiff_round = || {
            let t0 = skiff_dns_ticks();
            let w0 = skiff_dns_worker_ticks();
            let (q, p, o) = dns_load(skiff_addr, clients, secs);
            skiff_cpu.push((skiff_dns_ticks() - t0) as f64 / (q * secs));
            // The busiest worker's share of the workers' CPU in this round (1/n: balanced).
            let w: Vec<u64> = skiff_dns_worker_ticks()
                .iter()
                .zip(&w0)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let total: u64 = w.iter().sum();
            shares.push(w.iter().max().copied().unwrap_or(0) as f64 / total.max(1) as f64);
            sq.push(q);
            sp.push(p);
            ok.0 &= o;
            q
        };
        let mut dm_round = || {
            let t0 = process_ticks(dm.id());
            let (q, p, o) = dns_load(dm_addr, clients, secs);
            dm_cpu.push((process_ticks(dm.id()) - t0) as f64 / (q * secs));
            dq.push(q);
            dp.push(p);
            ok.1 &= o;
            q
        };
        let (a, b) = if round % 2 == 0 {
            let a = skiff_round();
            (a, dm_round())
        } else {
            let b = dm_round();
            (skiff_round(), b)
        };
        ratios.push(a / b);
    }
    // dnsperf: one client socket keeping up to 100 queries in flight (its defaults), the load
    // DNS servers are usually measured with; rounds alternate which server goes first.
    let qfile = dir.path().join("queries");
    let mut q = String::new();
    for i in 0..SERVICES {
        q += &format!("svc-{i}.bench.svc.cluster.local A\n");
    }
    std::fs::write(&qfile, q).expect("dnsperf query file");
    let (mut pq_s, mut pq_d, mut p_ratios, mut p_lat) =
        (Vec::new(), Vec::new(), Vec::new(), (Vec::new(), Vec::new()));
    let mut lost = (0u64, 0u64);
    for round in 0..rounds {
        let mut run = |addr: SocketAddr, skiff: bool| {
            let (q, lat, l) = dnsperf(addr, &qfile, secs, 100);
            if skiff {
                pq_s.push(q);
                p_lat.0.push(lat);
                lost.0 += l;
            } else {
                pq_d.push(q);
                p_lat.1.push(lat);
                lost.1 += l;
            }
            q
        };
        let (a, b) = if round % 2 == 0 {
            let a = run(skiff_addr, true);
            (a, run(dm_addr, false))
        } else {
            let b = run(dm_addr, false);
            (run(skiff_addr, true), b)
        };
        p_ratios.push(a / b);
    }
    let dm_rss = rss_kib(dm.id());
    let _ = dm.kill();
    let _ = dm.wait();
    println!(
        "# DNS: {SERVICES} names, {clients} closed-loop UDP clients ({} client), skiff UDP workers {}, {rounds} x {secs} s interleaved (order alternating), medians; answers ok: skiff={} dnsmasq={}",
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
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "dns_queries_per_s_round_ratios {} min={:.2}",
        fmt(&ratios),
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    );
    println!("dns_busiest_worker_cpu_share {}", fmt(&shares));
    println!(
        "# dnsperf {}: one client, up to 100 queries outstanding, {rounds} x {secs} s interleaved (order alternating), medians; queries lost: skiff={} dnsmasq={}",
        String::from_utf8_lossy(&Command::new("dnsperf").arg("-h").output().map(|o| [o.stdout, o.stderr].concat()).unwrap_or_default())
            .lines()
            .find_map(|l| l.strip_prefix("Version "))
            .unwrap_or("?"),
        lost.0,
        lost.1
    );
    println!(
        "{}",
        line(
            "dns_dnsperf_queries_per_s",
            median(&mut pq_s).unwrap_or(f64::NAN),
            "dnsmasq",
            median(&mut pq_d).unwrap_or(f64::NAN)
        )
    );
    println!(
        "{}",
        line(
            "dns_dnsperf_avg_latency_ms",
            median(&mut p_lat.0).unwrap_or(f64::NAN),
            "dnsmasq",
            median(&mut p_lat.1).unwrap_or(f64::NAN)
        )
    );
    println!(
        "dns_dnsperf_queries_per_s_round_ratios {} min={:.2}",
        fmt(&p_ratios),
        p_ratios.iter().copied().fold(f64::INFINITY, f64::min)
    );
}

// ---------------------------------------------------------------------------------------------
// The proxy + DNS process as a user runs it

/// A child process killed (SIGTERM, then SIGKILL) by PID on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child's PID; it is not reaped before the wait below.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `skiff` binary measured: `SKIFF_BIN`, else the one beside this bench.
fn skiff_bin() -> std::path::PathBuf {
    let bin = std::env::var_os("SKIFF_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("skiff")
        });
    assert!(
        bin.exists(),
        "{} is missing: build it (cargo build --release -p skiff) or set SKIFF_BIN",
        bin.display()
    );
    bin
}

/// `kB` fields of `/proc/<pid>/smaps_rollup` (Rss, Anonymous, ...).
fn smaps_rollup(pid: u32) -> BTreeMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Creates namespace `ns` with `SERVICES` selector-less Services, each with one EndpointSlice
/// of `ENDPOINTS` ready endpoints (as a controller writes them: targetRef, nodeName, owner).
async fn create_service_objects(client: kube::Client, ns: &str) {
    use futures::StreamExt;
    use kube::api::{Api, PostParams};
    let pp = PostParams::default();
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let nsobj = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    nss.create(&pp, &nsobj).await.expect("create the namespace");
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..SERVICES)
        .map(|i| {
            let (svcs, slices, pp) = (svcs.clone(), slices.clone(), pp.clone());
            async move {
                let name = format!("svc-{i}");
                let svc: Service = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
                }))
                .unwrap();
                let svc = svcs.create(&pp, &svc).await.expect("create a Service");
                let endpoints: Vec<_> = (0..ENDPOINTS)
                    .map(|j| serde_json::json!({
                        "addresses": [ep_ip(i, j).to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "nodeName": "sk-bench",
                        "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-pod-{j}"), "uid": format!("00000000-0000-0000-0000-{:012}", i * ENDPOINTS + j)},
                    }))
                    .collect();
                let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
                    "metadata": {
                        "name": format!("{name}-sk"),
                        "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "sk-bench"},
                        "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": svc.metadata.uid, "controller": true, "blockOwnerDeletion": true}],
                    },
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                }))
                .unwrap();
                slices.create(&pp, &slice).await.expect("create an EndpointSlice");
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

/// Whether `server` answers an A query for `name` with at least one record.
fn dns_answers(server: SocketAddr, name: &str) -> bool {
    let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 1500];
    s.send_to(&dns_query(name, 7), server).is_ok()
        && s.recv_from(&mut buf).is_ok_and(|(n, _)| {
            n >= 12 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) > 0
        })
}

/// `skiff proxy --cluster-dns` (the service proxy and the cluster DNS in the process a user
/// runs) against a `skiff server --disable-agent` holding 1,000 Services x 10 endpoints: its
/// VmRSS once both have synced and once idle, beside the 15 MiB target.
fn rss_bench() {
    let bin = skiff_bin();
    let parent = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("sk-proxyrss")
        .tempdir_in(&parent)
        .expect("temp dir");
    let port = skiff_bench::free_port().expect("a free port");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let log = |n: &str| std::fs::File::create(dir.path().join(n)).expect("log file");
    let _server = Proc(
        Command::new(&bin)
            .args(["server", "--disable-agent", "--node-name", "sk-bench"])
            .args(["--bind-address", "127.0.0.1", "--node-ip", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(log("server.log"))
            .spawn()
            .expect("start skiff server"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let ns = "sk-bench-rss";
    let t0 = Instant::now();
    rt.block_on(async {
        let client = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "skiff server not ready in 90 s; see its log in {}",
                dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(kc) = kube::config::Kubeconfig::read_from(&kubeconfig) else {
                continue;
            };
            let Ok(cfg) = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
            else {
                continue;
            };
            let Ok(client) = kube::Client::try_from(cfg) else {
                continue;
            };
            let nss: kube::Api<k8s_openapi::api::core::v1::Namespace> =
                kube::Api::all(client.clone());
            if nss.get("default").await.is_ok() {
                break client;
            }
        };
        create_service_objects(client, ns).await;
    });
    println!(
        "# proxy + DNS process: {} objects written in {:.1} s",
        2 * SERVICES,
        t0.elapsed().as_secs_f64()
    );
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("empty resolv.conf");
    let dns: SocketAddr = "10.43.0.10:53".parse().unwrap();
    let table = "skrssproxy";
    let started = Instant::now();
    let mut proxy = Command::new(&bin);
    proxy
        .args(["proxy", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--hostname-override", "sk-bench", "--nftables-table", table])
        .args(["--cluster-cidr", "10.244.0.0/16"]);
    if std::env::var("SK_RSS_NO_DNS").is_err() {
        proxy
            .args(["--cluster-dns", "10.43.0.10", "--resolv-conf"])
            .arg(&resolv)
            .args(["--cluster-dns-interface", "skrssdns"]);
    }
    let proxy = Proc(
        proxy
            .env("SKIFF_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log("proxy.log"))
            .spawn()
            .expect("start skiff proxy"),
    );
    let pid = proxy.0.id();
    // Synced: the proxy's first full sync is logged with every endpoint of the 1,000 Services
    // (it syncs only once both caches hold a full list), and the DNS answers the last name.
    let last = format!("svc-{}.{ns}.svc.cluster.local.", SERVICES - 1);
    let synced = |log: &str| {
        log.lines().any(|l| {
            l.contains("synced service rules")
                && l.split_whitespace()
                    .find_map(|w| w.strip_prefix("elements="))
                    .and_then(|v| v.parse::<usize>().ok())
                    .is_some_and(|n| n >= SERVICES * ENDPOINTS)
        })
    };
    loop {
        let plog = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default();
        if synced(&plog) && (std::env::var("SK_RSS_NO_DNS").is_ok() || dns_answers(dns, &last)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "skiff proxy did not sync in 90 s:\n{plog}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sync_s = started.elapsed().as_secs_f64();
    let rss_synced = rss_kib(pid);
    // Idle: the process trims freed heap and start-up code after 2 s without work.
    std::thread::sleep(Duration::from_secs(8));
    let rss_idle = rss_kib(pid);
    let hwm = skiff_bench::hwm_kib(pid);
    let sm = smaps_rollup(pid);
    let anon = sm.get("Anonymous").copied().unwrap_or(0);
    let rss_sm = sm.get("Rss").copied().unwrap_or(0);
    println!(
        "# `skiff proxy{}` ({}), {SERVICES} Services x {ENDPOINTS} endpoints in a skiff server --disable-agent, synced in {sync_s:.1} s",
        if std::env::var("SK_RSS_NO_DNS").is_ok() { "" } else { " --cluster-dns" },
        bin.display()
    );
    let target = 15.0 * 1024.0;
    println!(
        "{}",
        line("proxy_dns_rss_idle_kib", rss_idle as f64, "target", target)
    );
    println!(
        "{}",
        line(
            "proxy_dns_rss_synced_kib",
            rss_synced as f64,
            "target",
            target
        )
    );
    println!(
        "{}",
        line("proxy_dns_hwm_kib", hwm as f64, "target", target)
    );
    println!(
        "proxy_dns_rss_parts_kib anonymous={anon} file={} (smaps_rollup, idle)",
        rss_sm.saturating_sub(anon)
    );
    if std::env::var_os("SK_BENCH_HOLD").is_some() {
        println!("# SK_BENCH_HOLD: skiff proxy (pid {pid}) kept running; press Enter to stop");
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    }
    drop(proxy);
    let _ = skiff_proxy::cleanup(table);
}

fn main() {
    unshare_net();
    let rounds: usize = std::env::var("SK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // SK_BENCH_ONLY=dns, =proxy or =rss runs one part.
    let only = std::env::var("SK_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "proxy" {
        proxy_bench(rounds);
    }
    if only.is_empty() || only == "dns" {
        dns_bench(2.0, 4);
    }
    if only.is_empty() || only == "rss" {
        rss_bench();
    }
}
