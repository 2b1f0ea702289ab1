//! User namespaces of pods (`NamespaceOption.userns_options`, a kubelet's `hostUsers: false`)
//! and idmapped CRI mounts (`Mount.uidMappings`/`gidMappings`): the checks, all InvalidArgument
//! naming the problem before anything is made. The syscalls are in `crate::userns`.
//!
//! As containerd 2.x: mode POD needs exactly one uid and one gid mapping line (the rootfs is
//! idmapped with them), NODE takes none, CONTAINER and TARGET are not modes of user namespaces.
//! A mount's own mappings may have several lines, none overlapping another on either side.

use serde::{Deserialize, Serialize};
use skiff_proto::cri;

use crate::error::{CriError, Result};

/// The mappings of a pod's user namespace (container id -> host id), kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodUserns {
    pub uids: Vec<cri::IdMapping>,
    pub gids: Vec<cri::IdMapping>,
}

fn bad(msg: String) -> CriError {
    CriError::InvalidArgument(msg)
}

fn mode_name(mode: i32) -> String {
    cri::NamespaceMode::try_from(mode)
        .map(|m| m.as_str_name().to_string())
        .unwrap_or_else(|_| mode.to_string())
}

/// Each line has a length, stays within 32-bit ids, and no two lines overlap on the container
/// side or the host side (the kernel refuses both). `what` names the list in errors.
pub(crate) fn check_ranges(what: &str, maps: &[cri::IdMapping]) -> Result<()> {
    for (i, m) in maps.iter().enumerate() {
        if m.length == 0 {
            return Err(bad(format!("{what} {i}: length 0")));
        }
        for (side, start) in [("container", m.container_id), ("host", m.host_id)] {
            if u64::from(start) + u64::from(m.length) > 1 << 32 {
                return Err(bad(format!(
                    "{what} {i}: {side} ids {start}+{} go past 4294967295",
                    m.length
                )));
            }
        }
    }
    for (i, a) in maps.iter().enumerate() {
        for (j, b) in maps.iter().enumerate().skip(i + 1) {
            for (side, sa, sb) in [
                ("container", a.container_id, b.container_id),
                ("host", a.host_id, b.host_id),
            ] {
                let (ea, eb) = (
                    u64::from(sa) + u64::from(a.length),
                    u64::from(sb) + u64::from(b.length),
                );
                if u64::from(sa) < eb && u64::from(sb) < ea {
                    return Err(bad(format!(
                        "{what} {i} and {j} overlap: {side} ids {sa}-{} and {sb}-{}",
                        ea - 1,
                        eb - 1
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The user namespace asked for by `opts`: None for the host's (no options, or mode NODE).
pub(crate) fn parse(opts: Option<&cri::UserNamespace>) -> Result<Option<PodUserns>> {
    let Some(u) = opts else { return Ok(None) };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(bad(format!(
                    "user namespace mode NODE cannot have mappings: got {} uid and {} gid mappings",
                    u.uids.len(),
                    u.gids.len()
                )));
            }
            Ok(None)
        }
        Ok(cri::NamespaceMode::Pod) => {
            for (what, maps) in [("uid", &u.uids), ("gid", &u.gids)] {
                if maps.is_empty() {
                    return Err(bad(format!(
                        "user namespace mode POD needs uid and gid mappings: no {what} mapping"
                    )));
                }
                if maps.len() > 1 {
                    return Err(bad(format!(
                        "user namespace {what} mappings: only one mapping line is supported, got {}",
                        maps.len()
                    )));
                }
                check_ranges(&format!("user namespace {what} mapping"), maps)?;
            }
            Ok(Some(PodUserns {
                uids: u.uids.clone(),
                gids: u.gids.clone(),
            }))
        }
        _ => Err(bad(format!(
            "user namespace mode {} is not supported (only POD and NODE)",
            mode_name(u.mode)
        ))),
    }
}

/// The sandbox's user namespace from its config; refused with host network, PID or IPC (the
/// kubelet forbids `hostUsers: false` with those) and on a handler that cannot run it.
pub(crate) fn for_sandbox(
    config: &cri::PodSandboxConfig,
    handler_supports: bool,
    handler: &str,
) -> Result<Option<PodUserns>> {
    let ns = super::sandbox_run::namespace_options(config);
    let Some(userns) = parse(ns.userns_options.as_ref())? else {
        return Ok(None);
    };
    for (kind, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if mode == cri::NamespaceMode::Node as i32 {
            return Err(bad(format!(
                "namespace options: a user namespace (mode POD) cannot be combined with the host's {kind} namespace"
            )));
        }
    }
    let privileged = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged {
        return Err(bad(
            "security context: a privileged sandbox cannot have a user namespace".into(),
        ));
    }
    if !handler_supports {
        return Err(bad(format!(
            "runtime handler {handler:?} does not support user namespaces"
        )));
    }
    Ok(Some(userns))
}

/// A container's own `userns_options` must agree with its sandbox's (the kubelet sends the
/// pod's to both); none means the sandbox's.
pub(crate) fn check_container(
    sandbox: Option<&PodUserns>,
    sandbox_id: &str,
    opts: Option<&cri::UserNamespace>,
) -> Result<()> {
    let Some(o) = opts else { return Ok(()) };
    let own = parse(Some(o))?;
    match (own, sandbox) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(bad(format!(
            "namespace options: container user namespace mode POD, but sandbox {sandbox_id} has no user namespace"
        ))),
        (None, Some(_)) => Err(bad(format!(
            "namespace options: container user namespace mode NODE, but sandbox {sandbox_id} has a user namespace"
        ))),
        (Some(own), Some(sb)) if &own != sb => Err(bad(format!(
            "namespace options: the container's user namespace mappings ({}) differ from sandbox {sandbox_id}'s ({})",
            describe(&own),
            describe(sb)
        ))),
        _ => Ok(()),
    }
}

fn describe(u: &PodUserns) -> String {
    let one = |m: &[cri::IdMapping]| {
        m.iter()
            .map(|m| format!("{}:{}:{}", m.container_id, m.host_id, m.length))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!("uids {} gids {}", one(&u.uids), one(&u.gids))
}

/// Whether CRI mount `m` is to be idmapped (it gives mappings), after checking them: both
/// lists together, valid ranges, a bind of an existing host path.
pub(crate) fn mount_is_idmapped(m: &cri::Mount) -> Result<bool> {
    match (m.uid_mappings.is_empty(), m.gid_mappings.is_empty()) {
        (true, true) => Ok(false),
        (false, false) => {
            check_ranges(
                &format!("mount {} uid mapping", m.container_path),
                &m.uid_mappings,
            )?;
            check_ranges(
                &format!("mount {} gid mapping", m.container_path),
                &m.gid_mappings,
            )?;
            Ok(true)
        }
        _ => Err(bad(format!(
            "mount {}: uid and gid mappings go together (got {} uid and {} gid mappings)",
            m.container_path,
            m.uid_mappings.len(),
            m.gid_mappings.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(c: u32, h: u32, l: u32) -> cri::IdMapping {
        cri::IdMapping {
            container_id: c,
            host_id: h,
            length: l,
        }
    }

    fn opts(mode: cri::NamespaceMode, u: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: mode as i32,
            uids: u.clone(),
            gids: u,
        }
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(CriError::InvalidArgument(m)) => m,
            other => panic!("not InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn modes() {
        assert!(parse(None).unwrap().is_none());
        let node = opts(cri::NamespaceMode::Node, vec![]);
        assert!(parse(Some(&node)).unwrap().is_none());
        let pod = opts(cri::NamespaceMode::Pod, vec![map(0, 100000, 65536)]);
        assert_eq!(parse(Some(&pod)).unwrap().unwrap().uids.len(), 1);
        let m = err(parse(Some(&opts(
            cri::NamespaceMode::Node,
            vec![map(0, 100000, 65536)],
        ))));
        assert!(m.contains("mode NODE cannot have mappings"), "{m}");
        let m = err(parse(Some(&opts(cri::NamespaceMode::Pod, vec![]))));
        assert!(m.contains("needs uid and gid mappings"), "{m}");
        let m = err(parse(Some(&opts(cri::NamespaceMode::Container, vec![]))));
        assert!(m.contains("CONTAINER is not supported"), "{m}");
        let m = err(parse(Some(&opts(
            cri::NamespaceMode::Pod,
            vec![map(0, 100000, 1000), map(1000, 300000, 1000)],
        ))));
        assert!(m.contains("only one mapping line"), "{m}");
    }

    #[test]
    fn ranges() {
        check_ranges("x", &[map(0, 100000, 1000), map(1000, 200000, 1000)]).unwrap();
        let m = err(check_ranges(
            "x",
            &[map(0, 100000, 1000), map(500, 200000, 10)],
        ));
        assert!(
            m.contains("overlap: container ids 0-999 and 500-509"),
            "{m}"
        );
        let m = err(check_ranges(
            "x",
            &[map(0, 100000, 1000), map(5000, 100999, 10)],
        ));
        assert!(m.contains("overlap: host ids"), "{m}");
        let m = err(check_ranges("x", &[map(0, 100000, 0)]));
        assert!(m.contains("length 0"), "{m}");
        let m = err(check_ranges("x", &[map(0, u32::MAX, 2)]));
        assert!(m.contains("go past"), "{m}");
    }
}
