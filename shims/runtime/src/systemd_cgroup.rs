//! runc's `--systemd-cgroup` path form on a cgroup v1 host. With the flag, `linux.cgroupsPath`
//! is `slice:prefix:name` (containerd with `SystemdCgroup = true` writes
//! `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`). libcontainer's v1 manager does not
//! take that form (its systemd manager is v2 only and not built in), so `create` turns it into
//! the cgroupfs path systemd itself would use: the slice's expansion below systemd's root cgroup
//! and the unit `<prefix>-<name>.scope` (`/kubepods.slice/kubepods-burstable.slice/
//! kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`), and runs the v1 manager on it.
//! The scope is not registered with systemd as a unit.

/// systemd's expansion of a slice name into its path (`a-b.slice` -> `/a.slice/a-b.slice`).
pub fn expand_slice(slice: &str) -> Option<String> {
    let base = slice.strip_suffix(".slice")?;
    if base == "-" {
        return Some(String::new());
    }
    if base.is_empty() || slice.contains('/') || base.split('-').any(str::is_empty) {
        return None;
    }
    let mut out = String::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push('/');
        out.push_str(&prefix);
        out.push_str(".slice");
    }
    Some(out)
}

/// The cgroupfs path of a `slice:prefix:name` cgroups path below systemd's `root` (runc's
/// rules: an empty slice is `system.slice`; a name that is itself a slice is used as is).
/// None when the path is not in that form.
pub fn to_cgroupfs(path: &str, root: &str) -> Option<String> {
    let mut it = path.split(':');
    let (slice, prefix, name) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || name.is_empty() {
        return None;
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Some(format!(
        "{}{}/{unit}",
        root.trim_end_matches('/'),
        expand_slice(slice)?
    ))
}

/// systemd's root cgroup, as runc finds it.
pub fn root() -> String {
    skiff_systemd_root::root()
}

/// Whether the host's `/sys/fs/cgroup` is cgroup v1 (legacy or hybrid).
pub fn host_is_v1() -> bool {
    !matches!(
        nix::sys::statfs::statfs("/sys/fs/cgroup"),
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_forms() {
        assert_eq!(
            to_cgroupfs("kubepods-burstable-pod1_2.slice:cri-containerd:abc", "").as_deref(),
            Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice/cri-containerd-abc.scope")
        );
        assert_eq!(
            to_cgroupfs(":runc:x", "/box").as_deref(),
            Some("/box/system.slice/runc-x.scope")
        );
        assert_eq!(to_cgroupfs("-.slice::x", "").as_deref(), Some("/x.scope"));
        assert_eq!(to_cgroupfs("/kubepods/pod1/abc", ""), None);
        assert_eq!(to_cgroupfs("bad--x.slice:p:n", ""), None);
    }
}
