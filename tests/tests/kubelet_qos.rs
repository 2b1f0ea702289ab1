//! QoS-class pod cgroups, node allocatable and the eviction manager, through a whole
//! `skiff server` and kubectl, read on this host's real cgroup files (v1 or v2: the host
//! decides). Needs root, docker-registry, busybox-static and kubectl; builds on
//! `cargo build --bin skiff --bin skiff-monitor --bin skiff-runtime --bin skiff-cni`.

use skiff_tests::control_plane::ControlPlane;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);
const CG: &str = "/sys/fs/cgroup";

fn apply(cp: &ControlPlane, manifest: &str) {
    let o = cp.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply: {}\n{manifest}", o.stderr);
}

fn get(cp: &ControlPlane, kind: &str, name: &str, path: &str) -> String {
    cp.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")])
        .stdout
}

fn v2() -> bool {
    nix::sys::statfs::statfs(CG)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The folder of cgroup `rel` for `controller` (v1) or the unified folder (v2).
fn dir(controller: &str, rel: &str) -> PathBuf {
    if v2() {
        Path::new(CG).join(rel.trim_start_matches('/'))
    } else {
        Path::new(CG)
            .join(controller)
            .join(rel.trim_start_matches('/'))
    }
}

fn read(controller: &str, rel: &str, file: &str) -> String {
    let p = dir(controller, rel).join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// cpu shares of a cgroup (v2: `cpu.weight` converted back is lossy, so v2 compares weights).
fn shares(rel: &str) -> u64 {
    if v2() {
        read("cpu", rel, "cpu.weight").parse().unwrap()
    } else {
        read("cpu", rel, "cpu.shares").parse().unwrap()
    }
}

fn expect_shares(rel: &str, v1_shares: u64) {
    let want = if v2() {
        1 + ((v1_shares.clamp(2, 262_144) - 2) * 9999) / 262_142
    } else {
        v1_shares
    };
    assert_eq!(shares(rel), want, "cpu shares of {rel}");
}

fn memory_limit(rel: &str) -> Option<u64> {
    let v = if v2() {
        read("memory", rel, "memory.max")
    } else {
        read("memory", rel, "memory.limit_in_bytes")
    };
    // v1 "unlimited" is a page-rounded i64::MAX.
    v.parse::<u64>().ok().filter(|v| *v < (1u64 << 62))
}

fn cpu_quota(rel: &str) -> Option<i64> {
    if v2() {
        let v = read("cpu", rel, "cpu.max");
        v.split_whitespace().next().and_then(|q| q.parse().ok())
    } else {
        Some(read("cpu", rel, "cpu.cfs_quota_us").parse::<i64>().unwrap()).filter(|q| *q > 0)
    }
}

fn mem_total() -> u64 {
    let m = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = m
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn cpus() -> u64 {
    std::thread::available_parallelism().unwrap().get() as u64
}

fn uid(cp: &ControlPlane, pod: &str) -> String {
    get(cp, "pod", pod, "{.metadata.uid}")
}

fn wait_running(cp: &ControlPlane, pods: &[&str]) {
    for p in pods {
        cp.wait_for(&format!("{p} Running"), WAIT, || {
            get(cp, "pod", p, "{.status.phase}") == "Running"
        });
    }
}

#[test]
fn qos_cgroups_allocatable_and_empty_dir_limit() {
    let cp = ControlPlane::start_cluster_with(&[
        "--kube-reserved",
        "cpu=100m,memory=100Mi",
        "--system-reserved",
        "memory=50Mi",
    ]);
    let agent = cp.agent.as_ref().expect("a whole cluster");
    let image = agent.busybox.clone();
    let node = agent.node.clone();
    let kubepods = format!("{}/kubepods", agent.cgroup_root);

    // kubepods: allocatable (capacity - reserved, no eviction threshold), as upstream.
    let cpu_milli = cpus() * 1000 - 100;
    expect_shares(&kubepods, (cpu_milli * 1024 / 1000).max(2));
    let want_mem = mem_total() - 150 * 1024 * 1024;
    let got = memory_limit(&kubepods).expect("kubepods has a memory limit");
    assert!(
        got <= want_mem && want_mem - got < 4096,
        "kubepods memory limit {got}, want {want_mem} (page rounded)"
    );
    expect_shares(&format!("{kubepods}/besteffort"), 2);
    assert!(dir("memory", &format!("{kubepods}/burstable")).is_dir());

    // Node allocatable: capacity - kube-reserved - system-reserved - hard eviction (100Mi).
    let alloc_mem = get(&cp, "node", &node, "{.status.allocatable.memory}");
    let want_alloc = (mem_total() - 250 * 1024 * 1024) / 1024;
    assert_eq!(alloc_mem, format!("{want_alloc}Ki"));
    let alloc_cpu = get(&cp, "node", &node, "{.status.allocatable.cpu}");
    assert_eq!(alloc_cpu, format!("{cpu_milli}m"));
    assert!(!get(&cp, "node", &node, "{.status.capacity.ephemeral-storage}").is_empty());
    let describe = cp.ok(&["describe", "node", &node]);
    assert!(
        describe.contains(&format!("memory:             {want_alloc}Ki"))
            || describe.contains(&format!("{want_alloc}Ki")),
        "describe node shows the allocatable memory:\n{describe}"
    );

    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-qos-g}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    resources: {{requests: {{cpu: 200m, memory: 64Mi}}, limits: {{cpu: 200m, memory: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-qos-b}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    resources: {{requests: {{cpu: 100m, memory: 32Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-qos-be}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
"#
        ),
    );
    wait_running(&cp, &["sk-qos-g", "sk-qos-b", "sk-qos-be"]);
    assert_eq!(
        get(&cp, "pod", "sk-qos-g", "{.status.qosClass}"),
        "Guaranteed"
    );
    assert_eq!(
        get(&cp, "pod", "sk-qos-b", "{.status.qosClass}"),
        "Burstable"
    );
    assert_eq!(
        get(&cp, "pod", "sk-qos-be", "{.status.qosClass}"),
        "BestEffort"
    );

    let g = format!("{kubepods}/pod{}", uid(&cp, "sk-qos-g"));
    expect_shares(&g, 204);
    assert_eq!(cpu_quota(&g), Some(20_000));
    assert_eq!(memory_limit(&g), Some(64 * 1024 * 1024));

    let b_uid = uid(&cp, "sk-qos-b");
    let b = format!("{kubepods}/burstable/pod{b_uid}");
    expect_shares(&b, 102);
    assert_eq!(cpu_quota(&b), None);
    assert_eq!(memory_limit(&b), None);
    expect_shares(&format!("{kubepods}/burstable"), 102);

    let be = format!("{kubepods}/besteffort/pod{}", uid(&cp, "sk-qos-be"));
    expect_shares(&be, 2);
    assert_eq!(memory_limit(&be), None);
    // The containers run inside their pod's cgroup.
    let procs = read("memory", &g, "cgroup.procs");
    let nested = std::fs::read_dir(dir("memory", &g))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .count();
    assert!(
        !procs.is_empty() || nested > 0,
        "the Guaranteed pod's cgroup holds its containers"
    );

    // A pod over allocatable memory is not scheduled.
    let too_big = mem_total() - 120 * 1024 * 1024;
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-qos-big}}
spec:
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    resources: {{requests: {{memory: "{too_big}"}}}}
"#
        ),
    );
    cp.wait_for("FailedScheduling Insufficient memory", WAIT, || {
        cp.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-qos-big,reason=FailedScheduling",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .stdout
        .contains("Insufficient memory")
    });
    assert_eq!(get(&cp, "pod", "sk-qos-big", "{.status.phase}"), "Pending");
    cp.ok(&["delete", "pod", "sk-qos-big", "--wait=false"]);

    // Pod cgroups go with their pods; the burstable class's shares follow.
    cp.ok(&["delete", "pod", "sk-qos-b"]);
    cp.wait_for("burstable pod cgroup removed", WAIT, || {
        !dir("memory", &b).exists() && !dir("cpu", &b).exists()
    });
    expect_shares(&format!("{kubepods}/burstable"), 2);

    // An orphaned pod cgroup (a pod deleted while the kubelet was down) is swept.
    let orphan = format!("{kubepods}/besteffort/podsk-orphan-0000");
    std::fs::create_dir_all(dir("memory", &orphan)).unwrap();
    cp.wait_for("orphaned pod cgroup removed", WAIT, || {
        !dir("memory", &orphan).exists()
    });

    // emptyDir over its sizeLimit: the pod is evicted.
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-qos-ed}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "dd if=/dev/zero of=/data/f bs=1024 count=2048; sleep 3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    emptyDir: {{sizeLimit: 1Mi}}
"#
        ),
    );
    cp.wait_for("emptyDir pod evicted", WAIT, || {
        get(&cp, "pod", "sk-qos-ed", "{.status.phase}") == "Failed"
    });
    assert_eq!(get(&cp, "pod", "sk-qos-ed", "{.status.reason}"), "Evicted");
    assert_eq!(
        get(&cp, "pod", "sk-qos-ed", "{.status.message}"),
        "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". "
    );
    let ev = cp
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-qos-ed,reason=Evicted",
            "-o",
            "jsonpath={.items[*].type} {.items[*].message}",
        ])
        .stdout;
    assert!(ev.starts_with("Warning Usage of EmptyDir volume"), "{ev}");
    cp.wait_for("evicted container stopped", WAIT, || {
        !get(
            &cp,
            "pod",
            "sk-qos-ed",
            "{.status.containerStatuses[0].state.terminated}",
        )
        .is_empty()
    });

    cp.ok(&[
        "delete",
        "pod",
        "sk-qos-g",
        "sk-qos-be",
        "sk-qos-ed",
        "--wait=true",
    ]);
}

