//! The Deployment controller (upstream's `pkg/controller/deployment`): owns ReplicaSets named
//! `<deployment>-<pod-template-hash>`, one per template revision; rolls from old to new with
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate; scales proportionally during a rollout;
//! keeps `revisionHistoryLimit` old ReplicaSets; reports the Available and Progressing conditions
//! with upstream's reasons and messages (what `kubectl rollout status` reads). `kubectl rollout
//! undo` and `restart` are client-side edits of the template; pause/resume flip `spec.paused`.

use crate::cached_pod::CachedPod;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Recorder, NORMAL, WARNING};
use crate::informer::{Change, Informer};
use crate::queue::WorkQueue;
use crate::replicaset::{api_message, is_not_found};
use crate::util::{self, key_of, split_key};
use crate::{Context, ControllerError};

const COMPONENT: &str = "deployment-controller";
const WORKERS: usize = 5;
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const HASH_LABEL: &str = "pod-template-hash";
/// Annotations of a Deployment not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

// Condition reasons, as upstream's deployment util names them.
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";
const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
const RS_CREATE_ERROR: &str = "ReplicaSetCreateError";

struct Ctl {
    client: Client,
    deployments: Arc<Informer<Deployment>>,
    rss: Arc<Informer<ReplicaSet>>,
    pods: Arc<Informer<CachedPod>>,
    queue: Arc<WorkQueue>,
    rec: Recorder,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run_inner(ctx, stop))
}

async fn run_inner(ctx: Context, stop: BoxFuture<'static, ()>) -> Result<(), ControllerError> {
    let c = Arc::new(Ctl {
        client: ctx.client.clone(),
        deployments: ctx.informers.deployments(),
        rss: ctx.informers.replicasets(),
        pods: ctx.informers.pods(),
        queue: WorkQueue::new(),
        rec: Recorder::new(ctx.client.clone(), COMPONENT),
    });
    let mut d_rx = c.deployments.subscribe();
    let mut rs_rx = c.rss.subscribe();
    let mut pod_rx = c.pods.subscribe();
    c.deployments.ready().await;
    c.rss.ready().await;
    c.pods.ready().await;
    c.enqueue_all();
    let handlers = {
        let c = c.clone();
        async move {
            loop {
                tokio::select! {
                    ch = d_rx.recv() => match ch {
                        Ok(Change::Added(d)) | Ok(Change::Updated { new: d, .. }) | Ok(Change::Deleted(d)) => c.queue.add(key_of(d.as_ref())),
                        Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => c.enqueue_all(),
                        Err(RecvError::Closed) => return,
                    },
                    ch = rs_rx.recv() => match ch {
                        Ok(Change::Added(rs)) | Ok(Change::Deleted(rs)) => c.on_rs(&rs),
                        Ok(Change::Updated { old, new }) => {
                            if util::controller_ref(&old.metadata).map(|r| &r.uid) != util::controller_ref(&new.metadata).map(|r| &r.uid) {
                                c.on_rs(&old);
                            }
                            c.on_rs(&new);
                        }
                        Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => c.enqueue_all(),
                        Err(RecvError::Closed) => return,
                    },
                    ch = pod_rx.recv() => match ch {
                        // Recreate waits for old pods to be gone.
                        Ok(Change::Deleted(p)) => c.on_pod_deleted(&p),
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => c.enqueue_all(),
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    };
    let workers = c.queue.clone().run(WORKERS, COMPONENT, {
        let c = c.clone();
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        }
    });
    crate::util::until_stopped(COMPONENT, stop, handlers, workers).await
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}
fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}
fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}
fn ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}
fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}
fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
fn annotation_int(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.annotations().get(key).and_then(|v| v.parse().ok())
}
fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}
fn template(d: &Deployment) -> PodTemplateSpec {
    d.spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
}

/// maxSurge and maxUnavailable resolved against the replicas (upstream's `ResolveFenceposts`):
/// surge rounds up, unavailability down, and both zero means one may be unavailable.
fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let desired = d_replicas(d);
    let surge = util::scaled_value(ru.and_then(|r| r.max_surge.as_ref()), "25%", desired, true);
    let unavailable = util::scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}
fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).0
}
fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling(d) || d_replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(d_replicas(d))
}

/// Templates equal but for the pod-template-hash label.
fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let strip = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(m) = t.metadata.as_mut() {
            if let Some(l) = m.labels.as_mut() {
                l.remove(HASH_LABEL);
                if l.is_empty() {
                    m.labels = None;
                }
            }
        }
        t
    };
    strip(a) == strip(b)
}

