//! The systemd cgroup driver end to end, in a systemd box (tests/src/systemd_box.rs: systemd 252
//! as PID 1 with dbus; this host's cgroups are v1, so the box's slices are v1 cgroups at the
//! host's root): `skiff cri --systemd-cgroup` and `skiff kubelet` (KubeletConfiguration
//! `cgroupDriver: systemd`, `--cgroup-root=/sk<pid>.slice`) run as services of the box's systemd,
//! beside a `skiff server --disable-agent` on the host (bridge `skbr58`, 10.244.58.0/24).
//!
//! - A kubelet with `cgroupDriver: cgroupfs` against that runtime exits with the
//!   misconfiguration error (the runtime's RuntimeConfig says `systemd`).
//! - The QoS slices exist as systemd units: `sk<pid>-kubepods.slice`,
//!   `sk<pid>-kubepods-burstable.slice`, `sk<pid>-kubepods-besteffort.slice`; a Burstable pod
//!   gets `sk<pid>-kubepods-burstable-pod<uid with _>.slice`, a Guaranteed pod
//!   `sk<pid>-kubepods-pod<uid>.slice` directly in the kubepods slice, each with upstream's
//!   limits in the unit (`CPUShares`, `CPUQuotaPerSecUSec`, `MemoryLimit`) and in its cgroup v1
//!   files; the container runs in `cri-skiff-<container id>.scope` below its pod's slice with
//!   its own limits.
//! - Deleting the pods stops their slices and removes their cgroups.
//!
//! Needs root, systemd, dbus, docker-registry, busybox-static and kubectl; builds on
//! `cargo build -p skiff -p skiff-monitor -p skiff-runtime -p skiff-cni`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_tests::control_plane::ControlPlane;
use skiff_tests::standalone::{kubelet_command, CgroupRoot, KubeletNode, SkiffCri};
use skiff_tests::systemd_box::SystemdBox;
use skiff_tests::Registry;

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{}: {e}>", path.display()))
}

