//! Selector and toleration matching, as the API defines them: label selectors, node selector
//! terms (the scheduler's NodeAffinity filter and the kubelet's admission) and tolerations.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// A metav1 LabelSelector; `None` selects nothing, an empty selector everything.
pub fn selector_matches(sel: Option<&LabelSelector>, labels: &Labels) -> bool {
    let Some(sel) = sel else {
        return false;
    };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let got = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => got.is_some_and(|g| values.contains(g)),
            "NotIn" => got.is_none_or(|g| !values.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// One node selector requirement against a label (or field) value, `None` when absent.
pub fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// One node selector term: every expression and field requirement holds. An empty term
/// matches nothing (as upstream).
pub fn term_matches(t: &NodeSelectorTerm, node_name: &str, labels: &Labels) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key)))
        && fields.iter().all(|r| {
            let name = node_name.to_string();
            r.key == "metadata.name" && requirement_matches(r, Some(&name))
        })
}

/// Whether a toleration tolerates a taint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            t.key.as_deref() == Some(taint.key.as_str())
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

pub fn tolerated(tols: &[Toleration], taint: &Taint) -> bool {
    tols.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "a"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        assert!(selector_matches(Some(&sel), &labels(&[("app", "a")])));
        assert!(!selector_matches(
            Some(&sel),
            &labels(&[("app", "a"), ("tier", "db")])
        ));
        assert!(selector_matches(
            Some(&LabelSelector::default()),
            &labels(&[])
        ));
        assert!(!selector_matches(None, &labels(&[])));
    }

    #[test]
    fn node_terms_and_tolerations() {
        let t: NodeSelectorTerm = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]
        }))
        .unwrap();
        assert!(term_matches(&t, "n1", &labels(&[("cores", "8")])));
        assert!(!term_matches(&t, "n2", &labels(&[("cores", "8")])));
        assert!(!term_matches(&t, "n1", &labels(&[("cores", "2")])));
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tol = |j| serde_json::from_value::<Toleration>(j).unwrap();
        assert!(tolerates(
            &tol(serde_json::json!({"operator": "Exists"})),
            &taint
        ));
        assert!(tolerates(
            &tol(serde_json::json!({"key": "k", "value": "v"})),
            &taint
        ));
        assert!(!tolerates(
            &tol(serde_json::json!({"key": "k", "value": "w"})),
            &taint
        ));
        assert!(!tolerates(
            &tol(serde_json::json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
    }
}
