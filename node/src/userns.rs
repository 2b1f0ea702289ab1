//! User namespaces for pods with `hostUsers: false`, as upstream's userns manager
//! (`pkg/kubelet/userns`): each such pod gets 65536 host ids of its own (container ids 0-65535
//! map to `65536 * n ...`), kept in `<root>/pods/<uid>/userns` so a restarted kubelet gives the
//! pod the same range; ranges in use by other pods' files are skipped. The range goes to the CRI
//! as `NamespaceOption.userns_options` mode POD on the sandbox and every container.
//! Blocking (small file reads and writes).

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use skiff_proto::cri;

/// Ids per pod (upstream's `userNsLength`).
pub const LENGTH: u32 = 65536;
/// How many pod ranges the node hands out (host ids 65536 .. 65536 * (1 + RANGES)).
const RANGES: u32 = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Mapping {
    #[serde(rename = "hostId")]
    host_id: u32,
    #[serde(rename = "containerId")]
    container_id: u32,
    length: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(rename = "uidMappings")]
    uid_mappings: Vec<Mapping>,
    #[serde(rename = "gidMappings")]
    gid_mappings: Vec<Mapping>,
}

/// Whether the pod asks for its own user namespace (`hostUsers: false`).
pub fn wants_userns(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_users) == Some(false)
}

fn read_base(file: &Path) -> Option<u32> {
    let r: Record = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    r.uid_mappings.first().map(|m| m.host_id)
}

/// The pod's user namespace (allocated and recorded on first use), or None with `hostUsers`
/// unset or true. `pods_dir` is `<root>/pods`.
pub fn for_pod(pods_dir: &Path, pod: &Pod) -> std::io::Result<Option<cri::UserNamespace>> {
    if !wants_userns(pod) {
        return Ok(None);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let file = pods_dir.join(&uid).join("userns");
    let base = match read_base(&file) {
        Some(b) => b,
        None => {
            let mut used = std::collections::HashSet::new();
            if let Ok(rd) = std::fs::read_dir(pods_dir) {
                for e in rd.flatten() {
                    if let Some(b) = read_base(&e.path().join("userns")) {
                        used.insert(b);
                    }
                }
            }
            let base = (1..=RANGES)
                .map(|n| n * LENGTH)
                .find(|b| !used.contains(b))
                .ok_or_else(|| std::io::Error::other("no free user namespace range on the node"))?;
            let m = || {
                vec![Mapping {
                    host_id: base,
                    container_id: 0,
                    length: LENGTH,
                }]
            };
            let rec = Record {
                uid_mappings: m(),
                gid_mappings: m(),
            };
            std::fs::create_dir_all(pods_dir.join(&uid))?;
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&rec)?)?;
            std::fs::rename(&tmp, &file)?;
            base
        }
    };
    let map = cri::IdMapping {
        host_id: base,
        container_id: 0,
        length: LENGTH,
    };
    Ok(Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        uids: vec![map],
        gids: vec![map],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, host_users: Option<bool>) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            host_users,
            ..Default::default()
        });
        p
    }

    #[test]
    fn ranges_are_per_pod_and_kept() {
        let d = tempfile::tempdir().unwrap();
        assert!(for_pod(d.path(), &pod("a", None)).unwrap().is_none());
        let a = for_pod(d.path(), &pod("a", Some(false))).unwrap().unwrap();
        let b = for_pod(d.path(), &pod("b", Some(false))).unwrap().unwrap();
        assert_ne!(a.uids[0].host_id, b.uids[0].host_id);
        assert_eq!(a.uids[0].length, LENGTH);
        let again = for_pod(d.path(), &pod("a", Some(false))).unwrap().unwrap();
        assert_eq!(again.uids[0].host_id, a.uids[0].host_id);
    }
}
