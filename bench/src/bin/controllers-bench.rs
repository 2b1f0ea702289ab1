//! Controllers + scheduler memory benchmark (bench/controllers/rss.sh; issue 13, "controllers +
//! scheduler RSS < 20 MiB with 1,000 pods").
//!
//! Starts `skiff server --disable-agent --disable-scheduler --disable-controller-manager`, then
//! `skiff scheduler` and `skiff controller-manager` each as its own process with its own
//! identity (the server's `server/*.kubeconfig`), all on a temp dir under `$BENCH_DIR` (default
//! /var/tmp) and stopped by PID. 100 fake Ready nodes in 10 zones (API objects only); then 10
//! Deployments of 100 replicas created at once: 4 plain (cpu and memory requests), 3 spread over
//! zones (maxSkew 1, DoNotSchedule), 3 with required node affinity to 4 zones and preferred pod
//! anti-affinity by host. A watch on the pods times the first Deployment create -> all 1,000
//! pods created (by the ReplicaSet controller) and -> all bound (by the scheduler); then it
//! waits until every Deployment's status counts its 100 replicas, so the controllers hold every
//! object. Prints VmRSS and VmHWM of both processes (idle, right after, and settled 5 s later),
//! their sum against the 20 MiB target, and upstream's figures from
//! ../shared/upstream/README.md as `upstream_ref` (v1.20.2, idle, no pods: not this run).
//! Env: SK_BENCH_DEPLOYMENTS (10), SK_BENCH_REPLICAS (100), SK_BENCH_NODES (100).

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::Api;
use skiff_bench::fake_cluster::{
    create_ready_nodes, env_usize, skiff_bin, start_server, Proc, Server,
};
use skiff_bench::{hwm_kib, line_multi, rss_kib};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ZONES: usize = 10;
/// Medians of ../shared/upstream/README.md's three runs (KiB, idle, v1.20.2).
const UPSTREAM_KCM_RSS_KIB: f64 = 97_716.0;
const UPSTREAM_SCHEDULER_RSS_KIB: f64 = 44_236.0;
const TARGET_MIB: f64 = 20.0;

/// Deployment `i` of `replicas`: plain (i % 10 < 4), zone-spread (< 7) or zone affinity with
/// preferred anti-affinity by host.
fn deployment(i: usize, replicas: usize) -> Result<Deployment> {
    let name = format!("sk-bench-{i:02}");
    let mut spec = serde_json::json!({
        "containers": [{"name": "c", "image": "sk-busybox",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
    });
    match i % 10 {
        0..=3 => {}
        4..=6 => {
            spec["topologySpreadConstraints"] = serde_json::json!([{
                "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": name}},
            }]);
        }
        _ => {
            spec["affinity"] = serde_json::json!({
                "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                           "values": ["z0", "z1", "z2", "z3"]}]}]}},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app": name}}}}]},
            });
        }
    }
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }))?)
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

/// VmRSS and VmHWM of a process, MiB.
fn mem(pid: u32) -> (f64, f64) {
    (rss_kib(pid) as f64 / 1024.0, hwm_kib(pid) as f64 / 1024.0)
}

fn spawn(bin: &Path, args: &[&str], kubeconfig: &Path, log: &Path) -> Result<Proc> {
    // SK_BENCH_CM_WRAP (e.g. `heaptrack`): run the controller manager under that program (its
    // memory figures are then the wrapper's).
    let wrap = std::env::var("SK_BENCH_CM_WRAP")
        .ok()
        .filter(|_| args.first() == Some(&"controller-manager"));
    let mut cmd = match &wrap {
        Some(w) => {
            let mut c = Command::new(w);
            c.arg(bin);
            c
        }
        None => Command::new(bin),
    };
    Ok(Proc(
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?,
    ))
}

