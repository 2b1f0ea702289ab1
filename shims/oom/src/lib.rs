//! OOM kills of a container (used by skiff-monitor for exit reasons and by `skiff-runtime events`): the kernel's `oom_kill` counter of its memory cgroup (cgroup v1
//! `memory.oom_control`, v2 `memory.events`), read when `create` returned and again when the
//! init exited. The cgroup is the init's, from `/proc/<pid>/cgroup`.

use std::path::{Path, PathBuf};

/// The file holding the `oom_kill` counter of `pid`'s memory cgroup, if it has one.
pub fn counter_file(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    counter_file_from(&text, Path::new("/sys/fs/cgroup"))
}

fn counter_file_from(proc_cgroup: &str, root: &Path) -> Option<PathBuf> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if ctrls.split(',').any(|c| c == "memory") {
            return Some(root.join("memory").join(rel).join("memory.oom_control"));
        }
        if id == "0" && ctrls.is_empty() {
            v2 = Some(root.join(rel).join("memory.events"));
        }
    }
    // Only a pure v2 host has the memory controller in the unified hierarchy at the root.
    v2.filter(|p| p.exists())
}

/// The `oom_kill` count in a `memory.oom_control` / `memory.events` file (0 when unreadable).
pub fn kills(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_memory_hierarchy_wins() {
        let text = "12:memory:/skp/ct1\n4:cpu,cpuacct:/skp/ct1\n0::/skp/ct1\n";
        assert_eq!(
            counter_file_from(text, Path::new("/sys/fs/cgroup")),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/skp/ct1/memory.oom_control"
            ))
        );
    }

    #[test]
    fn counter_is_parsed() {
        let dir = std::env::temp_dir().join(format!("sk-oom-{}", std::process::id()));
        std::fs::write(&dir, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(kills(&dir), 3);
        std::fs::remove_file(&dir).unwrap();
    }
}
