//! Per-container `LinuxContainerResources` sent to the CRI, as upstream's kubelet computes them
//! (`pkg/kubelet/kuberuntime/kuberuntime_container_linux.go`: `generateLinuxContainerResources`,
//! `calculateLinuxResources`; `pkg/kubelet/qos/policy.go`: `GetContainerOOMScoreAdjust`;
//! `pkg/kubelet/cm/helpers_linux.go`: `GetHugepageLimitsFromResources`).
//!
//! - `cpu_shares` from the cpu request (the limit when no request), `MilliCPUToShares` (min 2);
//! - `cpu_period` 100000 and `cpu_quota` from the cpu limit (`MilliCPUToQuota`, min 1000; 0 =
//!   none);
//! - `memory_limit_in_bytes` from the memory limit;
//! - `oom_score_adj` by QoS class: Guaranteed (and node-critical pods) -997, BestEffort 1000,
//!   Burstable `1000 - 1000*request/capacity` kept within 3..=999 (a sidecar takes the lowest
//!   score of the app containers when that is lower);
//! - `hugepage_limits`: every page size of the host limited to 0 unless the container asks for
//!   `hugepages-<size>` (none when the host has no usable hugetlb controller);
//! - swap off as upstream's `NoSwap`: cgroup v1 `memory_swap_limit_in_bytes` = the memory
//!   limit when the swap controller exists, cgroup v2 `unified["memory.swap.max"] = "0"`.
//!
//! The values are computed from the pod spec once per container creation; in-place resize
//! (`UpdateContainerResources` on a `resize`) is not done: the API server does not accept
//! resource changes of a running pod's containers here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Container, Pod};
use skiff_proto::cri;

use crate::cgroups::{milli_cpu_to_quota, milli_cpu_to_shares, CgroupMode, QUOTA_PERIOD};

/// Upstream's `guaranteedOOMScoreAdj`.
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
/// Upstream's `besteffortOOMScoreAdj`.
pub const BESTEFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// What the host offers, read once: memory capacity, cgroup mode, hugepage sizes, swap control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// `MemTotal` of `/proc/meminfo`, bytes (cAdvisor's `MemoryCapacity`).
    pub memory_capacity: i64,
    pub cgroup_mode: CgroupMode,
    /// Page sizes as the CRI names them (`2MB`, `1GB`), from `/sys/kernel/mm/hugepages`; none
    /// when the hugetlb cgroup controller is not there.
    pub hugepage_sizes: Vec<String>,
    /// Whether the memory controller can limit swap (v1 `memory.memsw.limit_in_bytes`, v2
    /// `memory.swap.max`).
    pub swap_controller: bool,
}

impl HostInfo {
    /// This host, read once per process.
    pub fn get() -> &'static HostInfo {
        static H: OnceLock<HostInfo> = OnceLock::new();
        H.get_or_init(HostInfo::read)
    }

    fn read() -> HostInfo {
        let memory_capacity = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<i64>().ok())
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0);
        let mount = Path::new("/sys/fs/cgroup");
        let cgroup_mode = crate::cgroups::detect(mount);
        let mut hugepage_sizes: Vec<(u64, String)> = std::fs::read_dir("/sys/kernel/mm/hugepages")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let kb = name.strip_prefix("hugepages-")?.strip_suffix("kB")?;
                let bytes = kb.parse::<u64>().ok()? * 1024;
                Some((bytes, page_size_name(bytes)))
            })
            .collect();
        hugepage_sizes.sort();
        // Without a usable hugetlb controller (e.g. a hybrid host whose hugetlb sits on the v2
        // mount only) runc cannot apply limits and fails the container: send none.
        let hugetlb = match cgroup_mode {
            CgroupMode::V1 => mount.join("hugetlb").is_dir(),
            CgroupMode::V2 => std::fs::read_to_string(mount.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "hugetlb")),
        };
        if !hugetlb {
            hugepage_sizes.clear();
        }
        let swap_controller = match cgroup_mode {
            CgroupMode::V1 => mount.join("memory/memory.memsw.limit_in_bytes").exists(),
            CgroupMode::V2 => own_v2_cgroup(mount)
                .map(|p| p.join("memory.swap.max").exists())
                .unwrap_or(false),
        };
        HostInfo {
            memory_capacity,
            cgroup_mode,
            hugepage_sizes: hugepage_sizes.into_iter().map(|(_, n)| n).collect(),
            swap_controller,
        }
    }
}

/// This process's cgroup folder on a unified host (`0::/path` of `/proc/self/cgroup`).
fn own_v2_cgroup(mount: &Path) -> Option<std::path::PathBuf> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = s.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// A hugepage size in bytes as the CRI and the cgroup files name it (upstream's
/// `HugePageUnitSizeFromByteSize`): `2MB`, `1GB`, `64KB`.
pub fn page_size_name(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024 && v.is_multiple_of(1024) && i + 1 < units.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", units[i])
}

fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    r: &str,
) -> Option<f64> {
    map.and_then(|m| m.get(r))
        .and_then(|q| crate::volumes::parse_quantity(&q.0))
}

/// Whether the pod is node-critical (upstream's `IsNodeCriticalPod`): critical (static, mirror,
/// or priority at least `system-cluster-critical`'s) and of priority class `system-node-critical`.
pub fn is_node_critical(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.priority_class_name.as_deref()) == Some("system-node-critical")
        && crate::eviction::is_critical(pod)
}

/// Upstream's `GetContainerOOMScoreAdjust` for container `c` of `pod` on a node with
/// `memory_capacity` bytes.
pub fn oom_score_adj(pod: &Pod, c: &Container, memory_capacity: i64) -> i64 {
    if is_node_critical(pod) {
        return GUARANTEED_OOM_SCORE_ADJ;
    }
    match crate::status::qos_class(pod) {
        "Guaranteed" => return GUARANTEED_OOM_SCORE_ADJ,
        "BestEffort" => return BESTEFFORT_OOM_SCORE_ADJ,
        _ => {}
    }
    let burstable = |c: &Container| -> i64 {
        let req = quantity(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
            "memory",
        )
        .map(|v| v.ceil() as i64)
        .unwrap_or(0);
        let score = if memory_capacity > 0 {
            1000 - (1000i128 * req as i128 / memory_capacity as i128) as i64
        } else {
            1000
        };
        // Burstable containers score above Guaranteed ones and below BestEffort ones.
        if score < 1000 + GUARANTEED_OOM_SCORE_ADJ {
            1000 + GUARANTEED_OOM_SCORE_ADJ
        } else if score == BESTEFFORT_OOM_SCORE_ADJ {
            score - 1
        } else {
            score
        }
    };
    let mut score = burstable(c);
    // A sidecar is killed no sooner than the app containers it serves.
    if crate::reconcile::is_sidecar(c) {
        if let Some(min_app) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().map(burstable).min())
        {
            score = score.min(min_app);
        }
    }
    score
}

/// Hugepage limits: every host page size at 0 unless the container asks for it (limits, then
/// requests), as upstream.
pub fn hugepage_limits(c: &Container, host_sizes: &[String]) -> Vec<cri::HugepageLimit> {
    let mut limits: Vec<(String, u64)> = host_sizes.iter().map(|s| (s.clone(), 0)).collect();
    let res = c.resources.as_ref();
    for map in [
        res.and_then(|r| r.requests.as_ref()),
        res.and_then(|r| r.limits.as_ref()),
    ]
    .into_iter()
    .flatten()
    {
        for (name, q) in map {
            let Some(size) = name.strip_prefix("hugepages-") else {
                continue;
            };
            let (Some(page), Some(amount)) = (
                crate::volumes::parse_quantity(size),
                crate::volumes::parse_quantity(&q.0),
            ) else {
                continue;
            };
            let page = page_size_name(page as u64);
            match limits.iter_mut().find(|(s, _)| *s == page) {
                Some(l) => l.1 = amount as u64,
                None => limits.push((page, amount as u64)),
            }
        }
    }
    limits
        .into_iter()
        .map(|(page_size, limit)| cri::HugepageLimit { page_size, limit })
        .collect()
}

