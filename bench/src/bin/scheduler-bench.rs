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

use anyhow::{bail, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::Api;
use skiff_bench::fake_cluster::{
    create_ready_nodes, env_usize, skiff_bin, start_server, Proc, Server,
};
use skiff_bench::{line_multi, rss_kib};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ZONES: usize = 10;
const CLIENTS: usize = 16;
/// kube-scheduler RSS in ../shared/upstream/README.md (KiB, median).
const UPSTREAM_SCHEDULER_RSS_KIB: f64 = 44_236.0;

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
    let bin = skiff_bin()?;
    let Server {
        proc: server,
        dir,
        data: _,
        client: c,
    } = start_server(&bin, "sk-schedbench", &["--disable-scheduler"]).await?;
    // Nodes first, Ready, spread over the zones.
    create_ready_nodes(&c, nodes, ZONES).await?;
    let sched = Proc(
        Command::new(&bin)
            .args(["scheduler", "--kubeconfig"])
            .arg(dir.path().join("kubeconfig.yaml"))
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
