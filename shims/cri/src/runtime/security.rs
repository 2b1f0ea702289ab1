//! Security contexts of containers: capabilities resolved against the CRI server's own bounding
//! set (the capabilities this host allows), host devices for privileged containers, and the
//! checks that refuse a bad security context before anything is made.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::OnceLock;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};
use skiff_proto::cri;

use crate::error::{CriError, Result};

/// Capability names by bit number (linux/capability.h), without the `CAP_` prefix.
pub(crate) const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// containerd's default capability set for Kubernetes containers.
pub(crate) const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `CapBnd` of a `/proc/<pid>/status` text.
pub(crate) fn parse_cap_bnd(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The capabilities this process may hand out: its bounding set (read once). A container can
/// get nothing outside it (capset fails with EPERM), as containerd's `cap.Current()`.
pub(crate) fn bounding_set() -> u64 {
    static SET: OnceLock<u64> = OnceLock::new();
    *SET.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        parse_cap_bnd(&status).unwrap_or_else(|| {
            tracing::warn!("no CapBnd in /proc/self/status; assuming the default set only");
            names_to_mask(DEFAULT_CAPS)
        })
    })
}

fn names_to_mask(names: &[&str]) -> u64 {
    names
        .iter()
        .filter_map(|n| cap_bit(n))
        .fold(0, |m, b| m | (1 << b))
}

/// Bit number of a capability name (`CAP_` prefix and case optional).
pub(crate) fn cap_bit(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    CAP_NAMES.iter().position(|c| *c == n).map(|b| b as u32)
}

/// Names (without `CAP_`) of the bits of `mask`.
pub(crate) fn mask_names(mask: u64) -> BTreeSet<&'static str> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(b, _)| mask & (1 << b) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The capability mask of a container, containerd's rules: privileged gets all of `bounding`;
/// otherwise the default set, then `ALL` added (= `bounding`), then `ALL` dropped (= none),
/// then single adds, then single drops. A name we do not know, or one outside `bounding`, is
/// InvalidArgument.
pub(crate) fn resolve_caps(
    privileged: bool,
    caps: Option<&cri::Capability>,
    bounding: u64,
) -> Result<u64> {
    if privileged {
        return Ok(bounding);
    }
    let mut set = names_to_mask(DEFAULT_CAPS) & bounding;
    let Some(c) = caps else {
        return Ok(set);
    };
    let is_all = |n: &String| n.trim().eq_ignore_ascii_case("ALL");
    let bit = |n: &String, verb: &str| -> Result<u32> {
        cap_bit(n).ok_or_else(|| {
            CriError::InvalidArgument(format!(
                "{verb} capability {n:?}: not a Linux capability name"
            ))
        })
    };
    if c.add_capabilities.iter().any(is_all) {
        set = bounding;
    }
    if c.drop_capabilities.iter().any(is_all) {
        set = 0;
    }
    for n in c.add_capabilities.iter().filter(|n| !is_all(n)) {
        let b = bit(n, "add")?;
        if bounding & (1 << b) == 0 {
            return Err(CriError::InvalidArgument(format!(
                "add capability {n:?}: not in the CRI server's bounding set (this host does not allow it)"
            )));
        }
        set |= 1 << b;
    }
    for n in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
        set &= !(1 << bit(n, "drop")?);
    }
    Ok(set)
}

/// Every char and block device under `/dev` (not pts, shm, mqueue, fd, console), for
/// privileged containers, as runc's `HostDevices`.
pub(crate) fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk_devices(Path::new("/dev"), &mut out);
    out
}

fn walk_devices(dir: &Path, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_dir() {
            let name = entry.file_name();
            if !matches!(
                name.to_str(),
                Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")
            ) {
                walk_devices(&path, out);
            }
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if path == Path::new("/dev/console") {
            continue;
        }
        let rdev = md.rdev();
        let dev = LinuxDeviceBuilder::default()
            .path(path.clone())
            .typ(typ)
            .major(nix::sys::stat::major(rdev) as i64)
            .minor(nix::sys::stat::minor(rdev) as i64)
            .file_mode(md.mode() & 0o7777)
            .uid(md.uid())
            .gid(md.gid())
            .build();
        match dev {
            Ok(d) => out.push(d),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping host device"),
        }
    }
}

/// Refuses a security context that cannot work, before anything is made: a group without a
/// user, a user name the image lacks (`passwd` is the image's /etc/passwd, if any), namespace
/// options that contradict each other or the pod's.
pub(crate) fn validate(
    sc: &cri::LinuxContainerSecurityContext,
    pod_ns: &cri::NamespaceOption,
    passwd: Option<&str>,
) -> Result<()> {
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(CriError::InvalidArgument(
            "security context: run_as_group is set without run_as_user or run_as_username".into(),
        ));
    }
    if sc.run_as_user.is_some() && !sc.run_as_username.is_empty() {
        return Err(CriError::InvalidArgument(format!(
            "security context: both run_as_user and run_as_username ({:?}) are set",
            sc.run_as_username
        )));
    }
    if !sc.run_as_username.is_empty() {
        let known = passwd.is_some_and(|p| {
            p.lines()
                .any(|l| l.split(':').next() == Some(sc.run_as_username.as_str()))
        });
        if !known {
            return Err(CriError::InvalidArgument(format!(
                "security context: run_as_username {:?} is not in the image's /etc/passwd",
                sc.run_as_username
            )));
        }
    }
    if let Some(ns) = &sc.namespace_options {
        validate_namespaces(ns, pod_ns)?;
    }
    Ok(())
}

