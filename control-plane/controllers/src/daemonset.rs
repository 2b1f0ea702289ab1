//! The DaemonSet controller (upstream's `pkg/controller/daemon`): one pod per eligible node.
//!
//! A node is eligible when the pod template's `nodeSelector` and required node affinity match it
//! and the pod tolerates its `NoSchedule`/`NoExecute` taints, counting the tolerations upstream
//! adds to every daemon pod (`not-ready`/`unreachable` NoExecute without a time limit,
//! `disk-pressure`, `memory-pressure`, `pid-pressure`, `unschedulable` NoSchedule, and
//! `network-unavailable` for host-network pods). Pods carry upstream's required node affinity
//! on `metadata.name`; they are also bound directly (`spec.nodeName`) because Skiff's scheduler
//! does not evaluate `matchFields` yet. Templates are recorded as ControllerRevisions
//! (`kubectl rollout history/undo`); pods carry `controller-revision-hash` and
//! `pod-template-generation`. `RollingUpdate` replaces pods node by node within `maxUnavailable`
//! or, with `maxSurge`, starts the new pod beside the old one first; `OnDelete` only creates.

use crate::cached_pod::CachedPod;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{warn, Instrument};

use crate::revision;
use crate::workload::{self, Expectations};
use crate::{Context, ControllerError};

/// A node's active daemon pods: (old revisions, current revision).
type OldAndNew = (Vec<Arc<CachedPod>>, Vec<Arc<CachedPod>>);

