//! Reading cgroup v1 statistics (cpuacct, memory, pids) for the stats verbs. Read-only.

use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

fn file(controller: &str, path: &str, name: &str) -> PathBuf {
    PathBuf::from(ROOT)
        .join(controller)
        .join(path.trim_start_matches('/'))
        .join(name)
}

fn read_u64(controller: &str, path: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(file(controller, path, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Cumulative CPU time in nanoseconds.
pub(crate) fn cpu_usage_ns(path: &str) -> Option<u64> {
    read_u64("cpuacct", path, "cpuacct.usage")
}

/// Memory figures of a cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Memory {
    pub usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub limit: u64,
}

pub(crate) fn memory(path: &str) -> Option<Memory> {
    let usage = read_u64("memory", path, "memory.usage_in_bytes")?;
    let stat = std::fs::read_to_string(file("memory", path, "memory.stat")).unwrap_or_default();
    let get = |k: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let inactive_file = get("total_inactive_file");
    Some(Memory {
        usage,
        // As the kubelet/cAdvisor: usage minus inactive file cache.
        working_set: usage.saturating_sub(inactive_file),
        rss: get("total_rss"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
        limit: read_u64("memory", path, "memory.limit_in_bytes").unwrap_or(0),
    })
}

/// Number of tasks in the cgroup.
pub(crate) fn pids(path: &str) -> Option<u64> {
    read_u64("pids", path, "pids.current")
}
