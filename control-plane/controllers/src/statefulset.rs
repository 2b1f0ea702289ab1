//! The StatefulSet controller (upstream's `pkg/controller/statefulset`).
//!
//! Pods are `<set>-<ordinal>` for ordinals `spec.ordinals.start ..` + replicas, labelled
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//! `controller-revision-hash` (the revision's name), with `hostname` = pod name and
//! `subdomain` = `serviceName`. Each `volumeClaimTemplate` gives a PVC `<claim>-<set>-<ordinal>`,
//! created before its pod and mounted in place of the template's volume of that name; the
//! `persistentVolumeClaimRetentionPolicy` makes the set (`whenDeleted: Delete`) or a scaled-away
//! pod (`whenScaled: Delete`) the claim's owner, so garbage collection removes it.
//! `OrderedReady` creates in ordinal order, each pod Running and Ready before the next, and
//! removes from the highest ordinal down, one at a time; `Parallel` does both at once. Updates:
//! `RollingUpdate` replaces pods from the highest ordinal down to `partition`, one (or
//! `maxUnavailable`) at a time, waiting for each to be Ready; `OnDelete` replaces only pods the
//! user deleted. Templates are ControllerRevisions (`kubectl rollout history/undo sts`).

use crate::cached_pod::CachedPod;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{warn, Instrument};

use crate::daemonset::scaled;
use crate::revision;
use crate::workload::{self, Expectations};
use crate::{Context, ControllerError};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct State {
    client: Client,
    pods: Store<CachedPod>,
    exp: Expectations,
    rec: Recorder,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let reader = ctx.reader.clone();
        let (pods, pod_events) = workload::subscribe_pods(&ctx.informers);
        let st = Arc::new(State {
            client: client.clone(),
            pods: pods.clone(),
            exp: Expectations::default(),
            rec: workload::recorder(&client, "statefulset-controller"),
        });
        let ctl = Controller::new(
            Api::<StatefulSet>::all(reader.clone()),
            watcher::Config::default(),
        )
        .owns_shared_stream(pod_events)
        .run(reconcile, error_policy, st)
        .for_each(|_| async {});
        workload::until(stop, ctl).await;
        Ok(())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn error_policy(_s: Arc<StatefulSet>, err: &StatefulSetError, _st: Arc<State>) -> Action {
    warn!(error = %err, "statefulset sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The ordinal of a set's pod from its name, `<set>-<ordinal>`.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

pub fn claim_name(claim: &str, set: &str, ord: i32) -> String {
    format!("{claim}-{set}-{ord}")
}

fn running_and_ready(p: &CachedPod) -> bool {
    workload::phase(p) == "Running" && workload::is_ready(p)
}

/// The pod of ordinal `ord` at revision `rev` (upstream's `newVersionedStatefulSetPod`).
fn new_pod(set: &StatefulSet, ord: i32, rev: &str) -> Pod {
    let spec = set.spec.clone().unwrap_or_default();
    let sname = set.name_any();
    let pname = format!("{sname}-{ord}");
    let tmeta = spec.template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), pname.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    labels.insert(revision::HASH_LABEL.into(), rev.into());
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    pod_spec.hostname = Some(pname.clone());
    if !spec.service_name.as_deref().unwrap_or("").is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    for vct in spec.volume_claim_templates.iter().flatten() {
        let claim = vct.metadata.name.clone().unwrap_or_default();
        let vols = pod_spec.volumes.get_or_insert_with(Vec::new);
        vols.retain(|v| v.name != claim);
        vols.push(Volume {
            name: claim.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&claim, &sname, ord),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pname),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![workload::controller_ref(set)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

fn plain_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid: uid.into(),
        controller: None,
        block_owner_deletion: Some(true),
    }
}

/// Creates the claims of ordinal `ord` that do not exist yet.
async fn ensure_claims(st: &State, set: &StatefulSet, ord: i32) -> Result<(), kube::Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(st.client.clone(), &ns);
    let spec = set.spec.clone().unwrap_or_default();
    let sname = set.name_any();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    for vct in spec.volume_claim_templates.iter().flatten() {
        let cname = claim_name(vct.metadata.name.as_deref().unwrap_or(""), &sname, ord);
        if api.get_opt(&cname).await?.is_some() {
            continue;
        }
        let mut labels = vct.metadata.labels.clone().unwrap_or_default();
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            labels.insert(k.clone(), v.clone());
        }
        let mut claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(cname.clone()),
                namespace: Some(ns.clone()),
                labels: Some(labels),
                annotations: vct.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: vct.spec.clone(),
            status: None,
        };
        if delete_with_set {
            claim.metadata.owner_references = Some(vec![plain_ref(
                "apps/v1",
                "StatefulSet",
                &sname,
                &set.uid().unwrap_or_default(),
            )]);
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                workload::record(
                    &st.rec,
                    set,
                    false,
                    "SuccessfulCreate",
                    "CreateClaim",
                    format!(
                        "create Claim {cname} Pod {sname}-{ord} in StatefulSet {sname} success"
                    ),
                )
                .await
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                workload::record(
                    &st.rec,
                    set,
                    true,
                    "FailedCreate",
                    "CreateClaim",
                    format!("create Claim {cname} for Pod {sname}-{ord} in StatefulSet {sname} failed error: {e}"),
                )
                .await;
                return Err(e);
            }
        }
    }
    Ok(())
}

