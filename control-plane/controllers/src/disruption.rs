//! The disruption controller (upstream's `pkg/controller/disruption`): keeps the status of every
//! PodDisruptionBudget — the pods it selects (`expectedPods`), how many of them are healthy
//! (Ready, not terminating, not just evicted: `currentHealthy`), how many must stay healthy
//! (`desiredHealthy`), and so `disruptionsAllowed`, with the `DisruptionAllowed` condition
//! (`SufficientPods`, `InsufficientPods`, or `SyncFailed` with the error) and `observedGeneration`.
//!
//! `minAvailable` as a number counts the selected pods; `maxUnavailable` and a percentage
//! `minAvailable` count the replicas the pods' controllers want (a ReplicaSet's, or its
//! Deployment's, a ReplicationController's, a StatefulSet's `spec.replicas`). Percentages round
//! up. The eviction subresource (API server) takes a disruption by decrementing
//! `disruptionsAllowed` and recording the pod in `disruptedPods`; this controller keeps such a pod
//! out of the healthy count until it is gone or two minutes have passed (then it warns with a
//! `NotDeleted` event on the pod and forgets it).

use crate::cached_pod::CachedPod;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Recorder, NORMAL, WARNING};
use crate::informer::{Change, Informer};
use crate::queue::WorkQueue;
use crate::replicaset::{api_message, is_not_found};
use crate::util::{self, key_of, split_key};
use crate::{Context, ControllerError};

pub const COMPONENT: &str = "disruption-controller";
const WORKERS: usize = 2;
/// How long an evicted pod may take to go before it counts again (upstream's `DeletionTimeout`).
const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);
/// How long a `DisruptionTarget` condition may stand on a pod that is not going (upstream's
/// `stalePodDisruptionTimeout`).
const STALE_DISRUPTION: SignedDuration = SignedDuration::from_secs(120);
/// Work-queue keys of pods (stale disruption checks), beside the budgets' `namespace/name`.
const POD_KEY: &str = "pod:";

pub const CONDITION: &str = "DisruptionAllowed";
pub const SUFFICIENT: &str = "SufficientPods";
pub const INSUFFICIENT: &str = "InsufficientPods";
pub const SYNC_FAILED: &str = "SyncFailed";

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Api(String),
    #[error("found no controller ref for pod {0:?}")]
    NoControllerRef(String),
    #[error("found no controllers for pod {0:?}")]
    NoControllers(String),
    #[error("invalid value for IntOrString: invalid value {0:?}")]
    BadIntOrPercent(String),
}

