//! systemd's root cgroup as runc finds it: the path of PID 1's `name=systemd` hierarchy (or the
//! unified one) in `/proc/1/cgroup`, without `/init.scope`. The systemd cgroup driver's slices
//! live below it in every hierarchy. Shared by the kubelet, the CRI server and skiff-runtime.

/// systemd's root cgroup on this host (empty for the hierarchy's root).
pub fn root() -> String {
    let text = std::fs::read_to_string("/proc/1/cgroup").unwrap_or_default();
    root_of(&text)
}

/// The same from the text of a `/proc/<pid>/cgroup` file.
pub fn root_of(proc_cgroup: &str) -> String {
    let find = |want: &dyn Fn(&str) -> bool| {
        proc_cgroup.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctl, path) = (it.next()?, it.next()?, it.next()?);
            want(ctl).then(|| path.to_string())
        })
    };
    let path = find(&|c| c == "name=systemd")
        .or_else(|| find(&|c| c.is_empty()))
        .unwrap_or_default();
    let path = path.strip_suffix("/init.scope").unwrap_or(&path);
    path.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::root_of;

    #[test]
    fn strips_init_scope_and_prefers_name_systemd() {
        assert_eq!(root_of("9:name=systemd:/init.scope\n0::/init.scope\n"), "");
        assert_eq!(root_of("1:name=systemd:/box/init.scope\n"), "/box");
        assert_eq!(root_of("0::/\n"), "");
        assert_eq!(
            root_of("0::/u/init.scope\n1:name=systemd:/s/init.scope\n"),
            "/s"
        );
    }
}