#[test]
fn memory_pressure_evicts_best_effort_first() {
    // A soft threshold above the host's memory: always met, so the node is under memory
    // pressure from the start; its grace period leaves time for both pods to start.
    // An odd number of Ki, so the message prints it as given (Quantity's canonical form).
    let ki = (mem_total() / 1024 + 1024 * 1024) | 1;
    let threshold = format!("{ki}Ki");
    let cp = ControlPlane::start_cluster_with(&[
        "--eviction-soft",
        &format!("memory.available<{threshold}"),
        "--eviction-soft-grace-period",
        "memory.available=45s",
    ]);
    let agent = cp.agent.as_ref().expect("a whole cluster");
    let image = agent.busybox.clone();
    let node = agent.node.clone();
    let tolerate = "tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]";
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-ev-g}}
spec:
  terminationGracePeriodSeconds: 1
  {tolerate}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    resources: {{limits: {{cpu: 100m, memory: 64Mi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-ev-be}}
spec:
  terminationGracePeriodSeconds: 1
  {tolerate}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
"#
        ),
    );
    cp.wait_for("MemoryPressure=True", WAIT, || {
        get(
            &cp,
            "node",
            &node,
            "{.status.conditions[?(@.type==\"MemoryPressure\")].status}",
        ) == "True"
    });
    assert_eq!(
        get(
            &cp,
            "node",
            &node,
            "{.status.conditions[?(@.type==\"MemoryPressure\")].reason}"
        ),
        "KubeletHasInsufficientMemory"
    );
    cp.wait_for("memory-pressure taint", WAIT, || {
        get(&cp, "node", &node, "{.spec.taints[*].key}")
            .contains("node.kubernetes.io/memory-pressure")
    });
    assert!(get(&cp, "node", &node, "{.spec.taints[*].effect}").contains("NoSchedule"));
    // A pod without the toleration is not scheduled there.
    apply(
        &cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: sk-ev-nt}}\nspec:\n  containers:\n  - {{name: main, image: {image}}}\n"
        ),
    );
    cp.wait_for(
        "FailedScheduling for the memory-pressure taint",
        WAIT,
        || {
            cp.kubectl(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=sk-ev-nt,reason=FailedScheduling",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .stdout
            .contains("node.kubernetes.io/memory-pressure")
        },
    );
    cp.ok(&["delete", "pod", "sk-ev-nt", "--wait=false"]);

    cp.wait_for("BestEffort pod evicted", WAIT, || {
        get(&cp, "pod", "sk-ev-be", "{.status.phase}") == "Failed"
    });
    let g_phase = get(&cp, "pod", "sk-ev-g", "{.status.phase}");
    assert_eq!(get(&cp, "pod", "sk-ev-be", "{.status.reason}"), "Evicted");
    let msg = get(&cp, "pod", "sk-ev-be", "{.status.message}");
    assert!(
        msg.starts_with(&format!(
            "The node was low on resource: memory. Threshold quantity: {threshold}, available: "
        )),
        "{msg}"
    );
    assert_eq!(
        get(
            &cp,
            "pod",
            "sk-ev-be",
            "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}"
        ),
        "TerminationByKubelet"
    );
    let ev = cp
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=sk-ev-be,reason=Evicted",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .stdout;
    assert!(
        ev.starts_with("The node was low on resource: memory."),
        "{ev}"
    );
    // The Guaranteed pod goes after it (one eviction per monitoring interval), never before.
    if g_phase == "Failed" {
        let t = |p: &str| {
            get(
                &cp,
                "pod",
                p,
                "{.status.conditions[?(@.type==\"DisruptionTarget\")].lastTransitionTime}",
            )
        };
        assert!(
            t("sk-ev-g") >= t("sk-ev-be"),
            "Guaranteed pod evicted first"
        );
    } else {
        assert_eq!(g_phase, "Running", "the Guaranteed pod still runs");
    }
    cp.wait_for("evicted container stopped", WAIT, || {
        !get(
            &cp,
            "pod",
            "sk-ev-be",
            "{.status.containerStatuses[0].state.terminated}",
        )
        .is_empty()
    });
    cp.ok(&["delete", "pod", "sk-ev-g", "sk-ev-be", "--wait=true"]);
}