fn mode_name(m: i32) -> String {
    cri::NamespaceMode::try_from(m)
        .map(|m| m.as_str_name().to_string())
        .unwrap_or_else(|_| format!("mode {m}"))
}

/// Container namespace options against the pod's: network and IPC are the pod's (a container
/// cannot pick another), TARGET is only for pid and needs a target id, a target id needs TARGET.
pub(crate) fn validate_namespaces(
    ns: &cri::NamespaceOption,
    pod: &cri::NamespaceOption,
) -> Result<()> {
    let target = cri::NamespaceMode::Target as i32;
    for (what, ct, pd) in [
        ("network", ns.network, pod.network),
        ("ipc", ns.ipc, pod.ipc),
    ] {
        if ct == target {
            return Err(CriError::InvalidArgument(format!(
                "namespace options: {what} mode TARGET is only valid for pid"
            )));
        }
        if ct != pd {
            return Err(CriError::InvalidArgument(format!(
                "namespace options: container {what} mode {} conflicts with the pod's {}",
                mode_name(ct),
                mode_name(pd)
            )));
        }
    }
    if ns.pid == target && ns.target_id.is_empty() {
        return Err(CriError::InvalidArgument(
            "namespace options: pid mode TARGET needs a target_id".into(),
        ));
    }
    if ns.pid != target && !ns.target_id.is_empty() {
        return Err(CriError::InvalidArgument(format!(
            "namespace options: target_id {:?} is set but pid mode is {}, not TARGET",
            ns.target_id,
            mode_name(ns.pid)
        )));
    }
    if pod.pid == cri::NamespaceMode::Node as i32 && ns.pid != pod.pid {
        return Err(CriError::InvalidArgument(format!(
            "namespace options: container pid mode {} conflicts with the pod's NODE",
            mode_name(ns.pid)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> cri::Capability {
        cri::Capability {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn caps_all_resolve_against_bounding() {
        let bnd = 0x1fffeffffff_u64; // this host: all but SYS_RESOURCE
        assert_eq!(resolve_caps(true, None, bnd).unwrap(), bnd);
        assert_eq!(
            resolve_caps(false, Some(&caps(&["ALL"], &[])), bnd).unwrap(),
            bnd
        );
        let none_plus = resolve_caps(false, Some(&caps(&["NET_ADMIN"], &["ALL"])), bnd).unwrap();
        assert_eq!(none_plus, 1 << 12);
        let all_but = resolve_caps(false, Some(&caps(&["ALL"], &["CAP_CHOWN"])), bnd).unwrap();
        assert_eq!(all_but, bnd & !1);
        let e = resolve_caps(false, Some(&caps(&["SYS_RESOURCE"], &[])), bnd).unwrap_err();
        assert!(e.to_string().contains("SYS_RESOURCE"), "{e}");
        let e = resolve_caps(false, Some(&caps(&["NOPE"], &[])), bnd).unwrap_err();
        assert!(e.to_string().contains("NOPE"), "{e}");
    }

    #[test]
    fn cap_names_and_bits() {
        assert_eq!(cap_bit("cap_sys_admin"), Some(21));
        assert_eq!(cap_bit("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(
            parse_cap_bnd("CapInh:\t0\nCapBnd:\t000001fffeffffff\n"),
            Some(0x1fffeffffff)
        );
        assert_eq!(
            mask_names(0b101).into_iter().collect::<Vec<_>>(),
            ["CHOWN", "DAC_READ_SEARCH"]
        );
    }

    #[test]
    fn bad_contexts_are_refused() {
        let pod = cri::NamespaceOption::default();
        let sc = cri::LinuxContainerSecurityContext {
            run_as_group: Some(cri::Int64Value { value: 5 }),
            ..Default::default()
        };
        let e = validate(&sc, &pod, None).unwrap_err().to_string();
        assert!(e.contains("run_as_group"), "{e}");
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "skghost".into(),
            ..Default::default()
        };
        let e = validate(&sc, &pod, Some("root:x:0:0::/:/bin/sh\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("skghost") && e.contains("/etc/passwd"), "{e}");
        let sc = cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = validate(&sc, &pod, None).unwrap_err().to_string();
        assert!(e.contains("network") && e.contains("NODE"), "{e}");
        let sc = cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Target as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate(&sc, &pod, None).is_err());
    }
}
