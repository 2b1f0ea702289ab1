//! ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats from cgroup v1,
//! the writable layer's disk use and the pod netns's interface counters.

use skiff_proto::cri;

use crate::cgroups;
use crate::error::Result;
use crate::server::State;
use crate::store::container::Container;
use crate::store::sandbox::Sandbox;
use crate::util::{labels_match, now_nanos};

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// CPU usage with `usage_nano_cores` from the previous sample of the same cgroup.
fn cpu(st: &State, key: &str, path: &str, ts: i64) -> Option<cri::CpuUsage> {
    let total = cgroups::cpu_usage_ns(path)?;
    let prev = st
        .cpu_samples
        .lock()
        .expect("cpu sample map poisoned")
        .insert(key.to_string(), (ts, total));
    let nano_cores = prev.and_then(|(pts, ptotal)| {
        let dt = ts.checked_sub(pts).filter(|d| *d > 0)? as u128;
        let du = total.checked_sub(ptotal)? as u128;
        Some((du * 1_000_000_000 / dt) as u64)
    });
    Some(cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(total),
        usage_nano_cores: nano_cores.and_then(u64v),
    })
}

fn memory(path: &str, ts: i64) -> Option<cri::MemoryUsage> {
    let m = cgroups::memory(path)?;
    // A v1 cgroup without a limit reports a huge number: no "available" then.
    let available =
        (m.limit > 0 && m.limit < (1 << 62)).then(|| m.limit.saturating_sub(m.working_set));
    Some(cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(m.working_set),
        available_bytes: available.and_then(u64v),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
    })
}

fn container_stats(st: &State, ct: &Container) -> cri::ContainerStats {
    let ts = now_nanos();
    let (cpu_u, mem_u) = match st.sandboxes.get(&ct.sandbox_id) {
        Ok(sb) => {
            let path = super::spec::cgroups_path(&sb, &ct.id);
            (cpu(st, &ct.id, &path, ts), memory(&path, ts))
        }
        Err(_) => (None, None),
    };
    let upper = st.containers.record_dir(&ct.id).join("fs");
    let (bytes, inodes) = crate::util::disk_usage(&upper);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: ct.id.clone(),
            metadata: ct.config.metadata.clone(),
            labels: ct.config.labels.clone(),
            annotations: ct.config.annotations.clone(),
        }),
        cpu: cpu_u,
        memory: mem_u,
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: upper.display().to_string(),
            }),
            used_bytes: u64v(bytes),
            inodes_used: u64v(inodes),
        }),
        swap: None,
    }
}

pub(crate) fn container(
    st: &State,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse> {
    let ct = st.containers.get(&req.container_id)?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(container_stats(st, &ct)),
    })
}

pub(crate) fn list_containers(
    st: &State,
    req: cri::ListContainerStatsRequest,
) -> cri::ListContainerStatsResponse {
    let f = req.filter.unwrap_or_default();
    let stats = st
        .containers
        .list()
        .into_iter()
        .filter(|c| c.cri_state() == cri::ContainerState::ContainerRunning)
        .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
        .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|c| labels_match(&f.label_selector, &c.config.labels))
        .map(|c| container_stats(st, &c))
        .collect();
    cri::ListContainerStatsResponse { stats }
}

/// Interface counters of the pod's network namespace, read through the pause process.
pub(crate) fn network(sb: &Sandbox, ts: i64) -> Option<cri::NetworkUsage> {
    if sb.host_network || !crate::sys::alive(sb.pause_pid, sb.pause_start_time) {
        return None;
    }
    let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", sb.pause_pid)).ok()?;
    let interfaces: Vec<cri::NetworkInterfaceUsage> = dev
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 11 && name.trim() != "lo").then(|| cri::NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: u64v(f[0]),
                rx_errors: u64v(f[2]),
                tx_bytes: u64v(f[8]),
                tx_errors: u64v(f[10]),
            })
        })
        .collect();
    Some(cri::NetworkUsage {
        timestamp: ts,
        default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces,
    })
}

fn sandbox_stats(st: &State, sb: &Sandbox) -> cri::PodSandboxStats {
    let ts = now_nanos();
    let path = format!("/{}", sb.cgroup_parent.trim_matches('/'));
    let containers: Vec<cri::ContainerStats> = st
        .containers
        .list()
        .iter()
        .filter(|c| c.sandbox_id == sb.id && c.cri_state() == cri::ContainerState::ContainerRunning)
        .map(|c| container_stats(st, c))
        .collect();
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cpu(st, &sb.id, &path, ts),
            memory: memory(&path, ts),
            network: network(sb, ts),
            process: cgroups::pids(&path).map(|n| cri::ProcessUsage {
                timestamp: ts,
                process_count: u64v(n),
            }),
            containers,
        }),
        windows: None,
    }
}

pub(crate) fn sandbox(
    st: &State,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse> {
    let sb = st.sandboxes.get(&req.pod_sandbox_id)?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(sandbox_stats(st, &sb)),
    })
}

pub(crate) fn list_sandboxes(
    st: &State,
    req: cri::ListPodSandboxStatsRequest,
) -> cri::ListPodSandboxStatsResponse {
    let f = req.filter.unwrap_or_default();
    let stats = st
        .sandboxes
        .list()
        .into_iter()
        .filter(|sb| sb.cri_state() == cri::PodSandboxState::SandboxReady)
        .filter(|sb| f.id.is_empty() || sb.id.starts_with(&f.id))
        .filter(|sb| labels_match(&f.label_selector, &sb.config.labels))
        .map(|sb| sandbox_stats(st, &sb))
        .collect();
    cri::ListPodSandboxStatsResponse { stats }
}
