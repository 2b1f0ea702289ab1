//! Skiff's scheduler. A client of the API server like any other (it could run apart), driven by
//! watch events, never by polling: a cache of nodes and the pods on them kept from watches, a
//! priority queue of pending pods with back-off and an unschedulable set moved on cluster events,
//! and one scheduling cycle at a time running upstream's default filters and scores
//! ([`framework`]), preemption ([`preempt`]) when nothing fits, and bindings posted to
//! `pods/binding` concurrently. Profiles and weights come from a `KubeSchedulerConfiguration`
//! ([`config`]).

pub mod cache;
pub mod config;
pub mod framework;
pub mod labels;
mod preempt;
pub mod quantity;
pub mod queue;
pub mod volumes;

use cache::{Cache, PodInfo};
use config::SchedulerConfig;
use framework::{fit_error, Cycle, Unfit};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Binding, Event, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use queue::Queue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

pub use config::DEFAULT_SCHEDULER as SCHEDULER_NAME;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("watching {what}: {source}")]
    Watch {
        what: &'static str,
        #[source]
        source: watcher::Error,
    },
}

struct Shared {
    client: Client,
    cfg: SchedulerConfig,
    cache: Mutex<Cache>,
    queue: Queue,
    /// Bounds the bindings in flight.
    bindings: Arc<tokio::sync::Semaphore>,
    /// Last FailedScheduling message per pod uid and when it was recorded.
    reported: Mutex<HashMap<String, (String, Instant)>>,
    ties: AtomicUsize,
}

impl Shared {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the scheduler with the default profile until `shutdown` completes.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    run_with(client, SchedulerConfig::default(), shutdown).await
}

