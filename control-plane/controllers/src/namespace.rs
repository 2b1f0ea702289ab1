//! The namespace controller (upstream's `pkg/controller/namespace` and its `deletion` package):
//! empties a terminating namespace and then releases it.
//!
//! `kubectl delete namespace X` only marks the namespace (deletionTimestamp, phase Terminating);
//! its `kubernetes` spec finalizer keeps it stored. This controller watches namespaces, queues
//! every one with a deletionTimestamp (all of them at start and at each re-list, so a namespace
//! left Terminating by a crash is finished after the restart) and, for each:
//! 1. discovers every namespaced, deletable resource through the API (preferred versions of
//!    every group, so custom resources are included);
//! 2. deletes everything of each resource in the namespace, by `deletecollection` where the
//!    resource offers it, else one object at a time (Background propagation); pods get their own
//!    grace period, which the kubelet honours;
//! 3. lists again: what is left is counted per resource and per finalizer into the namespace's
//!    status conditions (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`, ...);
//! 4. while content remains, comes back after half the estimated wait (the longest pod grace
//!    period left, or 15 s when objects carry finalizers); failures retry with a back-off of
//!    5 ms doubling to 60 s;
//! 5. when nothing is left, removes the `kubernetes` finalizer through `namespaces/X/finalize`;
//!    the API server then removes the namespace once `metadata.finalizers` is empty too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIResource, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy,
};
use kube::{Api, Client, ResourceExt};

use crate::keyqueue;
use crate::queue::WorkQueue;
use crate::{Context, ControllerError};

/// The controller's name (its RBAC role is `system:controller:namespace-controller`).
pub const NAME: &str = "namespace-controller";
/// The spec finalizer this controller owns.
pub const FINALIZER: &str = "kubernetes";
/// Upstream's default `--concurrent-namespace-syncs`.
const WORKERS: usize = 10;
/// Upstream's `--namespace-sync-period`: every namespace is looked at again this often.
const RESYNC: Duration = Duration::from_secs(300);
/// Longest retry back-off (upstream's namespace rate limiter: 5 ms .. 60 s).
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The wait assumed for objects that carry finalizers (upstream's `finalizerEstimateSeconds`).
const FINALIZER_ESTIMATE_SECONDS: i64 = 15;

/// Why one sync of a namespace did not finish it.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// Content is being deleted (graceful pods, finalizers): come back later.
    #[error("some content remains in the namespace, estimate {0} seconds before it is removed")]
    ContentRemaining(i64),
    /// Some resources could not be discovered, listed or deleted (upstream's aggregate error).
    #[error("{}", aggregate(.0))]
    Content(Vec<String>),
    #[error("namespace uid has changed across retries")]
    UidChanged,
}

/// How upstream's `utilerrors.NewAggregate` prints several errors.
fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let reader = ctx.reader.clone();
        let queue = WorkQueue::with_max_backoff(MAX_BACKOFF);
        let (store, events) = keyqueue::informer(Api::<Namespace>::all(reader.clone()));
        let feed = {
            let queue = queue.clone();
            events.for_each(move |ev| {
                if let Ok(ev) = ev {
                    for ns in keyqueue::touched(&ev) {
                        if ns.metadata.deletion_timestamp.is_some() {
                            queue.add(ns.name_any());
                        }
                    }
                }
                futures::future::ready(())
            })
        };
        let resync = {
            let queue = queue.clone();
            async move {
                loop {
                    tokio::time::sleep(RESYNC).await;
                    for ns in store.state() {
                        if ns.metadata.deletion_timestamp.is_some() {
                            queue.add(ns.name_any());
                        }
                    }
                }
            }
        };
        let deleter = Arc::new(Deleter { client });
        let work = queue.run(WORKERS, NAME, move |name: String| {
            let d = deleter.clone();
            async move {
                match d.sync(&name).await {
                    Ok(()) => Ok(None),
                    Err(NamespaceError::ContentRemaining(est)) => {
                        let wait = est / 2 + 1;
                        tracing::debug!(namespace = %name, wait, "content remaining in namespace");
                        Ok(Some(Duration::from_secs(wait as u64)))
                    }
                    Err(e) => Err(format!("deletion of namespace {name} failed: {e}")),
                }
            }
        });
        tokio::select! {
            _ = stop => {}
            _ = feed => {}
            _ = resync => {}
            _ = work => {}
        }
        Ok(())
    })
}

