//! Static pods: every pod manifest (YAML or JSON, a Pod or a List of Pods) in the manifest folder
//! (`--pod-manifest-path`, `staticPodPath`) runs on this node without the API server, as
//! upstream's file source (`pkg/kubelet/config/file.go`) and mirror client
//! (`pkg/kubelet/pod/mirror_client.go`).
//!
//! - The folder is re-read every [`FILE_CHECK`]; files starting with `.` are skipped. A pod's
//!   uid is a hash of the file's content, the node name and the path (an edit is a new pod: the
//!   old one stops, the new one starts), its name gets `-<nodeName>`, `spec.nodeName` is set,
//!   and it carries `kubernetes.io/config.hash` (= uid), `kubernetes.io/config.source: file`
//!   and `kubernetes.io/config.seen`.
//! - Each static pod gets a *mirror pod* in the API: the same pod with
//!   `kubernetes.io/config.mirror: <hash>` and an owner reference to the Node. Its status is the
//!   static pod's. A mirror pod that is deleted, or whose hash no longer matches, is (re)created;
//!   changing it through the API changes nothing on the node.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::Client;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub const MIRROR: &str = "kubernetes.io/config.mirror";
pub const HASH: &str = "kubernetes.io/config.hash";
pub const SOURCE: &str = "kubernetes.io/config.source";
pub const SEEN: &str = "kubernetes.io/config.seen";

/// How often the folder is re-read.
pub const FILE_CHECK: Duration = Duration::from_secs(2);

/// The static pods by `namespace/name`, shared with the :10250 server (logs, exec of a static
/// pod reach it through its mirror pod's name).
pub type Registry = Arc<RwLock<HashMap<String, Arc<Pod>>>>;

fn annotation<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A mirror pod (the API's copy of a static pod).
pub fn is_mirror(p: &Pod) -> bool {
    annotation(p, MIRROR).is_some()
}

/// A static pod (from the manifest folder).
pub fn is_static(p: &Pod) -> bool {
    !is_mirror(p) && annotation(p, SOURCE) == Some("file")
}

/// `namespace/name`.
pub fn key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pods of one manifest file, with the static pod fields filled in.
pub fn decode(content: &[u8], path: &Path, node_name: &str) -> Result<Vec<Pod>, String> {
    let value: serde_json::Value =
        serde_yaml::from_slice(content).map_err(|e| format!("not YAML or JSON: {e}"))?;
    let mut docs = Vec::new();
    match value["kind"].as_str() {
        Some("Pod") => docs.push(value),
        Some("List") | Some("PodList") => {
            docs.extend(value["items"].as_array().cloned().unwrap_or_default())
        }
        other => return Err(format!("kind {other:?} is not a Pod")),
    }
    let mut out = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        let mut pod: Pod = serde_json::from_value(d).map_err(|e| format!("invalid pod: {e}"))?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err("metadata.name is required".into());
        }
        let uid = pod
            .metadata
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                let mut h = Sha256::new();
                h.update(content);
                h.update(format!("host:{node_name}").as_bytes());
                h.update(format!("file:{}#{i}", path.display()).as_bytes());
                let d = h.finalize();
                d[..16].iter().map(|b| format!("{b:02x}")).collect()
            });
        let m = &mut pod.metadata;
        m.uid = Some(uid.clone());
        m.name = Some(format!("{name}-{}", node_name.to_lowercase()));
        if m.namespace.as_deref().unwrap_or_default().is_empty() {
            m.namespace = Some("default".into());
        }
        let a = m.annotations.get_or_insert_with(BTreeMap::new);
        a.insert(HASH.into(), uid);
        a.insert(SOURCE.into(), "file".into());
        a.insert(SEEN.into(), chrono::Utc::now().to_rfc3339());
        m.resource_version = None;
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.node_name = Some(node_name.to_string());
        spec.restart_policy.get_or_insert_with(|| "Always".into());
        spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        spec.termination_grace_period_seconds.get_or_insert(30);
        spec.scheduler_name
            .get_or_insert_with(|| "default-scheduler".into());
        // Static pods tolerate every NoExecute taint (upstream's file source).
        let t = spec.tolerations.get_or_insert_with(Vec::new);
        if !t.iter().any(|t| {
            t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.as_deref() == Some("NoExecute")
        }) {
            t.push(Toleration {
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                ..Default::default()
            });
        }
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            if c.image_pull_policy.is_none() {
                let latest = c
                    .image
                    .as_deref()
                    .map(|i| {
                        !i.rsplit('/').next().unwrap_or(i).contains(':') || i.ends_with(":latest")
                    })
                    .unwrap_or(true);
                c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
            }
            c.termination_message_path
                .get_or_insert_with(|| "/dev/termination-log".into());
            c.termination_message_policy
                .get_or_insert_with(|| "File".into());
        }
        pod.status = None;
        out.push(pod);
    }
    Ok(out)
}