/// Runs the scheduler with `cfg` until `shutdown` completes.
pub async fn run_with(
    client: Client,
    cfg: SchedulerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let shared = Arc::new(Shared {
        client: client.clone(),
        queue: Queue::new(cfg.initial_backoff, cfg.max_backoff),
        bindings: Arc::new(tokio::sync::Semaphore::new(cfg.parallel_bindings)),
        cfg,
        cache: Mutex::new(Cache::default()),
        reported: Mutex::new(HashMap::new()),
        ties: AtomicUsize::new(0),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(0u8);
    let ready_tx = Arc::new(ready_tx);
    let watches = [
        tokio::spawn(watch_nodes(shared.clone(), ready_tx.clone())),
        tokio::spawn(watch_namespaces(shared.clone(), ready_tx.clone())),
        tokio::spawn(watch_pods(shared.clone(), ready_tx.clone())),
        tokio::spawn(watch_volumes(
            shared.clone(),
            ready_tx.clone(),
            "persistentvolumeclaims",
            |v| &mut v.claims,
            |c: &PersistentVolumeClaim| {
                format!(
                    "{}/{}",
                    c.metadata.namespace.as_deref().unwrap_or(""),
                    c.metadata.name.as_deref().unwrap_or("")
                )
            },
        )),
        tokio::spawn(watch_volumes(
            shared.clone(),
            ready_tx.clone(),
            "persistentvolumes",
            |v| &mut v.pvs,
            |p: &PersistentVolume| p.metadata.name.clone().unwrap_or_default(),
        )),
        tokio::spawn(watch_volumes(
            shared.clone(),
            ready_tx.clone(),
            "storageclasses",
            |v| &mut v.classes,
            |c: &StorageClass| c.metadata.name.clone().unwrap_or_default(),
        )),
        tokio::spawn(watch_volumes(
            shared.clone(),
            ready_tx.clone(),
            "poddisruptionbudgets",
            |v| &mut v.pdbs,
            |b: &PodDisruptionBudget| {
                format!(
                    "{}/{}",
                    b.metadata.namespace.as_deref().unwrap_or(""),
                    b.metadata.name.as_deref().unwrap_or("")
                )
            },
        )),
    ];
    tokio::pin!(shutdown);
    // Schedule nothing before the first full lists of nodes, namespaces, pods, claims, volumes,
    // classes and disruption budgets are in.
    tokio::select! {
        _ = &mut shutdown => { abort(&watches); return Ok(()); }
        _ = ready_rx.wait_for(|n| *n >= 7) => {}
    }
    tracing::info!("scheduler running");
    // After a burst of work, once idle for 2 s, hand freed heap and start-up code pages back
    // to the kernel (the scheduler idles most of its life).
    let mut busy = true;
    loop {
        let pod = tokio::select! {
            _ = &mut shutdown => break,
            p = shared.queue.pop() => p,
            _ = tokio::time::sleep(Duration::from_secs(2)), if busy => {
                busy = false;
                tokio::task::spawn_blocking(|| {
                    skiff_memtrim::trim_heap();
                    skiff_memtrim::trim_code_pages();
                });
                continue;
            }
        };
        busy = true;
        schedule_one(&shared, pod).await;
    }
    abort(&watches);
    Ok(())
}

fn abort(tasks: &[tokio::task::JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn finished(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Feeds a watch stream to `apply`/`delete`, telling `ready` once the first list is in; after
/// a re-list, objects not seen again are deleted.
async fn follow<K, A, D>(
    what: &'static str,
    api: Api<K>,
    ready: Arc<tokio::sync::watch::Sender<u8>>,
    mut apply: A,
    mut delete: D,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    A: FnMut(K),
    D: FnMut(Option<&K>, &HashSet<String>),
{
    // The cache keeps what scheduling reads: managed fields and kubectl's last-applied copy
    // are dropped as they arrive (they are most of a small object's size).
    let slim = |mut o: K| {
        let m = o.meta_mut();
        m.managed_fields = None;
        if let Some(a) = m.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        o
    };
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut seen: Option<HashSet<String>> = None;
    let mut told = false;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => seen = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(o)) => {
                if let (Some(s), Some(uid)) = (seen.as_mut(), o.meta().uid.clone()) {
                    s.insert(uid);
                }
                apply(slim(o));
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(s) = seen.take() {
                    delete(None, &s);
                }
                if !told {
                    told = true;
                    ready.send_modify(|n| *n += 1);
                }
            }
            Ok(watcher::Event::Apply(o)) => apply(slim(o)),
            Ok(watcher::Event::Delete(o)) => delete(Some(&o), &HashSet::new()),
            Err(e) => {
                tracing::warn!(error = %SchedulerError::Watch { what, source: e }, "watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn watch_nodes(s: Arc<Shared>, ready: Arc<tokio::sync::watch::Sender<u8>>) {
    let (s1, s2) = (s.clone(), s.clone());
    follow(
        "nodes",
        Api::<Node>::all(s.client.clone()),
        ready,
        move |n: Node| {
            s1.cache().set_node(n);
            s1.queue.move_all();
        },
        move |gone: Option<&Node>, keep: &HashSet<String>| {
            let mut c = s2.cache();
            let names: Vec<String> = match gone {
                Some(n) => n.metadata.name.clone().into_iter().collect(),
                None => c
                    .nodes
                    .values()
                    .filter(|n| !keep.contains(n.node.metadata.uid.as_deref().unwrap_or("")))
                    .map(|n| n.name.clone())
                    .collect(),
            };
            for n in names {
                c.remove_node(&n);
            }
        },
    )
    .await
}

/// Keeps one map of [`cache::Volumes`] current; a change may make pending pods schedulable.
async fn watch_volumes<K>(
    s: Arc<Shared>,
    ready: Arc<tokio::sync::watch::Sender<u8>>,
    what: &'static str,
    map: fn(&mut cache::Volumes) -> &mut HashMap<String, Arc<K>>,
    key: fn(&K) -> String,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (s1, s2) = (s.clone(), s.clone());
    follow(
        what,
        Api::<K>::all(s.client.clone()),
        ready,
        move |o: K| {
            map(&mut s1.cache().volumes).insert(key(&o), Arc::new(o));
            s1.queue.move_all();
        },
        move |gone: Option<&K>, keep: &HashSet<String>| {
            let mut c = s2.cache();
            let m = map(&mut c.volumes);
            match gone {
                Some(o) => {
                    m.remove(&key(o));
                }
                None => m.retain(|_, o| o.meta().uid.as_ref().is_some_and(|u| keep.contains(u))),
            }
        },
    )
    .await
}

async fn watch_namespaces(s: Arc<Shared>, ready: Arc<tokio::sync::watch::Sender<u8>>) {
    let (s1, s2) = (s.clone(), s.clone());
    follow(
        "namespaces",
        Api::<Namespace>::all(s.client.clone()),
        ready,
        move |n: Namespace| {
            let name = n.metadata.name.clone().unwrap_or_default();
            s1.cache()
                .namespaces
                .insert(name, n.metadata.labels.unwrap_or_default());
        },
        move |gone: Option<&Namespace>, _keep: &HashSet<String>| {
            if let Some(n) = gone.and_then(|n| n.metadata.name.as_deref()) {
                s2.cache().namespaces.remove(n);
            }
        },
    )
    .await
}

async fn watch_pods(s: Arc<Shared>, ready: Arc<tokio::sync::watch::Sender<u8>>) {
    let (s1, s2) = (s.clone(), s.clone());
    follow(
        "pods",
        Api::<Pod>::all(s.client.clone()),
        ready,
        move |mut p: Pod| {
            slim_pod(&mut p);
            on_pod(&s1, p)
        },
        move |gone: Option<&Pod>, keep: &HashSet<String>| {
            let uids: Vec<String> = match gone {
                Some(p) => p.metadata.uid.clone().into_iter().collect(),
                None => {
                    let c = s2.cache();
                    c.nodes
                        .values()
                        .flat_map(|n| n.pods.keys())
                        .filter(|u| !keep.contains(*u))
                        .cloned()
                        .collect()
                }
            };
            if uids.is_empty() {
                return;
            }
            for uid in &uids {
                s2.cache().forget_pod(uid);
                s2.queue.remove(uid);
                s2.reported
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uid);
            }
            s2.queue.move_all();
        },
    )
    .await
}

/// What the scheduler keeps of a pod: the cache holds every pod of the cluster, so only what
/// scheduling reads is kept (the scheduler writes pods through patches and `pods/binding` only,
/// never from a cached copy). Of the volumes only the claims (`volumes::claims_of`); the others,
/// such as the service-account token volume every pod has, are large as Rust values. Of each
/// container its name, image (image locality), resources, host ports and restart policy
/// (sidecars); of the status the phase, the nominated node and the start time (preemption).
pub fn slim_pod(p: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodStatus};
    if let Some(spec) = p.spec.as_mut() {
        if let Some(v) = spec.volumes.as_mut() {
            v.retain(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some());
            v.shrink_to_fit();
        }
        let keep = |c: &mut Container| {
            *c = Container {
                name: std::mem::take(&mut c.name),
                image: c.image.take(),
                resources: c.resources.take(),
                ports: c.ports.take(),
                restart_policy: c.restart_policy.take(),
                ..Default::default()
            };
        };
        spec.containers.iter_mut().for_each(keep);
        spec.init_containers.iter_mut().flatten().for_each(keep);
        spec.ephemeral_containers = None;
    }
    if let Some(st) = p.status.take() {
        p.status = Some(PodStatus {
            phase: st.phase,
            nominated_node_name: st.nominated_node_name,
            start_time: st.start_time,
            ..Default::default()
        });
    }
}

fn on_pod(s: &Shared, p: Pod) {
    let uid = p.metadata.uid.clone().unwrap_or_default();
    if let Some(node) = node_of(&p).map(str::to_string) {
        s.queue.remove(&uid);
        s.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
        if finished(&p) {
            s.cache().forget_pod(&uid);
            s.queue.move_all();
        } else {
            s.cache()
                .set_pod_placement(Arc::new(PodInfo::placed(p)), Some(&node));
        }
        return;
    }
    let name = p
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(SCHEDULER_NAME);
    let gated = p
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty());
    if p.metadata.deletion_timestamp.is_some()
        || finished(&p)
        || gated
        || s.cfg.profile(name).is_none()
    {
        s.queue.remove(&uid);
        return;
    }
    let nominated = p
        .status
        .as_ref()
        .and_then(|st| st.nominated_node_name.clone())
        .filter(|n| !n.is_empty());
    let p = Arc::new(p);
    {
        let mut c = s.cache();
        match nominated {
            Some(n) => {
                c.nominated
                    .insert(uid.clone(), (n, Arc::new(PodInfo::new(p.clone()))));
            }
            None => {
                c.nominated.remove(&uid);
            }
        }
    }
    s.queue.upsert(p);
}

/// One scheduling cycle for one pod, in a span naming it.
async fn schedule_one(s: &Arc<Shared>, pod: Arc<Pod>) {
    let info = Arc::new(PodInfo::new(pod.clone()));
    let span = tracing::info_span!("schedule", pod = %info.key(), uid = %info.uid);
    schedule_cycle(s, pod, info).instrument(span).await
}

async fn schedule_cycle(s: &Arc<Shared>, pod: Arc<Pod>, info: Arc<PodInfo>) {
    let profile_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(SCHEDULER_NAME);
    let Some(profile) = s.cfg.profile(profile_name) else {
        s.queue.done(&info.uid);
        return;
    };
    enum Outcome {
        /// The node, and claims to provision there.
        Bind(String, Vec<(String, String)>),
        Unschedulable(String, Option<preempt::Decision>),
    }
    let outcome = {
        let mut cache = s.cache();
        if cache.is_placed(&info.uid) {
            s.queue.done(&info.uid);
            return;
        }
        let cycle = Cycle::new(&info, &cache);
        let mut feasible = Vec::new();
        let mut unfit: Vec<(&cache::NodeInfo, Unfit)> = Vec::new();
        for n in cache.nodes.values() {
            match cycle.filter(n, profile) {
                Ok(()) => feasible.push(n),
                Err(u) => unfit.push((n, u)),
            }
        }
        if feasible.is_empty() {
            let reasons: Vec<Unfit> = unfit.iter().map(|(_, u)| u.clone()).collect();
            let mut msg = fit_error(cache.nodes.len(), &reasons);
            let decision = if profile.preemption && !unfit.is_empty() {
                match preempt::preempt(&cycle, &unfit) {
                    Ok(d) => Some(d),
                    Err(why) => {
                        msg = format!("{msg} {why}");
                        None
                    }
                }
            } else {
                None
            };
            drop(cycle);
            if let Some(d) = &decision {
                cache
                    .nominated
                    .insert(info.uid.clone(), (d.node.clone(), info.clone()));
            }
            Outcome::Unschedulable(msg, decision)
        } else {
            let scores = cycle.score(&feasible, profile);
            let best = scores.iter().copied().max().unwrap_or(0);
            let ties: Vec<usize> = (0..feasible.len()).filter(|i| scores[*i] == best).collect();
            let pick = ties[s.ties.fetch_add(1, Ordering::Relaxed) % ties.len()];
            let node = feasible[pick].name.clone();
            let provision = volumes::to_provision(&cycle.claims, &cache.volumes, feasible[pick]);
            drop(cycle);
            cache.assume(info.clone(), &node);
            Outcome::Bind(node, provision)
        }
    };
    match outcome {
        Outcome::Bind(node, provision) => {
            s.queue.done(&info.uid);
            let permit = s.bindings.clone().acquire_owned().await;
            let s = s.clone();
            tokio::spawn(
                async move {
                    let _permit = permit;
                    select_node_for_claims(&s, &provision, &node).await;
                    bind(&s, &info, &node).await;
                }
                .in_current_span(),
            );
        }
        Outcome::Unschedulable(msg, decision) => {
            s.queue.unschedulable(&info.uid);
            if let Some(d) = decision {
                tracing::info!(node = %d.node, victims = d.victims.len(), "preempting");
                let s2 = s.clone();
                let info2 = info.clone();
                tokio::spawn(async move { evict(&s2, &info2, d).await }.in_current_span());
            }
            report_unschedulable(s, &info, msg).await;
        }
    }
}

/// PreBind of VolumeBinding: claims that will be provisioned learn the node (the provisioner
/// makes the volume there).
async fn select_node_for_claims(s: &Arc<Shared>, claims: &[(String, String)], node: &str) {
    for (ns, name) in claims {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(s.client.clone(), ns);
        let patch =
            serde_json::json!({"metadata": {"annotations": {volumes::SELECTED_NODE: node}}});
        if let Err(e) = api
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "could not select the node for a claim");
        }
    }
}

async fn bind(s: &Arc<Shared>, info: &PodInfo, node: &str) {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            namespace: Some(info.namespace.clone()),
            uid: Some(info.uid.clone()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            api_version: Some("v1".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(s.client.clone(), &info.namespace);
    let res = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &info.name,
            &PostParams::default(),
            &binding,
        )
        .await;
    match res {
        Ok(_) => {
            tracing::info!(%node, "bound");
            event(
                &s.client,
                info,
                "Normal",
                "Scheduled",
                "Binding",
                format!(
                    "Successfully assigned {}/{} to {node}",
                    info.namespace, info.name
                ),
            )
            .await;
        }
        Err(e) => {
            s.cache().forget_assumed(&info.uid);
            let gone = matches!(&e, kube::Error::Api(ae) if ae.code == 404 || ae.code == 409);
            if gone {
                tracing::info!(error = %e, "not bound: the pod is gone or already bound");
            } else {
                tracing::warn!(error = %e, "binding failed; retrying after back-off");
                s.queue.retry(info.pod.clone());
            }
        }
    }
}

/// Records FailedScheduling (once per distinct message, at most once a minute otherwise) and
/// the pod's PodScheduled=False condition.
async fn report_unschedulable(s: &Arc<Shared>, info: &PodInfo, msg: String) {
    let fresh = {
        let mut r = s.reported.lock().unwrap_or_else(|e| e.into_inner());
        let changed = r
            .get(&info.uid)
            .is_none_or(|(m, t)| *m != msg || t.elapsed() > Duration::from_secs(60));
        if changed {
            r.insert(info.uid.clone(), (msg.clone(), Instant::now()));
        }
        changed
    };
    if !fresh {
        return;
    }
    // Upstream logs this at verbosity 2: at the default level, thousands of pending pods would
    // write a line each per minute. The FailedScheduling event and the condition carry it.
    tracing::debug!("{msg}");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": msg, "lastTransitionTime": now, "lastProbeTime": null
    }]}});
    let api: Api<Pod> = Api::namespaced(s.client.clone(), &info.namespace);
    if let Err(e) = api
        .patch_status(
            &info.name,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
    {
        tracing::debug!(error = %e, "could not set PodScheduled=False");
    }
    event(
        &s.client,
        info,
        "Warning",
        "FailedScheduling",
        "Scheduling",
        msg,
    )
    .await;
}

