//! The pod manager: watches this node's pods (reflector store), runs one worker task per pod,
//! writes pod status, finishes deletions, and sweeps sandboxes whose pods are gone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::cri::{labels, CriRuntime};
use crate::events::PodEvent;
use crate::reconcile::{terminate_pod, PodSync, SyncContext};

/// How often a pod in transition (pending, waiting, not yet reported) is re-synced.
pub const RESYNC: Duration = Duration::from_secs(1);
/// How often a settled pod is re-synced when nothing wakes it (upstream's syncFrequency).
pub const RESYNC_SETTLED: Duration = Duration::from_secs(60);
/// How often sandboxes of vanished pods are swept.
pub const ORPHAN_SWEEP: Duration = Duration::from_secs(30);
/// Grace period for pods that vanished from the API without the kubelet stopping them.
const VANISHED_GRACE_SECS: i64 = 2;

struct Worker {
    tx: watch::Sender<Option<Pod>>,
    /// Wakes the worker (container events from the PLEG, probe results).
    wake: Arc<tokio::sync::Notify>,
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn key_of(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Runs the pod manager until `shutdown` turns true. Pods keep running when the kubelet stops.
/// `admission` (none: every pod is taken) decides on pods the kubelet has not run yet.
#[allow(clippy::too_many_arguments)]
pub async fn run<R: CriRuntime>(
    client: Client,
    cri: Arc<R>,
    ctx: Arc<SyncContext>,
    writer: reflector::store::Writer<Pod>,
    reader: Store<Pod>,
    statics: StaticSource,
    admission: Option<crate::admission::Admission>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Pods refused by admission (they never get a worker until they are deleted).
    let mut rejected: HashSet<String> = HashSet::new();
    // Pods whose sandbox already runs (a restarted kubelet): admitted without a check, so a
    // restart never ends a running pod, whatever the node's state now.
    let in_runtime = running_pod_uids(&*cri).await;
    let StaticSource {
        rx: static_rx,
        registry,
    } = statics;
    let mut static_rx = static_rx;
    // uid -> `namespace/name` of the static pods.
    let mut static_uids: HashMap<String, String> = HashMap::new();
    let api: Api<Pod> = Api::all(client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = reflector::reflector(writer, watcher(api, cfg))
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let deps = WorkerDeps {
        cri: cri.clone(),
        ctx: ctx.clone(),
        client: client.clone(),
        objects: Arc::new(crate::object_watch::WatchedObjects::new(client.clone())),
        done: done_tx,
        shutdown: shutdown.clone(),
    };
    let mut init_seen: HashSet<String> = HashSet::new();
    let mut synced = false;
    let (pleg_tx, mut pleg_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(crate::pleg::run(cri.clone(), pleg_tx, shutdown.clone()));
    let mut sweep = tokio::time::interval(ORPHAN_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(uid) = done_rx.recv() => {
                crate::monitor::METRICS.forget_pod(&uid);
                workers.remove(&uid);
                crate::eviction::forget(&uid);
                let root = ctx.cgroup_root.clone();
                tokio::spawn(async move { crate::cgroups::remove_pod_async(&root, &uid).await });
            }
            Some(uid) = pleg_rx.recv() => {
                if let Some(w) = workers.get(&uid) {
                    w.wake.notify_one();
                }
            }
            _ = sweep.tick(), if synced => {
                sweep_orphans(&*cri, &reader, &workers).await;
                let mut known: HashSet<String> = reader.state().iter().map(|p| uid_of(p)).collect();
                known.extend(workers.keys().cloned());
                known.extend(static_uids.keys().cloned());
                crate::cgroups::sweep_async(&ctx.cgroup_root, known).await;
            }
            Some(pods) = async { match static_rx.as_mut() { Some(r) => r.recv().await, None => None } } => {
                let now: HashMap<String, String> = pods
                    .iter()
                    .map(|p| (uid_of(p), crate::static_pods::key(p)))
                    .collect();
                for (uid, key) in &static_uids {
                    if !now.contains_key(uid) {
                        info!(pod = %key, %uid, "static pod removed from the manifest folder");
                        if let Some(w) = workers.get(uid) {
                            let _ = w.tx.send(None);
                        }
                    }
                }
                if let Ok(mut r) = registry.write() {
                    r.clear();
                    for p in &pods {
                        r.insert(crate::static_pods::key(p), Arc::new(p.clone()));
                    }
                }
                for p in pods {
                    if !static_uids.contains_key(&uid_of(&p)) {
                        info!(pod = %key_of(&p), uid = %uid_of(&p), "static pod from the manifest folder");
                    }
                    dispatch(&mut workers, p, &deps);
                }
                static_uids = now;
            }
            ev = events.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Err(e) => warn!(error = %e, "pod watch failed; retrying (is the API server up?)"),
                    Ok(watcher::Event::Init) => init_seen.clear(),
                    Ok(watcher::Event::InitApply(p)) | Ok(watcher::Event::Apply(p))
                        if crate::static_pods::is_mirror(&p) =>
                    {
                        on_mirror(&p, false, &client, &workers, &static_uids);
                    }
                    Ok(watcher::Event::Delete(p)) if crate::static_pods::is_mirror(&p) => {
                        on_mirror(&p, true, &client, &workers, &static_uids);
                    }
                    Ok(watcher::Event::InitApply(p)) => {
                        init_seen.insert(uid_of(&p));
                        if admitted(&p, &workers, &in_runtime, &mut rejected, admission.as_ref(), &client, &ctx) {
                            dispatch(&mut workers, p, &deps);
                        }
                    }
                    Ok(watcher::Event::Apply(p)) => {
                        if admitted(&p, &workers, &in_runtime, &mut rejected, admission.as_ref(), &client, &ctx) {
                            dispatch(&mut workers, p, &deps);
                        }
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        let uid = uid_of(&p);
                        rejected.remove(&uid);
                        info!(pod = %key_of(&p), %uid, "pod removed from the API");
                        match workers.get(&uid) {
                            Some(w) => { let _ = w.tx.send(None); }
                            None => spawn_cleanup(cri.clone(), uid),
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        for (uid, w) in &workers {
                            if !init_seen.contains(uid) && !static_uids.contains_key(uid) {
                                info!(%uid, "pod is gone from the API (relist)");
                                let _ = w.tx.send(None);
                            }
                        }
                        if !synced {
                            synced = true;
                            info!(pods = init_seen.len(), "pod list synced");
                            sweep.reset_immediately();
                        }
                    }
                }
            }
        }
    }
    debug!("pod manager stopped");
}

/// Where static pods come from: the folder watcher's sets, and the registry the server reads.
#[derive(Default)]
pub struct StaticSource {
    pub rx: Option<mpsc::UnboundedReceiver<Vec<Pod>>>,
    pub registry: crate::static_pods::Registry,
}

/// A mirror pod changed in the API: one being deleted is deleted for good, and the static
/// pod's worker is woken to (re)create it.
fn on_mirror(
    mirror: &Pod,
    gone: bool,
    client: &Client,
    workers: &HashMap<String, Worker>,
    static_uids: &HashMap<String, String>,
) {
    let key = key_of(mirror);
    if mirror.metadata.deletion_timestamp.is_some() && !gone {
        let (client, mirror) = (client.clone(), mirror.clone());
        tokio::spawn(async move {
            crate::static_pods::finish_mirror_deletion(&client, &mirror).await;
        });
    }
    if mirror.metadata.deletion_timestamp.is_some() || gone {
        for (uid, k) in static_uids {
            if *k == key {
                if let Some(w) = workers.get(uid) {
                    w.wake.notify_one();
                }
            }
        }
    }
}

/// What every pod worker is started with.
struct WorkerDeps<R> {
    cri: Arc<R>,
    ctx: Arc<SyncContext>,
    client: Client,
    /// ConfigMaps, Secrets and tokens, shared by the workers (one watch per object).
    objects: Arc<dyn crate::objects::ObjectSource>,
    done: mpsc::UnboundedSender<String>,
    shutdown: watch::Receiver<bool>,
}

fn dispatch<R: CriRuntime>(workers: &mut HashMap<String, Worker>, pod: Pod, deps: &WorkerDeps<R>) {
    let WorkerDeps {
        cri,
        ctx,
        client,
        objects,
        done,
        shutdown,
    } = deps;
    let uid = uid_of(&pod);
    if uid.is_empty() {
        return;
    }
    if let Some(w) = workers.get(&uid) {
        if w.tx.send(Some(pod.clone())).is_ok() {
            return;
        }
    }
    let key = key_of(&pod);
    let (tx, rx) = watch::channel(Some(pod));
    let sync = PodSync::new(cri.clone(), ctx.clone()).with_objects(objects.clone());
    let wake_handle = sync.wake();
    let span = tracing::info_span!("pod", pod = %key, uid = %uid);
    tokio::spawn(
        pod_worker(
            uid.clone(),
            rx,
            sync,
            client.clone(),
            done.clone(),
            shutdown.clone(),
        )
        .instrument(span),
    );
    workers.insert(
        uid,
        Worker {
            tx,
            wake: wake_handle,
        },
    );
}

/// The uids of the pods with a ready sandbox in the runtime (empty if it cannot be listed).
async fn running_pod_uids<R: CriRuntime>(cri: &R) -> HashSet<String> {
    let ready = skiff_proto::cri::PodSandboxState::SandboxReady as i32;
    match cri.list_pod_sandbox(HashMap::new()).await {
        Ok(s) => s
            .iter()
            .filter(|s| s.state == ready)
            .filter_map(|s| s.labels.get(labels::POD_UID).cloned())
            .collect(),
        Err(e) => {
            warn!(error = %e, "ListPodSandbox failed; pods already running go through admission");
            HashSet::new()
        }
    }
}

/// Whether `pod` may go to a worker: pods with a worker, pods being deleted, finished pods,
/// pods past Pending or already running in the runtime (`in_runtime`: a restarted kubelet
/// accepts what it ran before) and static pods pass; a new pod goes through admission ([`crate::admission`]) once, and a
/// rejected one gets phase Failed, the reason and `Pod was rejected: ...` (written in the
/// background) and an event, and is skipped until it is deleted.
fn admitted(
    pod: &Pod,
    workers: &HashMap<String, Worker>,
    in_runtime: &HashSet<String>,
    rejected: &mut HashSet<String>,
    admission: Option<&crate::admission::Admission>,
    client: &Client,
    ctx: &Arc<SyncContext>,
) -> bool {
    let uid = uid_of(pod);
    if pod.metadata.deletion_timestamp.is_some() {
        rejected.remove(&uid);
        return true;
    }
    if rejected.contains(&uid) {
        return false;
    }
    let Some(admission) = admission else {
        return true;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if workers.contains_key(&uid)
        || in_runtime.contains(&uid)
        || !matches!(phase, None | Some("Pending"))
        || crate::static_pods::is_static(pod)
    {
        return true;
    }
    let others: Vec<Pod> = workers
        .values()
        .filter_map(|w| w.tx.borrow().clone())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let others: Vec<&Pod> = others.iter().collect();
    let Err(rejection) = admission.admit(pod, &others) else {
        return true;
    };
    info!(pod = %key_of(pod), %uid, reason = rejection.reason, message = %rejection.message,
        "pod rejected by admission");
    rejected.insert(uid);
    let (client, pod, node) = (client.clone(), pod.clone(), ctx.node_name.clone());
    tokio::spawn(async move {
        let status = PodStatus {
            phase: Some("Failed".into()),
            reason: Some(rejection.reason.to_string()),
            message: Some(rejection.status_message()),
            qos_class: Some(crate::status::qos_class(&pod).to_string()),
            ..Default::default()
        };
        crate::events::post(
            &client,
            &node,
            &pod,
            vec![PodEvent {
                warning: true,
                reason: rejection.reason,
                message: rejection.message.clone(),
                field_path: None,
            }],
        )
        .await;
        for attempt in 0..5 {
            match write_status(&client, &pod, &status).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, attempt, "cannot write the status of a rejected pod");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    false
}

fn spawn_cleanup<R: CriRuntime>(cri: Arc<R>, uid: String) {
    tokio::spawn(async move {
        if let Err(e) = terminate_pod(&*cri, &uid, VANISHED_GRACE_SECS).await {
            warn!(%uid, error = %e, "cannot clean up the sandboxes of a deleted pod");
        }
    });
}

/// Stops and removes sandboxes whose pod uid is neither in the store nor owned by a worker.
async fn sweep_orphans<R: CriRuntime>(
    cri: &R,
    reader: &Store<Pod>,
    workers: &HashMap<String, Worker>,
) {
    let known: HashSet<String> = reader.state().iter().map(|p| uid_of(p)).collect();
    let sandboxes = match cri.list_pod_sandbox(HashMap::new()).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "orphan sweep: ListPodSandbox failed");
            return;
        }
    };
    let orphans: HashSet<String> = sandboxes
        .iter()
        .filter_map(|s| s.labels.get(labels::POD_UID).cloned())
        .filter(|uid| !known.contains(uid) && !workers.contains_key(uid))
        .collect();
    for uid in orphans {
        info!(%uid, "removing sandboxes of a pod that no longer exists");
        if let Err(e) = terminate_pod(cri, &uid, VANISHED_GRACE_SECS).await {
            warn!(%uid, error = %e, "orphan sweep failed");
        }
    }
}

async fn write_status(client: &Client, pod: &Pod, status: &PodStatus) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "metadata": { "uid": pod.metadata.uid },
        "status": status,
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Deletes the pod object for good (grace 0, only this uid). `Ok(true)` when it is gone.
async fn finish_delete(client: &Client, pod: &Pod) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        // Already gone, or a new pod with the same name (uid precondition failed).
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn pod_worker<R: CriRuntime>(
    uid: String,
    mut rx: watch::Receiver<Option<Pod>>,
    mut sync: PodSync<R>,
    client: Client,
    done: mpsc::UnboundedSender<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    debug!("pod worker started");
    let mut last_written: Option<PodStatus> = None;
    let mut last_pod: Option<Pod> = None;
    let mut retry = Duration::from_secs(1);
    let wake = sync.wake();
    // For kubelet_pod_start_duration_seconds: first sight to first Running status.
    let first_seen = Instant::now();
    let mut start_observed = false;
    loop {
        let current = rx.borrow_and_update().clone();
        let mut wait: Duration;
        match current {
            None => {
                // Gone from the API: only the CRI side is left to clean.
                let grace = last_pod
                    .as_ref()
                    .and_then(|p| p.metadata.deletion_grace_period_seconds)
                    .unwrap_or(VANISHED_GRACE_SECS)
                    .max(0);
                match sync.terminate(&uid, grace).await {
                    Ok(()) => {
                        if let Some(p) = last_pod
                            .as_ref()
                            .filter(|p| crate::static_pods::is_static(p))
                        {
                            if let Err(e) = crate::static_pods::delete_mirror(&client, p).await {
                                warn!(error = %e, "cannot delete the mirror pod");
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "cleanup of a deleted pod failed; retrying");
                        wait = retry;
                    }
                }
            }
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                let grace = pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or_else(|| {
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30)
                    .max(0);
                info!(grace, "pod is being deleted; stopping it");
                if last_pod.is_none()
                    || last_pod
                        .as_ref()
                        .and_then(|p| p.metadata.deletion_timestamp.as_ref())
                        .is_none()
                {
                    let running: Vec<PodEvent> = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .into_iter()
                        .flatten()
                        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                        .map(|c| {
                            PodEvent::normal(
                                "Killing",
                                &c.name,
                                format!("Stopping container {}", c.name),
                            )
                        })
                        .collect();
                    crate::events::post(&client, sync.node_name(), &pod, running).await;
                }
                let terminated = sync.terminate_pod_of(Some(&pod), &uid, grace).await;
                let hook_events = sync.take_events();
                crate::events::post(&client, sync.node_name(), &pod, hook_events).await;
                let res = match terminated {
                    Ok(()) => finish_delete(&client, &pod)
                        .await
                        .map_err(|e| format!("deleting the pod object: {e}")),
                    Err(e) => Err(e.to_string()),
                };
                last_pod = Some(pod);
                match res {
                    Ok(()) => {
                        info!("pod terminated and deleted");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "pod deletion failed; retrying");
                        wait = retry;
                    }
                }
            }
            Some(pod) => {
                let status = sync.sync(&pod, Instant::now()).await;
                crate::monitor::METRICS
                    .pod_syncs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !start_observed && status.phase.as_deref() == Some("Running") {
                    start_observed = true;
                    // A pod already running when first seen (kubelet restart) is not a start.
                    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                        crate::monitor::METRICS
                            .pod_start
                            .observe(first_seen.elapsed());
                    }
                }
                let events = sync.take_events();
                crate::events::post(&client, sync.node_name(), &pod, events).await;
                wait = sync.next_wake(&pod, &status, Instant::now());
                // A static pod's status goes to its mirror pod, (re)created as needed.
                let mut target = None;
                let mut unchanged =
                    last_written.as_ref() == Some(&status) || pod.status.as_ref() == Some(&status);
                if crate::static_pods::is_static(&pod) {
                    match crate::static_pods::ensure_mirror(&client, &pod).await {
                        Ok(Some(m)) => {
                            unchanged = m.status.as_ref() == Some(&status);
                            target = Some(m);
                        }
                        Ok(None) => unchanged = true,
                        Err(e) => {
                            warn!(error = %e, "cannot create the mirror pod; retrying");
                            unchanged = true;
                            wait = wait.min(retry);
                        }
                    }
                }
                if !unchanged {
                    match write_status(&client, target.as_ref().unwrap_or(&pod), &status).await {
                        Ok(()) => {
                            debug!(phase = ?status.phase, "pod status written");
                            last_written = Some(status.clone());
                            retry = Duration::from_secs(1);
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot write pod status; retrying");
                            last_written = None;
                            wait = retry;
                            retry = (retry * 2).min(Duration::from_secs(10));
                        }
                    }
                } else {
                    last_written = Some(status.clone());
                }
                last_pod = Some(pod);
            }
        }
        // A watched ConfigMap or Secret that changed is written into the volumes at once.
        let api_volumes = last_pod
            .as_ref()
            .is_some_and(crate::reconcile::has_api_volumes);
        tokio::select! {
            _ = shutdown.changed() => return,
            r = rx.changed() => if r.is_err() { return },
            _ = wake.notified() => {}
            _ = sync.objects_changed(), if api_volumes => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = done.send(uid);
    debug!("pod worker finished");
}
