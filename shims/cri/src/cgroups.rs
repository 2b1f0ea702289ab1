//! cgroup v1 (cgroupfs layout, `/sys/fs/cgroup/<controller>/<path>`): statistics for the stats
//! verbs (cpuacct, memory, pids), the sandbox's own cgroup holding its pause process, and direct
//! limit writes for UpdateContainerResources when the runtime cannot `update`.

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

/// Controllers a sandbox cgroup is created in (cpuset is left to the runtime: it needs its
/// cpus/mems copied down the tree first).
const POD_CONTROLLERS: [&str; 7] = [
    "blkio", "cpu", "cpuacct", "devices", "freezer", "memory", "pids",
];

/// The cgroup of a sandbox's pause process: `<cgroup_parent>/<sandbox id>` (as containerd with
/// cgroupfs), `<slice>/cri-skiff-<sandbox id>.scope` with the systemd driver.
pub(crate) fn sandbox_path(sb: &crate::store::sandbox::Sandbox) -> String {
    child_path(sb, &sb.id)
}

/// The cgroup of a sandbox's pause or container `id`.
pub(crate) fn child_path(sb: &crate::store::sandbox::Sandbox, id: &str) -> String {
    let name = if sb.systemd_cgroup {
        systemd::scope_name(id)
    } else {
        id.to_string()
    };
    format!("/{}/{}", sb.cgroup_parent.trim_matches('/'), name).replace("//", "/")
}

/// The systemd cgroup driver's names (runc's `--systemd-cgroup` conventions, as containerd
/// with `SystemdCgroup = true` uses them): a slice `a-b-c.slice` lives at
/// `/a.slice/a-b.slice/a-b-c.slice` below systemd's root cgroup, and the container (or pause)
/// `id` of a sandbox whose parent is that slice at `<slice path>/cri-skiff-<id>.scope`
/// (containerd: `cri-containerd-<id>.scope`). The kubelet creates the slices through systemd;
/// the scopes are made here as cgroupfs folders with those names (the runtime gets their path).
pub(crate) mod systemd {
    /// The prefix of the scope names (`<prefix>-<id>.scope`).
    pub(crate) const SCOPE_PREFIX: &str = "cri-skiff";

    pub(crate) fn scope_name(id: &str) -> String {
        format!("{SCOPE_PREFIX}-{id}.scope")
    }

    /// The path of slice `name` below systemd's root (runc's `ExpandSlice`): `-.slice` is the
    /// root; None for a name that is not a valid slice.
    pub(crate) fn expand_slice(name: &str) -> Option<String> {
        let base = name.strip_suffix(".slice")?;
        if name.contains('/') {
            return None;
        }
        if base == "-" {
            return Some("/".into());
        }
        if base.is_empty() || base.starts_with('-') || base.ends_with('-') || base.contains("--") {
            return None;
        }
        let mut path = String::new();
        let mut prefix = String::new();
        for part in base.split('-') {
            prefix.push_str(part);
            path.push('/');
            path.push_str(&prefix);
            path.push_str(".slice");
            prefix.push('-');
        }
        Some(path)
    }

    /// systemd's root cgroup as PID 1 sees it (runc reads `/proc/1/cgroup` likewise): the path
    /// of its `name=systemd` (or unified) hierarchy without `/init.scope`.
    pub(crate) fn root() -> String {
        skiff_systemd_root::root()
    }