/// A namespaced, deletable resource found by discovery.
#[derive(Clone, Debug)]
struct Gvr {
    ar: ApiResource,
    verbs: Vec<String>,
}

impl Gvr {
    fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
    /// As Go prints a `schema.GroupVersionResource` with `%v`.
    fn go_string(&self) -> String {
        format!(
            "{{{} {} {}}}",
            self.ar.group, self.ar.version, self.ar.plural
        )
    }
}

/// What discovery found, and what failed on the way.
#[derive(Default)]
struct Discovered {
    resources: Vec<Gvr>,
    /// `NamespaceDeletionDiscoveryFailure`'s message when some groups failed.
    discovery_error: Option<String>,
    /// `NamespaceDeletionGroupVersionParsingFailure`'s message.
    parse_error: Option<String>,
}

/// What is left of one resource after a deletion pass.
#[derive(Default)]
struct Remaining {
    estimate: i64,
    count: usize,
    finalizers: BTreeMap<String, usize>,
}

struct Deleter {
    client: Client,
}

impl Deleter {
    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    /// One pass over a namespace (upstream's `namespacedResourcesDeleter.Delete`).
    async fn sync(&self, name: &str) -> Result<(), NamespaceError> {
        let Some(ns) = self.namespaces().get_opt(name).await? else {
            return Ok(());
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(());
        }
        let Some(ns) = self.ensure_terminating(ns).await? else {
            return Ok(());
        };
        if finalizers(&ns).is_empty() {
            return Ok(());
        }
        let estimate = self.delete_all_content(ns).await?;
        if estimate > 0 {
            return Err(NamespaceError::ContentRemaining(estimate));
        }
        self.finalize(name).await
    }

