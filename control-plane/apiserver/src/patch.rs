//! The patch types of PATCH requests: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and
//! strategic merge patch (merge patch plus lists merged by their merge key).

use crate::status::StatusError;
use serde_json::Value;

/// Keys that identify list elements for strategic merge, as upstream's patchMergeKey tags do for
/// the lists Skiff serves (containers, env, volumes by name; conditions, addresses by type; ports
/// by containerPort).
const MERGE_KEYS: &[&str] = &["name", "type", "containerPort", "uid", "mountPath", "ip"];

pub fn apply(content_type: &str, target: &mut Value, body: &[u8]) -> Result<(), StatusError> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(target, &p).map_err(|e| {
                StatusError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}"))
            })
        }
        "application/merge-patch+json" => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| StatusError::bad_request(format!("invalid merge patch: {e}")))?;
            json_patch::merge(target, &p);
            Ok(())
        }
        "application/strategic-merge-patch+json" => {
            let p: Value = serde_json::from_slice(body).map_err(|e| {
                StatusError::bad_request(format!("invalid strategic merge patch: {e}"))
            })?;
            strategic_merge(target, &p);
            Ok(())
        }
        "application/apply-patch+yaml" => Err(StatusError::new(
            415,
            "UnsupportedMediaType",
            "server-side apply is not supported yet by this server; use client-side `kubectl apply`",
        )),
        other => Err(StatusError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"),
        )),
    }
}

fn merge_key(items: &[Value]) -> Option<&'static str> {
    MERGE_KEYS
        .iter()
        .copied()
        .find(|k| !items.is_empty() && items.iter().all(|i| i.get(k).is_some_and(|v| !v.is_null())))
}

/// Strategic merge: maps merge recursively, `null` deletes, lists of objects with a merge key are
/// merged element by element (`$patch: delete` removes one), other lists are replaced.
/// Directive keys (`$setElementOrder/...`, `$retainKeys`) are accepted and ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        if let Some(o) = p.as_object_mut() {
            o.remove("$patch");
        }
        *target = p;
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let tm = target.as_object_mut().expect("object");
    for (k, v) in pm {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                tm.remove(k);
            }
            Value::Array(pitems) => {
                let existing = tm.get_mut(k).and_then(Value::as_array_mut);
                match (existing, merge_key(pitems)) {
                    (Some(titems), Some(key)) => {
                        for pi in pitems {
                            let id = &pi[key];
                            let pos = titems.iter().position(|t| &t[key] == id);
                            let delete = pi.get("$patch").and_then(Value::as_str) == Some("delete");
                            match (pos, delete) {
                                (Some(i), true) => {
                                    titems.remove(i);
                                }
                                (Some(i), false) => strategic_merge(&mut titems[i], pi),
                                (None, true) => {}
                                (None, false) => {
                                    let mut n = Value::Null;
                                    strategic_merge(&mut n, pi);
                                    titems.push(n);
                                }
                            }
                        }
                    }
                    _ => {
                        tm.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(_) => {
                let t = tm.entry(k.clone()).or_insert(Value::Null);
                strategic_merge(t, v);
            }
            _ => {
                tm.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_lists_by_key() {
        let mut t = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]}, "a": 1});
        let p = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "a": null});
        strategic_merge(&mut t, &p);
        assert_eq!(t["status"]["conditions"][0]["status"], "True");
        assert_eq!(t["status"]["conditions"][1]["type"], "X");
        assert!(t.get("a").is_none());
    }
}
