//! Jobs and CronJobs end to end: kubectl against a whole single-node cluster (API server, the
//! job, TTL and CronJob controllers, scheduler, the real kubelet and CRI server). Needs root,
//! docker-registry and busybox-static; builds on `cargo build --workspace --bins`.
//!
//! All jobs of a test are created first and then waited for, so their pods run side by side.

use serde_json::Value;
use skiff_tests::control_plane::ControlPlane;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(150);

fn job_manifest(name: &str, image: &str, spec: &str, script: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
{spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", {script:?}]
"#
    )
}

fn apply(c: &ControlPlane, manifest: &str) {
    let o = c.with_stdin(&["apply", "-f", "-"], manifest);
    assert!(o.ok, "apply failed: {}\n{manifest}", o.stderr);
}

fn get_json(c: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl -o json")
}

/// The condition `type_` of a job, as JSON.
fn condition(job: &Value, type_: &str) -> Value {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .cloned()
        .unwrap_or(Value::Null)
}

fn job_pods(c: &ControlPlane, job: &str) -> Vec<Value> {
    let l = get_json(
        c,
        &["pods", "-l", &format!("batch.kubernetes.io/job-name={job}")],
    );
    l["items"].as_array().cloned().unwrap_or_default()
}

fn wait_condition(c: &ControlPlane, job: &str, cond: &str) -> Value {
    let o = c.kubectl(&[
        "wait",
        &format!("--for=condition={cond}"),
        &format!("job/{job}"),
        &format!("--timeout={}s", WAIT.as_secs()),
    ]);
    let j = get_json(c, &["job", job]);
    assert!(
        o.ok,
        "job {job} never got {cond}: {}\n{}\n{}",
        o.stderr,
        serde_json::to_string_pretty(&j["status"]).unwrap(),
        c.log_tail()
    );
    j
}