    /// Sets phase Terminating if the API server has not (upstream's `updateNamespaceStatusFunc`).
    /// `None` when the namespace is gone.
    async fn ensure_terminating(&self, ns: Namespace) -> Result<Option<Namespace>, NamespaceError> {
        let api = self.namespaces();
        let uid = ns.metadata.uid.clone();
        let mut ns = ns;
        for _ in 0..5 {
            let phase = ns.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Terminating") {
                return Ok(Some(ns));
            }
            let mut upd = ns.clone();
            upd.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
            match api
                .replace_status(&ns.name_any(), &PostParams::default(), &upd)
                .await
            {
                Ok(n) => return Ok(Some(n)),
                Err(e) if is_code(&e, 404) => return Ok(None),
                Err(e) if is_code(&e, 409) => {
                    let Some(fresh) = api.get_opt(&ns.name_any()).await? else {
                        return Ok(None);
                    };
                    if fresh.metadata.uid != uid {
                        return Err(NamespaceError::UidChanged);
                    }
                    ns = fresh;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(ns))
    }

    /// Deletes everything in the namespace; returns the estimated seconds until what remains is
    /// gone, and records the outcome in the namespace's conditions.
    async fn delete_all_content(&self, mut ns: Namespace) -> Result<i64, NamespaceError> {
        let name = ns.name_any();
        let deleted_at = ns
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now);
        let mut errs: Vec<String> = vec![];
        let mut content_errs: Vec<String> = vec![];
        let found = discover(&self.client).await;
        if let Some(e) = &found.discovery_error {
            errs.push(e.clone());
        }
        if let Some(e) = &found.parse_error {
            errs.push(e.clone());
        }
        let mut estimate = 0i64;
        let mut by_resource: BTreeMap<String, usize> = BTreeMap::new();
        let mut by_finalizer: BTreeMap<String, usize> = BTreeMap::new();
        for gvr in &found.resources {
            let (left, err) = self.delete_resource(gvr, &name, deleted_at).await;
            if let Some(e) = err {
                errs.push(e.clone());
                content_errs.push(e);
            }
            estimate = estimate.max(left.estimate);
            if left.count > 0 {
                *by_resource
                    .entry(format!("{}.{}", gvr.ar.plural, gvr.ar.group))
                    .or_default() += left.count;
                for (f, n) in left.finalizers {
                    *by_finalizer.entry(f).or_default() += n;
                }
            }
        }
        let mut failing: Vec<NamespaceCondition> = vec![];
        if let Some(m) = found.discovery_error {
            failing.push(condition(
                "NamespaceDeletionDiscoveryFailure",
                "True",
                "DiscoveryFailed",
                m,
            ));
        }
        if let Some(m) = found.parse_error {
            failing.push(condition(
                "NamespaceDeletionGroupVersionParsingFailure",
                "True",
                "GroupVersionParsingFailed",
                m,
            ));
        }
        if !content_errs.is_empty() {
            content_errs.sort();
            failing.push(condition(
                "NamespaceDeletionContentFailure",
                "True",
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    content_errs.len(),
                    content_errs.join(", ")
                ),
            ));
        }
        if !by_resource.is_empty() {
            let parts: Vec<String> = by_resource
                .iter()
                .map(|(r, n)| format!("{r} has {n} resource instances"))
                .collect();
            failing.push(condition(
                "NamespaceContentRemaining",
                "True",
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", sorted(parts).join(", ")),
            ));
        }
        if !by_finalizer.is_empty() {
            let parts: Vec<String> = by_finalizer
                .iter()
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            failing.push(condition(
                "NamespaceFinalizersRemaining",
                "True",
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    sorted(parts).join(", ")
                ),
            ));
        }
        let conds = &mut ns
            .status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new);
        if merge_conditions(conds, &failing) {
            if let Err(e) = self
                .namespaces()
                .replace_status(&name, &PostParams::default(), &ns)
                .await
            {
                tracing::info!(namespace = %name, error = %e, "couldn't update status condition for namespace");
            }
        }
        if errs.is_empty() {
            Ok(estimate)
        } else {
            Err(NamespaceError::Content(errs))
        }
    }

    /// Deletes every object of one resource in the namespace and counts what is left
    /// (upstream's `deleteAllContentForGroupVersionResource`).
    async fn delete_resource(
        &self,
        gvr: &Gvr,
        ns: &str,
        deleted_at: Timestamp,
    ) -> (Remaining, Option<String>) {
        let mut left = Remaining::default();
        if gvr.ar.group.is_empty() && gvr.ar.plural == "pods" {
            match self.estimate_graceful_termination(ns, deleted_at).await {
                Ok(e) => left.estimate = e,
                Err(e) => return (left, Some(e.to_string())),
            }
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &gvr.ar);
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let mut collection_done = false;
        if gvr.supports("deletecollection") {
            match api.delete_collection(&dp, &ListParams::default()).await {
                Ok(_) => collection_done = true,
                // A resource that does not really offer it: fall back to one by one.
                Err(e) if is_code(&e, 405) || is_code(&e, 404) => {}
                Err(e) => return (left, Some(e.to_string())),
            }
        }
        if !gvr.supports("list") {
            return (left, None);
        }
        if !collection_done {
            match api.list(&ListParams::default()).await {
                Ok(list) => {
                    for o in list.items {
                        match api.delete(&o.name_any(), &dp).await {
                            Ok(_) => {}
                            Err(e) if is_code(&e, 404) => {}
                            Err(e) => return (left, Some(e.to_string())),
                        }
                    }
                }
                Err(e) if is_code(&e, 405) || is_code(&e, 404) => return (left, None),
                Err(e) => return (left, Some(e.to_string())),
            }
        }
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) if is_code(&e, 405) || is_code(&e, 404) => return (left, None),
            Err(e) => return (left, Some(e.to_string())),
        };
        if items.is_empty() {
            return (left, None);
        }
        left.count = items.len();
        for o in &items {
            for f in o.finalizers() {
                *left.finalizers.entry(f.clone()).or_default() += 1;
            }
        }
        if left.estimate != 0 {
            return (left, None);
        }
        if !left.finalizers.is_empty() {
            left.estimate = FINALIZER_ESTIMATE_SECONDS;
            return (left, None);
        }
        let err = format!(
            "unexpected items still remain in namespace: {ns} for gvr: {}",
            gvr.go_string()
        );
        (left, Some(err))
    }

    /// The longest grace period of the namespace's running pods, less the time since the
    /// namespace's deletion began (upstream's `estimateGracefulTerminationForPods`).
    async fn estimate_graceful_termination(
        &self,
        ns: &str,
        deleted_at: Timestamp,
    ) -> Result<i64, kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut estimate = 0i64;
        for p in pods.list(&ListParams::default()).await?.items {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded") | Some("Failed")) {
                continue;
            }
            if let Some(g) = p
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
            {
                estimate = estimate.max(g);
            }
        }
        let elapsed = Timestamp::now().as_second() - deleted_at.as_second();
        Ok((estimate - elapsed).max(0))
    }

    /// Removes this controller's finalizer through `namespaces/<name>/finalize`.
    async fn finalize(&self, name: &str) -> Result<(), NamespaceError> {
        let api = self.namespaces();
        let mut uid = None;
        for _ in 0..10 {
            let Some(mut ns) = api.get_opt(name).await? else {
                return Ok(());
            };
            if uid.is_some() && ns.metadata.uid != uid {
                return Err(NamespaceError::UidChanged);
            }
            uid = ns.metadata.uid.clone();
            let current = finalizers(&ns);
            if !current.iter().any(|f| f == FINALIZER) {
                return Ok(());
            }
            let mut keep: Vec<String> = current.into_iter().filter(|f| f != FINALIZER).collect();
            keep.sort();
            keep.dedup();
            ns.spec.get_or_insert_with(Default::default).finalizers = Some(keep);
            match api
                .replace_subresource("finalize", name, &PostParams::default(), &ns)
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %name, "namespace content removed; finalized");
                    return Ok(());
                }
                Err(e) if is_code(&e, 404) => return Ok(()),
                Err(e) if is_code(&e, 409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(NamespaceError::Content(vec![format!(
            "namespace {name}: too many conflicts while finalizing"
        )]))
    }
}

