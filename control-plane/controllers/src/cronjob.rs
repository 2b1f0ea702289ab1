//! The CronJob controller (upstream's `pkg/controller/cronjob`, the v2 controller): creates a Job
//! per scheduled time, named `<cronjob>-<scheduled time in minutes since the epoch>`, honouring
//! `timeZone` (or a `CRON_TZ=`/`TZ=` prefix of the schedule; otherwise the server's local zone,
//! as kube-controller-manager's), `concurrencyPolicy`, `startingDeadlineSeconds` and `suspend`;
//! keeps `status.active`, `lastScheduleTime` and `lastSuccessfulTime`; deletes finished jobs
//! beyond the history limits. Schedules are parsed by `croner` (five fields, names, ranges,
//! steps, `@hourly`-style macros, day-of-month/day-of-week OR-ed as in Vixie cron and upstream's
//! parser).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn, Instrument};

use crate::workload;
use crate::{Context, ControllerError};

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Upstream stops counting missed start times here and starts from the most recent one.
const MAX_MISSED: usize = 100;

struct State {
    client: Client,
    jobs: Store<Job>,
    rec: Recorder,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let reader = ctx.reader.clone();
        let (jobs, job_events) = workload::reflect(Api::<Job>::all(reader.clone()));
        let st = Arc::new(State {
            client: client.clone(),
            jobs: jobs.clone(),
            rec: workload::recorder(&client, "cronjob-controller"),
        });
        let ctl = Controller::new(
            Api::<CronJob>::all(reader.clone()),
            watcher::Config::default(),
        )
        .owns_stream(job_events)
        .run(reconcile, error_policy, st)
        .for_each(|_| async {});
        workload::until(stop, ctl).await;
        Ok(())
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn error_policy(_cj: Arc<CronJob>, err: &CronJobError, _st: Arc<State>) -> Action {
    warn!(error = %err, "cronjob sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// A zone to evaluate a schedule in.
#[derive(Clone, Copy, Debug)]
pub enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

#[derive(Debug, PartialEq)]
pub enum ScheduleError {
    Unparseable(String),
    UnknownTimeZone(String),
}

/// A parsed schedule: the cron pattern and its zone.
pub struct Schedule {
    cron: Cron,
    zone: Zone,
}

impl Schedule {
    /// Parses `schedule`, with `time_zone` (the `timeZone` field) or a `CRON_TZ=`/`TZ=` prefix.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut pattern = schedule.trim();
        let mut zone_name = time_zone.map(str::to_string);
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = pattern.strip_prefix(prefix) {
                let (z, p) = rest.split_once(char::is_whitespace).ok_or_else(|| {
                    ScheduleError::Unparseable(format!("unparseable schedule: {schedule}"))
                })?;
                zone_name.get_or_insert_with(|| z.to_string());
                pattern = p.trim();
            }
        }
        let zone = match zone_name.as_deref() {
            None | Some("") | Some("Local") => Zone::Local,
            Some(z) => Zone::Named(
                chrono_tz::Tz::from_str(z)
                    .map_err(|_| ScheduleError::UnknownTimeZone(z.to_string()))?,
            ),
        };
        // Upstream's standard parser: exactly five fields or a descriptor (no seconds).
        if !pattern.starts_with('@') && pattern.split_whitespace().count() != 5 {
            return Err(ScheduleError::Unparseable(format!(
                "expected exactly 5 fields, found {}: {pattern}",
                pattern.split_whitespace().count()
            )));
        }
        let pattern = match pattern {
            "@midnight" => "@daily",
            p => p,
        };
        let cron =
            Cron::from_str(pattern).map_err(|e| ScheduleError::Unparseable(e.to_string()))?;
        Ok(Schedule { cron, zone })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        fn next<Z: TimeZone>(c: &Cron, t: DateTime<Utc>, z: &Z) -> Option<DateTime<Utc>> {
            c.find_next_occurrence(&t.with_timezone(z), false)
                .ok()
                .map(|d| d.with_timezone(&Utc))
        }
        match self.zone {
            Zone::Local => next(&self.cron, t, &chrono::Local),
            Zone::Named(z) => next(&self.cron, t, &z),
        }
    }

    /// `t` formatted (RFC 3339) in the schedule's zone, as upstream's scheduled-timestamp.
    pub fn format(&self, t: DateTime<Utc>) -> String {
        match self.zone {
            Zone::Local => t
                .with_timezone(&chrono::Local)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            Zone::Named(z) => t
                .with_timezone(&z)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// Upstream's `mostRecentScheduleTime`: the latest scheduled time in `(earliest, now]`, how many
/// were missed (capped at `MAX_MISSED + 1`), and the next one after `now`.
pub fn most_recent(
    s: &Schedule,
    earliest: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, usize, Option<DateTime<Utc>>) {
    let mut last = None;
    let mut count = 0;
    let mut t = earliest;
    loop {
        let Some(n) = s.next_after(t) else {
            return (last, count, None);
        };
        if n > now {
            return (last, count, Some(n));
        }
        last = Some(n);
        count += 1;
        t = n;
        if count > MAX_MISSED {
            // Jump close to now: only the most recent time matters from here on.
            let near = now - chrono::Duration::minutes(2);
            if near > t {
                t = near;
            }
            count = MAX_MISSED + 1;
            let mut tail = t;
            while let Some(n) = s.next_after(tail) {
                if n > now {
                    return (last, count, Some(n));
                }
                last = Some(n);
                tail = n;
            }
            return (last, count, None);
        }
    }
}

/// What to do at `now` (upstream's `syncCronJob` decisions, without the API calls).
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing is due (or the due run was already started).
    Wait,
    /// The due run is past `startingDeadlineSeconds`.
    Missed(DateTime<Utc>),
    /// The due run waits: a job is active and the policy is Forbid.
    Forbidden,
    /// Start the run of `at`; `replace`: delete the active jobs first (Replace).
    Start { at: DateTime<Utc>, replace: bool },
}

#[derive(Debug, PartialEq)]
pub struct Plan {
    pub step: Step,
    pub too_many_missed: bool,
    /// When to look again: just after the next scheduled time.
    pub wait: Option<Duration>,
}

pub fn plan(
    sched: &Schedule,
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
    status: &k8s_openapi::api::batch::v1::CronJobStatus,
    active: &[ObjectReference],
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Plan {
    let last = status.last_schedule_time.as_ref().map(to_chrono);
    let mut earliest = last.unwrap_or(created);
    if let Some(d) = spec.starting_deadline_seconds {
        let floor = now - chrono::Duration::seconds(d);
        if floor > earliest {
            earliest = floor;
        }
    }
    let (recent, missed, next) = most_recent(sched, earliest, now);
    let wait = next.map(|n| (n - now).to_std().unwrap_or_default() + Duration::from_millis(100));
    let too_many_missed = missed > MAX_MISSED;
    let step = match recent {
        None => Step::Wait,
        Some(t) if last.is_some_and(|l| l >= t) => Step::Wait,
        Some(t)
            if spec
                .starting_deadline_seconds
                .is_some_and(|d| t + chrono::Duration::seconds(d) < now) =>
        {
            Step::Missed(t)
        }
        Some(t) => match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !active.is_empty() => Step::Forbidden,
            Some("Replace") => Step::Start {
                at: t,
                replace: !active.is_empty(),
            },
            _ => Step::Start {
                at: t,
                replace: false,
            },
        },
    };
    Plan {
        step,
        too_many_missed,
        wait,
    }
}

fn to_chrono(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), 0).unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or_else(|_| Timestamp::now()))
}

