//! Persistent volumes: upstream's PV binder (`pkg/controller/volume/persistentvolume`) for
//! static `hostPath`/`local` volumes, and a local-path provisioner in the manner of k3s's.
//!
//! * At start the default StorageClass `local-path` exists (provisioner [`PROVISIONER`],
//!   `WaitForFirstConsumer`, reclaim `Delete`, the `is-default-class` annotation); a claim
//!   without `storageClassName` gets the default class, as upstream's retroactive default.
//! * A pending claim binds to the smallest Available PV that fits (class, access modes,
//!   capacity, volume mode, selector, node affinity of the selected node). A
//!   `WaitForFirstConsumer` claim waits for a pod that uses it to be on a node: the scheduler
//!   picks a node where a volume fits (or where one can be provisioned) and sets
//!   `volume.kubernetes.io/selected-node` before binding the pod; this controller also takes
//!   the consuming pod's `spec.nodeName` when the annotation is missing.
//! * With no PV to bind and a class whose provisioner is ours, it provisions a `hostPath` PV
//!   `pvc-<claim uid>` at `<data dir>/storage/pvc-<uid>_<ns>_<claim>` with node affinity to the
//!   selected node, and binds it.
//! * A bound PV whose claim is gone becomes `Released`; with reclaim policy `Delete` it is
//!   deleted (and a provisioned directory removed).

use crate::cached_pod::CachedPod;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn, Instrument};

use crate::workload;
use crate::{Context, ControllerError};

/// The provisioner name of Skiff's local-path volumes.
pub const PROVISIONER: &str = "skiff.io/local-path";
pub const DEFAULT_CLASS: &str = "local-path";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const DEFAULT_CLASS_ANN: &str = "storageclass.kubernetes.io/is-default-class";

static STORAGE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Where provisioned volumes live: `<dir>/storage/`. Set once by `skiff server` (its data dir);
/// without it the directories are left to the kubelet's `DirectoryOrCreate`.
pub fn set_data_dir(dir: PathBuf) {
    set_storage_dir(dir.join("storage"));
}

/// The folder provisioned volumes are made in, as given (k3s's
/// `--default-local-storage-path`); set once per process. Default `/var/lib/skiff/storage`.
pub fn set_storage_dir(dir: PathBuf) {
    let _ = STORAGE_DIR.set(dir);
}

fn storage_dir() -> PathBuf {
    STORAGE_DIR
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/var/lib/skiff/storage"))
}

