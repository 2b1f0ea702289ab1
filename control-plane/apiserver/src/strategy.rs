//! Per-kind behaviour: defaulting, validation and Table printing, on JSON objects.

use crate::registry::Strategy;
use crate::status::FieldError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = v;
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Fills in defaults on create (and on update for fields that must always be set).
pub fn default(strategy: Strategy, obj: &mut Value) {
    match strategy {
        Strategy::Pod => default_pod(obj),
        Strategy::Namespace => {
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if obj["status"]["phase"].is_null() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        Strategy::Node | Strategy::Lease | Strategy::Event => {}
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    // Upstream: Always when the tag is `latest` or missing (and no digest), else IfNotPresent.
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_pod(pod: &mut Value) {
    if !pod["spec"].is_object() {
        return;
    }
    let spec = &mut pod["spec"];
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(
        spec,
        "tolerations",
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]),
    );
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec[list].as_array_mut() {
            for c in cs {
                let image = c["image"].as_str().unwrap_or_default().to_string();
                set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
            }
        }
    }
}

/// Resets the status of a new object where upstream does (pods start Pending).
pub fn prepare_create(strategy: Strategy, obj: &mut Value) {
    if strategy == Strategy::Pod {
        obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
    }
}

/// Validates an object; an empty list means valid.
pub fn validate(strategy: Strategy, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if strategy == Strategy::Namespace && !is_dns_label(name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ));
    } else if !is_dns_subdomain(name) {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    if strategy == Strategy::Pod {
        validate_pod(obj, &mut errs);
    }
    errs
}

fn validate_pod(pod: &Value, errs: &mut Vec<FieldError>) {
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        errs.push(FieldError::required("spec.containers", ""));
    }
    let mut seen: Vec<String> = Vec::new();
    for (list, cs) in [
        (
            "spec.initContainers",
            spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        ),
        ("spec.containers", containers),
    ] {
        for (i, c) in cs.iter().enumerate() {
            let path = format!("{list}[{i}]");
            let cname = c["name"].as_str().unwrap_or_default();
            if cname.is_empty() {
                errs.push(FieldError::required(format!("{path}.name"), ""));
            } else if !is_dns_label(cname) {
                errs.push(FieldError::invalid(
                    format!("{path}.name"),
                    cname,
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                ));
            } else if seen.iter().any(|s| s == cname) {
                errs.push(FieldError::duplicate(format!("{path}.name"), cname));
            } else {
                seen.push(cname.to_string());
            }
            if c["image"].as_str().unwrap_or_default().trim().is_empty() {
                errs.push(FieldError::required(format!("{path}.image"), ""));
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.push(FieldError {
                field: "spec.restartPolicy".into(),
                reason: "FieldValueNotSupported",
                value: Some(rp.into()),
                detail: "supported values: \"Always\", \"OnFailure\", \"Never\"".into(),
            });
        }
    }
}

/// A column of a Table response.
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub priority: u8,
    pub description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        format: "",
        priority,
        description: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};

