//! Scheduler benchmark (bench/scheduler/run.sh; issue 13, "Benchmark").
//!
//! Starts `skiff server --disable-agent --disable-scheduler` and `skiff scheduler` as its own
//! process (both on temp dirs under `$BENCH_DIR`, default /var/tmp, stopped by PID), creates
//! 100 fake Ready nodes in 10 zones, then 1,000 pods with 16 clients: a third plain (cpu and
//! memory requests), a third spread over zones (maxSkew 1, DoNotSchedule), a third with
//! required node affinity to 4 zones and preferred pod anti-affinity by host. Measures the time
//! from the first pod create to every pod bound (pods/s, with the create rate beside it), and
//! the scheduler's RSS. Upstream kube-scheduler is not built on this machine: its RSS from
//! ../shared/upstream/README.md (v1.20.2, single node, idle) is printed as `upstream_ref`.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use skiff_bench::{free_port, line_multi, rss_kib};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZONES: usize = 10;
const CLIENTS: usize = 16;
/// kube-scheduler RSS in ../shared/upstream/README.md (KiB, median).
const UPSTREAM_SCHEDULER_RSS_KIB: f64 = 44_236.0;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(s) => s.parse().with_context(|| format!("{name}: a whole number")),
        Err(_) => Ok(default),
    }
}

fn node_json(i: usize) -> serde_json::Value {
    let name = format!("sk-bench-node-{i:03}");
    serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("z{}", i % ZONES),
        }},
    })
}

fn node_status() -> serde_json::Value {
    let now = "2026-01-01T00:00:00Z";
    serde_json::json!({"status": {
        "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "fake", "lastHeartbeatTime": now, "lastTransitionTime": now}],
    }})
}

fn pod_json(i: usize) -> Pod {
    let name = format!("sk-bench-pod-{i:04}");
    let mut spec = serde_json::json!({
        "containers": [{"name": "c", "image": "sk-busybox",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
    });
    let app = match i % 3 {
        0 => "plain",
        1 => {
            spec["topologySpreadConstraints"] = serde_json::json!([{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "spread"}},
            }]);
            "spread"
        }
        _ => {
            spec["affinity"] = serde_json::json!({
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                           "values": ["z0", "z1", "z2", "z3"]}]}]}},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app": "web"}}}}]},
            });
            "web"
        }
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": spec,
    }))
    .expect("pod")
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(cfg)?)
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<()> {
    let pods = env_usize("SK_BENCH_PODS", 1000)?;
    let nodes = env_usize("SK_BENCH_NODES", 100)?;
    let parent = PathBuf::from(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()));
    let bin = match std::env::var_os("SKIFF_BIN") {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?.with_file_name("skiff"),
    };
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin skiff` (or set SKIFF_BIN)",
            bin.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("sk-schedbench")
        .tempdir_in(&parent)
        .with_context(|| format!("temp dir in {}", parent.display()))?;
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let port = free_port()?;
    let server = Proc(
        Command::new(&bin)
            .args([
                "server",
                "--disable-agent",
                "--disable-scheduler",
                "--node-name",
                "sk-bench",
            ])
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
            .stderr(std::fs::File::create(dir.path().join("server.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let start = Instant::now();
    let c = loop {
        if kubeconfig.exists() {
            if let Ok(c) = client(&kubeconfig).await {
                if c.apiserver_version().await.is_ok() {
                    break c;
                }
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "skiff server did not answer in 60 s; see {}",
                dir.path().join("server.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ns_api: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "sk-bench"}}))?;
    ns_api.create(&PostParams::default(), &ns).await?;

    // Nodes first, Ready, in 10 zones.
    let node_api: Api<Node> = Api::all(c.clone());
    for i in 0..nodes {
        let n: Node = serde_json::from_value(node_json(i))?;
        let name = n.metadata.name.clone().unwrap_or_default();
        node_api.create(&PostParams::default(), &n).await?;
        node_api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&node_status()),
            )
            .await?;
    }
    let sched = Proc(
        Command::new(&bin)
            .args(["scheduler", "--kubeconfig"])
            .arg(&kubeconfig)
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("scheduler.log"))?)
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_kib(sched.0.id()) as f64;
    println!(
        "# skiff {} ; server pid {}, scheduler pid {}; {nodes} nodes, {pods} pods, {CLIENTS} clients",
        bin.display(),
        server.0.id(),
        sched.0.id()
    );

    let pod_api: Api<Pod> = Api::namespaced(c.clone(), "sk-bench");
    let t0 = Instant::now();
    let creates = futures::stream::iter(0..pods)
        .map(|i| {
            let api = pod_api.clone();
            async move { api.create(&PostParams::default(), &pod_json(i)).await }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
    let created_in = t0.elapsed().as_secs_f64();
    let failed = creates.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!(
            "{failed} pod creates failed, e.g. {:?}",
            creates.iter().find_map(|r| r.as_ref().err())
        );
    }
    let deadline = Duration::from_secs(300);
    let mut pending = pods;
    while pending > 0 {
        if t0.elapsed() > deadline {
            bail!(
                "{pending} of {pods} pods still unscheduled after {deadline:?}; see {}",
                dir.path().join("scheduler.log").display()
            );
        }
        pending = pod_api
            .list(&ListParams::default().fields("spec.nodeName="))
            .await?
            .items
            .len();
        if pending > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all_in = t0.elapsed().as_secs_f64();
    let rss_busy = rss_kib(sched.0.id()) as f64;
    // The scheduler trims its memory after 2 s without work.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rss_settled = rss_kib(sched.0.id()) as f64;
    // Where the pods went: spread pods per zone.
    let all = pod_api
        .list(&ListParams::default().labels("app=spread"))
        .await?
        .items;
    let mut per_zone = [0usize; ZONES];
    for p in &all {
        let n = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if let Some(i) = n
            .strip_prefix("sk-bench-node-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            per_zone[i % ZONES] += 1;
        }
    }
    let skew = per_zone.iter().max().unwrap_or(&0) - per_zone.iter().min().unwrap_or(&0);
    println!("pods_created_per_s skiff={:.0}", pods as f64 / created_in);
    println!(
        "scheduled_pods_per_s skiff={:.0} (first create to all {pods} bound: {all_in:.2} s)",
        pods as f64 / all_in
    );
    println!("spread_zone_skew skiff={skew} (maxSkew 1 asked)");
    println!(
        "{}",
        line_multi(
            "scheduler_rss_idle_mib",
            rss_idle / 1024.0,
            &[("upstream_ref", UPSTREAM_SCHEDULER_RSS_KIB / 1024.0)]
        )
    );
    println!(
        "{}",
        line_multi(
            "scheduler_rss_after_mib",
            rss_busy / 1024.0,
            &[("upstream_ref", UPSTREAM_SCHEDULER_RSS_KIB / 1024.0)]
        )
    );
    println!(
        "{}",
        line_multi(
            "scheduler_rss_settled_mib",
            rss_settled / 1024.0,
            &[("upstream_ref", UPSTREAM_SCHEDULER_RSS_KIB / 1024.0)]
        )
    );
    let rate = pods as f64 / all_in;
    println!(
        "# target: scheduling >= 500 pods/s: {}",
        if rate >= 500.0 { "met" } else { "MISSED" }
    );
    drop(sched);
    drop(server);
    Ok(())
}
