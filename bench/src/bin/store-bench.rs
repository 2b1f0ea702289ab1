//! Store benchmark (bench/store/run.sh): skiff's log store vs the previous redb store vs etcd.
//!
//! Prints, per figure, `name skiff=<log store> <peer>=<value> ratio=<skiff/peer>` for the redb
//! store and, when `/usr/bin/etcd` exists, for etcd (started here on 127.0.0.1 in a temp dir,
//! driven through its JSON gateway `/v3/kv/put` over keep-alive HTTP/1.1, stopped by PID).
//! Skiff's stores run in-process; etcd pays a loopback HTTP round trip and JSON per put.
//!
//! Figures: sequential put throughput and p50/p99 latency (creates of ~400-byte Lease JSON),
//! 16-way concurrent put throughput, and bytes written to disk (`/proc/<pid>/io` `write_bytes`)
//! per 1,000 updates of one key with a Lease (a renewal) and with a ~4 KiB Node (a status
//! heartbeat with a dozen image digests), from which the idle-cluster rate of `skiff server` is
//! estimated: one lease renewal and one node status update every 10 s (the node agent's period;
//! the redb figure of that estimate, ~450 KiB/min, matches the 436 KiB/min measured on
//! `skiff server`).

use skiff_bench::{percentile, write_bytes, Etcd, Gateway};
use skiff_store::{EmbeddedStore, RedbStore, Store};
use std::sync::Arc;
use std::time::Instant;

const SEQ: usize = 2000;
const CONC_TASKS: usize = 16;
const CONC_EACH: usize = 250;
const SMALL: usize = 300;
/// Stands for the ~4 KiB node status in `value`.
const STATUS: usize = 4096;
const UPDATES: usize = 1000;

#[derive(Default, Clone, Copy)]
struct Figures {
    seq_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    conc_per_s: f64,
    bytes_per_1k_small: f64,
    bytes_per_1k_status: f64,
}

fn value(len: usize, seed: usize) -> Vec<u8> {
    match len {
        SMALL => lease(seed),
        _ => node_status(seed),
    }
}

/// Hex digits that do not repeat (digests, IDs): as incompressible as the real ones.
fn hex(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

fn time(seed: usize) -> String {
    format!(
        "2026-12-06T{:02}:{:02}:{:02}Z",
        seed / 3600 % 24,
        seed / 60 % 60,
        seed % 60
    )
}

/// A node Lease as the API server stores it (~300 bytes); `seed` moves its renew time.
fn lease(seed: usize) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"node-1","namespace":"kube-node-lease","uid":"{}","creationTimestamp":"2026-12-06T00:00:00Z","ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"node-1","uid":"{}"}}]}},"spec":{{"holderIdentity":"node-1","leaseDurationSeconds":40,"renewTime":"{}"}}}}"#,
        hex(1, 32),
        hex(2, 32),
        time(seed)
    )
    .into_bytes()
}

