//! Table columns and the text helpers `kubectl get` output is made of.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A column of a Table response.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub format: &'static str,
    pub priority: u8,
    pub description: &'static str,
}

pub const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        format: "",
        priority,
        description: "",
    }
}

pub const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};

/// `Name` followed by string columns of the given names (priority 1 after `|`).
pub fn cols(spec: &[&'static str]) -> Vec<Column> {
    let mut out = vec![NAME];
    let mut prio = 0;
    for c in spec {
        if *c == "|" {
            prio = 1;
            continue;
        }
        let kind = match *c {
            "Age" => "date",
            _ => "string",
        };
        out.push(col(c, kind, prio));
    }
    out
}

/// Short human duration, as `kubectl get` prints ages.
pub fn human_age(since: Option<&str>, now: DateTime<Utc>) -> String {
    let Some(t) = since.and_then(|s| DateTime::parse_from_rfc3339(s).ok()) else {
        return "<unknown>".into();
    };
    human_duration((now - t.with_timezone(&Utc)).num_seconds().max(0))
}

pub fn human_duration(secs: i64) -> String {
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
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

pub fn num(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// `k=v,k2=v2` of a label map, sorted.
pub fn label_text(m: &Value) -> String {
    let mut parts: Vec<String> = m
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    parts.sort();
    parts.join(",")
}

/// The selector text of a LabelSelector (`matchLabels` then expressions), as kubectl prints it.
pub fn selector_text(sel: &Value) -> String {
    let mut parts = vec![];
    let ml = label_text(&sel["matchLabels"]);
    if !ml.is_empty() {
        parts.push(ml);
    }
    if let Some(ex) = sel["matchExpressions"].as_array() {
        for e in ex {
            let vals: Vec<String> = e["values"]
                .as_array()
                .map(|v| v.iter().map(s).collect())
                .unwrap_or_default();
            let k = s(&e["key"]);
            parts.push(match s(&e["operator"]).as_str() {
                "In" => format!("{k} in ({})", vals.join(",")),
                "NotIn" => format!("{k} notin ({})", vals.join(",")),
                "Exists" => k,
                "DoesNotExist" => format!("!{k}"),
                o => format!("{k} {o}"),
            });
        }
    }
    parts.join(",")
}

/// Container names and images of a pod template spec, comma-joined.
pub fn containers_images(spec: &Value) -> (String, String) {
    let cs = spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = cs.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

/// The STATUS column of `kubectl get pods` (the printer's rules: container reasons win over the
/// phase; deleting pods show Terminating).
pub fn pod_status_text(pod: &Value) -> String {
    let st = &pod["status"];
    let mut reason = s(&st["phase"]);
    if let Some(r) = st["reason"].as_str() {
        reason = r.to_string();
    }
    let mut init_failed = false;
    if let Some(ics) = st["initContainerStatuses"].as_array() {
        let total = ics.len();
        for (i, c) in ics.iter().enumerate() {
            let state = &c["state"];
            if state["terminated"].is_object() && num(&state["terminated"]["exitCode"]) == 0 {
                continue;
            }
            init_failed = true;
            reason = if let Some(r) = state["terminated"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty())
            {
                format!("Init:{r}")
            } else if state["terminated"].is_object() {
                format!("Init:ExitCode:{}", num(&state["terminated"]["exitCode"]))
            } else if let Some(r) = state["waiting"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty() && *r != "PodInitializing")
            {
                format!("Init:{r}")
            } else {
                format!("Init:{i}/{total}")
            };
            break;
        }
    }
    let mut has_running = false;
    if !init_failed {
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
                        _ => format!("ExitCode:{}", num(&t["exitCode"])),
                    };
                } else if state["running"].is_object() && c["ready"].as_bool() == Some(true) {
                    has_running = true;
                }
            }
            if reason == "Completed" && has_running {
                reason = "Running".into();
            }
        }
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        reason = if st["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}
