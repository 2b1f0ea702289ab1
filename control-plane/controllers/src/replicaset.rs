//! The ReplicaSet and ReplicationController controllers (upstream's
//! `pkg/controller/replicaset`, which also runs RCs): keep `spec.replicas` active pods matching
//! the selector, adopting orphans and releasing pods that no longer match; create in slow-start
//! batches and delete the cheapest victims first; guarded by expectations; status with
//! replicas/fullyLabeled/ready/available/observedGeneration and the ReplicaFailure condition.

use crate::cached_pod::CachedPod;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Recorder, NORMAL, WARNING};
use crate::expectations::Expectations;
use crate::informer::{Change, Informer, Informers, Watched};
use crate::queue::WorkQueue;
use crate::util::{self, key_of, split_key};
use crate::{Context, ControllerError};

/// Upstream's `BurstReplicas`: at most this many creations or deletions per sync.
const BURST: i64 = 500;
const WORKERS: usize = 5;
/// Pod creates and deletes in flight for all ReplicaSets and ReplicationControllers together.
/// The slow-start batches stay upstream's; this only bounds how many requests (and so HTTP/1
/// connections, each with its own TLS and read buffers) run at once, as client-go's QPS limit
/// and HTTP/2 do upstream.
static POD_WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);
const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// What the controller needs of a ReplicaSet or a ReplicationController.
pub trait Replicated:
    Watched + Serialize + Resource<Scope = k8s_openapi::NamespaceResourceScope>
{
    const COMPONENT: &'static str;
    fn informer(inf: &Informers) -> Arc<Informer<Self>>;
    fn replicas(&self) -> i32;
    fn selector(&self) -> Option<LabelSelector>;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn min_ready_seconds(&self) -> i32;
    fn status(&self) -> ReplicaSetStatus;
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn informer(inf: &Informers) -> Arc<Informer<Self>> {
        inf.replicasets()
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<LabelSelector> {
        self.spec.as_ref().map(|s| s.selector.clone())
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn status(&self) -> ReplicaSetStatus {
        self.status.clone().unwrap_or_default()
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn informer(inf: &Informers) -> Arc<Informer<Self>> {
        inf.replication_controllers()
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn selector(&self) -> Option<LabelSelector> {
        let m = self.spec.as_ref()?.selector.clone()?;
        Some(LabelSelector {
            match_labels: Some(m),
            match_expressions: None,
        })
    }
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref()?.template.as_ref()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn status(&self) -> ReplicaSetStatus {
        // Same fields and JSON names as a ReplicaSet's.
        self.status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }
}

struct Ctl<K: Replicated> {
    client: Client,
    pods: Arc<Informer<CachedPod>>,
    owners: Arc<Informer<K>>,
    exp: Expectations,
    queue: Arc<WorkQueue>,
    rec: Recorder,
}

pub fn run_replicasets(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run::<ReplicaSet>(ctx, stop))
}

pub fn run_replication_controllers(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run::<ReplicationController>(ctx, stop))
}

async fn run<K: Replicated>(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> Result<(), ControllerError> {
    let pods = ctx.informers.pods();
    let owners = K::informer(&ctx.informers);
    let mut pod_rx = pods.subscribe();
    let mut own_rx = owners.subscribe();
    pods.ready().await;
    owners.ready().await;
    let c = Arc::new(Ctl::<K> {
        client: ctx.client.clone(),
        pods,
        owners,
        exp: Expectations::default(),
        queue: WorkQueue::new(),
        rec: Recorder::new(ctx.client.clone(), K::COMPONENT),
    });
    c.enqueue_all();
    tracing::info!(controller = K::COMPONENT, "informers synced; running");
    let handlers = {
        let c = c.clone();
        async move {
            loop {
                tokio::select! {
                    ch = pod_rx.recv() => match ch {
                        Ok(ch) => c.on_pod(ch),
                        Err(RecvError::Lagged(_)) => { c.exp.clear(); c.enqueue_all(); }
                        Err(RecvError::Closed) => return,
                    },
                    ch = own_rx.recv() => match ch {
                        Ok(Change::Deleted(o)) => c.exp.forget(&key_of(o.as_ref())),
                        Ok(Change::Added(o)) | Ok(Change::Updated { new: o, .. }) => c.queue.add(key_of(o.as_ref())),
                        Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => c.enqueue_all(),
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    };
    let workers = c.queue.clone().run(WORKERS, K::COMPONENT, {
        let c = c.clone();
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        }
    });
    crate::util::until_stopped(K::COMPONENT, stop, handlers, workers).await
}

impl<K: Replicated> Ctl<K> {
    fn enqueue_all(&self) {
        for o in self.owners.store().state() {
            self.queue.add(key_of(o.as_ref()));
        }
    }

    /// The owner a controller reference points at, if it is one of ours and still there.
    fn resolve(
        &self,
        ns: &str,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ) -> Option<Arc<K>> {
        if r.kind != K::kind(&()) {
            return None;
        }
        let o = self
            .owners
            .store()
            .get(&ObjectRef::new(&r.name).within(ns))?;
        (o.meta().uid.as_deref() == Some(r.uid.as_str())).then_some(o)
    }

    /// Owners in the pod's namespace whose selector matches it (candidates for adoption).
    fn enqueue_matching(&self, p: &CachedPod) {
        let ns = p.namespace().unwrap_or_default();
        let labels = p.labels();
        for o in self.owners.store().state() {
            if o.namespace().as_deref() == Some(ns.as_str())
                && util::selects(o.selector().as_ref(), labels)
            {
                self.queue.add(key_of(o.as_ref()));
            }
        }
    }

    fn on_pod(&self, ch: Change<CachedPod>) {
        match ch {
            Change::Added(p) => {
                let ns = p.namespace().unwrap_or_default();
                if p.metadata.deletion_timestamp.is_some() {
                    return self.on_pod_gone(&p);
                }
                if let Some(r) = util::controller_ref(&p.metadata) {
                    if let Some(o) = self.resolve(&ns, r) {
                        let key = key_of(o.as_ref());
                        self.exp.creation_observed(&key);
                        self.queue.add(key);
                    }
                    return;
                }
                self.enqueue_matching(&p);
            }
            Change::Updated { old, new } => {
                let ns = new.namespace().unwrap_or_default();
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    // Terminating: counts as deleted for expectations (upstream's updatePod).
                    self.on_pod_gone(&new);
                }
                let old_ref = util::controller_ref(&old.metadata);
                let new_ref = util::controller_ref(&new.metadata);
                let labels_changed = old.labels() != new.labels();
                if old_ref.map(|r| &r.uid) != new_ref.map(|r| &r.uid) {
                    if let Some(o) = old_ref.and_then(|r| self.resolve(&ns, r)) {
                        self.queue.add(key_of(o.as_ref()));
                    }
                }
                if let Some(r) = new_ref {
                    if let Some(o) = self.resolve(&ns, r) {
                        let key = key_of(o.as_ref());
                        let mrs = o.min_ready_seconds();
                        if mrs > 0 && !util::is_ready(&old) && util::is_ready(&new) {
                            self.queue
                                .add_after(key.clone(), Duration::from_secs(mrs as u64));
                        }
                        self.queue.add(key);
                    }
                    return;
                }
                if labels_changed || old_ref.is_some() {
                    self.enqueue_matching(&new);
                }
            }
            Change::Deleted(p) => self.on_pod_gone(&p),
            Change::Resynced => self.enqueue_all(),
        }
    }

    fn on_pod_gone(&self, p: &CachedPod) {
        let ns = p.namespace().unwrap_or_default();
        if let Some(o) = util::controller_ref(&p.metadata).and_then(|r| self.resolve(&ns, r)) {
            let key = key_of(o.as_ref());
            self.exp
                .deletion_observed(&key, p.metadata.uid.as_deref().unwrap_or(""));
            self.queue.add(key);
        }
    }

    #[tracing::instrument(skip(self), fields(kind = %K::kind(&())))]
    async fn sync(&self, key: &str) -> Result<Option<Duration>, ControllerError> {
        let (ns, name) = split_key(key);
        let Some(rs) = self.owners.store().get(&ObjectRef::new(name).within(ns)) else {
            self.exp.forget(key);
            return Ok(None);
        };
        let needs_sync = self.exp.satisfied(key);
        tracing::debug!(needs_sync, "syncing");
        let selector = rs.selector();
        let active: Vec<Arc<CachedPod>> = self
            .pods
            .store()
            .state_filter(|p| p.metadata.namespace.as_deref() == Some(ns) && util::is_active(p));
        let pods = self.claim(&rs, selector.as_ref(), active).await?;
        let mut manage_err = None;
        if needs_sync && rs.meta().deletion_timestamp.is_none() {
            if let Err(e) = self.manage(&rs, &pods, key).await {
                manage_err = Some(e);
            }
        }
        let status = calculate_status(rs.as_ref(), &pods, manage_err.as_ref());
        self.update_status(&rs, &status).await?;
        if let Some(e) = manage_err {
            return Err(e);
        }
        let mrs = rs.min_ready_seconds();
        let ready = status.ready_replicas.unwrap_or(0);
        if mrs > 0 && ready == rs.replicas() && status.available_replicas.unwrap_or(0) != ready {
            return Ok(Some(Duration::from_secs(mrs as u64)));
        }
        Ok(None)
    }

    /// Upstream's `ClaimPods`: keeps our pods that still match, releases those that do not,
    /// adopts matching orphans (after checking the owner is still the one we know).
    async fn claim(
        &self,
        rs: &Arc<K>,
        sel: Option<&LabelSelector>,
        pods: Vec<Arc<CachedPod>>,
    ) -> Result<Vec<Arc<CachedPod>>, ControllerError> {
        let uid = rs.meta().uid.clone().unwrap_or_default();
        let deleting = rs.meta().deletion_timestamp.is_some();
        let mut out = Vec::new();
        let mut can_adopt: Option<bool> = None;
        let ns = rs.namespace().unwrap_or_default();
        // Patch answers come back as cached pods (an adopted one joins `out`).
        let api: Api<CachedPod> = Api::namespaced(self.client.clone(), &ns);
        for p in pods {
            let matches = util::selects(sel, p.labels());
            match util::controller_ref(&p.metadata) {
                Some(r) if r.uid == uid => {
                    if matches || deleting {
                        if matches {
                            out.push(p);
                        }
                        continue;
                    }
                    // Release: the pod no longer matches our selector.
                    let refs: Vec<_> = p
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                    match api
                        .patch(
                            &p.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(_) => {}
                None => {
                    if deleting || !matches || p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    if can_adopt.is_none() {
                        can_adopt = Some(self.fresh_owner_matches(rs).await?);
                    }
                    if can_adopt != Some(true) {
                        continue;
                    }
                    let mut refs = p.owner_references().to_vec();
                    refs.push(util::owner_ref(rs.as_ref()));
                    let patch =
                        json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}});
                    match api
                        .patch(
                            &p.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        Ok(np) => out.push(Arc::new(np)),
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(out)
    }

    /// The owner read from the API (not the cache) is the same object and not being deleted.
    async fn fresh_owner_matches(&self, rs: &K) -> Result<bool, ControllerError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        match api.get_opt(&rs.name_any()).await? {
            Some(f) => Ok(f.meta().uid == rs.meta().uid && f.meta().deletion_timestamp.is_none()),
            None => Ok(false),
        }
    }

    async fn manage(
        &self,
        rs: &Arc<K>,
        pods: &[Arc<CachedPod>],
        key: &str,
    ) -> Result<(), ControllerError> {
        let diff = pods.len() as i64 - i64::from(rs.replicas());
        if diff < 0 {
            let n = (-diff).min(BURST);
            self.exp.expect_creations(key, n);
            let mut batch = 1i64;
            let mut remaining = n;
            let mut created = 0i64;
            let mut first_err = None;
            while remaining > 0 {
                let b = batch.min(remaining);
                let results = join_all((0..b).map(|_| self.create_pod(rs))).await;
                for r in results {
                    match r {
                        Ok(()) => created += 1,
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if first_err.is_some() {
                    break;
                }
                remaining -= b;
                batch = (batch * 2).min(remaining);
            }
            for _ in 0..(n - created) {
                self.exp.creation_observed(key);
            }
            return match first_err {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        if diff > 0 {
            let n = diff.min(BURST) as usize;
            let related = self.related_pods(rs);
            let victims = pods_to_delete(pods, &related, n, Timestamp::now());
            self.exp.expect_deletions(
                key,
                victims
                    .iter()
                    .map(|p| p.metadata.uid.clone().unwrap_or_default()),
            );
            let results = join_all(victims.iter().map(|p| self.delete_pod(rs, p, key))).await;
            for r in results {
                r?;
            }
        }
        Ok(())
    }

    async fn create_pod(&self, rs: &Arc<K>) -> Result<(), ControllerError> {
        let ns = rs.namespace().unwrap_or_default();
        let t = rs.template().cloned().unwrap_or_default();
        let tm = t.metadata.unwrap_or_default();
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", rs.name_any())),
                namespace: Some(ns.clone()),
                labels: tm.labels,
                annotations: tm.annotations,
                finalizers: tm.finalizers,
                owner_references: Some(vec![util::owner_ref(rs.as_ref())]),
                ..Default::default()
            },
            spec: t.spec,
            status: None,
        };
        let permit = POD_WRITES.acquire().await;
        let created = Api::<Pod>::namespaced(self.client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await;
        drop(permit);
        match created {
            Ok(p) => {
                tracing::debug!(pod = %p.name_any(), "created pod");
                self.rec.event(
                    rs.as_ref(),
                    NORMAL,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                );
                Ok(())
            }
            Err(e) => {
                self.rec.event(
                    rs.as_ref(),
                    WARNING,
                    "FailedCreate",
                    format!("Error creating: {}", api_message(&e)),
                );
                Err(e.into())
            }
        }
    }

    async fn delete_pod(
        &self,
        rs: &Arc<K>,
        p: &CachedPod,
        key: &str,
    ) -> Result<(), ControllerError> {
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let permit = POD_WRITES.acquire().await;
        let deleted =
            Api::<Pod>::namespaced(self.client.clone(), &p.namespace().unwrap_or_default())
                .delete(&p.name_any(), &dp)
                .await;
        drop(permit);
        match deleted {
            Ok(_) => {
                self.rec.event(
                    rs.as_ref(),
                    NORMAL,
                    "SuccessfulDelete",
                    format!("Deleted pod: {}", p.name_any()),
                );
                Ok(())
            }
            Err(e) => {
                self.exp.deletion_observed(key, &uid);
                if is_not_found(&e) {
                    return Ok(());
                }
                self.rec.event(
                    rs.as_ref(),
                    WARNING,
                    "FailedDelete",
                    format!("Error deleting: {}", api_message(&e)),
                );
                Err(e.into())
            }
        }
    }

    /// Active pods of every owner controlled by the same controller as `rs` (a Deployment's
    /// other ReplicaSets), for ranking victims that share a node.
    fn related_pods(&self, rs: &Arc<K>) -> Vec<Arc<CachedPod>> {
        let ns = rs.namespace().unwrap_or_default();
        let owner_uids: Vec<String> = match util::controller_ref(rs.meta()) {
            Some(top) => self
                .owners
                .store()
                .state()
                .into_iter()
                .filter(|o| {
                    o.namespace().as_deref() == Some(ns.as_str())
                        && util::controller_ref(o.meta()).is_some_and(|r| r.uid == top.uid)
                })
                .filter_map(|o| o.meta().uid.clone())
                .collect(),
            None => rs.meta().uid.clone().into_iter().collect(),
        };
        self.pods.store().state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && util::is_active(p)
                && util::controller_ref(&p.metadata).is_some_and(|r| owner_uids.contains(&r.uid))
        })
    }

    async fn update_status(
        &self,
        rs: &Arc<K>,
        status: &ReplicaSetStatus,
    ) -> Result<(), ControllerError> {
        let gen = rs.meta().generation;
        let cur = rs.status();
        // As upstream serializes it: zero counts (but `replicas`) omitted.
        let nz = |v: Option<i32>| v.filter(|x| *x != 0);
        let mut want = status.clone();
        want.observed_generation = gen.filter(|g| *g != 0);
        want.fully_labeled_replicas = nz(want.fully_labeled_replicas);
        want.ready_replicas = nz(want.ready_replicas);
        want.available_replicas = nz(want.available_replicas);
        if cur == want {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        let patch = json!({"status": {
            "replicas": want.replicas,
            "fullyLabeledReplicas": want.fully_labeled_replicas,
            "readyReplicas": want.ready_replicas,
            "availableReplicas": want.available_replicas,
            "observedGeneration": want.observed_generation,
            "conditions": want.conditions,
        }});
        match api
            .patch_status(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The API's message for an error (what upstream's `err.Error()` prints), else the error.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn calculate_status<K: Replicated>(
    rs: &K,
    pods: &[Arc<CachedPod>],
    err: Option<&ControllerError>,
) -> ReplicaSetStatus {
    let mut st = rs.status();
    let now = Timestamp::now();
    let tmpl_labels: BTreeMap<String, String> = rs
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let (mut full, mut ready, mut avail) = (0, 0, 0);
    for p in pods {
        if tmpl_labels
            .iter()
            .all(|(k, v)| p.labels().get(k) == Some(v))
        {
            full += 1;
        }
        if util::is_ready(p) {
            ready += 1;
            if util::is_available(p, rs.min_ready_seconds(), now) {
                avail += 1;
            }
        }
    }
    let mut conds = st.conditions.take().unwrap_or_default();
    let has_failure = conds.iter().any(|c| c.type_ == "ReplicaFailure");
    match err {
        Some(e) if !has_failure => {
            let diff = pods.len() as i64 - i64::from(rs.replicas());
            let reason = match diff.cmp(&0) {
                Ordering::Less => "FailedCreate",
                Ordering::Greater => "FailedDelete",
                Ordering::Equal => "",
            };
            let msg = match e {
                ControllerError::Api(e) => api_message(e),
                other => other.to_string(),
            };
            conds.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(msg),
                last_transition_time: Some(Time(now)),
            });
        }
        None if has_failure => conds.retain(|c| c.type_ != "ReplicaFailure"),
        _ => {}
    }
    st.conditions = (!conds.is_empty()).then_some(conds);
    st.replicas = pods.len() as i32;
    st.fully_labeled_replicas = Some(full);
    st.ready_replicas = Some(ready);
    st.available_replicas = Some(avail);
    st
}

/// Upstream's victim order (`ActivePodsWithRanks`): unassigned before assigned, Pending before
/// Unknown before Running, not ready before ready, lower `pod-deletion-cost` first, pods doubled
/// up on a node first, the most recently ready first (log2 buckets), more restarts first, the
/// newest first (log2 buckets); ties broken by UID.
pub fn pods_to_delete(
    pods: &[Arc<CachedPod>],
    related: &[Arc<CachedPod>],
    n: usize,
    now: Timestamp,
) -> Vec<Arc<CachedPod>> {
    if n >= pods.len() {
        return pods.to_vec();
    }
    let node_of = |p: &CachedPod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let mut per_node: BTreeMap<String, i32> = BTreeMap::new();
    for p in related {
        let nn = node_of(p);
        if !nn.is_empty() {
            *per_node.entry(nn).or_default() += 1;
        }
    }
    let mut ranked: Vec<(Arc<CachedPod>, i32)> = pods
        .iter()
        .map(|p| (p.clone(), per_node.get(&node_of(p)).copied().unwrap_or(0)))
        .collect();
    ranked.sort_by(|a, b| victim_order(&a.0, a.1, &b.0, b.1, now));
    ranked.into_iter().take(n).map(|(p, _)| p).collect()
}

fn phase_ordinal(p: &CachedPod) -> i32 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn deletion_cost(p: &CachedPod) -> i32 {
    p.annotations()
        .get(DELETION_COST)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(p: &CachedPod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// `log2` bucket difference of two ages (upstream's `logarithmicRankDiff`).
fn log_rank_diff(t1: Timestamp, t2: Timestamp, now: Timestamp) -> i64 {
    let rank = |t: Timestamp| {
        let d = now.as_nanosecond() - t.as_nanosecond();
        if d > 0 {
            (d as f64).log2() as i64
        } else {
            -1
        }
    };
    rank(t1) - rank(t2)
}

fn victim_order(a: &CachedPod, ra: i32, b: &CachedPod, rb: i32, now: Timestamp) -> Ordering {
    let node = |p: &CachedPod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let (na, nb) = (node(a), node(b));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let (pa, pb) = (phase_ordinal(a), phase_ordinal(b));
    if pa != pb {
        return pa.cmp(&pb);
    }
    let (ya, yb) = (util::is_ready(a), util::is_ready(b));
    if ya != yb {
        return if !ya {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let (ca, cb) = (deletion_cost(a), deletion_cost(b));
    if ca != cb {
        return ca.cmp(&cb);
    }
    if ra != rb {
        return rb.cmp(&ra);
    }
    let uid_order = || a.metadata.uid.cmp(&b.metadata.uid);
    if ya && yb {
        let (ta, tb) = (util::ready_since(a), util::ready_since(b));
        if ta != tb {
            return match (ta, tb) {
                (Some(ta), Some(tb)) => match log_rank_diff(ta, tb, now) {
                    0 => uid_order(),
                    d if d < 0 => Ordering::Less,
                    _ => Ordering::Greater,
                },
                // Upstream's afterOrZero: a missing time sorts first.
                (None, _) => Ordering::Less,
                (_, None) => Ordering::Greater,
            };
        }
    }
    let (xa, xb) = (max_restarts(a), max_restarts(b));
    if xa != xb {
        return xb.cmp(&xa);
    }
    let created = |p: &CachedPod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let (ta, tb) = (created(a), created(b));
    if ta != tb {
        return match (ta, tb) {
            (Some(ta), Some(tb)) => match log_rank_diff(ta, tb, now) {
                0 => uid_order(),
                d if d < 0 => Ordering::Less,
                _ => Ordering::Greater,
            },
            (None, _) => Ordering::Less,
            (_, None) => Ordering::Greater,
        };
    }
    uid_order()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cached_pod::{CachedPodSpec as PodSpec, CachedPodStatus as PodStatus};
    use k8s_openapi::api::core::v1::PodCondition;

    fn pod(uid: &str, node: &str, phase: &str, ready: bool, cost: Option<&str>) -> Arc<CachedPod> {
        let mut p = CachedPod::default();
        p.metadata.uid = Some(uid.into());
        if let Some(c) = cost {
            p.metadata.annotations = Some([(DELETION_COST.to_string(), c.to_string())].into());
        }
        p.spec = Some(PodSpec {
            node_name: (!node.is_empty()).then(|| node.to_string()),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(p)
    }

    #[test]
    fn victims_follow_upstream_order() {
        let now = Timestamp::now();
        let pods = vec![
            pod("a", "n1", "Running", true, None),
            pod("b", "n1", "Running", true, Some("-10")),
            pod("c", "", "Pending", false, None),
            pod("d", "n1", "Running", false, None),
            pod("e", "n1", "Pending", false, None),
        ];
        let order: Vec<String> = pods_to_delete(&pods, &[], 4, now)
            .iter()
            .map(|p| p.metadata.uid.clone().unwrap())
            .collect();
        assert_eq!(order, ["c", "e", "d", "b"]);
    }
}
