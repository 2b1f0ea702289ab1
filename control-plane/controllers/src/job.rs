//! The Job controller (upstream's `pkg/controller/job`): runs a Job's pods to completion.
//!
//! Pods carry the `batch.kubernetes.io/job-tracking` finalizer; a finished pod is first recorded
//! in `status.uncountedTerminatedPods`, then its finalizer is removed, then it moves to
//! `status.succeeded`/`failed`, so no pod is counted twice or lost across restarts. A Job that
//! meets its success or failure criteria first gets `SuccessCriteriaMet`/`FailureTarget`, its
//! remaining pods are deleted, and once none is left it gets `Complete`/`Failed` with the same
//! reason and message (upstream's reasons: `CompletionsReached`, `BackoffLimitExceeded`,
//! `DeadlineExceeded`, `PodFailurePolicy`). Indexed Jobs give each pod its index in the
//! `batch.kubernetes.io/job-completion-index` annotation and label, the hostname `<job>-<index>`
//! and a `JOB_COMPLETION_INDEX` env var read from that annotation. A replacement for a failed
//! pod waits upstream's back-off (10 s doubling per failure, at most 6 min).

use crate::cached_pod::CachedPod;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn, Instrument};

use crate::workload::{self, Expectations};
use crate::{Context, ControllerError};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// How many times the pod's index failed before it (`backoffLimitPerIndex`).
pub const INDEX_FAILURES_KEY: &str = "batch.kubernetes.io/job-index-failure-count";
const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct State {
    client: Client,
    pods: Store<CachedPod>,
    exp: Expectations,
    rec: Recorder,
    /// Pods this controller deleted; those deleted to suspend the job are not counted as failures.
    deleted: Mutex<HashSet<String>>,
    /// When each job's last pod failure was seen, for the back-off before a replacement.
    last_failure: Mutex<HashMap<String, Instant>>,
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
            rec: workload::recorder(&client, "job-controller"),
            deleted: Mutex::default(),
            last_failure: Mutex::default(),
        });
        let ctl = Controller::new(Api::<Job>::all(reader.clone()), watcher::Config::default())
            .owns_shared_stream(pod_events);
        let jobs = ctl.store();
        let orphans = tokio::spawn(release_orphans(st.clone(), jobs));
        workload::until(
            stop,
            ctl.run(reconcile, error_policy, st).for_each(|_| async {}),
        )
        .await;
        orphans.abort();
        Ok(())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn error_policy(_job: Arc<Job>, err: &JobError, _st: Arc<State>) -> Action {
    warn!(error = %err, "job sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn has_finalizer(p: &CachedPod) -> bool {
    p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

fn index_failures(p: &CachedPod) -> i32 {
    p.annotations()
        .get(INDEX_FAILURES_KEY)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn pod_index(p: &CachedPod) -> Option<i32> {
    p.annotations()
        .get(INDEX_KEY)
        .or_else(|| p.labels().get(INDEX_KEY))
        .and_then(|s| s.parse().ok())
}

fn cond_true(st: &JobStatus, type_: &str) -> Option<JobCondition> {
    st.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| cond_true(s, "Complete").is_some() || cond_true(s, "Failed").is_some())
}

/// Sets condition `type_` (a new transition time only when the status changes).
fn set_condition(st: &mut JobStatus, type_: &str, status: &str, reason: &str, message: &str) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    let now = workload::now();
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Some(now.clone());
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(now);
    } else {
        conds.push(JobCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_probe_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
    }
}

/// Parses `completedIndexes` ("1,3-5") into a set.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.insert(a);
                }
            }
        }
    }
    out
}

/// Formats a set of indexes as upstream does: ascending, runs of 2 or more as `a-b`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().unwrap_or(end);
        }
        parts.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
    }
    parts.join(",")
}

/// What the pod failure policy says of a failed pod.
#[derive(Debug, PartialEq)]
enum FailureAction {
    FailJob(String),
    FailIndex,
    Ignore,
    Count,
}