/// A Node with its status (~4 KiB: conditions, addresses, node info, a dozen images with their
/// digests), as the kubelet's heartbeat writes it; `seed` moves the heartbeat times.
fn node_status(seed: usize) -> Vec<u8> {
    let t = time(seed);
    let conditions: Vec<String> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        .iter()
        .map(|c| {
            format!(
                r#"{{"type":"{c}","status":"False","lastHeartbeatTime":"{t}","lastTransitionTime":"2026-12-06T00:00:00Z","reason":"Kubelet{c}","message":"kubelet reports {c} as expected"}}"#
            )
        })
        .collect();
    let images: Vec<String> = (0..12u64)
        .map(|i| {
            format!(
                r#"{{"names":["docker.io/library/image-{i}@sha256:{}","docker.io/library/image-{i}:1.{i}"],"sizeBytes":{}}}"#,
                hex(100 + i, 64),
                10_000_000 + i * 7_919_113
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"node-1","uid":"{}","labels":{{"kubernetes.io/hostname":"node-1","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","node-role.kubernetes.io/control-plane":""}},"creationTimestamp":"2026-12-06T00:00:00Z"}},"spec":{{"podCIDR":"10.42.0.0/24","podCIDRs":["10.42.0.0/24"]}},"status":{{"capacity":{{"cpu":"2","memory":"4025424Ki","pods":"110","ephemeral-storage":"263174212Ki"}},"allocatable":{{"cpu":"2","memory":"3923024Ki","pods":"110","ephemeral-storage":"242541353378"}},"conditions":[{}],"addresses":[{{"type":"InternalIP","address":"10.0.2.15"}},{{"type":"Hostname","address":"node-1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}},"nodeInfo":{{"machineID":"{}","systemUUID":"{}","bootID":"{}","kernelVersion":"6.1.0-13-amd64","osImage":"Debian GNU/Linux 12 (bookworm)","containerRuntimeVersion":"skiff://0.1.0","kubeletVersion":"v1.33.0-skiff","kubeProxyVersion":"v1.33.0-skiff","operatingSystem":"linux","architecture":"amd64"}},"images":[{}]}}}}"#,
        hex(3, 32),
        conditions.join(","),
        hex(4, 32),
        hex(5, 32),
        hex(6, 32),
        images.join(",")
    )
    .into_bytes()
}

/// Runs the same workload on any `Store`.
async fn bench_store(store: Arc<dyn Store>) -> Figures {
    let pid = std::process::id();
    let mut lat = Vec::with_capacity(SEQ);
    let t0 = Instant::now();
    for i in 0..SEQ {
        let t = Instant::now();
        store
            .create(&format!("/registry/seq/{i:06}"), value(SMALL, i))
            .await
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let seq_per_s = SEQ as f64 / t0.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONC_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CONC_EACH {
                store
                    .create(&format!("/registry/conc/{t}/{i:06}"), value(SMALL, i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conc_per_s = (CONC_TASKS * CONC_EACH) as f64 / t0.elapsed().as_secs_f64();

    let mut per_1k = [0.0; 2];
    for (slot, len) in [SMALL, STATUS].into_iter().enumerate() {
        let key = format!("/registry/leases/kube-node-lease/node-{len}");
        store.create(&key, value(len, 0)).await.unwrap();
        let before = write_bytes(pid);
        for i in 0..UPDATES {
            store.update(&key, value(len, i), None).await.unwrap();
        }
        per_1k[slot] = (write_bytes(pid) - before) as f64 * 1000.0 / UPDATES as f64;
    }
    Figures {
        seq_per_s,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        conc_per_s,
        bytes_per_1k_small: per_1k[0],
        bytes_per_1k_status: per_1k[1],
    }
}

fn bench_etcd(etcd: &Etcd) -> Figures {
    let pid = etcd.pid();
    let mut c = Gateway::connect(&etcd.addr).unwrap();
    let mut lat = Vec::with_capacity(SEQ);
    let t0 = Instant::now();
    for i in 0..SEQ {
        let t = Instant::now();
        c.put(&format!("/registry/seq/{i:06}"), &value(SMALL, i));
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let seq_per_s = SEQ as f64 / t0.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CONC_TASKS)
        .map(|t| {
            let addr = etcd.addr.clone();
            std::thread::spawn(move || {
                let mut c = Gateway::connect(&addr).unwrap();
                for i in 0..CONC_EACH {
                    c.put(&format!("/registry/conc/{t}/{i:06}"), &value(SMALL, i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let conc_per_s = (CONC_TASKS * CONC_EACH) as f64 / t0.elapsed().as_secs_f64();
    let mut per_1k = [0.0; 2];
    for (slot, len) in [SMALL, STATUS].into_iter().enumerate() {
        let key = format!("/registry/leases/kube-node-lease/node-{len}");
        c.put(&key, &value(len, 0));
        let before = write_bytes(pid);
        for i in 0..UPDATES {
            c.put(&key, &value(len, i));
        }
        per_1k[slot] = (write_bytes(pid) - before) as f64 * 1000.0 / UPDATES as f64;
    }
    Figures {
        seq_per_s,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        conc_per_s,
        bytes_per_1k_small: per_1k[0],
        bytes_per_1k_status: per_1k[1],
    }
}

/// KiB a minute for one 300-byte and one 4 KiB update every 10 s.
fn idle_kib_per_min(f: &Figures) -> f64 {
    6.0 * (f.bytes_per_1k_small + f.bytes_per_1k_status) / 1000.0 / 1024.0
}

fn print(skiff: &Figures, peer_name: &str, peer: &Figures) {
    use skiff_bench::line;
    let rows = [
        ("store_put_seq_per_s", skiff.seq_per_s, peer.seq_per_s),
        ("store_put_seq_p50_ms", skiff.p50_ms, peer.p50_ms),
        ("store_put_seq_p99_ms", skiff.p99_ms, peer.p99_ms),
        ("store_put_16way_per_s", skiff.conc_per_s, peer.conc_per_s),
        (
            "store_write_bytes_per_1k_updates_300B",
            skiff.bytes_per_1k_small,
            peer.bytes_per_1k_small,
        ),
        (
            "store_write_bytes_per_1k_updates_4KiB",
            skiff.bytes_per_1k_status,
            peer.bytes_per_1k_status,
        ),
        (
            "store_idle_estimate_kib_per_min",
            idle_kib_per_min(skiff),
            idle_kib_per_min(peer),
        ),
    ];
    for (name, a, b) in rows {
        println!("{}", line(name, a, peer_name, b));
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
    let log = rt.block_on(async {
        let s = Arc::new(EmbeddedStore::open(&dir.path().join("log")).unwrap());
        bench_store(s).await
    });
    let redb = rt.block_on(async {
        let s = Arc::new(RedbStore::open(&dir.path().join("redb/state.redb")).unwrap());
        bench_store(s).await
    });
    print(&log, "redb", &redb);
    match Etcd::start(dir.path()) {
        Some(etcd) => {
            let e = bench_etcd(&etcd);
            drop(etcd);
            print(&log, "etcd", &e);
        }
        None => println!("# etcd not available: skipped"),
    }
}
