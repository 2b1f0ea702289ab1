//! Label and field selectors, evaluated on JSON objects.

use crate::status::StatusError;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
#[derive(Debug, Clone, Default)]
pub struct LabelSelector(Vec<Req>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

fn set_values(s: &str) -> Result<Vec<String>, StatusError> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| StatusError::bad_request(format!("invalid selector set {s:?}")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, StatusError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            if let Some((k, v)) = p.split_once(" notin ") {
                reqs.push(Req::NotIn(k.trim().into(), set_values(v)?));
            } else if let Some((k, v)) = p.split_once(" in ") {
                reqs.push(Req::In(k.trim().into(), set_values(v)?));
            } else if let Some((k, v)) = p.split_once("!=") {
                reqs.push(Req::NotEq(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = p.split_once("==") {
                reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
            } else if let Some((k, v)) = p.split_once('=') {
                reqs.push(Req::Eq(k.trim().into(), v.trim().into()));
            } else if let Some(k) = p.strip_prefix('!') {
                reqs.push(Req::NotExists(k.trim().into()));
            } else {
                reqs.push(Req::Exists(p.into()));
            }
        }
        Ok(Self(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|r| {
            let get = |k: &str| labels.get(k).and_then(Value::as_str);
            match r {
                Req::Eq(k, v) => get(k) == Some(v.as_str()),
                Req::NotEq(k, v) => get(k) != Some(v.as_str()),
                Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
                Req::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
                Req::Exists(k) => get(k).is_some(),
                Req::NotExists(k) => get(k).is_none(),
            }
        })
    }
}

/// A parsed field selector (`spec.nodeName=n,metadata.name!=x`), evaluated on dotted JSON paths.
/// A missing field compares as the empty string, as upstream does for `spec.nodeName=`.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Field labels a kind can be selected by, beyond `metadata.name` and `metadata.namespace`
/// (upstream's per-kind field label conversions).
pub fn field_labels(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("", "Secret") => &["type"],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        ("certificates.k8s.io", "CertificateSigningRequest") => &["spec.signerName"],
        ("", "Event") | ("events.k8s.io", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        _ => &[],
    }
}

impl FieldSelector {
    /// Rejects fields the kind cannot be selected by, as upstream does (400).
    pub fn check(&self, group: &str, kind: &str) -> Result<(), StatusError> {
        let extra = field_labels(group, kind);
        for (k, _, _) in &self.0 {
            if k != "metadata.name" && k != "metadata.namespace" && !extra.contains(&k.as_str()) {
                return Err(StatusError::bad_request(format!(
                    "field label not supported: {k}"
                )));
            }
        }
        Ok(())
    }

    pub fn parse(s: &str) -> Result<Self, StatusError> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = p.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, true, v)
            } else {
                return Err(StatusError::bad_request(format!(
                    "invalid field selector {p:?}: expected key=value or key!=value"
                )));
            };
            out.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(Self(out))
    }

    /// The value `field` must equal, when the selector requires an exact match on it
    /// (upstream's `RequiresExactMatch`): the first term on `field` decides.
    pub fn requires_exact(&self, field: &str) -> Option<&str> {
        let (_, eq, v) = self.0.iter().find(|(k, _, _)| k == field)?;
        eq.then_some(v.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let mut cur = obj;
            for seg in k.split('.') {
                cur = &cur[seg];
            }
            let actual = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors() {
        let o =
            json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "fe"}}, "spec": {}});
        assert!(LabelSelector::parse("app=web,tier in (fe, be)")
            .unwrap()
            .matches(&o));
        assert!(!LabelSelector::parse("app!=web").unwrap().matches(&o));
        assert!(LabelSelector::parse("!missing,app").unwrap().matches(&o));
        assert!(!LabelSelector::parse("tier notin (fe)").unwrap().matches(&o));
        assert!(FieldSelector::parse("metadata.name=a,spec.nodeName=")
            .unwrap()
            .matches(&o));
        assert!(!FieldSelector::parse("spec.nodeName!=").unwrap().matches(&o));
        assert!(FieldSelector::parse("bogus").is_err());
        // The name a list or watch selects (upstream's RequiresExactMatch).
        let f = |s| FieldSelector::parse(s).unwrap();
        assert_eq!(
            f("metadata.name=a").requires_exact("metadata.name"),
            Some("a")
        );
        assert_eq!(
            f("type=x,metadata.name==b").requires_exact("metadata.name"),
            Some("b")
        );
        assert_eq!(f("metadata.name!=a").requires_exact("metadata.name"), None);
        assert_eq!(f("type=x").requires_exact("metadata.name"), None);
    }
}