fn failure_action(job: &Job, pod: &CachedPod) -> FailureAction {
    let Some(policy) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return FailureAction::Count;
    };
    let pod_name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(ec) = &rule.on_exit_codes {
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            for cs in statuses {
                if ec.container_name.as_ref().is_some_and(|n| *n != cs.name) {
                    continue;
                }
                let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                    continue;
                };
                if t.exit_code == 0 {
                    continue;
                }
                let inside = ec.values.contains(&t.exit_code);
                if (ec.operator == "In") == inside {
                    matched = Some(format!(
                        "Container {} for pod {pod_name} failed with exit code {} matching {} rule at index {i}",
                        cs.name, t.exit_code, rule.action
                    ));
                    break;
                }
            }
        }
        for pc in rule.on_pod_conditions.iter().flatten() {
            if matched.is_some() {
                break;
            }
            let status = pc.status.as_str();
            if workload::pod_condition(pod, &pc.type_).is_some_and(|c| c.status == status) {
                matched = Some(format!(
                    "Pod {pod_name} has condition {} matching {} rule at index {i}",
                    pc.type_, rule.action
                ));
            }
        }
        if let Some(msg) = matched {
            return match rule.action.as_str() {
                "FailJob" => FailureAction::FailJob(msg),
                "FailIndex" => FailureAction::FailIndex,
                "Ignore" => FailureAction::Ignore,
                _ => FailureAction::Count,
            };
        }
    }
    FailureAction::Count
}

/// The index of the first `successPolicy` rule the completed indexes meet (upstream's
/// `matchSuccessPolicy`): all of `succeededIndexes`, or `succeededCount` of them (of all indexes
/// when no set is given).
fn success_policy_met(
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    completed: &BTreeSet<i32>,
) -> Option<usize> {
    let policy = spec.success_policy.as_ref()?;
    policy.rules.iter().position(|r| {
        let set = r.succeeded_indexes.as_deref().map(parse_indexes);
        let done = match &set {
            Some(s) => completed.intersection(s).count() as i32,
            None => completed.len() as i32,
        };
        match (set, r.succeeded_count) {
            (Some(s), None) => !s.is_empty() && done == s.len() as i32,
            (_, Some(n)) => done >= n,
            (None, None) => false,
        }
    })
}