fn finalizers(ns: &Namespace) -> Vec<String> {
    ns.spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn condition(ty: &str, status: &str, reason: &str, message: String) -> NamespaceCondition {
    NamespaceCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(Timestamp::now())),
    }
}

/// The conditions this controller keeps, with upstream's reason and message when all is well.
const CONDITIONS: &[(&str, &str, &str)] = &[
    (
        "NamespaceDeletionDiscoveryFailure",
        "ResourcesDiscovered",
        "All resources successfully discovered",
    ),
    (
        "NamespaceDeletionGroupVersionParsingFailure",
        "ParsedGroupVersions",
        "All legacy kube types successfully parsed",
    ),
    (
        "NamespaceDeletionContentFailure",
        "ContentDeleted",
        "All content successfully deleted, may be waiting on finalization",
    ),
    (
        "NamespaceContentRemaining",
        "ContentRemoved",
        "All content successfully removed",
    ),
    (
        "NamespaceFinalizersRemaining",
        "ContentHasNoFinalizers",
        "All content-preserving finalizers finished",
    ),
];

/// Sets each of the five conditions to its failing variant from `failing`, or else its "ok"
/// variant; a condition's lastTransitionTime changes only with its status. Whether anything
/// changed.
fn merge_conditions(conds: &mut Vec<NamespaceCondition>, failing: &[NamespaceCondition]) -> bool {
    let mut changed = false;
    for (ty, ok_reason, ok_message) in CONDITIONS {
        let new = failing
            .iter()
            .find(|c| c.type_ == *ty)
            .cloned()
            .unwrap_or_else(|| condition(ty, "False", ok_reason, ok_message.to_string()));
        match conds.iter_mut().find(|c| c.type_ == *ty) {
            None => {
                conds.push(new);
                changed = true;
            }
            Some(old) => {
                if old.status != new.status
                    || old.reason != new.reason
                    || old.message != new.message
                {
                    if old.status != new.status {
                        old.last_transition_time = new.last_transition_time.clone();
                    }
                    old.status = new.status;
                    old.reason = new.reason;
                    old.message = new.message;
                    changed = true;
                }
            }
        }
    }
    changed
}