struct State {
    client: Client,
    pods: Store<CachedPod>,
    nodes: Store<Node>,
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
        let node_informer = ctx.informers.nodes();
        let nodes = node_informer.store().clone();
        let st = Arc::new(State {
            client: client.clone(),
            pods: pods.clone(),
            nodes: nodes.clone(),
            exp: Expectations::default(),
            rec: workload::recorder(&client, "daemonset-controller"),
        });
        let ctl = Controller::new(
            Api::<DaemonSet>::all(reader.clone()),
            watcher::Config::default(),
        )
        .owns_shared_stream(pod_events)
        .reconcile_all_on(node_informer.ticks())
        .run(reconcile, error_policy, st)
        .for_each(|_| async {});
        workload::until(stop, ctl).await;
        Ok(())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn error_policy(_ds: Arc<DaemonSet>, err: &DaemonSetError, _st: Arc<State>) -> Action {
    warn!(error = %err, "daemonset sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn tol(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// Upstream's `AddOrUpdateDaemonPodTolerations`.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut add = vec![
        tol("node.kubernetes.io/not-ready", "NoExecute"),
        tol("node.kubernetes.io/unreachable", "NoExecute"),
        tol("node.kubernetes.io/disk-pressure", "NoSchedule"),
        tol("node.kubernetes.io/memory-pressure", "NoSchedule"),
        tol("node.kubernetes.io/pid-pressure", "NoSchedule"),
        tol("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        add.push(tol("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tols = spec.tolerations.get_or_insert_with(Vec::new);
    for t in add {
        if let Some(e) = tols
            .iter_mut()
            .find(|x| x.key == t.key && x.effect == t.effect)
        {
            *e = t;
        } else {
            tols.push(t);
        }
    }
}

fn term_matches(t: &NodeSelectorTerm, node: &Node) -> bool {
    skiff_selectors::term_matches(t, &node.name_any(), node.labels())
}

/// Upstream's `NodeShouldRunDaemonPod` (predicates part): whether a daemon pod should run on
/// `node` (selector, required affinity, NoSchedule and NoExecute taints tolerated) and whether
/// one already there may go on running (NoExecute taints only).
pub fn placement(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let labels = node.labels();
    for (k, v) in spec.node_selector.iter().flatten() {
        if labels.get(k) != Some(v) {
            return (false, false);
        }
    }
    if let Some(req) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    {
        if !req
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
        {
            return (false, false);
        }
    }
    let mut spec = spec.clone();
    add_daemon_tolerations(&mut spec);
    let tols = spec.tolerations.unwrap_or_default();
    let taints: Vec<&Taint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let tolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .all(|taint| skiff_selectors::tolerated(&tols, taint))
    };
    let cont = tolerated("NoExecute");
    (cont && tolerated("NoSchedule"), cont)
}

pub fn should_run(spec: &PodSpec, node: &Node) -> bool {
    placement(spec, node).0
}

/// Which node a daemon pod is for: `spec.nodeName`, else its `metadata.name` affinity.
fn pod_node(p: &CachedPod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// `IntOrString` scaled against `total`, rounding up (upstream's `GetScaledValueFromIntOrPercent`).
pub fn scaled(v: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match v {
        None => default,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((p * i64::from(total) + 99) / 100) as i32
        }
    }
}

fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.unwrap_or_default();
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(revision::HASH_LABEL.into(), hash.into());
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    add_daemon_tolerations(&mut pod_spec);
    let na = pod_spec
        .affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        }],
    });
    pod_spec.node_name = Some(node.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![workload::controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

async fn reconcile(ds: Arc<DaemonSet>, st: Arc<State>) -> Result<Action, DaemonSetError> {
    let span = tracing::info_span!("daemonset", daemonset = %workload::key(&*ds), uid = %ds.uid().unwrap_or_default());
    sync(ds, st).instrument(span).await
}

async fn sync(ds: Arc<DaemonSet>, st: Arc<State>) -> Result<Action, DaemonSetError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = crate::util::ready(&st.pods).await;
    let _ = crate::util::ready(&st.nodes).await;
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let key = workload::key(&*ds);
    if !st.exp.satisfied(&key, workload::pod_seen(&st.pods, &ns)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let cr_api: Api<ControllerRevision> = Api::namespaced(st.client.clone(), &ns);
    let pod_api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    let mut revisions = revision::list(&cr_api, &*ds).await?;
    let template = revision::template_json(&spec.template);
    let cur = revision::ensure(
        &cr_api,
        &*ds,
        &template,
        spec.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        ds.status.as_ref().and_then(|s| s.collision_count),
        &mut revisions,
    )
    .await?;
    let hash = revision::hash_of(&cur);
    let pods = workload::owned_by(&st.pods, &ns, &ds.uid().unwrap_or_default());
    let mut by_node: HashMap<String, Vec<Arc<CachedPod>>> = HashMap::new();
    for p in &pods {
        if let Some(n) = pod_node(p) {
            by_node.entry(n).or_default().push(p.clone());
        }
    }
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let tspec = spec.template.spec.clone().unwrap_or_default();
    let nodes = st.nodes.state();
    let mut creates: Vec<String> = Vec::new();
    let mut deletes: Vec<Arc<CachedPod>> = Vec::new();
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..Default::default()
    };
    let (mut desired, mut current, mut mis, mut ready, mut updated, mut available) =
        (0, 0, 0, 0, 0, 0);
    // Per eligible node: (old pods, new pods), active only.
    let mut eligible: BTreeMap<String, OldAndNew> = BTreeMap::new();
    for node in nodes.iter() {
        let nname = node.name_any();
        let mut on_node = by_node.remove(&nname).unwrap_or_default();
        for p in on_node
            .iter()
            .filter(|p| workload::phase(p) == "Failed" && !workload::is_terminating(p))
        {
            workload::record(
                &st.rec,
                &*ds,
                true,
                "FailedDaemonPod",
                "DeletePod",
                format!(
                    "Found failed daemon pod {ns}/{} on node {nname}, will try to kill it",
                    p.name_any()
                ),
            )
            .await;
            deletes.push(p.clone());
        }
        on_node.retain(|p| workload::is_active(p));
        let (run, cont) = placement(&tspec, node);
        if !run {
            if !on_node.is_empty() {
                mis += 1;
                // A NoSchedule taint added later does not evict a running daemon pod.
                if !cont {
                    deletes.extend(on_node);
                }
            }
            continue;
        }
        desired += 1;
        let (new, old): (Vec<_>, Vec<_>) = on_node
            .into_iter()
            .partition(|p| p.labels().get(revision::HASH_LABEL) == Some(&hash));
        if !new.is_empty() || !old.is_empty() {
            current += 1;
        }
        // Count the pod that represents the node: the new one if any.
        if let Some(p) = new.first().or(old.first()) {
            if workload::is_ready(p) {
                ready += 1;
            }
            if workload::is_available(p, min_ready, now) {
                available += 1;
            }
        }
        if !new.is_empty() {
            updated += 1;
        }
        eligible.insert(nname, (old, new));
    }
    // Pods on nodes that no longer exist.
    for (_, ps) in by_node {
        deletes.extend(ps.into_iter().filter(|p| workload::is_active(p)));
    }
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let ru = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    let max_surge = if rolling {
        scaled(ru.max_surge.as_ref(), desired, 0)
    } else {
        0
    };
    let mut max_unavailable = scaled(ru.max_unavailable.as_ref(), desired, 1);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    let mut unavailable = desired - available;
    let mut surging = eligible
        .values()
        .filter(|(o, n)| !o.is_empty() && !n.is_empty())
        .count() as i32;
    for (node, (old, new)) in &eligible {
        // Duplicates of the same revision: keep the oldest.
        let keep_new = new
            .iter()
            .min_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
        for p in new {
            if Some(p) != keep_new {
                deletes.push(p.clone());
            }
        }
        if old.is_empty() && new.is_empty() {
            creates.push(node.clone());
            continue;
        }
        if !rolling || old.is_empty() {
            if !new.is_empty() {
                // OnDelete (or done): extra old pods beside a new one go.
                deletes.extend(old.iter().cloned());
            } else if old.len() > 1 {
                deletes.extend(old.iter().skip(1).cloned());
            }
            continue;
        }
        let old_available = old
            .iter()
            .any(|p| workload::is_available(p, min_ready, now));
        let new_available = keep_new.is_some_and(|p| workload::is_available(p, min_ready, now));
        if max_surge > 0 {
            if keep_new.is_some() {
                if new_available {
                    deletes.extend(old.iter().cloned());
                }
            } else if !old_available || surging < max_surge {
                if old_available {
                    surging += 1;
                }
                creates.push(node.clone());
            }
        } else if keep_new.is_none() {
            if !old_available {
                deletes.extend(old.iter().cloned());
            } else if unavailable < max_unavailable {
                unavailable += 1;
                deletes.extend(old.iter().cloned());
            }
        }
    }

    for p in &deletes {
        let pname = p.name_any();
        st.exp.expect_del(&key, &pname);
        match pod_api.delete(&pname, &DeleteParams::default()).await {
            Ok(_) => {
                workload::record(
                    &st.rec,
                    &*ds,
                    false,
                    "SuccessfulDelete",
                    "DeletePod",
                    format!("Deleted pod: {pname}"),
                )
                .await
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                st.exp.forget(&key);
                return Err(e.into());
            }
        }
    }
    for node in &creates {
        let pod = new_pod(&ds, node, &hash);
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                st.exp.expect_add(&key, &p.name_any());
                workload::record(
                    &st.rec,
                    &*ds,
                    false,
                    "SuccessfulCreate",
                    "CreatePod",
                    format!("Created pod: {}", p.name_any()),
                )
                .await;
            }
            Err(e) => {
                workload::record(
                    &st.rec,
                    &*ds,
                    true,
                    "FailedCreate",
                    "CreatePod",
                    format!("Error creating: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }

    // History beyond revisionHistoryLimit, except revisions live pods use.
    let live_hashes: Vec<String> = pods
        .iter()
        .filter_map(|p| p.labels().get(revision::HASH_LABEL).cloned())
        .collect();
    let cur_name = cur.name_any();
    revision::truncate(
        &cr_api,
        &revisions,
        spec.revision_history_limit.unwrap_or(10),
        &|r| r.name_any() == cur_name || live_hashes.contains(&revision::hash_of(r)),
    )
    .await?;

    status.desired_number_scheduled = desired;
    status.current_number_scheduled = current;
    status.number_misscheduled = mis;
    status.number_ready = ready;
    status.updated_number_scheduled = Some(updated);
    status.number_available = Some(available);
    status.number_unavailable = Some(desired - available);
    if ds.status.as_ref() != Some(&status) {
        let mut next = (*ds).clone();
        next.status = Some(status);
        Api::<DaemonSet>::namespaced(st.client.clone(), &ns)
            .replace_status(&name, &PostParams::default(), &next)
            .await?;
    }
    // minReadySeconds: look again when pods may have become available.
    Ok(if min_ready > 0 && available < desired {
        Action::requeue(Duration::from_secs(min_ready as u64))
    } else {
        Action::await_change()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints}
        }))
        .unwrap()
    }

    #[test]
    fn eligibility() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [], "nodeSelector": {"disk": "ssd"}
        }))
        .unwrap();
        assert!(should_run(
            &spec,
            &node(serde_json::json!({"disk": "ssd"}), serde_json::json!([]))
        ));
        assert!(!should_run(
            &spec,
            &node(serde_json::json!({}), serde_json::json!([]))
        ));
        // Upstream's automatic tolerations cover not-ready and unschedulable.
        let t = serde_json::json!([
            {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"},
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
        ]);
        assert!(should_run(
            &spec,
            &node(serde_json::json!({"disk": "ssd"}), t)
        ));
        let t = serde_json::json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]);
        assert!(!should_run(
            &spec,
            &node(serde_json::json!({"disk": "ssd"}), t.clone())
        ));
        let mut tolerant = spec.clone();
        tolerant.tolerations = Some(vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("x".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]);
        assert!(should_run(
            &tolerant,
            &node(serde_json::json!({"disk": "ssd"}), t)
        ));
        // A NoSchedule taint keeps new daemon pods off but lets a running one stay; NoExecute
        // does neither.
        let t = serde_json::json!([{"key": "x", "effect": "NoSchedule"}]);
        assert_eq!(
            placement(&spec, &node(serde_json::json!({"disk": "ssd"}), t)),
            (false, true)
        );
        let t = serde_json::json!([{"key": "x", "effect": "NoExecute"}]);
        assert_eq!(
            placement(&spec, &node(serde_json::json!({"disk": "ssd"}), t)),
            (false, false)
        );
        // PreferNoSchedule does not keep daemon pods off.
        let t = serde_json::json!([{"key": "x", "effect": "PreferNoSchedule"}]);
        assert!(should_run(
            &spec,
            &node(serde_json::json!({"disk": "ssd"}), t)
        ));
    }

    #[test]
    fn scaling() {
        assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 10, 1), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, 1), 2);
        assert_eq!(scaled(None, 10, 1), 1);
    }
}