/// With `restartPolicy: OnFailure` the kubelet restarts failed containers in place; upstream
/// counts those restarts of the active pods against `backoffLimit`.
fn past_backoff_limit_on_failure(job: &Job, active: &[&Arc<CachedPod>], limit: i32) -> bool {
    let on_failure = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    if !on_failure {
        return false;
    }
    let restarts: i32 = active
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// Upstream's `getFinishedTime`-based back-off: 10 s, doubling per failure, capped at 6 min.
fn backoff(failures: i32) -> Duration {
    if failures <= 0 {
        return Duration::ZERO;
    }
    let exp = (failures - 1).min(16) as u32;
    BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// The pod a job creates, from its template (upstream's `GetPodFromTemplate` plus the job's
/// additions).
fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let tmpl = spec.template;
    let tmeta = tmpl.metadata.unwrap_or_default();
    let name = job.name_any();
    let mut labels = tmeta.labels.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let mut pod_spec = tmpl.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            labels.insert(INDEX_KEY.into(), i.to_string());
            annotations.insert(INDEX_KEY.into(), i.to_string());
            pod_spec.hostname = Some(format!("{name}-{i}"));
            let env = EnvVar {
                name: INDEX_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".into()),
                        field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                    }),
                    ..Default::default()
                }),
            };
            let add = |cs: &mut Vec<k8s_openapi::api::core::v1::Container>| {
                for c in cs {
                    let e = c.env.get_or_insert_with(Vec::new);
                    if !e.iter().any(|x| x.name == INDEX_ENV) {
                        e.push(env.clone());
                    }
                }
            };
            add(&mut pod_spec.containers);
            if let Some(ic) = pod_spec.init_containers.as_mut() {
                add(ic);
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(vec![TRACKING_FINALIZER.into()]),
            owner_references: Some(vec![workload::controller_ref(job)]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

async fn remove_finalizer(api: &Api<Pod>, pod: &CachedPod) -> Result<(), kube::Error> {
    let rest: Vec<String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != TRACKING_FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": pod.resource_version(),
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_pod(st: &State, key: &str, job: &Job, pod: &CachedPod) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(st.client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    st.deleted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pod.uid().unwrap_or_default());
    st.exp.expect_del(key, &name);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            workload::record(
                &st.rec,
                job,
                false,
                "SuccessfulDelete",
                "DeletePod",
                format!("Deleted pod: {name}"),
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

async fn reconcile(job: Arc<Job>, st: Arc<State>) -> Result<Action, JobError> {
    let span = tracing::info_span!("job", job = %workload::key(&*job), uid = %job.uid().unwrap_or_default());
    sync(job, st).instrument(span).await
}

async fn sync(job: Arc<Job>, st: Arc<State>) -> Result<Action, JobError> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let _ = crate::util::ready(&st.pods).await;
    let pod_api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    let job_api: Api<Job> = Api::namespaced(st.client.clone(), &ns);
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if !st.exp.satisfied(&key, workload::pod_seen(&st.pods, &ns)) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let spec = job.spec.clone().unwrap_or_default();
    let mut job_now: Job = (*job).clone();
    let mut status = job_now.status.clone().unwrap_or_default();
    let pods = workload::owned_by(&st.pods, &ns, &uid);
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions;
    let mut completed: BTreeSet<i32> =
        parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
    let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut unc_succ: Vec<String> = uncounted.succeeded.clone().unwrap_or_default();
    let mut unc_fail: Vec<String> = uncounted.failed.clone().unwrap_or_default();
    let mut fail_job: Option<String> = None;
    let mut finalize_only: Vec<Arc<CachedPod>> = Vec::new();
    // `podReplacementPolicy: Failed`: a terminating pod is neither failed nor replaced until it
    // reaches the Failed phase.
    let only_replace_failed = spec.pod_replacement_policy.as_deref() == Some("Failed");
    // `backoffLimitPerIndex` (Indexed only): failures are counted per index; an index past its
    // limit is failed and not retried.
    let per_index = spec.backoff_limit_per_index.filter(|_| indexed);
    let mut failed_ixs: BTreeSet<i32> =
        parse_indexes(status.failed_indexes.as_deref().unwrap_or(""));

    // 1. Record newly finished pods as uncounted.
    let mut changed = false;
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let puid = p.uid().unwrap_or_default();
        if unc_succ.contains(&puid) || unc_fail.contains(&puid) {
            continue;
        }
        let ph = workload::phase(p);
        if ph == "Succeeded" {
            if indexed {
                match pod_index(p) {
                    Some(i) if !completed.contains(&i) && completions.is_some_and(|c| i < c) => {
                        completed.insert(i);
                    }
                    _ => {
                        finalize_only.push(p.clone());
                        continue;
                    }
                }
            }
            unc_succ.push(puid);
            changed = true;
        } else if ph == "Failed" || (workload::is_terminating(p) && !only_replace_failed) {
            let ours = st
                .deleted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&puid);
            // Upstream counts a pod deleted before it succeeded as failed (`isPodFailed`);
            // pods this controller deleted to suspend the job are not held against it.
            if ours && spec.suspend.unwrap_or(false) {
                finalize_only.push(p.clone());
                continue;
            }
            match failure_action(&job, p) {
                FailureAction::Ignore => {
                    finalize_only.push(p.clone());
                    continue;
                }
                FailureAction::FailJob(msg) => fail_job = Some(msg),
                FailureAction::FailIndex if per_index.is_some() => {
                    if let Some(i) = pod_index(p) {
                        failed_ixs.insert(i);
                    }
                }
                // Without backoffLimitPerIndex upstream's validation refuses FailIndex; count it.
                FailureAction::FailIndex | FailureAction::Count => {}
            }
            if let (Some(limit), Some(i)) = (per_index, pod_index(p)) {
                if index_failures(p) + 1 > limit {
                    failed_ixs.insert(i);
                }
            }
            st.last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), Instant::now());
            unc_fail.push(puid);
            changed = true;
        }
    }
    if changed {
        uncounted.succeeded = Some(unc_succ.clone());
        uncounted.failed = Some(unc_fail.clone());
        status.uncounted_terminated_pods = Some(uncounted.clone());
        if indexed {
            status.completed_indexes = Some(format_indexes(&completed));
        }
        if per_index.is_some() {
            status.failed_indexes = Some(format_indexes(&failed_ixs));
        }
        job_now.status = Some(status.clone());
        job_now = job_api
            .replace_status(&name, &PostParams::default(), &job_now)
            .await?;
    }

    // 2. Remove the finalizers of recorded (and ignored) pods; 3. count them.
    let mut counted_succ = 0;
    let mut counted_fail = 0;
    let mut still_succ = Vec::new();
    let mut still_fail = Vec::new();
    for (list, still, counter) in [
        (&unc_succ, &mut still_succ, &mut counted_succ),
        (&unc_fail, &mut still_fail, &mut counted_fail),
    ] {
        for u in list {
            let pod = pods.iter().find(|p| p.uid().as_deref() == Some(u.as_str()));
            match pod {
                Some(p) if has_finalizer(p) => match remove_finalizer(&pod_api, p).await {
                    Ok(()) => *counter += 1,
                    Err(e) => {
                        warn!(pod = %p.name_any(), error = %e, "cannot remove the job-tracking finalizer");
                        still.push(u.clone());
                    }
                },
                _ => *counter += 1,
            }
        }
    }
    for p in &finalize_only {
        match remove_finalizer(&pod_api, p).await {
            Ok(()) => {
                st.deleted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p.uid().unwrap_or_default());
            }
            Err(e) => {
                warn!(pod = %p.name_any(), error = %e, "cannot remove the job-tracking finalizer")
            }
        }
    }
    let mut status = job_now.status.clone().unwrap_or_default();
    status.succeeded = Some(status.succeeded.unwrap_or(0) + counted_succ);
    status.failed = Some(status.failed.unwrap_or(0) + counted_fail);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(still_succ.clone()),
        failed: Some(still_fail.clone()),
    });
    let succeeded = status.succeeded.unwrap_or(0) + still_succ.len() as i32;
    let failed = status.failed.unwrap_or(0) + still_fail.len() as i32;

    let active: Vec<&Arc<CachedPod>> = pods.iter().filter(|p| workload::is_active(p)).collect();
    let tracked_left = pods.iter().any(|p| {
        has_finalizer(p)
            && !unc_succ.contains(&p.uid().unwrap_or_default())
            && !unc_fail.contains(&p.uid().unwrap_or_default())
            && !finalize_only.iter().any(|f| f.uid() == p.uid())
    });
    let now = workload::now();
    let mut requeue: Option<Duration> = None;

    // 4. Success and failure criteria.
    let mut target_fail = cond_true(&status, "FailureTarget");
    let mut target_succ = cond_true(&status, "SuccessCriteriaMet");
    let was_finished = is_finished(&job_now);
    if !was_finished && target_fail.is_none() && target_succ.is_none() {
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline = spec.active_deadline_seconds.and_then(|d| {
            status
                .start_time
                .as_ref()
                .map(|t| (t.0.as_second() + d, t.0.as_second()))
        });
        let reached = match (indexed, completions) {
            (true, Some(c)) => completed.len() as i32 >= c,
            (false, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && active.is_empty(),
        };
        let max_failed = spec.max_failed_indexes.filter(|_| per_index.is_some());
        let all_indexes_done =
            completions.is_some_and(|c| (completed.len() + failed_ixs.len()) as i32 >= c);
        let failure = if let Some(msg) = fail_job.take() {
            Some(("PodFailurePolicy", msg))
        } else if max_failed.is_some_and(|m| failed_ixs.len() as i32 > m) {
            Some((
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".to_string(),
            ))
        } else if per_index.is_some() && !failed_ixs.is_empty() && all_indexes_done {
            Some(("FailedIndexes", "Job has failed indexes".to_string()))
        } else if (per_index.is_none() && failed > backoff_limit)
            || past_backoff_limit_on_failure(&job, &active, backoff_limit)
        {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if deadline.is_some_and(|(d, _)| now.0.as_second() >= d)
            && !spec.suspend.unwrap_or(false)
        {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        };
        if let Some((reason, msg)) = failure {
            set_condition(&mut status, "FailureTarget", "True", reason, &msg);
            target_fail = cond_true(&status, "FailureTarget");
        } else if let Some(i) = success_policy_met(&spec, &completed).filter(|_| indexed) {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "SuccessPolicy",
                &format!("Matched rules at index {i}"),
            );
            target_succ = cond_true(&status, "SuccessCriteriaMet");
        } else if reached {
            set_condition(
                &mut status,
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            );
            target_succ = cond_true(&status, "SuccessCriteriaMet");
        } else if let Some((d, _)) = deadline {
            let left = (d - now.0.as_second()).max(1) as u64;
            requeue = Some(Duration::from_secs(left));
        }
    }

    let suspended = spec.suspend.unwrap_or(false);
    let mut to_delete: Vec<&Arc<CachedPod>> = Vec::new();
    let mut to_create: Vec<Option<i32>> = Vec::new();
    if was_finished {
        // Nothing to run; stragglers' finalizers were handled above.
    } else if target_fail.is_some() || target_succ.is_some() {
        to_delete.extend(active.iter().copied());
        if active.is_empty() && !tracked_left && still_succ.is_empty() && still_fail.is_empty() {
            let (final_type, c) = match (&target_fail, &target_succ) {
                (Some(c), _) => ("Failed", c.clone()),
                (None, Some(c)) => ("Complete", c.clone()),
                _ => unreachable!(),
            };
            let reason = c.reason.clone().unwrap_or_default();
            let message = c.message.clone().unwrap_or_default();
            set_condition(&mut status, final_type, "True", &reason, &message);
            if final_type == "Complete" {
                status.completion_time = Some(now.clone());
                workload::record(
                    &st.rec,
                    &*job,
                    false,
                    "Completed",
                    "Completed",
                    "Job completed".into(),
                )
                .await;
            } else {
                workload::record(&st.rec, &*job, true, &reason, "Failed", message.clone()).await;
            }
            info!(job = %key, condition = final_type, reason = %reason, "job finished");
        }
    } else if suspended {
        to_delete.extend(active.iter().copied());
        if cond_true(&status, "Suspended").is_none() {
            set_condition(
                &mut status,
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
            );
            workload::record(
                &st.rec,
                &*job,
                false,
                "Suspended",
                "Suspend",
                "Job suspended".into(),
            )
            .await;
        }
    } else {
        if cond_true(&status, "Suspended").is_some() {
            set_condition(
                &mut status,
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
            );
            status.start_time = Some(now.clone());
            workload::record(
                &st.rec,
                &*job,
                false,
                "Resumed",
                "Resume",
                "Job resumed".into(),
            )
            .await;
        }
        if status.start_time.is_none() {
            status.start_time = Some(now.clone());
            if let Some(d) = spec.active_deadline_seconds {
                requeue = Some(Duration::from_secs(d.max(1) as u64));
            }
        }
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        if indexed {
            let c = completions.unwrap_or(0);
            let mut by_index: BTreeMap<i32, Vec<&Arc<CachedPod>>> = BTreeMap::new();
            for p in &active {
                match pod_index(p) {
                    Some(i) if i < c && !completed.contains(&i) && !failed_ixs.contains(&i) => {
                        by_index.entry(i).or_default().push(p)
                    }
                    _ => to_delete.push(p),
                }
            }
            // One pod per index: extra copies go.
            for ps in by_index.values() {
                to_delete.extend(ps.iter().skip(1).copied());
            }
            let running = by_index.len() as i32;
            if running > parallelism {
                // Highest indexes go first.
                for ps in by_index
                    .values()
                    .rev()
                    .take((running - parallelism) as usize)
                {
                    to_delete.push(ps[0]);
                }
            } else {
                let pending = (0..c).filter(|i| {
                    !completed.contains(i) && !failed_ixs.contains(i) && !by_index.contains_key(i)
                });
                to_create.extend(pending.take((parallelism - running) as usize).map(Some));
            }
        } else {
            let wanted = match completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => parallelism.min(active.len() as i32),
                None => parallelism,
            };
            let n = active.len() as i32;
            if n > wanted {
                let mut victims = active.clone();
                // Not ready before ready, then newest first (upstream's ActivePods ordering).
                victims.sort_by_key(|p| {
                    (
                        workload::is_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone().map(|t| t.0)),
                    )
                });
                to_delete.extend(victims.into_iter().take((n - wanted) as usize));
            } else {
                to_create.extend((0..(wanted - n)).map(|_| None));
            }
        }
        let terminating_left = pods.iter().any(|p| {
            workload::is_terminating(p) && !matches!(workload::phase(p), "Succeeded" | "Failed")
        });
        if only_replace_failed && terminating_left {
            to_create.clear();
        }
        if !to_create.is_empty() && failed > 0 {
            let since = st
                .last_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .map(|t| t.elapsed());
            let wait = backoff(failed);
            if let Some(since) = since {
                if since < wait {
                    to_create.clear();
                    requeue = Some(requeue.map_or(wait - since, |r| r.min(wait - since)));
                }
            }
        }
    }

    for p in to_delete {
        delete_pod(&st, &key, &job, p).await?;
    }
    let mut created = 0;
    for idx in to_create {
        let mut pod = new_pod(&job, idx);
        if let (Some(_), Some(i)) = (per_index, idx) {
            let prior = pods
                .iter()
                .filter(|p| pod_index(p) == Some(i) && workload::phase(p) == "Failed")
                .map(|p| index_failures(p) + 1)
                .max()
                .unwrap_or(0);
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(INDEX_FAILURES_KEY.into(), prior.to_string());
        }
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(p) => {
                st.exp.expect_add(&key, &p.name_any());
                created += 1;
                workload::record(
                    &st.rec,
                    &*job,
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
                    &*job,
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

    // 5. Status.
    let finishing = target_fail.is_some() || target_succ.is_some() || was_finished;
    status.active = Some(if finishing || suspended {
        0
    } else {
        active.len() as i32 + created
    });
    status.ready = Some(active.iter().filter(|p| workload::is_ready(p)).count() as i32);
    status.terminating = Some(
        pods.iter()
            .filter(|p| {
                workload::is_terminating(p) && !matches!(workload::phase(p), "Succeeded" | "Failed")
            })
            .count() as i32,
    );
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }
    if per_index.is_some() {
        status.failed_indexes = Some(format_indexes(&failed_ixs));
    }
    if job_now.status.as_ref() != Some(&status) {
        job_now.status = Some(status);
        job_api
            .replace_status(&name, &PostParams::default(), &job_now)
            .await?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Removes the tracking finalizer from pods whose Job is gone (upstream does this from the pod
/// informer's delete handler and its orphan sweep).
async fn release_orphans(st: Arc<State>, jobs: Store<Job>) {
    let _ = crate::util::ready(&jobs).await;
    let _ = crate::util::ready(&st.pods).await;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let live: HashSet<String> = jobs.state().iter().filter_map(|j| j.uid()).collect();
        let orphans = st.pods.state_filter(|p| {
            has_finalizer(p)
                && !p
                    .owner_references()
                    .iter()
                    .any(|r| r.controller == Some(true) && r.kind == "Job" && live.contains(&r.uid))
        });
        for p in orphans {
            let api: Api<Pod> =
                Api::namespaced(st.client.clone(), &p.namespace().unwrap_or_default());
            if let Err(e) = remove_finalizer(&api, &p).await {
                warn!(pod = %p.name_any(), error = %e, "cannot release an orphaned job pod");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_round_trip() {
        let s = parse_indexes("0,2-4,7");
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&s), "0,2-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert_eq!(format_indexes(&[1, 2].into_iter().collect()), "1-2");
    }

    #[test]
    fn success_policies() {
        let spec: k8s_openapi::api::batch::v1::JobSpec =
            serde_json::from_value(serde_json::json!({
                "template": {},
                "successPolicy": {"rules": [
                    {"succeededIndexes": "0,2-3"},
                    {"succeededCount": 3}
                ]}
            }))
            .unwrap();
        assert_eq!(success_policy_met(&spec, &parse_indexes("0,2")), None);
        assert_eq!(success_policy_met(&spec, &parse_indexes("0,2-3")), Some(0));
        assert_eq!(success_policy_met(&spec, &parse_indexes("1,4,5")), Some(1));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), BACKOFF_MAX);
    }

    #[test]
    fn indexed_pods_get_their_index() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sk", "namespace": "default", "uid": "u1"},
            "spec": {"completionMode": "Indexed", "completions": 3, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}
        }))
        .unwrap();
        let p = new_pod(&job, Some(2));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("sk-2-"));
        assert_eq!(p.annotations()[INDEX_KEY], "2");
        assert_eq!(p.labels()[INDEX_KEY], "2");
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("sk-2"));
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        assert_eq!(env.name, INDEX_ENV);
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        );
        assert_eq!(p.metadata.finalizers.unwrap(), vec![TRACKING_FINALIZER]);
    }
}