/// The `LinuxContainerResources` of container `c` of `pod` on `host`.
pub fn container_resources(
    pod: &Pod,
    c: &Container,
    host: &HostInfo,
) -> cri::LinuxContainerResources {
    let res = c.resources.as_ref();
    let req = res.and_then(|r| r.requests.as_ref());
    let lim = res.and_then(|r| r.limits.as_ref());
    let milli = |v: f64| (v * 1000.0).ceil() as i64;
    let cpu_req = quantity(req, "cpu").map(milli).unwrap_or(0);
    let cpu_lim = quantity(lim, "cpu").map(milli).unwrap_or(0);
    let mem_lim = quantity(lim, "memory")
        .map(|v| v.ceil() as i64)
        .unwrap_or(0);
    // A limit without a request: the request defaults to the limit (the API server does this
    // for new pods; upstream repeats it for older ones).
    let shares_from = if cpu_req == 0 && cpu_lim != 0 {
        cpu_lim
    } else {
        cpu_req
    };
    let mut r = cri::LinuxContainerResources {
        cpu_shares: milli_cpu_to_shares(shares_from) as i64,
        cpu_period: QUOTA_PERIOD as i64,
        cpu_quota: milli_cpu_to_quota(cpu_lim, QUOTA_PERIOD),
        memory_limit_in_bytes: mem_lim,
        oom_score_adj: oom_score_adj(pod, c, host.memory_capacity),
        hugepage_limits: hugepage_limits(c, &host.hugepage_sizes),
        unified: HashMap::new(),
        ..Default::default()
    };
    if host.swap_controller {
        match host.cgroup_mode {
            CgroupMode::V1 => r.memory_swap_limit_in_bytes = r.memory_limit_in_bytes,
            CgroupMode::V2 => {
                r.unified
                    .insert("memory.swap.max".to_string(), "0".to_string());
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u"},
            "spec": {"containers": containers}
        }))
        .unwrap()
    }

    fn host(mode: CgroupMode, swap: bool) -> HostInfo {
        HostInfo {
            memory_capacity: 4 << 30,
            cgroup_mode: mode,
            hugepage_sizes: vec!["2MB".into(), "1GB".into()],
            swap_controller: swap,
        }
    }

    #[test]
    fn guaranteed_container() {
        let p = pod(serde_json::json!([{"name": "c", "resources": {
            "limits": {"cpu": "250m", "memory": "64Mi"},
            "requests": {"cpu": "250m", "memory": "64Mi"}}}]));
        let r = container_resources(
            &p,
            &p.spec.as_ref().unwrap().containers[0],
            &host(CgroupMode::V1, true),
        );
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.cpu_quota, 25_000);
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!(r.memory_swap_limit_in_bytes, 64 << 20);
        assert_eq!(r.oom_score_adj, -997);
        assert_eq!(r.hugepage_limits.len(), 2);
        assert!(r.hugepage_limits.iter().all(|h| h.limit == 0));
    }

    #[test]
    fn best_effort_and_limit_only() {
        let p = pod(serde_json::json!([{"name": "c"}]));
        let r = container_resources(
            &p,
            &p.spec.as_ref().unwrap().containers[0],
            &host(CgroupMode::V2, true),
        );
        assert_eq!(r.cpu_shares, 2);
        assert_eq!(r.cpu_quota, 0);
        assert_eq!(r.memory_limit_in_bytes, 0);
        assert_eq!(r.oom_score_adj, 1000);
        assert_eq!(
            r.unified.get("memory.swap.max").map(String::as_str),
            Some("0")
        );
        // Tiny cpu limit: quota floored at 1000 µs; shares from the limit.
        let p = pod(serde_json::json!([{"name": "c", "resources": {"limits": {"cpu": "1m"}}}]));
        let r = container_resources(
            &p,
            &p.spec.as_ref().unwrap().containers[0],
            &host(CgroupMode::V1, false),
        );
        assert_eq!(r.cpu_quota, 1000);
        assert_eq!(r.cpu_shares, 2);
        assert_eq!(r.memory_swap_limit_in_bytes, 0);
    }

    #[test]
    fn burstable_oom_score() {
        // 1 GiB of 4 GiB: 1000 - 250.
        let p = pod(serde_json::json!([
            {"name": "a", "resources": {"requests": {"memory": "1Gi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "100m"}}},
            {"name": "c", "resources": {"requests": {"memory": "4Gi"}}}
        ]));
        let cs = &p.spec.as_ref().unwrap().containers;
        assert_eq!(oom_score_adj(&p, &cs[0], 4 << 30), 750);
        // No memory request: 1000 would be BestEffort's, so 999.
        assert_eq!(oom_score_adj(&p, &cs[1], 4 << 30), 999);
        // All of the node: kept above Guaranteed's.
        assert_eq!(oom_score_adj(&p, &cs[2], 4 << 30), 3);
    }

    #[test]
    fn node_critical_and_sidecar() {
        let mut p = pod(serde_json::json!([
            {"name": "a", "resources": {"requests": {"memory": "2Gi"}}}
        ]));
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![serde_json::from_value(serde_json::json!(
            {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"memory": "1Mi"}}}
        ))
        .unwrap()]);
        let s = p.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].clone();
        assert_eq!(oom_score_adj(&p, &s, 4 << 30), 500);
        let spec = p.spec.as_mut().unwrap();
        spec.priority_class_name = Some("system-node-critical".into());
        spec.priority = Some(2_000_001_000);
        let a = p.spec.as_ref().unwrap().containers[0].clone();
        assert_eq!(oom_score_adj(&p, &a, 4 << 30), -997);
    }

    #[test]
    fn hugepages_requested() {
        let p = pod(serde_json::json!([{"name": "c", "resources": {
            "limits": {"hugepages-2Mi": "4Mi", "memory": "10Mi"},
            "requests": {"hugepages-2Mi": "4Mi", "memory": "10Mi"}}}]));
        let h = hugepage_limits(
            &p.spec.as_ref().unwrap().containers[0],
            &["2MB".into(), "1GB".into()],
        );
        assert_eq!(
            h,
            vec![
                cri::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20
                },
                cri::HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0
                },
            ]
        );
        assert_eq!(page_size_name(2 << 20), "2MB");
        assert_eq!(page_size_name(1 << 30), "1GB");
        assert_eq!(page_size_name(64 << 10), "64KB");
    }
}