#[test]
fn jobs_run_to_completion_fail_and_index() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();

    // A typed command (protobuf) and `kubectl wait`.
    c.ok(&[
        "create",
        "job",
        "sk-once",
        "--image",
        &img,
        "--",
        "sh",
        "-c",
        "echo done",
    ]);
    apply(
        &c,
        &job_manifest(
            "sk-par",
            &img,
            "  completions: 3\n  parallelism: 2",
            "sleep 1",
        ),
    );
    apply(
        &c,
        &job_manifest("sk-fail", &img, "  backoffLimit: 1", "exit 3"),
    );
    apply(
        &c,
        &job_manifest(
            "sk-idx",
            &img,
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed",
            "echo index=$JOB_COMPLETION_INDEX",
        ),
    );
    apply(
        &c,
        &job_manifest(
            "sk-pfp",
            &img,
            "  backoffLimit: 6\n  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes:\n        containerName: main\n        operator: In\n        values: [42]",
            "exit 42",
        ),
    );
    apply(
        &c,
        &job_manifest(
            "sk-deadline",
            &img,
            "  activeDeadlineSeconds: 3",
            "sleep 600",
        ),
    );
    apply(
        &c,
        &job_manifest("sk-ttl", &img, "  ttlSecondsAfterFinished: 0", "true"),
    );
    apply(
        &c,
        &job_manifest("sk-susp", &img, "  suspend: true", "true"),
    );
    apply(
        &c,
        &job_manifest(
            "sk-leader",
            &img,
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  successPolicy:\n    rules:\n    - succeededIndexes: \"0\"",
            "[ \"$JOB_COMPLETION_INDEX\" = 0 ] && exit 0; sleep 600",
        ),
    );
    apply(
        &c,
        &job_manifest(
            "sk-perindex",
            &img,
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  backoffLimitPerIndex: 1",
            "[ \"$JOB_COMPLETION_INDEX\" = 1 ] && exit 1; exit 0",
        ),
    );
    apply(
        &c,
        &job_manifest("sk-onfail", &img, "  backoffLimit: 1", "exit 1")
            .replace("restartPolicy: Never", "restartPolicy: OnFailure"),
    );

    // Complete: SuccessCriteriaMet then Complete, upstream's reason, counts, times, no finalizers.
    let j = wait_condition(&c, "sk-once", "complete");
    assert_eq!(j["status"]["succeeded"], 1);
    assert!(j["status"]["completionTime"].is_string());
    assert!(j["status"]["startTime"].is_string());
    assert_eq!(condition(&j, "Complete")["reason"], "CompletionsReached");
    assert_eq!(condition(&j, "SuccessCriteriaMet")["status"], "True");
    let pods = job_pods(&c, "sk-once");
    assert_eq!(pods.len(), 1);
    assert!(
        pods[0]["metadata"]["finalizers"].is_null()
            || pods[0]["metadata"]["finalizers"]
                .as_array()
                .unwrap()
                .is_empty()
    );
    assert_eq!(pods[0]["metadata"]["ownerReferences"][0]["kind"], "Job");
    let name = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(c.ok(&["logs", &name]).trim(), "done");

    // completions 3, parallelism 2.
    let j = wait_condition(&c, "sk-par", "complete");
    assert_eq!(j["status"]["succeeded"], 3);
    assert_eq!(job_pods(&c, "sk-par").len(), 3);

    // backoffLimit 1: one retry (after the pod failure back-off), then Failed.
    let j = wait_condition(&c, "sk-fail", "failed");
    let failed = condition(&j, "Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(
        failed["message"],
        "Job has reached the specified backoff limit"
    );
    assert_eq!(
        condition(&j, "FailureTarget")["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(j["status"]["failed"], 2);
    assert_eq!(job_pods(&c, "sk-fail").len(), 2);
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-fail",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");

    // Indexed: each pod sees its own index.
    let j = wait_condition(&c, "sk-idx", "complete");
    assert_eq!(j["status"]["completedIndexes"], "0-2");
    assert_eq!(j["status"]["succeeded"], 3);
    let pods = job_pods(&c, "sk-idx");
    assert_eq!(pods.len(), 3);
    for p in pods {
        let ix = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .expect("index annotation")
            .to_string();
        assert_eq!(
            p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"],
            ix.as_str()
        );
        assert_eq!(p["spec"]["hostname"], format!("sk-idx-{ix}"));
        let logs = c.ok(&["logs", p["metadata"]["name"].as_str().unwrap()]);
        assert_eq!(logs.trim(), format!("index={ix}"));
    }

    // Pod failure policy FailJob on exit code 42.
    let j = wait_condition(&c, "sk-pfp", "failed");
    let failed = condition(&j, "Failed");
    assert_eq!(failed["reason"], "PodFailurePolicy");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Container main for pod default/sk-pfp-")
            && msg.ends_with("failed with exit code 42 matching FailJob rule at index 0"),
        "{msg}"
    );

    // activeDeadlineSeconds.
    let j = wait_condition(&c, "sk-deadline", "failed");
    assert_eq!(condition(&j, "Failed")["reason"], "DeadlineExceeded");
    assert_eq!(
        condition(&j, "Failed")["message"],
        "Job was active longer than specified deadline"
    );

    // ttlSecondsAfterFinished: 0 deletes the job once it finished.
    c.wait_for("sk-ttl to be deleted after finishing", WAIT, || {
        !c.kubectl(&["get", "job", "sk-ttl"]).ok
    });

    // Suspended: no pods, the Suspended condition; resumed: runs to completion.
    let j = wait_condition(&c, "sk-susp", "suspended");
    assert_eq!(condition(&j, "Suspended")["reason"], "JobSuspended");
    assert!(job_pods(&c, "sk-susp").is_empty());
    c.ok(&[
        "patch",
        "job",
        "sk-susp",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    let j = wait_condition(&c, "sk-susp", "complete");
    assert_eq!(condition(&j, "Suspended")["status"], "False");
    assert_eq!(condition(&j, "Suspended")["reason"], "JobResumed");

    // successPolicy: index 0 alone completes the job; the other indexes' pods are deleted.
    let j = wait_condition(&c, "sk-leader", "complete");
    assert_eq!(condition(&j, "Complete")["reason"], "SuccessPolicy");
    assert_eq!(
        condition(&j, "Complete")["message"],
        "Matched rules at index 0"
    );
    assert_eq!(j["status"]["completedIndexes"], "0");
    assert_eq!(j["status"]["active"], 0);

    // backoffLimitPerIndex 1: index 1 runs twice, then is a failed index; the others complete.
    let j = wait_condition(&c, "sk-perindex", "failed");
    assert_eq!(condition(&j, "Failed")["reason"], "FailedIndexes");
    assert_eq!(condition(&j, "Failed")["message"], "Job has failed indexes");
    assert_eq!(j["status"]["failedIndexes"], "1");
    assert_eq!(j["status"]["completedIndexes"], "0,2");
    assert_eq!(j["status"]["failed"], 2);
    let counts: Vec<String> = job_pods(&c, "sk-perindex")
        .iter()
        .filter(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1")
        .map(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let mut counts = counts;
    counts.sort();
    assert_eq!(counts, vec!["0".to_string(), "1".to_string()]);

    // restartPolicy OnFailure: container restarts in place count against backoffLimit.
    let j = wait_condition(&c, "sk-onfail", "failed");
    assert_eq!(condition(&j, "Failed")["reason"], "BackoffLimitExceeded");
    // Its pod was deleted when the job failed, and counted as failed as upstream does.
    assert_eq!(j["status"]["failed"], 1);
    assert!(j["status"]["uncountedTerminatedPods"]["failed"]
        .as_array()
        .is_none_or(|a| a.is_empty()));

    // Deleting a job deletes its pods.
    c.ok(&["delete", "job", "sk-par"]);
    c.wait_for("sk-par's pods to be deleted", WAIT, || {
        job_pods(&c, "sk-par").is_empty()
    });
}

#[test]
fn cronjob_fires_and_create_job_from_cronjob() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    apply(
        &c,
        &format!(
            r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: sk-cron
spec:
  schedule: "* * * * *"
  timeZone: Etc/UTC
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata:
      labels:
        sk: cron
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: main
            image: {img}
            command: ["sh", "-c", "echo tick"]
"#
        ),
    );
    // `create job --from=cronjob` is client-side: a Job from the template, owned by the CronJob.
    c.ok(&["create", "job", "sk-manual", "--from=cronjob/sk-cron"]);
    let j = wait_condition(&c, "sk-manual", "complete");
    assert_eq!(
        j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");

    // A `* * * * *` schedule fires within a minute: a job named after its scheduled minute.
    let mut scheduled_job = String::new();
    c.wait_for(
        "the CronJob to start a scheduled job",
        Duration::from_secs(130),
        || {
            let l = get_json(&c, &["jobs", "-l", "sk=cron"]);
            for item in l["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                if name != "sk-manual" {
                    scheduled_job = name.to_string();
                    return true;
                }
            }
            false
        },
    );
    let minutes: i64 = scheduled_job
        .strip_prefix("sk-cron-")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("scheduled job name {scheduled_job}"));
    let j = get_json(&c, &["job", &scheduled_job]);
    let ts = j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .expect("scheduled-timestamp annotation")
        .to_string();
    let at = chrono::DateTime::parse_from_rfc3339(&ts).expect("RFC 3339 timestamp");
    assert_eq!(at.timestamp(), minutes * 60, "{ts} vs {scheduled_job}");
    wait_condition(&c, &scheduled_job, "complete");
    c.wait_for("lastSuccessfulTime and an empty active list", WAIT, || {
        let cj = get_json(&c, &["cronjob", "sk-cron"]);
        cj["status"]["lastSuccessfulTime"].is_string()
            && cj["status"]["lastScheduleTime"].is_string()
            && cj["status"]["active"].is_null()
    });
    let cj = get_json(&c, &["cronjob", "sk-cron"]);
    let last =
        chrono::DateTime::parse_from_rfc3339(cj["status"]["lastScheduleTime"].as_str().unwrap())
            .unwrap();
    assert!(last.timestamp() >= minutes * 60);
    // successfulJobsHistoryLimit 1: of the two finished jobs the older one (the manual run)
    // goes.
    c.wait_for("sk-manual deleted by the history limit", WAIT, || {
        !c.kubectl(&["get", "job", "sk-manual"]).ok
    });
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=sk-cron",
    ]);
    assert!(events.contains("SuccessfulCreate"), "{events}");
    assert!(events.contains("SawCompletedJob"), "{events}");
    // Suspended, so that no more jobs start while the cluster is torn down.
    c.ok(&[
        "patch",
        "cronjob",
        "sk-cron",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
}

/// Figures, not assertions (run on purpose:
/// `cargo test -p skiff-tests --test jobs -- --ignored --nocapture measure`): an Indexed Job of
/// 20 completions, 10 at a time, from create to Complete; a StatefulSet of 5 replicas with a
/// claim each, OrderedReady, from create to 5 Ready with every claim Bound.
#[test]
#[ignore]
fn measure_batch_figures() {
    let c = ControlPlane::start_cluster();
    let img = c.agent.as_ref().unwrap().busybox.clone();
    let t = std::time::Instant::now();
    apply(
        &c,
        &job_manifest(
            "sk-m-idx",
            &img,
            "  completions: 20\n  parallelism: 10\n  completionMode: Indexed",
            "true",
        ),
    );
    wait_condition(&c, "sk-m-idx", "complete");
    println!(
        "job_indexed_20x10_complete_s skiff={:.1}",
        t.elapsed().as_secs_f64()
    );
    let t = std::time::Instant::now();
    apply(
        &c,
        &format!(
            r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: sk-m-sts
spec:
  serviceName: sk-m-sts
  replicas: 5
  selector:
    matchLabels:
      app: sk-m-sts
  template:
    metadata:
      labels:
        app: sk-m-sts
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {img}
        command: ["sleep", "3600"]
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 1Mi
"#
        ),
    );
    c.wait_for(
        "5 Ready with bound claims",
        Duration::from_secs(300),
        || {
            c.ok(&[
                "get",
                "sts",
                "sk-m-sts",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]) == "5"
                && c.ok(&[
                    "get",
                    "pvc",
                    "-l",
                    "app=sk-m-sts",
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ]) == "Bound Bound Bound Bound Bound"
        },
    );
    println!(
        "sts_5_ordered_ready_bound_s skiff={:.1}",
        t.elapsed().as_secs_f64()
    );
}