/// Reads every manifest of `dir` (blocking: run it in `spawn_blocking`). Bad files are logged
/// and skipped.
pub fn read_dir(dir: &Path, node_name: &str) -> Vec<Pod> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| {
                e.file_type()
                    .map(|t| t.is_file() || t.is_symlink())
                    .unwrap_or(false)
            })
            .map(|e| e.path())
            .collect(),
        Err(e) => {
            debug!(dir = %dir.display(), error = %e, "cannot read the static pod folder");
            return Vec::new();
        }
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        match std::fs::read(&f) {
            Ok(content) => match decode(&content, &f, node_name) {
                Ok(pods) => out.extend(pods),
                Err(e) => warn!(file = %f.display(), "skipping a static pod manifest: {e}"),
            },
            Err(e) => warn!(file = %f.display(), error = %e, "cannot read a static pod manifest"),
        }
    }
    out
}

/// Sends the folder's pods whenever the set (by uid) changes, until shutdown.
pub async fn watch_dir(
    dir: PathBuf,
    node_name: String,
    tx: mpsc::UnboundedSender<Vec<Pod>>,
    mut shutdown: watch::Receiver<bool>,
) {
    info!(dir = %dir.display(), "watching the static pod folder");
    let mut last: Option<Vec<String>> = None;
    loop {
        let (d, n) = (dir.clone(), node_name.clone());
        let pods = tokio::task::spawn_blocking(move || read_dir(&d, &n))
            .await
            .unwrap_or_default();
        let mut uids: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        uids.sort();
        if last.as_ref() != Some(&uids) {
            if tx.send(pods).is_err() {
                return;
            }
            last = Some(uids);
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(FILE_CHECK) => {}
        }
    }
}

/// The mirror pod of `static_pod` in the API, created (or recreated when deleted, being
/// deleted, or of another hash) as needed. `None` when a pod that is not a mirror holds the name.
pub async fn ensure_mirror(client: &Client, static_pod: &Pod) -> Result<Option<Pod>, kube::Error> {
    let ns = static_pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default");
    let name = static_pod.metadata.name.as_deref().unwrap_or_default();
    let hash = annotation(static_pod, HASH).unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Some(existing) = api.get_opt(name).await? {
        if !is_mirror(&existing) {
            warn!(pod = %key(static_pod), "a pod that is not a mirror pod holds the static pod's name; not mirroring");
            return Ok(None);
        }
        if annotation(&existing, MIRROR) == Some(hash)
            && existing.metadata.deletion_timestamp.is_none()
        {
            return Ok(Some(existing));
        }
        info!(pod = %key(static_pod), "replacing an outdated or deleted mirror pod");
        delete_pod(&api, &existing).await?;
    }
    let node: Api<Node> = Api::all(client.clone());
    let node_name = static_pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let node_uid = node.get(&node_name).await?.metadata.uid.unwrap_or_default();
    let mut mirror = static_pod.clone();
    mirror.metadata.uid = None;
    mirror.metadata.resource_version = None;
    mirror
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR.into(), hash.to_string());
    mirror.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node_name,
        uid: node_uid,
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    mirror.status = None;
    let created = api.create(&PostParams::default(), &mirror).await?;
    info!(pod = %key(static_pod), "created the mirror pod");
    Ok(Some(created))
}

async fn delete_pod(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the mirror pod of a static pod that is gone.
pub async fn delete_mirror(client: &Client, static_pod: &Pod) -> Result<(), kube::Error> {
    let ns = static_pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("default");
    let name = static_pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Some(existing) = api.get_opt(name).await? {
        // Only this static pod's mirror: after an edit, the new pod's mirror has the name.
        if annotation(&existing, MIRROR).is_some()
            && annotation(&existing, MIRROR) == annotation(static_pod, HASH)
        {
            delete_pod(&api, &existing).await?;
            info!(pod = %key(static_pod), "deleted the mirror pod");
        }
    }
    Ok(())
}

/// Deletes a mirror pod that someone is deleting through the API (the static pod's worker
/// then creates it again).
pub async fn finish_mirror_deletion(client: &Client, mirror: &Pod) {
    let ns = mirror.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    if let Err(e) = delete_pod(&api, mirror).await {
        warn!(pod = %key(mirror), error = %e, "cannot delete the mirror pod");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_pod_fields() {
        let y = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox:1.36\n";
        let p = &decode(y, Path::new("/etc/m/web.yaml"), "Node-1").unwrap()[0];
        assert_eq!(p.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert_eq!(annotation(p, HASH), Some(uid.as_str()));
        assert!(is_static(p));
        assert!(!is_mirror(p));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        // Same content, same uid; another node or an edit, another uid.
        let again = &decode(y, Path::new("/etc/m/web.yaml"), "Node-1").unwrap()[0];
        assert_eq!(again.metadata.uid, p.metadata.uid);
        let other = &decode(y, Path::new("/etc/m/web.yaml"), "node-2").unwrap()[0];
        assert_ne!(other.metadata.uid, p.metadata.uid);
        let json = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"kube-system"},"spec":{"containers":[{"name":"c","image":"b"}]}}"#;
        let j = &decode(json, Path::new("/etc/m/web.json"), "n").unwrap()[0];
        assert_eq!(j.metadata.namespace.as_deref(), Some("kube-system"));
        assert!(decode(b"kind: Service\n", Path::new("x"), "n").is_err());
    }
}