/// Evicts the victims preemption chose and nominates the node for the preemptor.
async fn evict(s: &Arc<Shared>, preemptor: &PodInfo, d: preempt::Decision) {
    let patch = serde_json::json!({"status": {"nominatedNodeName": d.node}});
    let api: Api<Pod> = Api::namespaced(s.client.clone(), &preemptor.namespace);
    if let Err(e) = api
        .patch_status(
            &preemptor.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(error = %e, "could not set nominatedNodeName");
    }
    for v in d.victims {
        let api: Api<Pod> = Api::namespaced(s.client.clone(), &v.namespace);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let cond = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": now
        }]}});
        let _ = api
            .patch_status(&v.name, &PatchParams::default(), &Patch::Strategic(&cond))
            .await;
        match api.delete(&v.name, &DeleteParams::default()).await {
            Ok(_) => {
                event(
                    &s.client,
                    &v,
                    "Normal",
                    "Preempted",
                    "Preempting",
                    format!("Preempted by pod {} on node {}", preemptor.uid, d.node),
                )
                .await
            }
            Err(e) => tracing::warn!(victim = %v.key(), error = %e, "could not evict"),
        }
    }
}

async fn event(
    client: &Client,
    pod: &PodInfo,
    type_: &str,
    reason: &str,
    action: &str,
    message: String,
) {
    let ns = pod.namespace.clone();
    let now = k8s_openapi::jiff::Timestamp::now();
    let ev = Event {
        metadata: ObjectMeta {
            // `<pod>.<unix nanos in hex>` like upstream's recorder: events list in time order.
            name: Some(format!(
                "{}.{:x}",
                if pod.name.is_empty() {
                    "pod"
                } else {
                    &pod.name
                },
                now.as_nanosecond()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            name: Some(pod.name.clone()),
            namespace: Some(ns.clone()),
            uid: Some(pod.uid.clone()),
            resource_version: pod.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        reporting_component: Some(SCHEDULER_NAME.into()),
        reporting_instance: Some(SCHEDULER_NAME.into()),
        action: Some(action.into()),
        count: Some(1),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(SCHEDULER_NAME.into()),
            host: None,
        }),
        ..Default::default()
    };
    skiff_events::record(client, ev).await;
}