/// `Complete` or `Failed`, when the job has finished.
fn finished(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for c in conds {
        if c.status == "True" && c.type_ == "Complete" {
            return Some("Complete");
        }
        if c.status == "True" && c.type_ == "Failed" {
            return Some("Failed");
        }
    }
    None
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Upstream's `getJobName`: the scheduled time in minutes since the epoch.
pub fn job_name(cj: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cj}-{}", scheduled.timestamp() / 60)
}

async fn reconcile(cj: Arc<CronJob>, st: Arc<State>) -> Result<Action, CronJobError> {
    let span = tracing::info_span!("cronjob", cronjob = %workload::key(&*cj), uid = %cj.uid().unwrap_or_default());
    sync(cj, st).instrument(span).await
}

async fn sync(cj: Arc<CronJob>, st: Arc<State>) -> Result<Action, CronJobError> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _ = crate::util::ready(&st.jobs).await;
    let ns = cj.namespace().unwrap_or_default();
    let name = cj.name_any();
    let uid = cj.uid().unwrap_or_default();
    let cj_api: Api<CronJob> = Api::namespaced(st.client.clone(), &ns);
    let job_api: Api<Job> = Api::namespaced(st.client.clone(), &ns);
    let spec = cj.spec.clone().unwrap_or_default();
    let mut status = cj.status.clone().unwrap_or_default();
    let orig_status = status.clone();
    let children = workload::owned_by(&st.jobs, &ns, &uid);

    // Active list and last success from the jobs we own.
    let mut active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
    for j in &children {
        let in_active = active.iter().any(|r| r.uid == j.uid());
        match finished(j) {
            None if !in_active => active.push(job_ref(j)),
            Some(cond) if in_active => {
                active.retain(|r| r.uid != j.uid());
                workload::record(
                    &st.rec,
                    &*cj,
                    false,
                    "SawCompletedJob",
                    "SawCompletedJob",
                    format!("Saw completed job: {}, condition: {cond}", j.name_any()),
                )
                .await;
            }
            _ => {}
        }
        if finished(j) == Some("Complete") {
            if let Some(ct) = j.status.as_ref().and_then(|s| s.completion_time.clone()) {
                if status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|l| l.0 < ct.0)
                {
                    status.last_successful_time = Some(ct);
                }
            }
        }
    }
    let mut missing = Vec::new();
    active.retain(|r| {
        let here = children.iter().any(|j| j.uid() == r.uid);
        if !here {
            missing.push(r.name.clone().unwrap_or_default());
        }
        here
    });
    for m in missing {
        // The job may only be missing from the cache yet: check the API before dropping it.
        if job_api.get_opt(&m).await?.is_some() {
            continue;
        }
        workload::record(
            &st.rec,
            &*cj,
            false,
            "MissingJob",
            "MissingJob",
            format!("Active job went missing: {m}"),
        )
        .await;
    }

    // History limits: oldest finished jobs beyond the limits go.
    for (cond, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Arc<Job>> = children
            .iter()
            .filter(|j| finished(j) == Some(cond) && j.metadata.deletion_timestamp.is_none())
            .collect();
        if done.len() as i32 <= limit {
            continue;
        }
        done.sort_by_key(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .map(|t| t.0)
                .or(j.metadata.creation_timestamp.clone().map(|t| t.0))
        });
        for j in done.iter().take(done.len() - limit.max(0) as usize) {
            delete_job(&st, &cj, &job_api, j).await?;
        }
    }

    let mut requeue = None;
    if !spec.suspend.unwrap_or(false) {
        requeue = schedule(&st, &cj, &job_api, &spec, &mut status, &mut active).await?;
    }
    status.active = (!active.is_empty()).then_some(active);
    if status != orig_status {
        let mut next = (*cj).clone();
        next.status = Some(status);
        cj_api
            .replace_status(&name, &PostParams::default(), &next)
            .await?;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

async fn delete_job(
    st: &State,
    cj: &CronJob,
    api: &Api<Job>,
    job: &Job,
) -> Result<(), kube::Error> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => {
            workload::record(
                &st.rec,
                cj,
                false,
                "SuccessfulDelete",
                "DeleteJob",
                format!("Deleted job {}", job.name_any()),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Starts the job of the most recent unmet scheduled time, if any; returns when to look again.
async fn schedule(
    st: &State,
    cj: &CronJob,
    job_api: &Api<Job>,
    spec: &k8s_openapi::api::batch::v1::CronJobSpec,
    status: &mut k8s_openapi::api::batch::v1::CronJobStatus,
    active: &mut Vec<ObjectReference>,
) -> Result<Option<Duration>, CronJobError> {
    let sched = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(ScheduleError::Unparseable(e)) => {
            workload::record(
                &st.rec,
                cj,
                true,
                "UnparseableSchedule",
                "Schedule",
                format!("unparseable schedule: {:?} : {e}", spec.schedule),
            )
            .await;
            return Ok(None);
        }
        Err(ScheduleError::UnknownTimeZone(z)) => {
            workload::record(
                &st.rec,
                cj,
                true,
                "UnknownTimeZone",
                "Schedule",
                format!("invalid timeZone: {z:?}"),
            )
            .await;
            return Ok(None);
        }
    };
    let now = Utc::now();
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(to_chrono)
        .unwrap_or(now);
    let p = plan(&sched, spec, status, active, created, now);
    if p.too_many_missed {
        workload::record(
            &st.rec,
            cj,
            true,
            "TooManyMissedTimes",
            "Schedule",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
        )
        .await;
    }
    let scheduled = match p.step {
        Step::Wait => return Ok(p.wait),
        Step::Missed(t) => {
            workload::record(
                &st.rec,
                cj,
                true,
                "MissSchedule",
                "Schedule",
                format!("Missed scheduled time to start a job: {}", sched.format(t)),
            )
            .await;
            return Ok(p.wait);
        }
        Step::Forbidden => {
            workload::record(
                &st.rec,
                cj,
                false,
                "JobAlreadyActive",
                "Schedule",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
            )
            .await;
            return Ok(p.wait);
        }
        Step::Start { at, replace } => {
            if replace {
                for r in std::mem::take(active) {
                    let Some(name) = r.name.clone() else { continue };
                    if let Some(j) = job_api.get_opt(&name).await? {
                        delete_job(st, cj, job_api, &j).await?;
                    }
                }
            }
            at
        }
    };
    let wait = p.wait;
    let jname = job_name(&cj.name_any(), scheduled);
    let tmpl = spec.job_template.clone();
    let tmeta = tmpl.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), sched.format(scheduled));
    let job = Job {
        metadata: ObjectMeta {
            name: Some(jname.clone()),
            namespace: cj.namespace(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![workload::controller_ref(cj)]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    };
    let created = match job_api.create(&PostParams::default(), &job).await {
        Ok(j) => j,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Created before (a restart between create and status): adopt it if it is ours.
            match job_api.get_opt(&jname).await? {
                Some(j)
                    if j.owner_references()
                        .iter()
                        .any(|r| Some(&r.uid) == cj.uid().as_ref()) =>
                {
                    j
                }
                _ => return Ok(wait),
            }
        }
        Err(e) => {
            workload::record(
                &st.rec,
                cj,
                true,
                "FailedCreate",
                "CreateJob",
                format!("Error creating job: {e}"),
            )
            .await;
            return Err(e.into());
        }
    };
    info!(job = %jname, scheduled = %scheduled, "created job");
    workload::record(
        &st.rec,
        cj,
        false,
        "SuccessfulCreate",
        "CreateJob",
        format!("Created job {jname}"),
    )
    .await;
    if !active.iter().any(|r| r.uid == created.uid()) {
        active.push(job_ref(&created));
    }
    status.last_schedule_time = Some(to_time(scheduled));
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_and_zones() {
        let s = Schedule::parse("*/15 * * * *", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:07:30Z")),
            Some(at("2026-01-01T10:15:00Z"))
        );
        let s = Schedule::parse("@hourly", Some("Etc/UTC")).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        // 09:00 in Tokyo is 00:00 UTC.
        let s = Schedule::parse("0 9 * * *", Some("Asia/Tokyo")).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:00:00Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            s.format(at("2026-01-02T00:00:00Z")),
            "2026-01-02T09:00:00+09:00"
        );
        let s = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:00:00Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        // Day of month and day of week are OR-ed when both are restricted.
        let s = Schedule::parse("0 0 13 * FRI", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-02T00:00:00Z"))
        );
        assert!(matches!(
            Schedule::parse("* * * *", None),
            Err(ScheduleError::Unparseable(_))
        ));
        assert_eq!(
            Schedule::parse("* * * * *", Some("Mars/Base")).err(),
            Some(ScheduleError::UnknownTimeZone("Mars/Base".into()))
        );
    }

    #[test]
    fn concurrency_policies_and_deadlines() {
        use k8s_openapi::api::batch::v1::{CronJobSpec, CronJobStatus};
        let s = Schedule::parse("*/5 * * * *", Some("UTC")).unwrap();
        let created = at("2026-01-01T09:58:00Z");
        let now = at("2026-01-01T10:00:20Z");
        let spec = |policy: &str| CronJobSpec {
            concurrency_policy: Some(policy.into()),
            ..Default::default()
        };
        let none = CronJobStatus::default();
        let one = vec![ObjectReference {
            name: Some("sk-1".into()),
            ..Default::default()
        }];
        let due = at("2026-01-01T10:00:00Z");
        let p = plan(&s, &spec("Allow"), &none, &one, created, now);
        assert_eq!(
            p.step,
            Step::Start {
                at: due,
                replace: false
            }
        );
        assert_eq!(p.wait, Some(Duration::from_millis(280_100)));
        assert!(!p.too_many_missed);
        assert_eq!(
            plan(&s, &spec("Forbid"), &none, &one, created, now).step,
            Step::Forbidden
        );
        assert_eq!(
            plan(&s, &spec("Forbid"), &none, &[], created, now).step,
            Step::Start {
                at: due,
                replace: false
            }
        );
        assert_eq!(
            plan(&s, &spec("Replace"), &none, &one, created, now).step,
            Step::Start {
                at: due,
                replace: true
            }
        );
        // Already started for that time.
        let started = CronJobStatus {
            last_schedule_time: Some(to_time(due)),
            ..Default::default()
        };
        assert_eq!(
            plan(&s, &spec("Allow"), &started, &[], created, now).step,
            Step::Wait
        );
        // Not due yet.
        assert_eq!(
            plan(
                &s,
                &spec("Allow"),
                &none,
                &[],
                created,
                at("2026-01-01T09:59:00Z")
            )
            .step,
            Step::Wait
        );
        // startingDeadlineSeconds: a run further back than the deadline is not started.
        let mut late = spec("Allow");
        late.starting_deadline_seconds = Some(10);
        assert_eq!(plan(&s, &late, &none, &[], created, now).step, Step::Wait);
        late.starting_deadline_seconds = Some(30);
        assert_eq!(
            plan(&s, &late, &none, &[], created, now).step,
            Step::Start {
                at: due,
                replace: false
            }
        );
        // Created long ago and never run: too many missed times, the most recent one starts.
        let p = plan(
            &s,
            &spec("Allow"),
            &none,
            &[],
            at("2025-12-01T00:00:00Z"),
            now,
        );
        assert!(p.too_many_missed);
        assert_eq!(
            p.step,
            Step::Start {
                at: due,
                replace: false
            }
        );
    }

    #[test]
    fn most_recent_and_names() {
        let s = Schedule::parse("* * * * *", Some("UTC")).unwrap();
        let (last, n, next) =
            most_recent(&s, at("2026-01-01T10:00:00Z"), at("2026-01-01T10:03:30Z"));
        assert_eq!(last, Some(at("2026-01-01T10:03:00Z")));
        assert_eq!(n, 3);
        assert_eq!(next, Some(at("2026-01-01T10:04:00Z")));
        let (_, n, _) = most_recent(&s, at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"));
        assert_eq!(n, MAX_MISSED + 1);
        assert_eq!(job_name("sk", at("2026-01-01T10:03:00Z")), "sk-29454363");
    }
}
