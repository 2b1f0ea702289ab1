//! Strategies of the workload kinds (apps, batch, ReplicationController) and their neighbours
//! (ControllerRevision, HorizontalPodAutoscaler, PodDisruptionBudget).

use super::core::{default_pod_spec, validate_pod_spec};
use super::printers::{
    cols, containers_images, human_duration, label_text, num, or_none, s, selector_text,
};
use super::{age, name, selector_matches, set_default, Column, Strategy};
use crate::status::FieldError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    ReplicationController,
}

impl Workload {
    /// Path of the pod template inside the object.
    fn template_path(self) -> &'static [&'static str] {
        match self {
            Workload::CronJob => &["spec", "jobTemplate", "spec", "template"],
            _ => &["spec", "template"],
        }
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |cur, k| &mut cur[*k])
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |cur, k| &cur[*k])
}

fn default_job_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec["completionMode"] == "Indexed" {
        set_default(spec, "backoffLimitPerIndex", Value::Null);
    }
}

impl Strategy for Workload {
    fn set_defaults(&self, obj: &mut Value) {
        let tp = self.template_path();
        default_pod_spec(at_mut(obj, &[tp, &["spec"]].concat()));
        let spec = &mut obj["spec"];
        if !spec.is_object() {
            return;
        }
        match self {
            Workload::Deployment => {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "strategy", json!({}));
                set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
                if spec["strategy"]["type"] == "RollingUpdate" {
                    let ru = &mut spec["strategy"]["rollingUpdate"];
                    if !ru.is_object() {
                        *ru = json!({});
                    }
                    set_default(ru, "maxUnavailable", json!("25%"));
                    set_default(ru, "maxSurge", json!("25%"));
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
            }
            Workload::ReplicaSet | Workload::ReplicationController => {
                set_default(spec, "replicas", json!(1));
                if *self == Workload::ReplicationController {
                    // An RC without a selector selects its template's labels.
                    if spec["selector"].is_null() {
                        spec["selector"] = spec["template"]["metadata"]["labels"].clone();
                    }
                    if obj["metadata"]["labels"].is_null() {
                        obj["metadata"]["labels"] =
                            obj["spec"]["template"]["metadata"]["labels"].clone();
                    }
                }
            }
            Workload::StatefulSet => {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
                if let Some(vcts) = spec["volumeClaimTemplates"].as_array_mut() {
                    for v in vcts {
                        set_default(&mut v["spec"], "volumeMode", json!("Filesystem"));
                        set_default(v, "apiVersion", json!("v1"));
                        set_default(v, "kind", json!("PersistentVolumeClaim"));
                        set_default(v, "status", json!({"phase": "Pending"}));
                    }
                }
            }
            Workload::DaemonSet => {
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
                set_default(spec, "revisionHistoryLimit", json!(10));
            }
            Workload::Job => default_job_spec(spec),
            Workload::CronJob => {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                default_job_spec(&mut spec["jobTemplate"]["spec"]);
            }
        }
    }

    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = match self {
            Workload::CronJob | Workload::Job => json!({}),
            Workload::DaemonSet => {
                json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0})
            }
            _ => json!({"replicas": 0}),
        };
        if *self == Workload::Job && obj["spec"]["manualSelector"] != true {
            // The job's own selector, on its uid, as upstream generates it.
            let uid = obj["metadata"]["uid"].clone();
            let jname = obj["metadata"]["name"].clone();
            obj["spec"]["selector"] =
                json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            labels["batch.kubernetes.io/controller-uid"] = uid.clone();
            labels["batch.kubernetes.io/job-name"] = jname.clone();
            labels["controller-uid"] = uid;
            labels["job-name"] = jname;
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let tp = self.template_path();
        let tpath = tp.join(".");
        let template = at(obj, tp);
        let spec_path = format!("{tpath}.spec");
        validate_pod_spec(&template["spec"], &spec_path, errs);
        let spec = &obj["spec"];
        if let Some(r) = spec["replicas"].as_i64() {
            if r < 0 {
                errs.push(FieldError::invalid(
                    "spec.replicas",
                    &r.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        let rp = s(&template["spec"]["restartPolicy"]);
        match self {
            Workload::Job | Workload::CronJob => {
                if rp != "OnFailure" && rp != "Never" {
                    errs.push(FieldError::not_supported(
                        format!("{spec_path}.restartPolicy"),
                        &rp,
                        &["OnFailure", "Never"],
                    ));
                }
            }
            _ => {
                if rp != "Always" && !rp.is_empty() {
                    errs.push(FieldError::not_supported(
                        format!("{spec_path}.restartPolicy"),
                        &rp,
                        &["Always"],
                    ));
                }
            }
        }
        match self {
            Workload::Deployment
            | Workload::ReplicaSet
            | Workload::StatefulSet
            | Workload::DaemonSet => {
                let sel = &spec["selector"];
                let empty = sel["matchLabels"].as_object().is_none_or(|m| m.is_empty())
                    && sel["matchExpressions"].as_array().is_none_or(Vec::is_empty);
                if sel.is_null() {
                    errs.push(FieldError::required("spec.selector", ""));
                } else if empty {
                    errs.push(FieldError::invalid(
                        "spec.selector",
                        "",
                        "empty selector is invalid for deployment",
                    ));
                } else if !selector_matches(sel, &template["metadata"]["labels"]) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        &label_text(&template["metadata"]["labels"]),
                        "`selector` does not match template `labels`",
                    ));
                }
                if *self == Workload::StatefulSet && s(&spec["serviceName"]).is_empty() {
                    // Optional since 1.29 upstream; nothing to check.
                }
            }
            Workload::ReplicationController => {
                let sel = &spec["selector"];
                if let Some(m) = sel.as_object() {
                    let labels = &template["metadata"]["labels"];
                    if m.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                        errs.push(FieldError::invalid(
                            "spec.template.metadata.labels",
                            &label_text(labels),
                            "`selector` does not match template `labels`",
                        ));
                    }
                }
            }
            Workload::CronJob => {
                let sched = s(&spec["schedule"]);
                if sched.is_empty() {
                    errs.push(FieldError::required("spec.schedule", ""));
                } else if !valid_cron(&sched) {
                    errs.push(FieldError::invalid(
                        "spec.schedule",
                        &sched,
                        "unparseable schedule",
                    ));
                }
            }
            Workload::Job => {}
        }
    }

    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        let immutable: &[&str] = match self {
            Workload::Deployment | Workload::ReplicaSet | Workload::DaemonSet => &["selector"],
            Workload::StatefulSet => &["selector", "serviceName", "podManagementPolicy"],
            Workload::Job => &["selector", "completionMode"],
            _ => &[],
        };
        for f in immutable {
            if new["spec"][*f] != old["spec"][*f] {
                errs.push(FieldError::invalid(
                    format!("spec.{f}"),
                    &s(&new["spec"][*f]),
                    "field is immutable",
                ));
            }
        }
        if *self == Workload::Job && new["spec"]["template"] != old["spec"]["template"] {
            let unsuspended = old["spec"]["suspend"] == true;
            if !unsuspended {
                errs.push(FieldError::invalid(
                    "spec.template",
                    "",
                    "field is immutable",
                ));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        match self {
            Workload::Deployment => cols(&[
                "Ready",
                "Up-to-date",
                "Available",
                "Age",
                "|",
                "Containers",
                "Images",
                "Selector",
            ]),
            Workload::ReplicaSet | Workload::ReplicationController => cols(&[
                "Desired",
                "Current",
                "Ready",
                "Age",
                "|",
                "Containers",
                "Images",
                "Selector",
            ]),
            Workload::StatefulSet => cols(&["Ready", "Age", "|", "Containers", "Images"]),
            Workload::DaemonSet => cols(&[
                "Desired",
                "Current",
                "Ready",
                "Up-to-date",
                "Available",
                "Node Selector",
                "Age",
                "|",
                "Containers",
                "Images",
                "Selector",
            ]),
            Workload::Job => cols(&[
                "Status",
                "Completions",
                "Duration",
                "Age",
                "|",
                "Containers",
                "Images",
                "Selector",
            ]),
            Workload::CronJob => cols(&[
                "Schedule",
                "Timezone",
                "Suspend",
                "Active",
                "Last Schedule",
                "Age",
                "|",
                "Containers",
                "Images",
                "Selector",
            ]),
        }
    }

    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let (spec, st) = (&obj["spec"], &obj["status"]);
        let (c, i) = containers_images(&at(obj, self.template_path())["spec"]);
        let sel = || or_none(selector_text(&spec["selector"]));
        let n = json!(name(obj));
        let a = json!(age(obj, now));
        match self {
            Workload::Deployment => vec![
                n,
                json!(format!(
                    "{}/{}",
                    num(&st["readyReplicas"]),
                    num(&spec["replicas"])
                )),
                json!(num(&st["updatedReplicas"])),
                json!(num(&st["availableReplicas"])),
                a,
                json!(c),
                json!(i),
                json!(sel()),
            ],
            Workload::ReplicaSet | Workload::ReplicationController => {
                let selector = if *self == Workload::ReplicationController {
                    or_none(label_text(&spec["selector"]))
                } else {
                    sel()
                };
                vec![
                    n,
                    json!(num(&spec["replicas"])),
                    json!(num(&st["replicas"])),
                    json!(num(&st["readyReplicas"])),
                    a,
                    json!(c),
                    json!(i),
                    json!(selector),
                ]
            }
            Workload::StatefulSet => vec![
                n,
                json!(format!(
                    "{}/{}",
                    num(&st["readyReplicas"]),
                    num(&spec["replicas"])
                )),
                a,
                json!(c),
                json!(i),
            ],
            Workload::DaemonSet => vec![
                n,
                json!(num(&st["desiredNumberScheduled"])),
                json!(num(&st["currentNumberScheduled"])),
                json!(num(&st["numberReady"])),
                json!(num(&st["updatedNumberScheduled"])),
                json!(num(&st["numberAvailable"])),
                json!(or_none(label_text(
                    &spec["template"]["spec"]["nodeSelector"]
                ))),
                a,
                json!(c),
                json!(i),
                json!(sel()),
            ],
            Workload::Job => {
                let conds = st["conditions"].as_array().cloned().unwrap_or_default();
                let has = |t: &str| {
                    conds
                        .iter()
                        .any(|c| c["type"] == t && c["status"] == "True")
                };
                let status = if has("Complete") {
                    "Complete"
                } else if has("Failed") {
                    "Failed"
                } else if has("FailureTarget") {
                    "FailureTarget"
                } else if has("SuccessCriteriaMet") {
                    "SuccessCriteriaMet"
                } else if spec["suspend"] == true || has("Suspended") {
                    "Suspended"
                } else {
                    "Running"
                };
                let completions = match spec["completions"].as_i64() {
                    Some(c) => format!("{}/{c}", num(&st["succeeded"])),
                    None => {
                        let p = num(&spec["parallelism"]);
                        if p > 1 {
                            format!("{}/1 of {p}", num(&st["succeeded"]))
                        } else {
                            format!("{}/1", num(&st["succeeded"]))
                        }
                    }
                };
                let parse = |v: &Value| {
                    v.as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc))
                };
                let duration = match (parse(&st["startTime"]), parse(&st["completionTime"])) {
                    (Some(s0), Some(e)) => human_duration((e - s0).num_seconds()),
                    (Some(s0), None) => human_duration((now - s0).num_seconds()),
                    _ => String::new(),
                };
                vec![
                    n,
                    json!(status),
                    json!(completions),
                    json!(duration),
                    a,
                    json!(c),
                    json!(i),
                    json!(sel()),
                ]
            }
            Workload::CronJob => {
                let last = st["lastScheduleTime"]
                    .as_str()
                    .map(|t| super::human_age(Some(t), now))
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    n,
                    json!(s(&spec["schedule"])),
                    json!(or_none(s(&spec["timeZone"]))),
                    json!(if spec["suspend"] == true {
                        "True"
                    } else {
                        "False"
                    }),
                    json!(st["active"].as_array().map_or(0, Vec::len)),
                    json!(last),
                    a,
                    json!(c),
                    json!(i),
                    json!(or_none(selector_text(
                        &spec["jobTemplate"]["spec"]["selector"]
                    ))),
                ]
            }
        }
    }
}