struct State {
    client: Client,
    pvs: Store<PersistentVolume>,
    pods: Store<CachedPod>,
    classes: Store<StorageClass>,
    rec: Recorder,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let reader = ctx.reader.clone();
        ensure_default_class(&client).await?;
        let (pvs, pv_events) = workload::reflect(Api::<PersistentVolume>::all(reader.clone()));
        let (pods, pod_events) = workload::subscribe_pods(&ctx.informers);
        let (classes, class_events) = workload::reflect(Api::<StorageClass>::all(reader.clone()));
        let class_feed = tokio::spawn(class_events.for_each(|_| async {}));
        let st = Arc::new(State {
            client: client.clone(),
            pvs: pvs.clone(),
            pods: pods.clone(),
            classes: classes.clone(),
            rec: workload::recorder(&client, "persistentvolume-controller"),
        });
        let claims = Controller::new(
            Api::<PersistentVolumeClaim>::all(reader.clone()),
            watcher::Config::default(),
        )
        .watches_shared_stream(pod_events, |pod: Arc<CachedPod>| {
            let ns = pod.namespace().unwrap_or_default();
            pod.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .filter_map(|v| v.persistent_volume_claim.as_ref())
                .map(|c| ObjectRef::new(&c.claim_name).within(&ns))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(workload::ticks(pv_events))
        .run(reconcile_claim, claim_error, st.clone())
        .for_each(|_| async {});
        let volumes = Controller::new(
            Api::<PersistentVolume>::all(reader.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<PersistentVolumeClaim>::all(reader.clone()),
            watcher::Config::default(),
            |c: PersistentVolumeClaim| {
                c.spec
                    .and_then(|s| s.volume_name)
                    .map(|v| ObjectRef::new(&v))
            },
        )
        .run(reconcile_volume, volume_error, st)
        .for_each(|_| async {});
        workload::until(stop, futures::future::join(claims, volumes).map(|_| ())).await;
        class_feed.abort();
        Ok(())
    })
}

use futures::FutureExt;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("provisioning {path}: {source}")]
    Provision {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn claim_error(_c: Arc<PersistentVolumeClaim>, err: &StorageError, _st: Arc<State>) -> Action {
    warn!(error = %err, "claim sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn volume_error(_v: Arc<PersistentVolume>, err: &StorageError, _st: Arc<State>) -> Action {
    warn!(error = %err, "volume sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The default StorageClass, created when missing (an existing one is left as the user set it).
async fn ensure_default_class(client: &Client) -> Result<(), kube::Error> {
    let api: Api<StorageClass> = Api::all(client.clone());
    if api.get_opt(DEFAULT_CLASS).await?.is_some() {
        return Ok(());
    }
    let sc = StorageClass {
        metadata: ObjectMeta {
            name: Some(DEFAULT_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                DEFAULT_CLASS_ANN.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Quantity to bytes (decimal and binary suffixes); unknown forms are 0.
pub fn bytes(q: &Quantity) -> u128 {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suf) = s.split_at(split);
    let n: f64 = num.parse().unwrap_or(0.0);
    let mult: f64 = match suf {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => 0.0,
    };
    (n * mult) as u128
}

fn request(c: &PersistentVolumeClaim) -> Option<Quantity> {
    c.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .cloned()
}

fn node_matches(pv: &PersistentVolume, node: Option<&k8s_openapi::api::core::v1::Node>) -> bool {
    let Some(req) = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let Some(node) = node else {
        return true;
    };
    let labels = node.labels();
    req.node_selector_terms.iter().any(|t| {
        t.match_expressions.iter().flatten().all(|r| {
            let have = labels.get(&r.key);
            let vals = r.values.clone().unwrap_or_default();
            match r.operator.as_str() {
                "In" => have.is_some_and(|h| vals.contains(h)),
                "NotIn" => !have.is_some_and(|h| vals.contains(h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
    })
}

/// Whether PV `pv` can hold claim `c` (upstream's `findMatchingVolume` checks).
fn fits(
    pv: &PersistentVolume,
    c: &PersistentVolumeClaim,
    class: &str,
    node: Option<&k8s_openapi::api::core::v1::Node>,
) -> bool {
    let Some(spec) = pv.spec.as_ref() else {
        return false;
    };
    let cspec = c.spec.clone().unwrap_or_default();
    if pv.metadata.deletion_timestamp.is_some()
        || pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Available")
    {
        return false;
    }
    if let Some(r) = &spec.claim_ref {
        // Pre-bound to another claim.
        if r.name.as_deref() != c.metadata.name.as_deref()
            || r.namespace.as_deref() != c.metadata.namespace.as_deref()
            || r.uid
                .as_ref()
                .is_some_and(|u| Some(u) != c.metadata.uid.as_ref())
        {
            return false;
        }
    }
    if spec.storage_class_name.as_deref().unwrap_or("") != class {
        return false;
    }
    if spec.volume_mode.as_deref().unwrap_or("Filesystem")
        != cspec.volume_mode.as_deref().unwrap_or("Filesystem")
    {
        return false;
    }
    let have = spec.access_modes.clone().unwrap_or_default();
    if !cspec
        .access_modes
        .iter()
        .flatten()
        .all(|m| have.contains(m))
    {
        return false;
    }
    let cap = spec
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(bytes)
        .unwrap_or(0);
    if request(c).map(|q| bytes(&q)).unwrap_or(0) > cap {
        return false;
    }
    if let Some(sel) = cspec.selector.as_ref() {
        if !workload::selector_matches(Some(sel), pv.labels()) {
            return false;
        }
    }
    node_matches(pv, node)
}

fn is_default(sc: &StorageClass) -> bool {
    sc.annotations()
        .get(DEFAULT_CLASS_ANN)
        .or_else(|| {
            sc.annotations()
                .get("storageclass.beta.kubernetes.io/is-default-class")
        })
        .is_some_and(|v| v == "true")
}

async fn reconcile_claim(
    c: Arc<PersistentVolumeClaim>,
    st: Arc<State>,
) -> Result<Action, StorageError> {
    let span = tracing::info_span!("claim", claim = %workload::key(&*c), uid = %c.uid().unwrap_or_default());
    sync_claim(c, st).instrument(span).await
}

async fn sync_claim(c: Arc<PersistentVolumeClaim>, st: Arc<State>) -> Result<Action, StorageError> {
    if c.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = crate::util::ready(&st.pvs).await;
    let _ = crate::util::ready(&st.pods).await;
    let _ = crate::util::ready(&st.classes).await;
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(st.client.clone(), &ns);
    let spec = c.spec.clone().unwrap_or_default();
    let phase = c
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) && phase == "Bound" {
        // Bound claims whose volume vanished become Lost.
        let vname = spec.volume_name.clone().unwrap_or_default();
        if st.pvs.get(&ObjectRef::new(&vname)).is_none()
            && Api::<PersistentVolume>::all(st.client.clone())
                .get_opt(&vname)
                .await?
                .is_none()
        {
            let patch = serde_json::json!({"status": {"phase": "Lost"}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            workload::record(
                &st.rec,
                &*c,
                true,
                "ClaimLost",
                "Bind",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
            )
            .await;
        }
        return Ok(Action::await_change());
    }
    // Retroactive default class.
    let class = match spec.storage_class_name.clone() {
        Some(cl) => cl,
        None => {
            let Some(def) = st.classes.state().into_iter().find(|s| is_default(s)) else {
                return Ok(Action::await_change());
            };
            let patch = serde_json::json!({"spec": {"storageClassName": def.name_any()}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(Action::await_change());
        }
    };
    let sc = st.classes.get(&ObjectRef::new(&class));
    let wait_for_consumer =
        sc.as_ref().and_then(|s| s.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
    // The node of the first consumer.
    let mut selected = c.annotations().get(SELECTED_NODE).cloned();
    if selected.is_none() && wait_for_consumer {
        let consumer = st.pods.state().into_iter().find(|p| {
            p.namespace().as_deref() == Some(&ns)
                && p.spec.as_ref().is_some_and(|s| {
                    s.node_name.as_deref().is_some_and(|n| !n.is_empty())
                        && s.volumes.iter().flatten().any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|pc| pc.claim_name == name)
                        })
                })
        });
        match consumer.and_then(|p| p.spec.as_ref()?.node_name.clone()) {
            Some(n) => selected = Some(n),
            None => {
                workload::record(
                    &st.rec,
                    &*c,
                    false,
                    "WaitForFirstConsumer",
                    "Bind",
                    "waiting for first consumer to be created before binding".into(),
                )
                .await;
                return Ok(Action::await_change());
            }
        }
    }
    let node = match &selected {
        Some(n) => {
            Api::<k8s_openapi::api::core::v1::Node>::all(st.client.clone())
                .get_opt(n)
                .await?
        }
        None => None,
    };
    // Static binding first: the smallest volume that fits.
    let mut candidates: Vec<Arc<PersistentVolume>> = st
        .pvs
        .state()
        .into_iter()
        .filter(|pv| fits(pv, &c, &class, node.as_ref()))
        .collect();
    candidates.sort_by_key(|pv| {
        (
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_none(),
            pv.spec
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage"))
                .map(bytes),
        )
    });
    let pv = match candidates.first() {
        Some(pv) => (**pv).clone(),
        None => {
            let ours = sc.as_ref().is_some_and(|s| s.provisioner == PROVISIONER);
            if !ours {
                return Ok(Action::await_change());
            }
            let mut ann = BTreeMap::new();
            ann.insert(
                "volume.kubernetes.io/storage-provisioner".to_string(),
                PROVISIONER.to_string(),
            );
            ann.insert(
                "volume.beta.kubernetes.io/storage-provisioner".to_string(),
                PROVISIONER.to_string(),
            );
            if let Some(n) = &selected {
                ann.insert(SELECTED_NODE.into(), n.clone());
            }
            if ann.iter().any(|(k, v)| c.annotations().get(k) != Some(v)) {
                let patch = serde_json::json!({"metadata": {"annotations": ann}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            provision(&st, &c, &class, sc.as_deref(), selected.as_deref()).await?
        }
    };
    bind(&st, &c, &pv).await?;
    Ok(Action::await_change())
}

async fn provision(
    st: &State,
    c: &PersistentVolumeClaim,
    class: &str,
    sc: Option<&StorageClass>,
    node: Option<&str>,
) -> Result<PersistentVolume, StorageError> {
    let uid = c.uid().unwrap_or_default();
    let ns = c.namespace().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let path = storage_dir().join(format!("{pv_name}_{ns}_{}", c.name_any()));
    tokio::fs::create_dir_all(&path)
        .await
        .map_err(|source| StorageError::Provision {
            path: path.clone(),
            source,
        })?;
    let api: Api<PersistentVolume> = Api::all(st.client.clone());
    if let Some(pv) = api.get_opt(&pv_name).await? {
        return Ok(pv);
    }
    let mut capacity = BTreeMap::new();
    capacity.insert(
        "storage".to_string(),
        request(c).unwrap_or_else(|| Quantity("1Gi".into())),
    );
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            annotations: Some(BTreeMap::from([(
                "pv.kubernetes.io/provisioned-by".to_string(),
                PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: c.spec.as_ref().and_then(|s| s.access_modes.clone()),
            capacity: Some(capacity),
            claim_ref: Some(claim_ref(c)),
            host_path: Some(HostPathVolumeSource {
                path: path.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            node_affinity: node.map(|n| VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![n.into()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(
                sc.and_then(|s| s.reclaim_policy.clone())
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: Some(class.into()),
            volume_mode: c.spec.as_ref().and_then(|s| s.volume_mode.clone()),
            ..Default::default()
        }),
        status: None,
    };
    let pv = match api.create(&PostParams::default(), &pv).await {
        Ok(pv) => pv,
        Err(kube::Error::Api(e)) if e.code == 409 => api.get(&pv_name).await?,
        Err(e) => return Err(e.into()),
    };
    info!(volume = %pv_name, path = %path.display(), "provisioned a local-path volume");
    workload::record(
        &st.rec,
        c,
        false,
        "ProvisioningSucceeded",
        "Provision",
        format!("Successfully provisioned volume {pv_name}"),
    )
    .await;
    Ok(pv)
}

fn claim_ref(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: c.metadata.name.clone(),
        namespace: c.metadata.namespace.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Binds `pv` and `c` to each other: the volume first (claimRef, then phase), then the claim
/// (volumeName, then phase), as upstream's `bind`.
async fn bind(
    st: &State,
    c: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<(), StorageError> {
    let pv_api: Api<PersistentVolume> = Api::all(st.client.clone());
    let c_api: Api<PersistentVolumeClaim> =
        Api::namespaced(st.client.clone(), &c.namespace().unwrap_or_default());
    let pv_name = pv.name_any();
    let by_controller = pv
        .spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref())
        .is_none();
    let mut pv_patch = serde_json::json!({
        "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
        "spec": {"claimRef": claim_ref(c)}
    });
    if by_controller {
        pv_patch["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] =
            serde_json::json!("yes");
    }
    pv_api
        .patch(&pv_name, &PatchParams::default(), &Patch::Merge(&pv_patch))
        .await?;
    pv_api
        .patch_status(
            &pv_name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": {"phase": "Bound"}})),
        )
        .await?;
    let c_patch = serde_json::json!({
        "metadata": {"annotations": {
            "pv.kubernetes.io/bind-completed": "yes",
            "pv.kubernetes.io/bound-by-controller": "yes"
        }},
        "spec": {"volumeName": pv_name}
    });
    c_api
        .patch(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&c_patch),
        )
        .await?;
    let spec = pv.spec.clone().unwrap_or_default();
    c_api
        .patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": {
                "phase": "Bound",
                "accessModes": spec.access_modes,
                "capacity": spec.capacity,
            }})),
        )
        .await?;
    info!(claim = %workload::key(c), volume = %pv_name, "bound");
    Ok(())
}

async fn reconcile_volume(
    pv: Arc<PersistentVolume>,
    st: Arc<State>,
) -> Result<Action, StorageError> {
    let span = tracing::info_span!("volume", volume = %pv.name_any());
    sync_volume(pv, st).instrument(span).await
}

async fn sync_volume(pv: Arc<PersistentVolume>, st: Arc<State>) -> Result<Action, StorageError> {
    if pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(st.client.clone());
    let name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let phase = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let set_phase = |p: &'static str| {
        let api = api.clone();
        let name = name.clone();
        async move {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"status": {"phase": p}})),
            )
            .await
        }
    };
    let Some(cref) = spec.claim_ref.clone() else {
        if phase != "Available" {
            set_phase("Available").await?;
        }
        return Ok(Action::await_change());
    };
    // A claimRef without uid is a pre-binding the claim side completes.
    let Some(cuid) = cref.uid.clone() else {
        if phase != "Available" {
            set_phase("Available").await?;
        }
        return Ok(Action::await_change());
    };
    let c_api: Api<PersistentVolumeClaim> = Api::namespaced(
        st.client.clone(),
        cref.namespace.as_deref().unwrap_or_default(),
    );
    let claim = c_api
        .get_opt(cref.name.as_deref().unwrap_or_default())
        .await?
        .filter(|c| c.uid().as_deref() == Some(cuid.as_str()));
    if let Some(claim) = claim {
        // Bound once the claim names this volume; until then (provisioned for the claim, or in
        // the middle of binding) Available, and the claim side completes the binding.
        let bound = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(&name);
        let want = if bound { "Bound" } else { "Available" };
        if (bound || phase != "Bound") && phase != want {
            set_phase(want).await?;
        }
        return Ok(Action::await_change());
    }
    if phase == "Bound" || phase == "Available" || phase.is_empty() {
        if phase == "Available" || phase.is_empty() {
            // Pre-bound by uid to a claim that is gone: wait briefly for the cache first.
            if phase.is_empty() {
                set_phase("Available").await?;
            }
            if pv
                .annotations()
                .get("pv.kubernetes.io/bind-completed")
                .is_none()
            {
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        }
        set_phase("Released").await?;
    }
    if spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete") {
        if pv
            .annotations()
            .get("pv.kubernetes.io/provisioned-by")
            .map(String::as_str)
            == Some(PROVISIONER)
        {
            if let Some(hp) = &spec.host_path {
                let path = PathBuf::from(&hp.path);
                if path.starts_with(storage_dir()) {
                    if let Err(e) = tokio::fs::remove_dir_all(&path).await {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(StorageError::Provision { path, source: e });
                        }
                    }
                }
            }
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => info!(volume = %name, "deleted a released volume (reclaim policy Delete)"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(bytes(&Quantity("1Gi".into())), 1 << 30);
        assert_eq!(bytes(&Quantity("500M".into())), 500_000_000);
        assert_eq!(bytes(&Quantity("1.5Ki".into())), 1536);
        assert_eq!(bytes(&Quantity("10".into())), 10);
    }

    #[test]
    fn volumes_fit_claims() {
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pv1", "labels": {"tier": "fast"}},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": "manual", "hostPath": {"path": "/tmp/x"}},
            "status": {"phase": "Available"}
        }))
        .unwrap();
        let claim = |req: &str, class: &str| -> PersistentVolumeClaim {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "c", "namespace": "default", "uid": "u"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                         "resources": {"requests": {"storage": req}}}
            }))
            .unwrap()
        };
        assert!(fits(&pv, &claim("1Gi", "manual"), "manual", None));
        assert!(!fits(&pv, &claim("3Gi", "manual"), "manual", None));
        assert!(!fits(&pv, &claim("1Gi", "other"), "other", None));
    }
}
