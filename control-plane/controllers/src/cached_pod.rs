//! The pod as the controllers cache it: only the fields some controller reads, deserialized
//! straight from the list and watch bodies (serde skips every other field without building
//! it). A k8s-openapi `Pod` is 2,176 bytes as a Rust value before any string and each
//! `Container` 2,120 (bench/README.md, "controllers + scheduler memory"); one of these, with
//! its container, is a few hundred. The shape mirrors `Pod`'s (`metadata`, `spec`, `status`,
//! the same field names and types where kept), so code reading a cached pod reads it as it
//! would read a `Pod`. No controller writes a pod from its cached copy: they create pods from
//! templates, and patch, delete or evict the cached ones.

use k8s_openapi::api::core::v1::{
    ContainerPort, ContainerState, NodeAffinity, PersistentVolumeClaimVolumeSource, PodCondition,
    PodIP, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

/// A cached pod (see the module's doc).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CachedPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<CachedPodSpec>,
    #[serde(default)]
    pub status: Option<CachedPodStatus>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<CachedContainer>,

    /// Only the PersistentVolumeClaim volumes (the volume binder looks for a claim's
    /// consumers; no other controller reads a pod's volumes).
    #[serde(default, deserialize_with = "claim_volumes")]
    pub volumes: Option<Vec<CachedVolume>>,
    #[serde(default)]
    pub restart_policy: Option<String>,
    /// Only the node affinity (the DaemonSet controller reads the one it sets).
    #[serde(default)]
    pub affinity: Option<CachedAffinity>,
    /// Taint eviction by the node lifecycle controller.
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    /// The endpoint controllers' hostnames of headless Services.
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub subdomain: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    #[serde(default)]
    pub name: String,
    /// Named ports, for the endpoint controllers.
    #[serde(default)]
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedVolume {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedAffinity {
    #[serde(default)]
    pub node_affinity: Option<NodeAffinity>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Option<Vec<PodCondition>>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
    #[serde(default)]
    pub start_time: Option<Time>,
    #[serde(default)]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    #[serde(default)]
    pub init_container_statuses: Option<Vec<CachedContainerStatus>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub state: Option<ContainerState>,
}

fn claim_volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<CachedVolume>>, D::Error> {
    let v: Option<Vec<CachedVolume>> = Option::deserialize(d)?;
    Ok(v.map(|mut v| {
        v.retain(|v| v.persistent_volume_claim.is_some());
        v.shrink_to_fit();
        v
    }))
}

impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_controllers_read() {
        let p: CachedPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "rs", "uid": "u1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
                                                       "command": ["sleep", "3600"],
                                                       "ports": [{"name": "http", "containerPort": 80}],
                                                       "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                     "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute"}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                         {"topologyKey": "kubernetes.io/hostname"}]}},
                     "volumes": [
                         {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
                         {"name": "kube-api-access", "projected": {"sources": [
                             {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}},
                         {"name": "tmp", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "c", "ready": true, "restartCount": 2,
                                              "image": "busybox", "imageID": "x",
                                              "state": {"terminated": {"exitCode": 3}}}]},
        }))
        .unwrap();
        let spec = p.spec.as_ref().unwrap();
        let vols = spec.volumes.as_ref().unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "claim"
        );
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0]
                .name
                .as_deref(),
            Some("http")
        );
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("k")
        );
        assert!(spec.affinity.as_ref().unwrap().node_affinity.is_none());
        assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.5"));
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            3
        );
        use kube::ResourceExt;
        assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
        assert_eq!(p.name_any(), "p");
        assert_eq!(p.namespace().as_deref(), Some("ns"));
    }

    #[global_allocator]
    static A: skiff_memtrim::counting::Counting = skiff_memtrim::counting::Counting;
    use skiff_memtrim::counting;

    /// A pod of `bench/controllers/rss.sh` as the ReplicaSet controller creates it and the
    /// API server defaults and binds it.
    fn bench_pod() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "sk-bench-04-5d8f7c9b6d-x7k2p", "generateName": "sk-bench-04-5d8f7c9b6d-",
                "namespace": "sk-bench", "uid": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e",
                "resourceVersion": "123456", "creationTimestamp": "2026-12-07T01:00:00Z",
                "labels": {"app": "sk-bench-04", "pod-template-hash": "5d8f7c9b6d"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "sk-bench-04-5d8f7c9b6d", "uid": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                    "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "time": "2026-12-07T01:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}}}}}]},
            "spec": {
                "containers": [{"name": "c", "image": "sk-busybox",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File", "imagePullPolicy": "Always",
                    "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "sk-bench-04"}}}],
                "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                "serviceAccountName": "default", "serviceAccount": "default", "nodeName": "sk-node-042",
                "securityContext": {}, "schedulerName": "default-scheduler",
                "tolerations": [
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
                "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}]},
            "status": {"phase": "Pending", "qosClass": "Burstable",
                "conditions": [{"type": "PodScheduled", "status": "True",
                                "lastTransitionTime": "2026-12-07T01:00:00Z"}]}
        })
    }

    /// The cached form of the bench's pod costs a fraction of a `Pod` (figures in
    /// bench/README.md, "compact cached pods").
    #[test]
    fn a_cached_pod_is_small() {
        let body = serde_json::to_vec(&bench_pod()).unwrap();
        let (full, full_bytes) = counting::live_bytes(|| {
            std::sync::Arc::new(
                serde_json::from_slice::<k8s_openapi::api::core::v1::Pod>(&body).unwrap(),
            )
        });
        let (cached, cached_bytes) = counting::live_bytes(|| {
            let mut p = serde_json::from_slice::<CachedPod>(&body).unwrap();
            crate::informer::slim(&mut p);
            std::sync::Arc::new(p)
        });
        eprintln!("bench pod live bytes: Pod {full_bytes}, CachedPod {cached_bytes}");
        assert_eq!(cached.metadata.name, full.metadata.name);
        assert_eq!(
            cached.spec.as_ref().unwrap().node_name.as_deref(),
            Some("sk-node-042")
        );
        assert!(
            cached_bytes * 4 < full_bytes && cached_bytes < 4096,
            "Pod {full_bytes} B, CachedPod {cached_bytes} B"
        );
    }
}