/// `systemctl show -p <prop> --value <unit>` in the box.
fn show(bx: &SystemdBox, unit: &str, prop: &str) -> String {
    let o = bx.exec(&["systemctl", "show", "-p", prop, "--value", unit]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn scenario(cp: &ControlPlane, registry: &str, busybox: &str) {
    let pid = std::process::id();
    let dir = cp.dir().join("sk-sdcg");
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("sk-sdcg-{pid}");
    let slice_root = format!("sk{pid}");
    let _cgroups = CgroupRoot(format!("/{slice_root}.slice"));
    let bx = SystemdBox::boot(&[cp.dir()]).expect("systemd box");
    let level = std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into());
    let cri_log = dir.join("cri.log");
    let cri = SkiffCri::start_with(
        "skbr58",
        "10.244.58.0/24",
        registry,
        &["--systemd-cgroup"],
        &bx.service("sk-cri", &[("SKIFF_LOG", &level)], &cri_log),
        Some(&dir),
    )
    .unwrap_or_else(|e| panic!("skiff cri in the box: {e}\n{}", read(&cri_log)));
    let n = KubeletNode {
        runtime: "skiff (systemd cgroups)",
        cp,
        name: name.clone(),
        dir: dir.clone(),
    };

    // A kubelet told to use cgroupfs refuses the runtime's systemd driver.
    let wrong = dir.join("wrong");
    let mut child = kubelet_command(
        cp,
        &cri.socket,
        &format!("{name}-wrong"),
        &format!("/{slice_root}.slice"),
        &wrong,
        "cgroupDriver: cgroupfs\n",
        &[],
    )
    .spawn()
    .expect("start skiff kubelet");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wrong_log = read(&wrong.join("kubelet.log"));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a kubelet with the cgroupfs driver must exit on a systemd runtime\n{wrong_log}"
    );
    assert!(
        wrong_log.contains(
            r#"misconfiguration: kubelet cgroup driver: "cgroupfs" is different from the container runtime's cgroup driver: "systemd""#
        ),
        "{wrong_log}"
    );

    // The kubelet as a service of the box's systemd.
    let wrapper = bx.service(
        "sk-kubelet",
        &[("SKIFF_LOG", &level)],
        &dir.join("kubelet.log"),
    );
    let o = kubelet_command(
        cp,
        &cri.socket,
        &name,
        &format!("/{slice_root}.slice"),
        &dir,
        "cgroupDriver: systemd\n",
        &wrapper,
    )
    .output()
    .expect("systemd-run skiff kubelet in the box");
    assert!(o.status.success(), "systemd-run: {}", out(&o));
    n.wait_for("the node to be Ready", || {
        cp.kubectl(&[
            "get",
            "node",
            &name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .stdout
            == "True"
    });
    let kubepods = format!("{slice_root}-kubepods.slice");
    for unit in [
        kubepods.clone(),
        format!("{slice_root}-kubepods-burstable.slice"),
        format!("{slice_root}-kubepods-besteffort.slice"),
    ] {
        assert_eq!(show(&bx, &unit, "ActiveState"), "active", "{unit}");
    }
    assert_eq!(
        show(
            &bx,
            &format!("{slice_root}-kubepods-besteffort.slice"),
            "CPUShares"
        ),
        "2"
    );

    let manifest = format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: sk-sdcg-burst}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {busybox}
    command: ["sleep", "3600"]
    resources:
      requests: {{cpu: 100m, memory: 32Mi}}
      limits: {{memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sk-sdcg-guar}}
spec:
  nodeName: {name}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {busybox}
    command: ["sleep", "3600"]
    resources:
      requests: {{cpu: 200m, memory: 48Mi}}
      limits: {{cpu: 200m, memory: 48Mi}}
"#
    );
    let o = cp.with_stdin(&["apply", "-f", "-"], &manifest);
    assert!(o.ok, "apply: {}", o.stderr);
    for p in ["sk-sdcg-burst", "sk-sdcg-guar"] {
        n.wait_for(&format!("{p} Running"), || {
            n.get(p, "{.status.phase}") == "Running"
        });
    }
    assert_eq!(n.get("sk-sdcg-burst", "{.status.qosClass}"), "Burstable");
    assert_eq!(n.get("sk-sdcg-guar", "{.status.qosClass}"), "Guaranteed");
    let uid = |p: &str| n.get(p, "{.metadata.uid}").replace('-', "_");
    let container = |p: &str| {
        let id = n.get(p, "{.status.containerStatuses[0].containerID}");
        id.rsplit("://").next().unwrap_or_default().to_string()
    };
    let burst_unit = format!(
        "{slice_root}-kubepods-burstable-pod{}.slice",
        uid("sk-sdcg-burst")
    );
    let guar_unit = format!("{slice_root}-kubepods-pod{}.slice", uid("sk-sdcg-guar"));
    let cg = |controller: &str, path: &str| -> PathBuf {
        PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join(format!("{slice_root}.slice"))
            .join(&kubepods)
            .join(path)
    };
    let burst_rel = format!("{slice_root}-kubepods-burstable.slice/{burst_unit}");
    let guar_rel = guar_unit.clone();

    // Burstable: cpu shares from the request (100m -> 102), the memory limit (every container
    // has one), no quota.
    assert_eq!(
        show(&bx, &burst_unit, "ActiveState"),
        "active",
        "{}",
        n.kubelet_log()
    );
    assert_eq!(show(&bx, &burst_unit, "CPUShares"), "102");
    assert_eq!(show(&bx, &burst_unit, "MemoryLimit"), "67108864");
    assert_eq!(read(&cg("cpu", &burst_rel).join("cpu.shares")), "102");
    assert_eq!(
        read(&cg("memory", &burst_rel).join("memory.limit_in_bytes")),
        "67108864"
    );
    assert_eq!(read(&cg("cpu", &burst_rel).join("cpu.cfs_quota_us")), "-1");
    // Guaranteed: directly in kubepods.slice, shares 204, quota 20 ms per 100 ms, 48Mi.
    assert_eq!(show(&bx, &guar_unit, "ActiveState"), "active");
    assert_eq!(show(&bx, &guar_unit, "CPUShares"), "204");
    assert_eq!(show(&bx, &guar_unit, "CPUQuotaPerSecUSec"), "200ms");
    assert_eq!(read(&cg("cpu", &guar_rel).join("cpu.shares")), "204");
    assert_eq!(
        read(&cg("cpu", &guar_rel).join("cpu.cfs_quota_us")),
        "20000"
    );
    assert_eq!(
        read(&cg("memory", &guar_rel).join("memory.limit_in_bytes")),
        "50331648"
    );
    // The containers run in their scopes below the pod slices, with their own limits.
    for (p, rel, mem) in [
        ("sk-sdcg-burst", &burst_rel, "67108864"),
        ("sk-sdcg-guar", &guar_rel, "50331648"),
    ] {
        let scope = cg("memory", rel).join(format!("cri-skiff-{}.scope", container(p)));
        assert_eq!(read(&scope.join("memory.limit_in_bytes")), mem, "{p}");
        assert!(
            !read(&scope.join("cgroup.procs")).is_empty(),
            "{p}: no process in {}",
            scope.display()
        );
    }
    // The pause process of each pod is in a scope of its pod's slice too.
    let scopes = |rel: &str| {
        std::fs::read_dir(cg("memory", rel))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let f = e.file_name().to_string_lossy().into_owned();
                        f.starts_with("cri-skiff-") && f.ends_with(".scope")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(scopes(&burst_rel), 2, "pause and container scopes");

    n.ok(&[
        "delete",
        "pod",
        "sk-sdcg-burst",
        "sk-sdcg-guar",
        "--wait=true",
        "--timeout=90s",
    ]);
    n.wait_for("the pod slices stopped and their cgroups gone", || {
        show(&bx, &burst_unit, "ActiveState") == "inactive"
            && show(&bx, &guar_unit, "ActiveState") == "inactive"
            && !cg("memory", &burst_rel).exists()
            && !cg("cpu", &guar_rel).exists()
    });
    assert_eq!(show(&bx, &kubepods, "ActiveState"), "active");
    cp.kubectl(&["delete", "node", &name]);
    drop(bx);
    drop(cri);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_cgroup_driver_end_to_end() {
    assert!(nix::unistd::geteuid().is_root(), "needs root");
    skiff_tests::cri_env::init_tls();
    let registry = Registry::shared().expect("local registry");
    let busybox = skiff_tests::cri_env::push_busybox(registry.addr(), "sk-busybox:latest").await;
    let addr = registry.addr().to_string();
    tokio::task::spawn_blocking(move || {
        let cp = ControlPlane::start();
        scenario(&cp, &addr, &busybox);
    })
    .await
    .unwrap();
}