#[test]
fn disk_pressure_hard_threshold() {
    // nodefs.available<99%: met on any host with data on its root filesystem.
    let cp = ControlPlane::start_cluster_with(&["--eviction-hard", "nodefs.available<99%"]);
    let agent = cp.agent.as_ref().expect("a whole cluster");
    let image = agent.busybox.clone();
    let node = agent.node.clone();
    cp.wait_for("DiskPressure=True", WAIT, || {
        get(
            &cp,
            "node",
            &node,
            "{.status.conditions[?(@.type==\"DiskPressure\")].status}",
        ) == "True"
    });
    assert_eq!(
        get(
            &cp,
            "node",
            &node,
            "{.status.conditions[?(@.type==\"DiskPressure\")].reason}"
        ),
        "KubeletHasDiskPressure"
    );
    cp.wait_for("disk-pressure taint", WAIT, || {
        get(&cp, "node", &node, "{.spec.taints[*].key}")
            .contains("node.kubernetes.io/disk-pressure")
    });
    apply(
        &cp,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-disk-be}}
spec:
  terminationGracePeriodSeconds: 1
  tolerations: [{{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
"#
        ),
    );
    // Under disk pressure the kubelet's admission refuses it (upstream: every pod but critical
    // ones, whatever it tolerates); kubelet_admission.rs evicts a pod that ran before.
    cp.wait_for("pod rejected for disk pressure", WAIT, || {
        get(&cp, "pod", "sk-disk-be", "{.status.phase}") == "Failed"
    });
    assert_eq!(get(&cp, "pod", "sk-disk-be", "{.status.reason}"), "Evicted");
    let msg = get(&cp, "pod", "sk-disk-be", "{.status.message}");
    assert_eq!(
        msg, "Pod was rejected: The node had condition: [DiskPressure]. ",
        "{msg}"
    );
    cp.ok(&["delete", "pod", "sk-disk-be", "--wait=true"]);
}
