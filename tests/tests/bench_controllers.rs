//! The controllers benchmark (`bash bench/controllers/run.sh`; ignored by CI, tests never assert
//! timings): a Deployment of 100 busybox `sleep` replicas from apply to all Ready on a whole
//! single-node cluster, with the times to all created and all bound, and the server's RSS.

use std::time::{Duration, Instant};

use skiff_tests::control_plane::ControlPlane;

/// Upstream v1.20.2 on this kind of machine (../shared/upstream/README.md): 50 busybox pods
/// applied at once to all Ready, median of 3 runs; kube-controller-manager idle RSS.
const UPSTREAM_50_READY_S: f64 = 36.0;
const UPSTREAM_KCM_RSS_MIB: f64 = 95.4;

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn manifest(name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {{name: main, image: {image}, imagePullPolicy: IfNotPresent, command: [sleep, \"3600\"]}}\n"
    )
}

fn count(c: &ControlPlane, path: &str) -> usize {
    c.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=sk-bench",
        "-o",
        &format!("jsonpath={path}"),
    ])
    .stdout
    .split_whitespace()
    .count()
}

#[test]
#[ignore]
fn deployment_of_100_to_ready() {
    let c = ControlPlane::start_cluster();
    let image = c.agent.as_ref().unwrap().busybox.clone();
    // Pull the image once (a pull is not the controllers' work), then start from nothing.
    let out = c.with_stdin(&["apply", "-f", "-"], &manifest("sk-warm", &image, 1));
    assert!(out.ok, "{}", out.stderr);
    c.wait_for("the warm-up pod", Duration::from_secs(120), || {
        c.kubectl(&[
            "get",
            "deploy",
            "sk-warm",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .stdout
            == "1"
    });
    c.ok(&["delete", "deploy", "sk-warm"]);
    std::thread::sleep(Duration::from_secs(5));
    let rss_before = rss_mib(c.pid());

    let n = 100;
    let t0 = Instant::now();
    let out = c.with_stdin(&["apply", "-f", "-"], &manifest("sk-bench", &image, n));
    assert!(out.ok, "{}", out.stderr);
    let (mut created, mut bound, mut ready) = (None, None, None);
    while ready.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "100 replicas not Ready in 10 min"
        );
        if created.is_none() && count(&c, "{.items[*].metadata.name}") >= n as usize {
            created = Some(t0.elapsed());
        }
        if bound.is_none() && count(&c, "{.items[*].spec.nodeName}") >= n as usize {
            bound = Some(t0.elapsed());
        }
        let r = c
            .kubectl(&[
                "get",
                "deploy",
                "sk-bench",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ])
            .stdout;
        if r == n.to_string() {
            ready = Some(t0.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let rss_after = rss_mib(c.pid());
    let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);
    let ready_s = s(ready);
    println!("# skiff server pid {} (API server, controllers, scheduler, kubelet, CRI server in one process)", c.pid());
    println!("controllers_deploy_100_created_s skiff={:.2}", s(created));
    println!("controllers_deploy_100_bound_s skiff={:.2}", s(bound));
    println!(
        "controllers_deploy_100_ready_s skiff={ready_s:.2} upstream_ref_50={UPSTREAM_50_READY_S:.2} ratio_per_pod={:.2}",
        (ready_s / 100.0) / (UPSTREAM_50_READY_S / 50.0)
    );
    println!(
        "skiff_server_rss_mib before={rss_before:.1} with_100_pods={rss_after:.1} upstream_ref_kube_controller_manager_idle={UPSTREAM_KCM_RSS_MIB:.1}"
    );
    println!(
        "# target: 100 replicas Ready < 15 s: {}",
        if ready_s < 15.0 { "met" } else { "MISSED" }
    );
    c.ok(&["delete", "deploy", "sk-bench", "--wait=false"]);
}