pub fn columns(strategy: Strategy) -> Vec<Column> {
    match strategy {
        Strategy::Pod => vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        Strategy::Node => vec![
            NAME,
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        Strategy::Namespace => vec![NAME, col("Status", "string", 0), col("Age", "string", 0)],
        Strategy::Lease => vec![NAME, col("Holder", "string", 0), col("Age", "string", 0)],
        Strategy::Event => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
    }
}

/// Short human duration, as `kubectl get` prints ages.
pub fn human_age(since: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(t) = since.and_then(|s| DateTime::parse_from_rfc3339(s).ok()) else {
        return "<unknown>".into();
    };
    let secs = (now - t.with_timezone(&Utc)).num_seconds().max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        format!("{m}m{}s", secs % 60)
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        format!("{h}h{}m", m % 60)
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        format!("{d}d{}h", h % 24)
    } else {
        format!("{d}d")
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

/// The STATUS column of `kubectl get pods` (the printer's rules: container reasons win over the
/// phase; deleting pods show Terminating).
pub fn pod_status_text(pod: &Value) -> String {
    let st = &pod["status"];
    let mut reason = s(&st["phase"]);
    if let Some(r) = st["reason"].as_str() {
        reason = r.to_string();
    }
    let mut has_running = false;
    if let Some(cs) = st["containerStatuses"].as_array() {
        for c in cs.iter().rev() {
            let state = &c["state"];
            if let Some(r) = state["waiting"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
            {
                reason = r.to_string();
            } else if let Some(r) = state["terminated"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
            {
                reason = r.to_string();
            } else if state["terminated"].is_object() {
                let t = &state["terminated"];
                reason = match t["signal"].as_i64() {
                    Some(sig) if sig != 0 => format!("Signal:{sig}"),
                    _ => format!("ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
                };
            } else if state["running"].is_object() && c["ready"].as_bool() == Some(true) {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    reason
}

pub fn cells(strategy: Strategy, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let md = &obj["metadata"];
    let name = s(&md["name"]);
    let age = human_age(md["creationTimestamp"].as_str(), now);
    match strategy {
        Strategy::Pod => {
            let spec_n = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
            let cs = obj["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = cs
                .iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count();
            let restarts: i64 = cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum();
            let ip = or_none(s(&obj["status"]["podIP"]));
            let node = or_none(s(&obj["spec"]["nodeName"]));
            let nominated = or_none(s(&obj["status"]["nominatedNodeName"]));
            vec![
                json!(name),
                json!(format!("{ready}/{spec_n}")),
                json!(pod_status_text(obj)),
                json!(restarts.to_string()),
                json!(age),
                json!(ip),
                json!(node),
                json!(nominated),
                json!("<none>"),
            ]
        }
        Strategy::Node => {
            let conds = obj["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = conds
                .iter()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"] == "True")
                .unwrap_or(false);
            let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
            if obj["spec"]["unschedulable"].as_bool() == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = md["labels"]
                .as_object()
                .map(|l| {
                    l.keys()
                        .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let addr = |t: &str| {
                obj["status"]["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .map(|x| s(&x["address"]))
                    .unwrap_or_default()
            };
            let info = &obj["status"]["nodeInfo"];
            vec![
                json!(name),
                json!(status),
                json!(or_none(roles.join(","))),
                json!(age),
                json!(s(&info["kubeletVersion"])),
                json!(or_none(addr("InternalIP"))),
                json!(or_none(addr("ExternalIP"))),
                json!(s(&info["osImage"])),
                json!(s(&info["kernelVersion"])),
                json!(s(&info["containerRuntimeVersion"])),
            ]
        }
        Strategy::Namespace => vec![json!(name), json!(s(&obj["status"]["phase"])), json!(age)],
        Strategy::Lease => vec![
            json!(name),
            json!(s(&obj["spec"]["holderIdentity"])),
            json!(age),
        ],
        Strategy::Event => {
            let last = obj["lastTimestamp"]
                .as_str()
                .or(obj["eventTime"].as_str())
                .or(md["creationTimestamp"].as_str());
            let io = &obj["involvedObject"];
            vec![
                json!(human_age(last, now)),
                json!(s(&obj["type"])),
                json!(s(&obj["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&io["kind"]).to_lowercase(),
                    s(&io["name"])
                )),
                json!(s(&obj["message"])),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_and_validation() {
        let mut p = json!({"metadata": {"name": "sk-a"}, "spec": {"containers": [{"name": "c", "image": "r/busybox"}]}});
        default(Strategy::Pod, &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert!(validate(Strategy::Pod, &p).is_empty());
        let bad = json!({"metadata": {"name": "sk-a"}, "spec": {"containers": []}});
        let errs = validate(Strategy::Pod, &bad);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].to_string(), "spec.containers: Required value");
        assert_eq!(
            image_pull_policy("127.0.0.1:5000/busybox:1.36"),
            "IfNotPresent"
        );
    }

    #[test]
    fn pod_status_column() {
        let p = json!({"metadata": {}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "c", "ready": false, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}});
        assert_eq!(pod_status_text(&p), "ImagePullBackOff");
    }
}