/// `whenScaled: Delete`: a pod condemned by a scale-down becomes its claims' owner.
async fn hand_claims_to_pod(
    st: &State,
    set: &StatefulSet,
    pod: &CachedPod,
) -> Result<(), kube::Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(st.client.clone(), &ns);
    let spec = set.spec.clone().unwrap_or_default();
    let sname = set.name_any();
    let Some(ord) = ordinal(&sname, &pod.name_any()) else {
        return Ok(());
    };
    for vct in spec.volume_claim_templates.iter().flatten() {
        let cname = claim_name(vct.metadata.name.as_deref().unwrap_or(""), &sname, ord);
        let Some(claim) = api.get_opt(&cname).await? else {
            continue;
        };
        let puid = pod.uid().unwrap_or_default();
        if claim.owner_references().iter().any(|r| r.uid == puid) {
            continue;
        }
        let mut refs = claim.owner_references().to_vec();
        refs.push(plain_ref("v1", "Pod", &pod.name_any(), &puid));
        let patch = serde_json::json!({"metadata": {"ownerReferences": refs}});
        api.patch(&cname, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

async fn reconcile(set: Arc<StatefulSet>, st: Arc<State>) -> Result<Action, StatefulSetError> {
    let span = tracing::info_span!("statefulset", statefulset = %workload::key(&*set), uid = %set.uid().unwrap_or_default());
    sync(set, st).instrument(span).await
}

async fn sync(set: Arc<StatefulSet>, st: Arc<State>) -> Result<Action, StatefulSetError> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = crate::util::ready(&st.pods).await;
    let ns = set.namespace().unwrap_or_default();
    let sname = set.name_any();
    let key = workload::key(&*set);
    if !st.exp.satisfied(&key, workload::pod_seen(&st.pods, &ns)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let spec = set.spec.clone().unwrap_or_default();
    let cr_api: Api<ControllerRevision> = Api::namespaced(st.client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    let mut revisions = revision::list(&cr_api, &*set).await?;
    let update_rev = revision::ensure(
        &cr_api,
        &*set,
        &revision::template_json(&spec.template),
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        set.status.as_ref().and_then(|s| s.collision_count),
        &mut revisions,
    )
    .await?;
    let update_name = update_rev.name_any();
    let mut current_name = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| revisions.iter().any(|r| r.name_any() == *c))
        .unwrap_or_else(|| update_name.clone());

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.clone())
        .unwrap_or_else(|| "RollingUpdate".into());
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let partition = ru.partition.unwrap_or(0).max(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();

    let owned = workload::owned_by(&st.pods, &ns, &set.uid().unwrap_or_default());
    let mut by_ord: BTreeMap<i32, Arc<CachedPod>> = BTreeMap::new();
    let mut strays = Vec::new();
    for p in &owned {
        match ordinal(&sname, &p.name_any()) {
            Some(o) => {
                by_ord.insert(o, p.clone());
            }
            None => strays.push(p.clone()),
        }
    }
    let want = start..start + replicas;
    let rev_of = |p: &CachedPod| {
        p.labels()
            .get(revision::HASH_LABEL)
            .cloned()
            .unwrap_or_default()
    };

    // Status before acting (what the cache shows).
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    // Upstream's counting: every created pod is a replica; ready and available need Running;
    // current and updated count pods that are not terminating.
    for p in by_ord.values() {
        status.replicas += 1;
        if running_and_ready(p) {
            status.ready_replicas = Some(status.ready_replicas.unwrap_or(0) + 1);
            if workload::is_available(p, min_ready, now) {
                status.available_replicas = Some(status.available_replicas.unwrap_or(0) + 1);
            }
        }
        if workload::is_terminating(p) {
            continue;
        }
        if rev_of(p) == current_name {
            status.current_replicas = Some(status.current_replicas.unwrap_or(0) + 1);
        }
        if rev_of(p) == update_name {
            status.updated_replicas = Some(status.updated_replicas.unwrap_or(0) + 1);
        }
    }

    // One action step at a time in OrderedReady; all at once in Parallel.
    let mut acted = false;
    let mut blocked = false;
    // Failed pods are deleted and come back.
    for p in by_ord.values() {
        if workload::phase(p) == "Failed" && !workload::is_terminating(p) {
            delete_pod(&st, &set, &pod_api, &key, p).await?;
            acted = true;
        }
    }
    if !acted {
        for ord in want.clone() {
            match by_ord.get(&ord) {
                None => {
                    ensure_claims(&st, &set, ord).await?;
                    let rev = if strategy == "RollingUpdate" && ord < start + partition {
                        current_name.clone()
                    } else {
                        update_name.clone()
                    };
                    let pod = new_pod(&set, ord, &rev);
                    match pod_api.create(&PostParams::default(), &pod).await {
                        Ok(p) => {
                            st.exp.expect_add(&key, &p.name_any());
                            workload::record(
                                &st.rec,
                                &*set,
                                false,
                                "SuccessfulCreate",
                                "CreatePod",
                                format!(
                                    "create Pod {} in StatefulSet {sname} successful",
                                    p.name_any()
                                ),
                            )
                            .await;
                        }
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => {
                            workload::record(
                                &st.rec,
                                &*set,
                                true,
                                "FailedCreate",
                                "CreatePod",
                                format!("create Pod {sname}-{ord} in StatefulSet {sname} failed error: {e}"),
                            )
                            .await;
                            return Err(e.into());
                        }
                    }
                    acted = true;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(p) if workload::is_terminating(p) => {
                    // Wait for it to go before recreating it under the same name.
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(p) if !running_and_ready(p) && !parallel => {
                    blocked = true;
                    break;
                }
                Some(_) => {}
            }
        }
    }
    // Scale down: ordinals outside the wanted range, highest first.
    if !acted && !blocked {
        let mut condemned: Vec<&Arc<CachedPod>> = by_ord
            .iter()
            .filter(|(o, _)| !want.contains(o))
            .map(|(_, p)| p)
            .chain(strays.iter())
            .collect();
        condemned.sort_by_key(|p| std::cmp::Reverse(ordinal(&sname, &p.name_any())));
        let when_scaled_delete = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.as_deref())
            == Some("Delete");
        for p in condemned {
            if workload::is_terminating(p) {
                if !parallel {
                    blocked = true;
                    break;
                }
                continue;
            }
            if when_scaled_delete {
                hand_claims_to_pod(&st, &set, p).await?;
            }
            delete_pod(&st, &set, &pod_api, &key, p).await?;
            acted = true;
            if !parallel {
                break;
            }
        }
    }
    // Rolling update from the highest ordinal down to the partition.
    if !acted && !blocked && strategy == "RollingUpdate" {
        let max_unavailable = scaled(ru.max_unavailable.as_ref(), replicas, 1).max(1);
        let unavailable = want
            .clone()
            .filter(|o| {
                by_ord
                    .get(o)
                    .is_none_or(|p| !workload::is_available(p, min_ready, now))
            })
            .count() as i32;
        let mut budget = max_unavailable - unavailable;
        for ord in want.clone().rev() {
            if ord < start + partition {
                break;
            }
            let Some(p) = by_ord.get(&ord) else { continue };
            if rev_of(p) == update_name || workload::is_terminating(p) {
                continue;
            }
            if budget <= 0 {
                break;
            }
            delete_pod(&st, &set, &pod_api, &key, p).await?;
            budget -= 1;
        }
    }

    // The update is done when every pod runs the update revision.
    if status.updated_replicas.unwrap_or(0) == replicas && status.replicas == replicas {
        current_name = update_name.clone();
        status.current_replicas = status.updated_replicas;
    }
    status.current_revision = Some(current_name.clone());
    status.update_revision = Some(update_name.clone());

    let live: Vec<String> = owned.iter().map(|p| rev_of(p)).collect();
    revision::truncate(
        &cr_api,
        &revisions,
        spec.revision_history_limit.unwrap_or(10),
        &|r| {
            let n = r.name_any();
            n == current_name || n == update_name || live.contains(&n)
        },
    )
    .await?;

    if set.status.as_ref() != Some(&status) {
        let mut next = (*set).clone();
        next.status = Some(status);
        Api::<StatefulSet>::namespaced(st.client.clone(), &ns)
            .replace_status(&sname, &PostParams::default(), &next)
            .await?;
    }
    Ok(if min_ready > 0 {
        Action::requeue(Duration::from_secs(min_ready as u64))
    } else {
        Action::await_change()
    })
}

async fn delete_pod(
    st: &State,
    set: &StatefulSet,
    api: &Api<Pod>,
    key: &str,
    p: &CachedPod,
) -> Result<(), kube::Error> {
    let pname = p.name_any();
    st.exp.expect_del(key, &pname);
    match api.delete(&pname, &DeleteParams::default()).await {
        Ok(_) => {
            workload::record(
                &st.rec,
                set,
                false,
                "SuccessfulDelete",
                "DeletePod",
                format!(
                    "delete Pod {pname} in StatefulSet {} successful",
                    set.name_any()
                ),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => {
            st.exp.forget(key);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_pods() {
        assert_eq!(ordinal("web", "web-3"), Some(3));
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webby-1"), None);
        let set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"serviceName": "nginx", "selector": {"matchLabels": {"app": "w"}},
                "template": {"metadata": {"labels": {"app": "w"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                             "volumes": [{"name": "data", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}]}
        }))
        .unwrap();
        let p = new_pod(&set, 2, "web-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("web-2"));
        assert_eq!(p.labels()[POD_NAME_LABEL], "web-2");
        assert_eq!(p.labels()[POD_INDEX_LABEL], "2");
        assert_eq!(p.labels()[revision::HASH_LABEL], "web-abc");
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let vols = spec.volumes.unwrap();
        assert_eq!(vols.len(), 1);
        assert_eq!(
            vols[0].persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-web-2"
        );
    }
}