/// Every namespaced resource that can be deleted, at its group's preferred version (upstream's
/// `ServerPreferredNamespacedResources` filtered by the `delete` verb). A group whose resources
/// cannot be read is reported, and the others are still used.
async fn discover(client: &Client) -> Discovered {
    let mut out = Discovered::default();
    let mut group_versions: Vec<String> = vec![];
    let mut failed: Vec<String> = vec![];
    match client.list_core_api_versions().await {
        Ok(v) => group_versions.extend(v.versions.first().cloned()),
        Err(e) => failed.push(format!("v1: {e}")),
    }
    match client.list_api_groups().await {
        Ok(list) => {
            for g in list.groups {
                let gv = g
                    .preferred_version
                    .map(|p| p.group_version)
                    .or_else(|| g.versions.first().map(|v| v.group_version.clone()));
                group_versions.extend(gv);
            }
        }
        Err(e) => {
            // Without the group list nothing but the core group can be found.
            out.discovery_error = Some(e.to_string());
        }
    }
    let mut parse_errors: Vec<String> = vec![];
    for gv in group_versions {
        let (group, version) = match gv.split('/').collect::<Vec<_>>()[..] {
            [v] => (String::new(), v.to_string()),
            [g, v] => (g.to_string(), v.to_string()),
            _ => {
                parse_errors.push(format!("unexpected GroupVersion string: {gv}"));
                continue;
            }
        };
        let list = if group.is_empty() {
            client.list_core_api_resources(&version).await
        } else {
            client.list_api_group_resources(&gv).await
        };
        match list {
            Ok(list) => {
                for r in list.resources {
                    if let Some(g) = deletable(&group, &version, r) {
                        out.resources.push(g);
                    }
                }
            }
            Err(e) => failed.push(format!("{gv}: {e}")),
        }
    }
    if !failed.is_empty() && out.discovery_error.is_none() {
        failed.sort();
        out.discovery_error = Some(format!(
            "Discovery failed for some groups, {} failing: unable to retrieve the complete list of server APIs: {}",
            failed.len(),
            failed.join(", ")
        ));
    }
    if !parse_errors.is_empty() {
        out.parse_error = Some(aggregate(&parse_errors));
    }
    out
}

/// A discovered resource, if it is a namespaced top-level resource that offers `delete`.
fn deletable(group: &str, version: &str, r: APIResource) -> Option<Gvr> {
    if !r.namespaced || r.name.contains('/') || !r.verbs.iter().any(|v| v == "delete") {
        return None;
    }
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(Gvr {
        ar: ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version,
            kind: r.kind,
            plural: r.name,
        },
        verbs: r.verbs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_upstream() {
        let mut conds = vec![];
        assert!(merge_conditions(&mut conds, &[]));
        assert_eq!(conds.len(), 5);
        assert!(conds.iter().all(|c| c.status == "False"));
        assert_eq!(conds[3].reason.as_deref(), Some("ContentRemoved"));
        // Same again: nothing changes.
        assert!(!merge_conditions(&mut conds, &[]));
        let failing = [condition(
            "NamespaceContentRemaining",
            "True",
            "SomeResourcesRemain",
            "Some resources are remaining: pods. has 2 resource instances".into(),
        )];
        assert!(merge_conditions(&mut conds, &failing));
        assert_eq!(conds[3].status, "True");
        assert_eq!(conds[3].reason.as_deref(), Some("SomeResourcesRemain"));
    }

    #[test]
    fn only_namespaced_deletable_top_level_resources() {
        let r = |name: &str, namespaced: bool, verbs: &[&str]| APIResource {
            name: name.into(),
            namespaced,
            kind: "X".into(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        };
        assert!(deletable("", "v1", r("pods", true, &["delete", "list"])).is_some());
        assert!(deletable("", "v1", r("pods/status", true, &["delete"])).is_none());
        assert!(deletable("", "v1", r("nodes", false, &["delete"])).is_none());
        assert!(deletable("", "v1", r("bindings", true, &["create"])).is_none());
        let g = deletable("apps", "v1", r("deployments", true, &["delete"])).unwrap();
        assert_eq!(g.ar.api_version, "apps/v1");
        assert_eq!(g.go_string(), "{apps v1 deployments}");
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into()]), "[a, b]");
    }
}