/// Whether a cron schedule has a shape upstream's parser accepts (five fields or a macro).
fn valid_cron(s: &str) -> bool {
    let s = s.trim();
    let s = match s.split_once(' ') {
        Some((tz, rest)) if tz.starts_with("TZ=") || tz.starts_with("CRON_TZ=") => rest.trim(),
        _ => s,
    };
    if s.starts_with('@') {
        return [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ]
        .contains(&s)
            || s.starts_with("@every ");
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|f| {
            f.split(',').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| {
                        c.is_ascii_alphanumeric() || c == '*' || c == '/' || c == '-' || c == '?'
                    })
            })
        })
}

pub struct ControllerRevision;

impl Strategy for ControllerRevision {
    fn columns(&self) -> Vec<Column> {
        cols(&["Controller", "Revision", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let owner = obj["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|o| o.iter().find(|r| r["controller"] == true))
            .map(|r| {
                let group = s(&r["apiVersion"]);
                let group = group.split_once('/').map(|(g, _)| g).unwrap_or("");
                let kind = s(&r["kind"]).to_lowercase();
                if group.is_empty() {
                    format!("{kind}/{}", s(&r["name"]))
                } else {
                    format!("{kind}.{group}/{}", s(&r["name"]))
                }
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            json!(name(obj)),
            json!(owner),
            json!(num(&obj["revision"])),
            json!(age(obj, now)),
        ]
    }
}

/// HorizontalPodAutoscaler; stored as autoscaling/v2, served as v1 too.
pub enum Hpa {
    V1,
    V2,
}

impl Strategy for Hpa {
    fn set_defaults(&self, obj: &mut Value) {
        set_default(&mut obj["spec"], "minReplicas", json!(1));
        if matches!(self, Hpa::V2) && obj["spec"]["metrics"].is_null() {
            obj["spec"]["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
        }
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"currentReplicas": 0, "desiredReplicas": 0});
    }
    fn stores_as_served(&self) -> bool {
        matches!(self, Hpa::V2)
    }
    fn version_to_storage(&self, obj: &mut Value) {
        if matches!(self, Hpa::V2) {
            return;
        }
        let spec = &mut obj["spec"];
        let cpu = spec
            .as_object_mut()
            .and_then(|m| m.remove("targetCPUUtilizationPercentage"));
        if let Some(cpu) = cpu {
            spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": cpu}}}]);
        } else if spec.is_object() && spec["metrics"].is_null() {
            // No target in v1 means the default policy: v2's default metric (CPU at 80%), as
            // upstream stores it (`kubectl autoscale` without --cpu-percent shows 80%).
            spec["metrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
        }
        let st = &mut obj["status"];
        if let Some(cur) = st
            .as_object_mut()
            .and_then(|m| m.remove("currentCPUUtilizationPercentage"))
        {
            st["currentMetrics"] = json!([{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cur}}}]);
        }
        obj["apiVersion"] = json!("autoscaling/v2");
    }
    fn storage_to_version(&self, obj: &mut Value) {
        if matches!(self, Hpa::V2) {
            return;
        }
        let cpu = |list: &Value, field: &str| {
            list.as_array().and_then(|ms| {
                ms.iter()
                    .find(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu")
                    .map(|m| m["resource"][field]["averageUtilization"].clone())
            })
        };
        let target = cpu(&obj["spec"]["metrics"], "target");
        if let Some(m) = obj["spec"].as_object_mut() {
            m.remove("metrics");
            m.remove("behavior");
        }
        if let Some(t) = target.filter(|t| !t.is_null()) {
            obj["spec"]["targetCPUUtilizationPercentage"] = t;
        }
        let cur = cpu(&obj["status"]["currentMetrics"], "current");
        if let Some(m) = obj["status"].as_object_mut() {
            m.remove("currentMetrics");
            m.remove("conditions");
        }
        if let Some(c) = cur.filter(|c| !c.is_null()) {
            obj["status"]["currentCPUUtilizationPercentage"] = c;
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Reference",
            "Targets",
            "MinPods",
            "MaxPods",
            "Replicas",
            "Age",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let spec = &obj["spec"];
        let r = &spec["scaleTargetRef"];
        let targets = match self {
            Hpa::V1 => format!(
                "cpu: {}/{}%",
                obj["status"]["currentCPUUtilizationPercentage"]
                    .as_i64()
                    .map(|c| format!("{c}%"))
                    .unwrap_or_else(|| "<unknown>".into()),
                num(&spec["targetCPUUtilizationPercentage"])
            ),
            Hpa::V2 => spec["metrics"]
                .as_array()
                .map(|ms| {
                    ms.iter()
                        .map(|m| {
                            let rn = s(&m["resource"]["name"]);
                            let t = &m["resource"]["target"];
                            let want = t["averageUtilization"]
                                .as_i64()
                                .map(|u| format!("{u}%"))
                                .unwrap_or_else(|| s(&t["averageValue"]));
                            format!("{rn}: <unknown>/{want}")
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "<none>".into()),
        };
        vec![
            json!(name(obj)),
            json!(format!("{}/{}", s(&r["kind"]), s(&r["name"]))),
            json!(targets),
            json!(num(&spec["minReplicas"])),
            json!(num(&spec["maxReplicas"])),
            json!(num(&obj["status"]["currentReplicas"])),
            json!(age(obj, now)),
        ]
    }
}

pub struct Pdb;

impl Strategy for Pdb {
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0});
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
            errs.push(FieldError::invalid(
                "spec",
                "",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Min Available",
            "Max Unavailable",
            "Allowed Disruptions",
            "Age",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let spec = &obj["spec"];
        let na = |v: &Value| {
            if v.is_null() {
                "N/A".to_string()
            } else {
                s(v)
            }
        };
        vec![
            json!(name(obj)),
            json!(na(&spec["minAvailable"])),
            json!(na(&spec["maxUnavailable"])),
            json!(num(&obj["status"]["disruptionsAllowed"])),
            json!(age(obj, now)),
        ]
    }
}
