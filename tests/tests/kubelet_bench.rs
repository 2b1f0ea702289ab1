//! The kubelet benchmark (`bench/kubelet/run.sh`, not CI: it prints figures and asserts no
//! timing): through a whole `skiff server` and kubectl, one pod created -> Ready (image present)
//! several times, 50 pods applied at once -> all Ready, their deletion, and the server's RSS and
//! CPU idle with 50 pods. One line per figure, e.g. `kubelet_pod_ready_p50_ms skiff=..`.

use skiff_tests::control_plane::ControlPlane;
use std::time::{Duration, Instant};

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: skbench\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n"
    )
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss_kb)
}

fn idle_cpu_percent(pid: u32, window: Duration) -> f64 {
    let (t0, _) = proc_stat(pid);
    std::thread::sleep(window);
    let (t1, _) = proc_stat(pid);
    // USER_HZ is 100 on Linux.
    (t1 - t0) as f64 / 100.0 / window.as_secs_f64() * 100.0
}

#[test]
#[ignore = "benchmark: run by bench/kubelet/run.sh"]
fn kubelet_bench() {
    let rounds: usize = std::env::var("SK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let pods: usize = std::env::var("SK_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let window = Duration::from_secs(
        std::env::var("SK_BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let cp = ControlPlane::start_cluster();
    let image = cp.agent.as_ref().expect("a whole cluster").busybox.clone();
    let pid = cp.pid();
    // Warm up (image pulled once).
    let o = cp.with_stdin(&["apply", "-f", "-"], &pod("skbench-warm", &image));
    assert!(o.ok, "{}", o.stderr);
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/skbench-warm",
        "--timeout=120s",
    ]);
    cp.ok(&["delete", "pod", "skbench-warm", "--wait=true"]);
    let idle = idle_cpu_percent(pid, window);
    let (_, rss_idle) = proc_stat(pid);

    let mut one = Vec::new();
    for i in 0..rounds {
        let name = format!("skbench-one-{i}");
        let t = Instant::now();
        let o = cp.with_stdin(&["apply", "-f", "-"], &pod(&name, &image));
        assert!(o.ok, "{}", o.stderr);
        cp.ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ]);
        one.push(t.elapsed().as_secs_f64() * 1000.0);
        cp.ok(&["delete", "pod", &name, "--wait=true"]);
    }
    one.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = one[one.len() / 2];

    let all: String = (0..pods)
        .map(|i| pod(&format!("skbench-{i}"), &image))
        .collect::<Vec<_>>()
        .join("---\n");
    let t = Instant::now();
    let o = cp.with_stdin(&["apply", "-f", "-"], &all);
    assert!(o.ok, "{}", o.stderr);
    cp.ok(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=skbench",
        "--timeout=300s",
    ]);
    let many_ready = t.elapsed().as_secs_f64();
    let busy = idle_cpu_percent(pid, window);
    let (_, rss_busy) = proc_stat(pid);
    let t = Instant::now();
    cp.ok(&[
        "delete",
        "pod",
        "-l",
        "app=skbench",
        "--wait=true",
        "--timeout=300s",
    ]);
    let many_deleted = t.elapsed().as_secs_f64();

    println!("kubelet_pod_ready_p50_ms skiff={p50:.0} (create->Ready through kubectl apply + wait, {rounds} rounds, min {:.0} max {:.0})", one[0], one[one.len() - 1]);
    println!("kubelet_{pods}_pods_ready_s skiff={many_ready:.2}");
    println!("kubelet_{pods}_pods_deleted_s skiff={many_deleted:.2} (grace 1 s)");
    println!("server_rss_idle_mib skiff={:.1}", rss_idle as f64 / 1024.0);
    println!(
        "server_rss_{pods}_pods_mib skiff={:.1}",
        rss_busy as f64 / 1024.0
    );
    println!(
        "server_cpu_idle_percent skiff={idle:.2} (no pods, {}s)",
        window.as_secs()
    );
    println!(
        "server_cpu_{pods}_pods_percent skiff={busy:.2} ({pods} running pods, {}s)",
        window.as_secs()
    );
}