struct Ctl {
    client: Client,
    pdbs: Arc<Informer<PodDisruptionBudget>>,
    pods: Arc<Informer<CachedPod>>,
    rss: Arc<Informer<ReplicaSet>>,
    deployments: Arc<Informer<Deployment>>,
    rcs: Arc<Informer<ReplicationController>>,
    stss: Arc<Informer<StatefulSet>>,
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
    // The budget and StatefulSet informers are this controller's own; they stop with it.
    let (_own_tx, own_rx) = tokio::sync::watch::channel(false);
    let c = Arc::new(Ctl {
        client: ctx.client.clone(),
        pdbs: Informer::start(Api::all(ctx.reader.clone()), own_rx.clone()),
        pods: ctx.informers.pods(),
        rss: ctx.informers.replicasets(),
        deployments: ctx.informers.deployments(),
        rcs: ctx.informers.replication_controllers(),
        stss: Informer::start(Api::all(ctx.reader.clone()), own_rx),
        queue: WorkQueue::new(),
        rec: Recorder::new(ctx.client.clone(), COMPONENT),
    });
    let mut pdb_rx = c.pdbs.subscribe();
    let mut pod_rx = c.pods.subscribe();
    let mut rs_rx = c.rss.subscribe();
    let mut d_rx = c.deployments.subscribe();
    let mut rc_rx = c.rcs.subscribe();
    let mut sts_rx = c.stss.subscribe();
    c.pdbs.ready().await;
    c.pods.ready().await;
    c.rss.ready().await;
    c.deployments.ready().await;
    c.rcs.ready().await;
    c.stss.ready().await;
    tracing::info!(controller = COMPONENT, "caches synced");
    c.enqueue_all();
    let handlers = {
        let c = c.clone();
        async move {
            loop {
                let ns = tokio::select! {
                    ch = pdb_rx.recv() => match ch {
                        Ok(Change::Added(p)) | Ok(Change::Updated { new: p, .. }) | Ok(Change::Deleted(p)) => {
                            c.queue.add(key_of(p.as_ref()));
                            continue;
                        }
                        Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => { c.enqueue_all(); continue; }
                        Err(RecvError::Closed) => return,
                    },
                    ch = pod_rx.recv() => match ch {
                        Ok(Change::Added(p)) | Ok(Change::Deleted(p)) => { c.on_pod(&p); continue; }
                        Ok(Change::Updated { old, new }) => {
                            if old.labels() != new.labels() { c.on_pod(&old); }
                            c.on_pod(&new);
                            continue;
                        }
                        Ok(Change::Resynced) => continue,
                        Err(RecvError::Lagged(_)) => { c.enqueue_all(); continue; }
                        Err(RecvError::Closed) => return,
                    },
                    // A controller's scale changes what the budgets over its pods expect.
                    ch = rs_rx.recv() => changed_ns(ch),
                    ch = d_rx.recv() => changed_ns(ch),
                    ch = rc_rx.recv() => changed_ns(ch),
                    ch = sts_rx.recv() => changed_ns(ch),
                };
                match ns {
                    Some(Some(ns)) => c.enqueue_namespace(&ns),
                    Some(None) => {}
                    None => return,
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

/// The namespace of a changed workload whose replicas may have changed: `None` when the channel
/// closed, `Some(None)` for nothing to do.
fn changed_ns<K: kube::Resource>(ch: Result<Change<K>, RecvError>) -> Option<Option<String>> {
    match ch {
        Ok(Change::Added(o)) | Ok(Change::Deleted(o)) => Some(o.namespace()),
        Ok(Change::Updated { old, new }) => {
            Some(if old.meta().generation != new.meta().generation {
                new.namespace()
            } else {
                None
            })
        }
        Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => Some(None),
        Err(RecvError::Closed) => None,
    }
}

/// A controller found for a pod: its UID and the replicas it wants.
struct Scale {
    uid: String,
    replicas: i32,
}

impl Ctl {
    fn enqueue_all(&self) {
        for p in self.pdbs.store().state() {
            self.queue.add(key_of(p.as_ref()));
        }
    }

    fn enqueue_namespace(&self, ns: &str) {
        for p in self.pdbs.store().state() {
            if p.namespace().as_deref() == Some(ns) {
                self.queue.add(key_of(p.as_ref()));
            }
        }
    }

    fn on_pod(&self, pod: &CachedPod) {
        if let Some(since) = stale_disruption_since(pod) {
            let due = since + STALE_DISRUPTION;
            let wait = (due.as_millisecond() - Timestamp::now().as_millisecond()).max(0) as u64;
            self.queue.add_after(
                format!("{POD_KEY}{}", key_of(pod)),
                Duration::from_millis(wait),
            );
        }
        let ns = pod.namespace();
        for p in self.pdbs.store().state() {
            if p.namespace() == ns
                && util::selects(
                    p.spec.as_ref().and_then(|s| s.selector.as_ref()),
                    pod.labels(),
                )
            {
                self.queue.add(key_of(p.as_ref()));
            }
        }
    }

    async fn sync(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        if let Some(pod_key) = key.strip_prefix(POD_KEY) {
            return self.sync_stale_disruption(pod_key).await;
        }
        let (ns, name) = split_key(key);
        let Some(pdb) = self.pdbs.store().get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        match self.try_sync(&pdb).await {
            Ok(after) => Ok(after),
            Err(e) => {
                tracing::info!(controller = COMPONENT, pdb = key, error = %e, "sync failed");
                self.fail_safe(&pdb, &e.to_string()).await?;
                Err(ControllerError::Stopped {
                    name: COMPONENT,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Upstream's stale-disruption clean-up: a pod marked `DisruptionTarget` (by an eviction or
    /// a preemption) that is still not terminating two minutes later gets the condition set to
    /// False, so it no longer reads as about to go.
    async fn sync_stale_disruption(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (ns, name) = split_key(key);
        let Some(pod) = self.pods.store().get(&ObjectRef::new(name).within(ns)) else {
            return Ok(None);
        };
        let Some(since) = stale_disruption_since(&pod) else {
            return Ok(None);
        };
        let now = Timestamp::now();
        let due = since + STALE_DISRUPTION;
        if due > now {
            let wait = (due.as_millisecond() - now.as_millisecond()).max(0) as u64;
            return Ok(Some(Duration::from_millis(wait)));
        }
        // The cache holds only part of the pod, so the conditions go back as a merge patch
        // (the whole list, as upstream's status update sends it), guarded by the cached
        // resourceVersion as upstream's update is.
        let mut conds = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for c in conds.iter_mut().filter(|c| c.type_ == "DisruptionTarget") {
            c.status = "False".into();
            c.reason = None;
            c.message = None;
            c.last_transition_time = Some(crate::workload::now());
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": conds},
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(
                    controller = COMPONENT,
                    pod = key,
                    "reset stale DisruptionTarget condition to False"
                );
                Ok(None)
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn pods_for(&self, pdb: &PodDisruptionBudget) -> Vec<Arc<CachedPod>> {
        let ns = pdb.namespace();
        let sel = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
        let mut pods: Vec<_> = self
            .pods
            .store()
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && util::selects(sel, p.labels()))
            .collect();
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    async fn try_sync(&self, pdb: &PodDisruptionBudget) -> Result<Option<Duration>, SyncError> {
        let pods = self.pods_for(pdb);
        if pods.is_empty() {
            self.rec
                .event(pdb, NORMAL, "NoPods", "No matching pods found".into());
        }
        let (expected, desired) = match self.expected_count(pdb, &pods).await {
            Ok(v) => v,
            Err(e) => {
                self.rec.event(
                    pdb,
                    WARNING,
                    "CalculateExpectedPodCountFailed",
                    format!("Failed to calculate the number of expected pods: {e}"),
                );
                return Err(e);
            }
        };
        let now = Timestamp::now();
        let (disrupted, recheck) = self.disrupted_pods(pdb, &pods, now);
        let healthy = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                disrupted
                    .get(&p.name_any())
                    .is_none_or(|t| t.0 + DELETION_TIMEOUT <= now)
            })
            .filter(|p| util::is_ready(p))
            .count() as i32;
        self.update_status(pdb, healthy, desired, expected, disrupted)
            .await?;
        Ok(recheck.map(|t| {
            Duration::from_millis((t.as_millisecond() - now.as_millisecond()).max(0) as u64 + 100)
        }))
    }

    /// `(expectedPods, desiredHealthy)` (upstream's `getExpectedPodCount`).
    async fn expected_count(
        &self,
        pdb: &PodDisruptionBudget,
        pods: &[Arc<CachedPod>],
    ) -> Result<(i32, i32), SyncError> {
        let spec = pdb.spec.clone().unwrap_or_default();
        if let Some(mu) = &spec.max_unavailable {
            let expected = self.expected_scale(pdb, pods).await?;
            let mu = scaled(mu, expected)?;
            return Ok((expected, (expected - mu).max(0)));
        }
        match &spec.min_available {
            Some(IntOrString::Int(i)) => Ok((pods.len() as i32, *i)),
            Some(v @ IntOrString::String(_)) => {
                let expected = self.expected_scale(pdb, pods).await?;
                Ok((expected, scaled(v, expected)?))
            }
            None => Ok((0, 0)),
        }
    }

    /// The sum of the replicas the pods' controllers want (upstream's `getExpectedScale`).
    async fn expected_scale(
        &self,
        pdb: &PodDisruptionBudget,
        pods: &[Arc<CachedPod>],
    ) -> Result<i32, SyncError> {
        let mut scales: BTreeMap<String, i32> = BTreeMap::new();
        for pod in pods {
            let Some(r) = util::controller_ref(&pod.metadata) else {
                let e = SyncError::NoControllerRef(pod.name_any());
                self.rec
                    .event(pdb, WARNING, "NoControllerRef", e.to_string());
                return Err(e);
            };
            if scales.contains_key(&r.uid) {
                continue;
            }
            let ns = pod.namespace().unwrap_or_default();
            let found = match self.find_scale(r, &ns) {
                Some(s) => Some(s),
                None => self.generic_scale(r, &ns).await?,
            };
            match found {
                Some(s) => {
                    scales.insert(s.uid, s.replicas);
                }
                None => {
                    let e = SyncError::NoControllers(pod.name_any());
                    self.rec.event(pdb, WARNING, "NoControllers", e.to_string());
                    return Err(e);
                }
            }
        }
        Ok(scales.values().sum())
    }

    /// The finders of upstream: a ReplicaSet (or the Deployment owning it), a
    /// ReplicationController, a StatefulSet.
    fn find_scale(&self, r: &OwnerReference, ns: &str) -> Option<Scale> {
        let group = r.api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
        match (group, r.kind.as_str()) {
            ("apps" | "extensions", "ReplicaSet") => {
                let rs = self
                    .rss
                    .store()
                    .get(&ObjectRef::new(&r.name).within(ns))
                    .filter(|rs| rs.metadata.uid.as_deref() == Some(r.uid.as_str()))?;
                if let Some(dr) = util::controller_ref(&rs.metadata)
                    .filter(|d| d.kind == "Deployment" && d.api_version.starts_with("apps/"))
                {
                    let d = self
                        .deployments
                        .store()
                        .get(&ObjectRef::new(&dr.name).within(ns))
                        .filter(|d| d.metadata.uid.as_deref() == Some(dr.uid.as_str()))?;
                    return Some(Scale {
                        uid: dr.uid.clone(),
                        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    });
                }
                Some(Scale {
                    uid: r.uid.clone(),
                    replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                })
            }
            ("", "ReplicationController") => {
                let rc = self
                    .rcs
                    .store()
                    .get(&ObjectRef::new(&r.name).within(ns))
                    .filter(|x| x.metadata.uid.as_deref() == Some(r.uid.as_str()))?;
                Some(Scale {
                    uid: r.uid.clone(),
                    replicas: rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                })
            }
            ("apps", "StatefulSet") => {
                let sts = self
                    .stss
                    .store()
                    .get(&ObjectRef::new(&r.name).within(ns))
                    .filter(|x| x.metadata.uid.as_deref() == Some(r.uid.as_str()))?;
                Some(Scale {
                    uid: r.uid.clone(),
                    replicas: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                })
            }
            _ => None,
        }
    }

    /// Any other controller: its `/scale` subresource, found by discovery (upstream's
    /// `getScaleController`), when it is the pod's controller (same UID).
    async fn generic_scale(
        &self,
        r: &OwnerReference,
        ns: &str,
    ) -> Result<Option<Scale>, SyncError> {
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &r.kind);
        let ar = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok((ar, _)) => ar,
            Err(kube::Error::Discovery(_)) => return Ok(None),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
            Err(e) => return Err(SyncError::Api(api_message(&e))),
        };
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        match api.get_scale(&r.name).await {
            Ok(s) if s.metadata.uid.as_deref() == Some(r.uid.as_str()) => Ok(Some(Scale {
                uid: r.uid.clone(),
                replicas: s.spec.and_then(|s| s.replicas).unwrap_or(0),
            })),
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(SyncError::Api(api_message(&e))),
        }
    }

    /// The evicted pods still expected to go, and when the first of them times out (upstream's
    /// `buildDisruptedPodMap`).
    fn disrupted_pods(
        &self,
        pdb: &PodDisruptionBudget,
        pods: &[Arc<CachedPod>],
        now: Timestamp,
    ) -> (BTreeMap<String, Time>, Option<Timestamp>) {
        let mut out = BTreeMap::new();
        let mut recheck: Option<Timestamp> = None;
        let Some(known) = pdb.status.as_ref().and_then(|s| s.disrupted_pods.as_ref()) else {
            return (out, None);
        };
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(t) = known.get(&pod.name_any()) else {
                continue;
            };
            let due = t.0 + DELETION_TIMEOUT;
            if due < now {
                self.rec.event(
                    pod.as_ref(),
                    WARNING,
                    "NotDeleted",
                    format!(
                        "Pod was expected by PDB {}/{} to be deleted but it wasn't",
                        pdb.namespace().unwrap_or_default(),
                        pdb.name_any()
                    ),
                );
            } else {
                recheck = Some(recheck.map_or(due, |r| r.min(due)));
                out.insert(pod.name_any(), t.clone());
            }
        }
        (out, recheck)
    }

    async fn update_status(
        &self,
        pdb: &PodDisruptionBudget,
        healthy: i32,
        desired: i32,
        expected: i32,
        disrupted: BTreeMap<String, Time>,
    ) -> Result<(), SyncError> {
        let mut allowed = healthy - desired;
        if expected <= 0 || allowed <= 0 {
            allowed = 0;
        }
        let old = pdb.status.clone().unwrap_or_default();
        let generation = pdb.metadata.generation;
        let mut st = PodDisruptionBudgetStatus {
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            disruptions_allowed: allowed,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            observed_generation: generation,
            conditions: old.conditions.clone(),
        };
        let (status, reason) = if allowed > 0 {
            ("True", SUFFICIENT)
        } else {
            ("False", INSUFFICIENT)
        };
        set_condition(&mut st, status, reason, "");
        let same_pods = old.disrupted_pods.clone().unwrap_or_default()
            == st.disrupted_pods.clone().unwrap_or_default();
        if same_pods
            && old.current_healthy == st.current_healthy
            && old.desired_healthy == st.desired_healthy
            && old.expected_pods == st.expected_pods
            && old.disruptions_allowed == st.disruptions_allowed
            && old.observed_generation == st.observed_generation
            && old.conditions == st.conditions
        {
            return Ok(());
        }
        self.write_status(pdb, st)
            .await
            .map_err(|e| SyncError::Api(api_message(&e)))
    }

    /// Upstream's `failSafe`: no disruptions until a sync succeeds again.
    async fn fail_safe(
        &self,
        pdb: &PodDisruptionBudget,
        message: &str,
    ) -> Result<(), ControllerError> {
        let old = pdb.status.clone().unwrap_or_default();
        let mut st = old.clone();
        st.disruptions_allowed = 0;
        set_condition(&mut st, "False", SYNC_FAILED, message);
        if st == old {
            return Ok(());
        }
        match self.write_status(pdb, st).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_status(
        &self,
        pdb: &PodDisruptionBudget,
        st: PodDisruptionBudgetStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<PodDisruptionBudget> =
            Api::namespaced(self.client.clone(), &pdb.namespace().unwrap_or_default());
        let mut n = pdb.clone();
        n.status = Some(st);
        n.metadata.managed_fields = None;
        api.replace_status(&pdb.name_any(), &PostParams::default(), &n)
            .await?;
        Ok(())
    }
}

/// When a pod that is not terminating got `DisruptionTarget=True`.
fn stale_disruption_since(pod: &CachedPod) -> Option<Timestamp> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let c = crate::workload::pod_condition(pod, "DisruptionTarget")?;
    if c.status != "True" {
        return None;
    }
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
    )
}

/// Resolves an int-or-percent against `total`, rounding up, as upstream does for budgets.
fn scaled(v: &IntOrString, total: i32) -> Result<i32, SyncError> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| SyncError::BadIntOrPercent(s.clone()))?;
            Ok(((pct * i64::from(total) + 99) / 100) as i32)
        }
    }
}

/// Sets the `DisruptionAllowed` condition (`meta.SetStatusCondition`: the transition time moves
/// only when the status does).
fn set_condition(st: &mut PodDisruptionBudgetStatus, status: &str, reason: &str, message: &str) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    let observed = st.observed_generation;
    match conds.iter_mut().find(|c| c.type_ == CONDITION) {
        Some(c) => {
            if c.status != status {
                c.status = status.into();
                c.last_transition_time = crate::workload::now();
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = observed;
        }
        None => conds.push(Condition {
            type_: CONDITION.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: observed,
            last_transition_time: crate::workload::now(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3).unwrap(), 2);
        assert_eq!(scaled(&IntOrString::String("34%".into()), 3).unwrap(), 2);
        assert_eq!(scaled(&IntOrString::String("0%".into()), 3).unwrap(), 0);
        assert_eq!(scaled(&IntOrString::Int(2), 3).unwrap(), 2);
        assert!(scaled(&IntOrString::String("x".into()), 3).is_err());
    }

    #[test]
    fn stale_disruption_needs_a_true_condition_on_a_live_pod() {
        use crate::cached_pod::CachedPodStatus;
        use k8s_openapi::api::core::v1::PodCondition;
        let cond = |status: &str| PodCondition {
            type_: "DisruptionTarget".into(),
            status: status.into(),
            last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        };
        let mut pod = CachedPod {
            status: Some(CachedPodStatus {
                conditions: Some(vec![cond("True")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(stale_disruption_since(&pod), Some(Timestamp::UNIX_EPOCH));
        pod.status.as_mut().unwrap().conditions = Some(vec![cond("False")]);
        assert_eq!(stale_disruption_since(&pod), None);
        pod.status.as_mut().unwrap().conditions = Some(vec![cond("True")]);
        pod.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(stale_disruption_since(&pod), None);
    }

    #[test]
    fn condition_time_moves_only_with_status() {
        let mut st = PodDisruptionBudgetStatus::default();
        set_condition(&mut st, "False", INSUFFICIENT, "");
        let first = st.conditions.as_ref().unwrap()[0]
            .last_transition_time
            .clone();
        set_condition(&mut st, "False", SYNC_FAILED, "boom");
        let c = &st.conditions.as_ref().unwrap()[0];
        assert_eq!(c.last_transition_time, first);
        assert_eq!(c.reason, SYNC_FAILED);
        assert_eq!(c.message, "boom");
    }
}