/// The pod-template-hash: FNV-32a of the template (and collision count), its decimal digits
/// spelled with upstream's safe alphabet (no vowels, no look-alikes).
pub fn template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut h: u32 = 0x811c9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x01000193);
        }
    };
    feed(&serde_json::to_vec(t).unwrap_or_default());
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
    t(a).cmp(&t(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = Time(Timestamp::now());
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

fn get_condition<'a>(st: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    st.conditions.iter().flatten().find(|c| c.type_ == type_)
}

/// Upstream's `SetDeploymentCondition`: same status and reason is no change; same status keeps
/// the transition time.
fn set_condition(st: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_condition(st, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    let conds = st.conditions.get_or_insert_with(Vec::new);
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

fn remove_condition(st: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = st.conditions.as_mut() {
        c.retain(|x| x.type_ != type_);
    }
}

fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

/// Upstream's `DeploymentComplete`.
fn complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let n = d_replicas(d);
    st.updated_replicas.unwrap_or(0) == n
        && st.replicas.unwrap_or(0) == n
        && st.available_replicas.unwrap_or(0) == n
        && st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Upstream's `DeploymentProgressing`: more updated, ready or available pods, or fewer old ones.
fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let olds = |s: &DeploymentStatus| s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || olds(new) < olds(&old)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn deadline(d: &Deployment) -> i64 {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .map(i64::from)
        .unwrap_or(600)
}

/// Upstream's `DeploymentTimedOut`: no progress reported for progressDeadlineSeconds.
fn timed_out(d: &Deployment, st: &DeploymentStatus) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(c) = get_condition(st, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.as_second() + deadline(d) < Timestamp::now().as_second()),
    }
}

fn active(rss: &[ReplicaSet]) -> Vec<ReplicaSet> {
    rss.iter().filter(|r| replicas(r) > 0).cloned().collect()
}
fn sum(rss: &[ReplicaSet], f: fn(&ReplicaSet) -> i32) -> i32 {
    rss.iter().map(f).sum()
}

/// Upstream's `calculateStatus`.
fn calculate_status(
    all: &[ReplicaSet],
    new: Option<&ReplicaSet>,
    d: &Deployment,
) -> DeploymentStatus {
    let avail = sum(all, available);
    let total = sum(all, replicas);
    let old = d.status.clone().unwrap_or_default();
    let mut st = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(all, status_replicas)),
        updated_replicas: Some(new.map(status_replicas).unwrap_or(0)),
        ready_replicas: Some(sum(all, ready)),
        available_replicas: Some(avail),
        unavailable_replicas: Some((total - avail).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    if avail >= d_replicas(d) - max_unavailable(d) {
        set_condition(
            &mut st,
            new_condition(
                "Available",
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        set_condition(
            &mut st,
            new_condition(
                "Available",
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    st
}

/// A status as upstream serializes it: zero counts are omitted (`omitempty`).
fn normalized(st: &DeploymentStatus) -> DeploymentStatus {
    let nz = |v: Option<i32>| v.filter(|x| *x != 0);
    DeploymentStatus {
        observed_generation: st.observed_generation.filter(|g| *g != 0),
        replicas: nz(st.replicas),
        updated_replicas: nz(st.updated_replicas),
        ready_replicas: nz(st.ready_replicas),
        available_replicas: nz(st.available_replicas),
        unavailable_replicas: nz(st.unavailable_replicas),
        collision_count: st.collision_count,
        conditions: st.conditions.clone().filter(|c| !c.is_empty()),
        ..Default::default()
    }
}

/// What a rollout step did, for the sync to return.
type Step = Result<Option<Duration>, ControllerError>;

impl Ctl {
    fn enqueue_all(&self) {
        for d in self.deployments.store().state() {
            self.queue.add(key_of(d.as_ref()));
        }
    }

    fn deployment_for_ref(
        &self,
        ns: &str,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Option<Arc<Deployment>> {
        if r.kind != "Deployment" {
            return None;
        }
        let d = self
            .deployments
            .store()
            .get(&ObjectRef::new(&r.name).within(ns))?;
        (d.metadata.uid.as_deref() == Some(r.uid.as_str())).then_some(d)
    }

    fn on_rs(&self, rs: &ReplicaSet) {
        let ns = rs.namespace().unwrap_or_default();
        if let Some(r) = util::controller_ref(&rs.metadata) {
            if let Some(d) = self.deployment_for_ref(&ns, r) {
                self.queue.add(key_of(d.as_ref()));
            }
            return;
        }
        // An orphan: every Deployment that could adopt it.
        for d in self.deployments.store().state() {
            if d.namespace().as_deref() == Some(ns.as_str())
                && util::selects(d.spec.as_ref().map(|s| &s.selector), rs.labels())
            {
                self.queue.add(key_of(d.as_ref()));
            }
        }
    }

    fn on_pod_deleted(&self, p: &CachedPod) {
        let ns = p.namespace().unwrap_or_default();
        let Some(r) = util::controller_ref(&p.metadata) else {
            return;
        };
        if r.kind != "ReplicaSet" {
            return;
        }
        let Some(rs) = self.rss.store().get(&ObjectRef::new(&r.name).within(&ns)) else {
            return;
        };
        if let Some(d) =
            util::controller_ref(&rs.metadata).and_then(|r| self.deployment_for_ref(&ns, r))
        {
            if !is_rolling(&d) {
                self.queue.add(key_of(d.as_ref()));
            }
        }
    }

    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    #[tracing::instrument(skip(self))]
    async fn sync(&self, key: &str) -> Step {
        let (ns, name) = split_key(key);
        let Some(d) = self
            .deployments
            .store()
            .get(&ObjectRef::new(name).within(ns))
        else {
            return Ok(None);
        };
        let mut d = (*d).clone();
        let sel = d.spec.as_ref().map(|s| s.selector.clone());
        if util::selects_everything(sel.as_ref()) {
            self.rec.event(
                &d,
                WARNING,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            let st = d.status.clone().unwrap_or_default();
            if st.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
                let mut st = st;
                st.observed_generation = d.metadata.generation;
                self.write_status(&mut d, st).await?;
            }
            return Ok(None);
        }
        let rs_list = self.claim_replicasets(&d).await?;
        if d.metadata.deletion_timestamp.is_some() {
            let (new, olds) = self.get_all(&mut d, rs_list, false).await?;
            return self.sync_status(&mut d, &olds, new.as_ref()).await;
        }
        self.check_paused_conditions(&mut d).await?;
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || self.is_scaling_event(&mut d, &rs_list).await? {
            return self.sync_scale(&mut d, rs_list, paused).await;
        }
        if is_rolling(&d) {
            self.rollout_rolling(&mut d, rs_list).await
        } else {
            self.rollout_recreate(&mut d, rs_list).await
        }
    }

    /// Upstream's `ClaimReplicaSets`.
    async fn claim_replicasets(&self, d: &Deployment) -> Result<Vec<ReplicaSet>, ControllerError> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let sel = d.spec.as_ref().map(|s| s.selector.clone());
        let deleting = d.metadata.deletion_timestamp.is_some();
        let mut out = Vec::new();
        let mut can_adopt = None;
        for rs in self
            .rss
            .store()
            .state_filter(|r| r.metadata.namespace.as_deref() == Some(ns.as_str()))
        {
            let matches = util::selects(sel.as_ref(), rs.labels());
            match util::controller_ref(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches || deleting {
                        out.push((*rs).clone());
                        continue;
                    }
                    let refs: Vec<_> = rs
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    self.patch_refs(&ns, &rs, refs).await?;
                }
                Some(_) => {}
                None => {
                    if deleting || !matches || rs.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if can_adopt.is_none() {
                        let fresh = Api::<Deployment>::namespaced(self.client.clone(), &ns)
                            .get_opt(&d.name_any())
                            .await?;
                        can_adopt = Some(fresh.is_some_and(|f| {
                            f.metadata.uid == d.metadata.uid
                                && f.metadata.deletion_timestamp.is_none()
                        }));
                    }
                    if can_adopt != Some(true) {
                        continue;
                    }
                    let mut refs = rs.owner_references().to_vec();
                    refs.push(util::owner_ref(d));
                    if let Some(adopted) = self.patch_refs(&ns, &rs, refs).await? {
                        out.push(adopted);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn patch_refs(
        &self,
        ns: &str,
        rs: &ReplicaSet,
        refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    ) -> Result<Option<ReplicaSet>, ControllerError> {
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
        match self
            .rs_api(ns)
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the status (and keeps `d` in step with what was written).
    async fn write_status(
        &self,
        d: &mut Deployment,
        st: DeploymentStatus,
    ) -> Result<(), ControllerError> {
        let st = normalized(&st);
        if d.status.as_ref().map(normalized) == Some(st.clone()) {
            return Ok(());
        }
        let patch = json!({"status": {
            "observedGeneration": st.observed_generation,
            "replicas": st.replicas,
            "updatedReplicas": st.updated_replicas,
            "readyReplicas": st.ready_replicas,
            "availableReplicas": st.available_replicas,
            "unavailableReplicas": st.unavailable_replicas,
            "collisionCount": st.collision_count,
            "conditions": st.conditions,
        }});
        match Api::<Deployment>::namespaced(self.client.clone(), &d.namespace().unwrap_or_default())
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                d.status = Some(st);
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the Deployment's revision annotation to the new ReplicaSet's.
    async fn set_revision(&self, d: &mut Deployment, rev: &str) -> Result<(), ControllerError> {
        if d.annotations().get(REVISION).map(String::as_str) == Some(rev) {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        Api::<Deployment>::namespaced(self.client.clone(), &d.namespace().unwrap_or_default())
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        d.annotations_mut().insert(REVISION.into(), rev.into());
        Ok(())
    }

    async fn check_paused_conditions(&self, d: &mut Deployment) -> Result<(), ControllerError> {
        if !has_progress_deadline(d) {
            return Ok(());
        }
        let mut st = d.status.clone().unwrap_or_default();
        let cond = get_condition(&st, "Progressing");
        if cond.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT)) {
            return Ok(());
        }
        let paused_cond = cond.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused && !paused_cond {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "Unknown",
                    PAUSED,
                    "Deployment is paused".into(),
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "Unknown",
                    RESUMED,
                    "Deployment is resumed".into(),
                ),
            );
        } else {
            return Ok(());
        }
        self.write_status(d, st).await
    }

    /// Upstream's `getAllReplicaSetsAndSyncRevision`: the new ReplicaSet (found, or created when
    /// `create`) and the old ones, with revision annotations brought up to date.
    async fn get_all(
        &self,
        d: &mut Deployment,
        mut rs_list: Vec<ReplicaSet>,
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), ControllerError> {
        rs_list.sort_by(by_creation);
        let tmpl = template(d);
        let pos = rs_list.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &tmpl))
        });
        let existing = pos.map(|i| rs_list.remove(i));
        let olds = rs_list;
        let new_rev = olds
            .iter()
            .map(|r| revision(&r.metadata))
            .max()
            .unwrap_or(0)
            + 1;
        let ns = d.namespace().unwrap_or_default();
        if let Some(mut rs) = existing {
            let mut changed = self.set_new_rs_annotations(d, &mut rs, new_rev, true);
            let mrs = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if let Some(spec) = rs.spec.as_mut() {
                if spec.min_ready_seconds.unwrap_or(0) != mrs.unwrap_or(0) {
                    spec.min_ready_seconds = mrs;
                    changed = true;
                }
            }
            if changed {
                rs = self
                    .rs_api(&ns)
                    .replace(&rs.name_any(), &PostParams::default(), &rs)
                    .await?;
            }
            let rev = rs.annotations().get(REVISION).cloned().unwrap_or_default();
            self.set_revision(d, &rev).await?;
            let st = d.status.clone().unwrap_or_default();
            if has_progress_deadline(d) && get_condition(&st, "Progressing").is_none() {
                let mut st = st;
                set_condition(
                    &mut st,
                    new_condition(
                        "Progressing",
                        "True",
                        FOUND_NEW_RS,
                        format!("Found new replica set \"{}\"", rs.name_any()),
                    ),
                );
                self.write_status(d, st).await?;
            }
            return Ok((Some(rs), olds));
        }
        if !create {
            return Ok((None, olds));
        }
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&tmpl, collision);
        let mut new_tmpl = tmpl.clone();
        new_tmpl
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut sel = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        sel.match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{}", d.name_any(), hash)),
                namespace: Some(ns.clone()),
                owner_references: Some(vec![util::owner_ref(d)]),
                labels: new_tmpl.metadata.as_ref().and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector: sel,
                template: Some(new_tmpl),
            }),
            status: None,
        };
        self.set_new_rs_annotations(d, &mut rs, new_rev, false);
        let mut all = olds.clone();
        all.push(rs.clone());
        let n = new_rs_new_replicas(d, &all, &rs);
        rs.spec.as_mut().expect("spec").replicas = Some(n);
        let (created, already) = match self.rs_api(&ns).create(&PostParams::default(), &rs).await {
            Ok(c) => (c, false),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let cur = self.rs_api(&ns).get(&rs.name_any()).await?;
                let ours = util::controller_ref(&cur.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                let same = cur
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &tmpl));
                if ours && same {
                    (cur, true)
                } else {
                    // A hash collision: bump the count so the next hash differs.
                    let mut st = d.status.clone().unwrap_or_default();
                    st.collision_count = Some(st.collision_count.unwrap_or(0) + 1);
                    self.write_status(d, st).await?;
                    return Err(ControllerError::Stopped {
                        name: COMPONENT,
                        reason: format!("hash collision for replica set {}", rs.name_any()),
                    });
                }
            }
            Err(e) => {
                let msg = format!(
                    "Failed to create new replica set \"{}\": {}",
                    rs.name_any(),
                    api_message(&e)
                );
                if has_progress_deadline(d) {
                    let mut st = d.status.clone().unwrap_or_default();
                    set_condition(
                        &mut st,
                        new_condition("Progressing", "False", RS_CREATE_ERROR, msg.clone()),
                    );
                    self.write_status(d, st).await?;
                }
                self.rec.event(d, WARNING, RS_CREATE_ERROR, msg);
                return Err(e.into());
            }
        };
        if !already && n > 0 {
            self.rec.event(
                d,
                NORMAL,
                "ScalingReplicaSet",
                format!(
                    "Scaled up replica set {} from 0 to {}",
                    created.name_any(),
                    n
                ),
            );
        }
        self.set_revision(d, &new_rev.to_string()).await?;
        if !already && has_progress_deadline(d) {
            let mut st = d.status.clone().unwrap_or_default();
            set_condition(
                &mut st,
                new_condition(
                    "Progressing",
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set \"{}\"", created.name_any()),
                ),
            );
            self.write_status(d, st).await?;
        }
        Ok((Some(created), olds))
    }

    /// Upstream's `SetNewReplicaSetAnnotations`; returns whether anything changed.
    fn set_new_rs_annotations(
        &self,
        d: &Deployment,
        rs: &mut ReplicaSet,
        new_rev: i64,
        exists: bool,
    ) -> bool {
        let mut changed = false;
        let ann = rs.annotations_mut();
        for (k, v) in d.annotations() {
            if NOT_COPIED.contains(&k.as_str()) || ann.get(k) == Some(v) {
                continue;
            }
            ann.insert(k.clone(), v.clone());
            changed = true;
        }
        let old = ann.get(REVISION).cloned();
        let old_rev: i64 = old.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        if old_rev < new_rev {
            ann.insert(REVISION.into(), new_rev.to_string());
            changed = true;
            if exists {
                if let Some(o) = old.filter(|o| !o.is_empty()) {
                    let hist = match ann.get(REVISION_HISTORY) {
                        Some(h) if !h.is_empty() => format!("{h},{o}"),
                        _ => o,
                    };
                    ann.insert(REVISION_HISTORY.into(), hist);
                }
            }
        }
        if !exists {
            set_replicas_annotations(rs, d_replicas(d), d_replicas(d) + max_surge(d));
            changed = true;
        }
        changed
    }

    /// Scales a ReplicaSet (and refreshes its desired/max annotations), recording
    /// ScalingReplicaSet like upstream. Returns whether the size changed.
    async fn scale_rs(
        &self,
        rs: &mut ReplicaSet,
        to: i32,
        d: &Deployment,
        op: Option<&str>,
    ) -> Result<bool, ControllerError> {
        let from = replicas(rs);
        let size = from != to;
        let want_ann = (d_replicas(d), d_replicas(d) + max_surge(d));
        let ann = annotation_int(rs, DESIRED) != Some(want_ann.0)
            || annotation_int(rs, MAX_REPLICAS) != Some(want_ann.1);
        if !size && !ann {
            return Ok(false);
        }
        let mut copy = rs.clone();
        copy.spec.get_or_insert_with(Default::default).replicas = Some(to);
        set_replicas_annotations(&mut copy, want_ann.0, want_ann.1);
        let updated = self
            .rs_api(&rs.namespace().unwrap_or_default())
            .replace(&rs.name_any(), &PostParams::default(), &copy)
            .await?;
        *rs = updated;
        if size {
            let op = op.unwrap_or(if from < to { "up" } else { "down" });
            self.rec.event(
                d,
                NORMAL,
                "ScalingReplicaSet",
                format!(
                    "Scaled {op} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            );
        }
        Ok(size)
    }

    async fn is_scaling_event(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<bool, ControllerError> {
        let (new, olds) = self.get_all(d, rs_list.to_vec(), false).await?;
        let mut all = olds;
        all.extend(new);
        let n = d_replicas(d);
        Ok(active(&all)
            .iter()
            .any(|rs| annotation_int(rs, DESIRED).is_some_and(|want| want != n)))
    }

    /// Upstream's `sync`: scaling (also while paused) and status, no rollout.
    async fn sync_scale(&self, d: &mut Deployment, rs_list: Vec<ReplicaSet>, paused: bool) -> Step {
        let (mut new, mut olds) = self.get_all(d, rs_list, false).await?;
        self.scale(d, &mut new, &mut olds).await?;
        if paused {
            self.cleanup(d, &olds).await?;
        }
        self.sync_status(d, &olds, new.as_ref()).await
    }

    async fn sync_status(
        &self,
        d: &mut Deployment,
        olds: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Step {
        let mut all = olds.to_vec();
        all.extend(new.cloned());
        let st = calculate_status(&all, new, d);
        self.write_status(d, st).await?;
        Ok(None)
    }

    /// Upstream's `scale`: a lone active ReplicaSet takes the whole count; otherwise a
    /// rolling Deployment spreads the change over its ReplicaSets in proportion to their sizes.
    async fn scale(
        &self,
        d: &Deployment,
        new: &mut Option<ReplicaSet>,
        olds: &mut [ReplicaSet],
    ) -> Result<(), ControllerError> {
        let n = d_replicas(d);
        // Active or latest.
        let mut idx: Vec<(bool, usize)> = new.iter().map(|_| (true, 0)).collect();
        idx.extend((0..olds.len()).map(|i| (false, i)));
        let get = |new: &Option<ReplicaSet>,
                   olds: &[ReplicaSet],
                   (is_new, i): (bool, usize)|
         -> ReplicaSet {
            if is_new {
                new.clone().expect("new")
            } else {
                olds[i].clone()
            }
        };
        let actives: Vec<(bool, usize)> = idx
            .iter()
            .copied()
            .filter(|k| replicas(&get(new, olds, *k)) > 0)
            .collect();
        let lone = match actives.len() {
            0 if new.is_some() => Some((true, 0)),
            0 => (0..olds.len())
                .max_by(|a, b| by_creation(&olds[*a], &olds[*b]))
                .map(|i| (false, i)),
            1 => Some(actives[0]),
            _ => None,
        };
        if let Some(k) = lone {
            let rs = if k.0 {
                new.as_mut().expect("new")
            } else {
                &mut olds[k.1]
            };
            if replicas(rs) != n {
                self.scale_rs(rs, n, d, None).await?;
            }
            return Ok(());
        }
        if new.as_ref().is_some_and(|rs| is_saturated(d, rs)) {
            for rs in olds.iter_mut().filter(|r| replicas(r) > 0) {
                self.scale_rs(rs, 0, d, None).await?;
            }
            return Ok(());
        }
        if !is_rolling(d) {
            return Ok(());
        }
        let mut all: Vec<(bool, usize)> = actives;
        let total: i32 = all.iter().map(|k| replicas(&get(new, olds, *k))).sum();
        let allowed = if n > 0 { n + max_surge(d) } else { n };
        let to_add = allowed - total;
        let created = |k: (bool, usize)| get(new, olds, k).metadata.creation_timestamp.map(|t| t.0);
        let op = match to_add.cmp(&0) {
            std::cmp::Ordering::Greater => {
                // Largest first, newer first among equals.
                all.sort_by(|a, b| {
                    replicas(&get(new, olds, *b))
                        .cmp(&replicas(&get(new, olds, *a)))
                        .then_with(|| created(*b).cmp(&created(*a)))
                });
                Some("up")
            }
            std::cmp::Ordering::Less => {
                all.sort_by(|a, b| {
                    replicas(&get(new, olds, *b))
                        .cmp(&replicas(&get(new, olds, *a)))
                        .then_with(|| created(*a).cmp(&created(*b)))
                });
                Some("down")
            }
            std::cmp::Ordering::Equal => None,
        };
        let mut added = 0;
        let mut sizes = Vec::new();
        for k in &all {
            let rs = get(new, olds, *k);
            if to_add != 0 {
                let p = proportion(&rs, d, to_add, added);
                sizes.push(replicas(&rs) + p);
                added += p;
            } else {
                sizes.push(replicas(&rs));
            }
        }
        for (i, k) in all.iter().enumerate() {
            let mut size = sizes[i];
            if i == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            let rs = if k.0 {
                new.as_mut().expect("new")
            } else {
                &mut olds[k.1]
            };
            self.scale_rs(rs, size, d, op).await?;
        }
        Ok(())
    }

    async fn rollout_rolling(&self, d: &mut Deployment, rs_list: Vec<ReplicaSet>) -> Step {
        let (new, mut olds) = self.get_all(d, rs_list, true).await?;
        let Some(mut new) = new else {
            return Ok(None);
        };
        // Scale up the new ReplicaSet as far as maxSurge allows.
        let mut all = olds.clone();
        all.push(new.clone());
        let n = d_replicas(d);
        let scaled_up = if replicas(&new) == n {
            false
        } else if replicas(&new) > n {
            self.scale_rs(&mut new, n, d, None).await?
        } else {
            let want = new_rs_new_replicas(d, &all, &new);
            self.scale_rs(&mut new, want, d, None).await?
        };
        if scaled_up {
            return self.sync_rollout_status(d, &olds, Some(&new)).await;
        }
        if self.reconcile_olds(d, &mut olds, &new).await? {
            return self.sync_rollout_status(d, &olds, Some(&new)).await;
        }
        if complete(d, &d.status.clone().unwrap_or_default()) {
            self.cleanup(d, &olds).await?;
        }
        self.sync_rollout_status(d, &olds, Some(&new)).await
    }

    /// Upstream's `reconcileOldReplicaSets`: scales old ReplicaSets down as far as
    /// maxUnavailable allows, unhealthy pods first.
    async fn reconcile_olds(
        &self,
        d: &Deployment,
        olds: &mut [ReplicaSet],
        new: &ReplicaSet,
    ) -> Result<bool, ControllerError> {
        let old_pods: i32 = olds.iter().filter(|r| replicas(r) > 0).map(replicas).sum();
        if old_pods == 0 {
            return Ok(false);
        }
        let all_pods = old_pods + replicas(new);
        let min_available = d_replicas(d) - max_unavailable(d);
        let new_unavailable = replicas(new) - available(new);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        olds.sort_by(by_creation);
        // Unhealthy replicas first.
        let mut cleaned = 0;
        for rs in olds.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let (r, a) = (replicas(rs), available(rs));
            if r == 0 || r == a {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(r - a);
            self.scale_rs(rs, r - down, d, None).await?;
            cleaned += down;
        }
        // Then available ones, keeping minAvailable.
        let avail: i32 = olds.iter().map(available).sum::<i32>() + available(new);
        let mut scaled = 0;
        if avail > min_available {
            let total = avail - min_available;
            for rs in olds.iter_mut() {
                if scaled >= total {
                    break;
                }
                let r = replicas(rs);
                if r == 0 {
                    continue;
                }
                let down = r.min(total - scaled);
                self.scale_rs(rs, r - down, d, None).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn rollout_recreate(&self, d: &mut Deployment, rs_list: Vec<ReplicaSet>) -> Step {
        let all_list = rs_list.clone();
        let (mut new, mut olds) = self.get_all(d, rs_list, false).await?;
        let mut scaled_down = false;
        for rs in olds.iter_mut().filter(|r| replicas(r) > 0) {
            if self.scale_rs(rs, 0, d, None).await? {
                scaled_down = true;
            }
        }
        if scaled_down || self.old_pods_running(new.as_ref(), &olds, &all_list) {
            return self.sync_rollout_status(d, &olds, new.as_ref()).await;
        }
        if new.is_none() {
            let (n, o) = self.get_all(d, all_list, true).await?;
            new = n;
            olds = o;
        }
        if let Some(rs) = new.as_mut() {
            let n = d_replicas(d);
            self.scale_rs(rs, n, d, None).await?;
        }
        if complete(d, &d.status.clone().unwrap_or_default()) {
            self.cleanup(d, &olds).await?;
        }
        self.sync_rollout_status(d, &olds, new.as_ref()).await
    }

    /// Whether pods of old ReplicaSets still exist in a phase other than Succeeded/Failed.
    fn old_pods_running(
        &self,
        new: Option<&ReplicaSet>,
        olds: &[ReplicaSet],
        all: &[ReplicaSet],
    ) -> bool {
        if olds.iter().map(status_replicas).sum::<i32>() > 0 {
            return true;
        }
        let new_uid = new.and_then(|r| r.metadata.uid.clone());
        let uids: HashSet<String> = all
            .iter()
            .filter_map(|r| r.metadata.uid.clone())
            .filter(|u| Some(u) != new_uid.as_ref())
            .collect();
        !self
            .pods
            .store()
            .state_filter(|p| {
                util::controller_ref(&p.metadata).is_some_and(|r| uids.contains(&r.uid))
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded") | Some("Failed")
                    )
            })
            .is_empty()
    }

    /// Upstream's `cleanupDeployment`: old ReplicaSets beyond revisionHistoryLimit that are
    /// scaled to zero and settled are deleted, oldest revision first.
    async fn cleanup(&self, d: &Deployment, olds: &[ReplicaSet]) -> Result<(), ControllerError> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = olds
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| {
            revision(&a.metadata)
                .cmp(&revision(&b.metadata))
                .then_with(|| by_creation(a, b))
        });
        for rs in cleanable.into_iter().take(diff as usize) {
            let settled = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0)
                >= rs.metadata.generation.unwrap_or(0);
            if status_replicas(rs) != 0 || replicas(rs) != 0 || !settled {
                continue;
            }
            tracing::info!(replicaset = %rs.name_any(), "deleting old replica set beyond the history limit");
            match self
                .rs_api(&rs.namespace().unwrap_or_default())
                .delete(&rs.name_any(), &Default::default())
                .await
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Upstream's `syncRolloutStatus`: the Progressing condition (progressing, complete or
    /// timed out) and requeue at the progress deadline.
    async fn sync_rollout_status(
        &self,
        d: &mut Deployment,
        olds: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Step {
        let mut all = olds.to_vec();
        all.extend(new.cloned());
        let mut st = calculate_status(&all, new, d);
        if !has_progress_deadline(d) {
            remove_condition(&mut st, "Progressing");
        }
        let cur = d
            .status
            .as_ref()
            .and_then(|s| get_condition(s, "Progressing"))
            .cloned();
        let is_complete = st.replicas == st.updated_replicas
            && cur
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        if has_progress_deadline(d) && !is_complete {
            let new_name = new.map(|r| r.name_any()).unwrap_or_default();
            if complete(d, &st) {
                set_condition(
                    &mut st,
                    new_condition(
                        "Progressing",
                        "True",
                        NEW_RS_AVAILABLE,
                        format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                    ),
                );
            } else if progressing(d, &st) {
                let msg = match new {
                    Some(_) => format!("ReplicaSet \"{new_name}\" is progressing."),
                    None => format!("Deployment \"{}\" is progressing.", d.name_any()),
                };
                let mut c = new_condition("Progressing", "True", RS_UPDATED, msg);
                if let Some(cur) = &cur {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut st, "Progressing");
                }
                set_condition(&mut st, c);
            } else if timed_out(d, &st) {
                set_condition(
                    &mut st,
                    new_condition(
                        "Progressing",
                        "False",
                        TIMED_OUT,
                        format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                    ),
                );
            }
        }
        // ReplicaFailure of any ReplicaSet, newest first.
        let failure = new
            .into_iter()
            .chain(olds.iter())
            .filter_map(|rs| {
                rs.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "ReplicaFailure")
            })
            .next()
            .cloned();
        match failure {
            Some(f) => set_condition(
                &mut st,
                DeploymentCondition {
                    type_: f.type_,
                    status: f.status,
                    reason: f.reason,
                    message: f.message,
                    last_update_time: f.last_transition_time.clone(),
                    last_transition_time: f.last_transition_time,
                },
            ),
            None => remove_condition(&mut st, "ReplicaFailure"),
        }
        let requeue = requeue_stuck(d, &st);
        self.write_status(d, st).await?;
        Ok(requeue)
    }
}

/// When the Progressing condition will pass the deadline, for a rollout still under way.
fn requeue_stuck(d: &Deployment, st: &DeploymentStatus) -> Option<Duration> {
    let c = get_condition(st, "Progressing")?;
    if !has_progress_deadline(d)
        || matches!(
            c.reason.as_deref(),
            Some(NEW_RS_AVAILABLE) | Some(TIMED_OUT)
        )
        || complete(d, st)
    {
        return None;
    }
    let from = c.last_update_time.as_ref()?.0.as_second();
    let left = from + deadline(d) - Timestamp::now().as_second();
    Some(Duration::from_secs(left.max(0) as u64 + 1))
}

fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) {
    let ann = rs.annotations_mut();
    ann.insert(DESIRED.into(), desired.to_string());
    ann.insert(MAX_REPLICAS.into(), max.to_string());
}

fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    let n = d_replicas(d);
    annotation_int(rs, DESIRED) == Some(n) && replicas(rs) == n && available(rs) == n
}

/// Upstream's `NewRSNewReplicas`.
fn new_rs_new_replicas(d: &Deployment, all: &[ReplicaSet], new: &ReplicaSet) -> i32 {
    let n = d_replicas(d);
    if !is_rolling(d) {
        return n;
    }
    if replicas(new) >= n {
        return replicas(new);
    }
    let current = sum(all, replicas);
    let max_total = n + max_surge(d);
    if current >= max_total {
        return replicas(new);
    }
    replicas(new) + (max_total - current).min(n - replicas(new))
}

/// Upstream's `GetProportion` / `getReplicaSetFraction`.
fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if d_replicas(d) == 0 {
        -replicas(rs)
    } else {
        let target = d_replicas(d) + max_surge(d);
        let annotated = annotation_int(rs, MAX_REPLICAS)
            .unwrap_or_else(|| d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0));
        if annotated == 0 {
            0
        } else {
            ((f64::from(replicas(rs)) * f64::from(target)) / f64::from(annotated)).round() as i32
                - replicas(rs)
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

#[allow(dead_code)]
fn labels_of(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn deploy(replicas: i32, surge: &str, unavailable: &str) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::String(surge.into())),
                        max_unavailable: Some(IntOrString::String(unavailable.into())),
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn fenceposts_round_like_upstream() {
        assert_eq!(fenceposts(&deploy(10, "25%", "25%")), (3, 2));
        assert_eq!(fenceposts(&deploy(1, "0%", "0%")), (0, 1));
        assert_eq!(
            max_unavailable(&deploy(3, "25%", "25%")),
            0.max(fenceposts(&deploy(3, "25%", "25%")).1)
        );
    }

    #[test]
    fn hash_uses_the_safe_alphabet() {
        let h = template_hash(&PodTemplateSpec::default(), None);
        assert!(!h.is_empty());
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(h, template_hash(&PodTemplateSpec::default(), Some(1)));
    }

    #[test]
    fn new_rs_grows_by_the_surge() {
        let d = deploy(4, "1", "0");
        let rs = |n: i32| ReplicaSet {
            spec: Some(ReplicaSetSpec {
                replicas: Some(n),
                ..Default::default()
            }),
            ..Default::default()
        };
        let new = rs(0);
        assert_eq!(new_rs_new_replicas(&d, &[rs(4), new.clone()], &new), 1);
    }
}