    /// The cgroupfs path of a sandbox whose cgroup parent is `parent`, a slice given as its
    /// name (`kubepods-burstable-pod<uid>.slice`) or its path (`/kubepods.slice/.../<name>`,
    /// the kubelet's form): None when it is not a slice.
    pub(crate) fn parent_path(parent: &str, root: &str) -> Option<String> {
        let name = parent.trim_end_matches('/').rsplit('/').next()?;
        let expanded = expand_slice(name)?;
        Some(format!("{}{}", root.trim_end_matches('/'), expanded).replace("//", "/"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slices_expand_as_runc() {
            assert_eq!(expand_slice("-.slice").as_deref(), Some("/"));
            assert_eq!(
                expand_slice("kubepods-burstable-pod12_34.slice").as_deref(),
                Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice")
            );
            assert_eq!(expand_slice("a--b.slice"), None);
            assert_eq!(expand_slice("a.scope"), None);
            assert_eq!(
                parent_path("/kubepods.slice/kubepods-pod1.slice", "").as_deref(),
                Some("/kubepods.slice/kubepods-pod1.slice")
            );
            assert_eq!(
                parent_path("kubepods-pod1.slice", "/box").as_deref(),
                Some("/box/kubepods.slice/kubepods-pod1.slice")
            );
            assert_eq!(parent_path("/kubepods/pod1", ""), None);
            assert_eq!(
                skiff_systemd_root::root_of(
                    "9:name=systemd:/init.scope\n4:memory:/x\n0::/init.scope\n"
                ),
                ""
            );
            assert_eq!(
                skiff_systemd_root::root_of("1:name=systemd:/skbox1/init.scope\n"),
                "/skbox1"
            );
            assert_eq!(skiff_systemd_root::root_of("0::/\n"), "");
            assert_eq!(scope_name("abc"), "cri-skiff-abc.scope");
        }
    }
}

/// Creates `path` in every pod controller that is mounted and moves `pid` into it.
pub(crate) fn enter(path: &str, pid: i32) -> std::io::Result<()> {
    for c in POD_CONTROLLERS {
        if !PathBuf::from(ROOT).join(c).is_dir() {
            continue;
        }
        let dir = PathBuf::from(ROOT)
            .join(c)
            .join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{}: {e}", dir.join("cgroup.procs").display()),
            )
        })?;
    }
    Ok(())
}

/// Removes `path` from every pod controller (it must be empty); missing dirs are fine.
pub(crate) fn remove(path: &str) {
    for c in POD_CONTROLLERS {
        let dir = PathBuf::from(ROOT)
            .join(c)
            .join(path.trim_start_matches('/'));
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing sandbox cgroup"),
        }
    }
}

fn write(controller: &str, path: &str, name: &str, value: &str) -> std::io::Result<()> {
    let f = file(controller, path, name);
    std::fs::write(&f, value).map_err(|e| {
        std::io::Error::new(e.kind(), format!("writing {value} to {}: {e}", f.display()))
    })
}

/// Writes new limits straight into the container's cgroup v1 files (memory, cpu, cpuset).
pub(crate) fn apply_limits(
    path: &str,
    r: &skiff_proto::cri::LinuxContainerResources,
) -> std::io::Result<()> {
    if r.memory_limit_in_bytes > 0 {
        let limit = r.memory_limit_in_bytes.to_string();
        let memsw = file("memory", path, "memory.memsw.limit_in_bytes");
        let swap =
            (r.memory_swap_limit_in_bytes > 0).then(|| r.memory_swap_limit_in_bytes.to_string());
        // memsw must stay >= the limit: raise it first when growing, lower it after shrinking.
        if let (Some(sw), true) = (&swap, memsw.exists()) {
            if write("memory", path, "memory.memsw.limit_in_bytes", sw).is_err() {
                write("memory", path, "memory.limit_in_bytes", &limit)?;
                write("memory", path, "memory.memsw.limit_in_bytes", sw)?;
            } else {
                write("memory", path, "memory.limit_in_bytes", &limit)?;
            }
        } else if write("memory", path, "memory.limit_in_bytes", &limit).is_err() && memsw.exists()
        {
            // Growing past the current memsw limit: lift memsw with it.
            write("memory", path, "memory.memsw.limit_in_bytes", &limit)?;
            write("memory", path, "memory.limit_in_bytes", &limit)?;
        }
    }
    if r.cpu_shares > 0 {
        write("cpu", path, "cpu.shares", &r.cpu_shares.to_string())?;
    }
    if r.cpu_period > 0 {
        write("cpu", path, "cpu.cfs_period_us", &r.cpu_period.to_string())?;
    }
    if r.cpu_quota != 0 {
        write("cpu", path, "cpu.cfs_quota_us", &r.cpu_quota.to_string())?;
    }
    if !r.cpuset_cpus.is_empty() {
        write("cpuset", path, "cpuset.cpus", &r.cpuset_cpus)?;
    }
    if !r.cpuset_mems.is_empty() {
        write("cpuset", path, "cpuset.mems", &r.cpuset_mems)?;
    }
    Ok(())
}

/// What this host's cgroups offer for the container resources a kubelet may send, probed once,
/// the way containerd's CRI plugin probes it (`SwapControllerAvailable`,
/// `isHugetlbControllerPresent`, `IsCgroup2UnifiedMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Features {
    /// `/sys/fs/cgroup` is a cgroup2 mount (the unified hierarchy alone).
    pub unified: bool,
    /// Swap accounting: `memory.memsw.limit_in_bytes` on v1, `memory.swap.max` in our own
    /// cgroup on v2.
    pub swap: bool,
    /// The hugetlb controller: a v1 `cgroup` mount of it (containerd only lists
    /// `/sys/fs/cgroup/hugetlb`, which may be an empty directory of the tmpfs), listed in the
    /// root's `cgroup.controllers` on v2 (a hybrid host's v2 mount does not count).
    pub hugetlb: bool,
}