fn print_mem(phase: &str, cm: u32, sched: u32) {
    let (cm_rss, cm_hwm) = mem(cm);
    let (s_rss, s_hwm) = mem(sched);
    let peer = [(
        "upstream_ref",
        (UPSTREAM_KCM_RSS_KIB + UPSTREAM_SCHEDULER_RSS_KIB) / 1024.0,
    )];
    println!(
        "{}",
        line_multi(
            &format!("controller_manager_rss_{phase}_mib"),
            cm_rss,
            &[("upstream_ref", UPSTREAM_KCM_RSS_KIB / 1024.0)]
        )
    );
    println!(
        "{}",
        line_multi(
            &format!("scheduler_rss_{phase}_mib"),
            s_rss,
            &[("upstream_ref", UPSTREAM_SCHEDULER_RSS_KIB / 1024.0)]
        )
    );
    println!(
        "{} (target < {TARGET_MIB} MiB: {})",
        line_multi(&format!("sum_rss_{phase}_mib"), cm_rss + s_rss, &peer),
        if cm_rss + s_rss < TARGET_MIB {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "hwm_{phase}_mib controller_manager={cm_hwm:.2} scheduler={s_hwm:.2} sum={:.2} (target < {TARGET_MIB} MiB: {})",
        cm_hwm + s_hwm,
        if cm_hwm + s_hwm < TARGET_MIB { "met" } else { "MISSED" }
    );
}

async fn run() -> Result<()> {
    let deployments = env_usize("SK_BENCH_DEPLOYMENTS", 10)?;
    let replicas = env_usize("SK_BENCH_REPLICAS", 100)?;
    let nodes = env_usize("SK_BENCH_NODES", 100)?;
    let pods = deployments * replicas;
    let bin = skiff_bin()?;
    let Server {
        proc: server,
        dir,
        data,
        client: c,
    } = start_server(
        &bin,
        "sk-ctlbench",
        &["--disable-scheduler", "--disable-controller-manager"],
    )
    .await?;
    // Nodes first, Ready, spread over the zones.
    create_ready_nodes(&c, nodes, ZONES).await?;
    let sched = spawn(
        &bin,
        &["scheduler"],
        &data.join("server/scheduler.kubeconfig"),
        &dir.path().join("scheduler.log"),
    )?;
    let cm = spawn(
        &bin,
        &["controller-manager", "--leader-elect=false"],
        &data.join("server/controller.kubeconfig"),
        &dir.path().join("controller-manager.log"),
    )?;
    let (cm_pid, sched_pid) = (cm.0.id(), sched.0.id());
    println!(
        "# skiff {} ; server pid {}, scheduler pid {sched_pid}, controller-manager pid {cm_pid}; {nodes} nodes, {deployments} deployments x {replicas} replicas",
        bin.display(),
        server.0.id(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    print_mem("idle", cm_pid, sched_pid);

    // Count creations and bindings from a watch (no polling load on the server).
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), "sk-bench");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, usize, Instant)>();
    let watch = tokio::spawn(async move {
        let mut created = HashSet::new();
        let mut bound = HashSet::new();
        let mut stream = watcher(pod_api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let pods = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            for p in pods {
                let name = p.metadata.name.clone().unwrap_or_default();
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    bound.insert(name.clone());
                }
                created.insert(name);
            }
            if tx
                .send((created.len(), bound.len(), Instant::now()))
                .is_err()
            {
                return;
            }
        }
    });
    let dep_api: Api<Deployment> = Api::namespaced(c.clone(), "sk-bench");
    let t0 = Instant::now();
    for i in 0..deployments {
        dep_api
            .create(&PostParams::default(), &deployment(i, replicas)?)
            .await?;
    }
    let deadline = Duration::from_secs(300);
    let (mut created_at, mut bound_at) = (None, None);
    while bound_at.is_none() {
        let Ok(msg) = tokio::time::timeout(deadline.saturating_sub(t0.elapsed()), rx.recv()).await
        else {
            bail!(
                "not all {pods} pods created and bound after {deadline:?}; see {}",
                dir.path().display()
            );
        };
        let Some((created, bound, at)) = msg else {
            bail!("the pod watch ended");
        };
        if created >= pods && created_at.is_none() {
            created_at = Some(at - t0);
        }
        if bound >= pods {
            bound_at = Some(at - t0);
        }
    }
    watch.abort();
    let created_in = created_at.unwrap_or_default().as_secs_f64();
    let all_in = bound_at.unwrap_or_default().as_secs_f64();
    // The controllers have seen everything once each Deployment's status counts its replicas.
    loop {
        let all = dep_api.list(&ListParams::default()).await?.items;
        let done = all
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.replicas) == Some(replicas as i32)
                    && d.status.as_ref().and_then(|s| s.updated_replicas) == Some(replicas as i32)
            })
            .count();
        if done == deployments {
            break;
        }
        if t0.elapsed() > deadline {
            bail!("only {done} of {deployments} Deployments count {replicas} replicas after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled_in = t0.elapsed().as_secs_f64();
    println!(
        "pods_created_per_s skiff={:.0} (first Deployment create to all {pods} pods created: {created_in:.2} s)",
        pods as f64 / created_in
    );
    println!(
        "scheduled_pods_per_s skiff={:.0} (first Deployment create to all {pods} bound: {all_in:.2} s; Deployment statuses complete at {settled_in:.2} s)",
        pods as f64 / all_in
    );
    print_mem("after", cm_pid, sched_pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    print_mem("settled", cm_pid, sched_pid);
    let rate = pods as f64 / all_in;
    println!(
        "# target: scheduling >= 500 pods/s (end to end, incl. the ReplicaSet controller's creates): {}",
        if rate >= 500.0 { "met" } else { "MISSED" }
    );
    if std::env::var_os("SK_BENCH_HOLD").is_some() {
        println!("# SK_BENCH_HOLD: processes kept running; press Enter to stop");
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    }
    drop(cm);
    drop(sched);
    drop(server);
    Ok(())
}