pub(crate) fn features() -> Features {
    static FEATURES: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
    *FEATURES.get_or_init(|| {
        let unified = nix::sys::statfs::statfs(ROOT)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        let (swap, hugetlb) = if unified {
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
                })
                .unwrap_or_default();
            let swap = PathBuf::from(ROOT)
                .join(own.trim_start_matches('/'))
                .join("memory.swap.max")
                .exists();
            let hugetlb = std::fs::read_to_string(PathBuf::from(ROOT).join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|w| w == "hugetlb"));
            (swap, hugetlb)
        } else {
            (
                file("memory", "", "memory.memsw.limit_in_bytes").exists(),
                v1_mounted("hugetlb"),
            )
        };
        let f = Features {
            unified,
            swap,
            hugetlb,
        };
        tracing::debug!(?f, "cgroup features");
        f
    })
}

/// Whether a cgroup v1 hierarchy with `controller` is mounted (`/proc/self/mountinfo`).
fn v1_mounted(controller: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            let Some((_, fs)) = l.split_once(" - ") else {
                return false;
            };
            let mut f = fs.split_whitespace();
            f.next() == Some("cgroup")
                && f.nth(1)
                    .is_some_and(|opts| opts.split(',').any(|o| o == controller))
        })
    })
}

/// The resources as they apply on a host with `f`, as containerd maps them into the OCI spec
/// (CreateContainer and UpdateContainerResources alike): with swap accounting, a memory limit
/// without a swap limit gets swap = the limit (no swapping by default) and a swap limit is kept
/// (OCI `memory.swap` is memory + swap; the runtime turns it into v2's `memory.swap.max`),
/// without it the swap limit is dropped; hugepage limits only when the hugetlb controller
/// exists (else skipped with a warning, containerd's default
/// `tolerate_missing_hugetlb_controller`); `unified` only on a cgroup v2 host (a v1 runtime
/// refuses it).
pub(crate) fn effective_resources(
    r: &skiff_proto::cri::LinuxContainerResources,
    f: Features,
) -> skiff_proto::cri::LinuxContainerResources {
    let mut out = r.clone();
    if !f.swap {
        out.memory_swap_limit_in_bytes = 0;
    } else if r.memory_limit_in_bytes > 0 && r.memory_swap_limit_in_bytes == 0 {
        out.memory_swap_limit_in_bytes = r.memory_limit_in_bytes;
    }
    if !f.hugetlb && !r.hugepage_limits.is_empty() {
        tracing::warn!("hugetlb cgroup controller is absent: skipping huge pages limits");
        out.hugepage_limits.clear();
    }
    if !f.unified && !r.unified.is_empty() {
        tracing::warn!(
            keys = ?r.unified.keys().collect::<Vec<_>>(),
            "unified (cgroup v2) resources given on a cgroup v1 host: skipped"
        );
        out.unified.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::cri::{HugepageLimit, LinuxContainerResources};

    fn res() -> LinuxContainerResources {
        LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "50000000".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn v1_with_swap_accounting_no_hugetlb() {
        let f = Features {
            unified: false,
            swap: true,
            hugetlb: false,
        };
        let e = effective_resources(&res(), f);
        assert_eq!(e.memory_swap_limit_in_bytes, 64 << 20);
        assert!(e.hugepage_limits.is_empty());
        assert!(e.unified.is_empty());
        let mut r = res();
        r.memory_swap_limit_in_bytes = 128 << 20;
        assert_eq!(
            effective_resources(&r, f).memory_swap_limit_in_bytes,
            128 << 20
        );
    }

    #[test]
    fn v2_with_hugetlb_without_swap() {
        let f = Features {
            unified: true,
            swap: false,
            hugetlb: true,
        };
        let mut r = res();
        r.memory_swap_limit_in_bytes = 128 << 20;
        let e = effective_resources(&r, f);
        assert_eq!(e.memory_swap_limit_in_bytes, 0);
        assert_eq!(e.hugepage_limits.len(), 1);
        assert_eq!(e.unified.len(), 1);
    }
}
