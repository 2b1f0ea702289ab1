//! managedFields and server-side apply. A field set is the set of leaf paths an object sets
//! (`FieldsV1`: `f:<field>` for map keys, `k:{...}` for list items identified by their merge
//! key, `v:<value>` for set members). Every write records its manager's fields; an apply merges
//! the applied configuration, drops what the same manager applied before and no longer does,
//! and answers 409 Conflict when a field another manager owns would change, unless `force`.

use crate::handlers::{self, Ctx, Target};
use crate::registry::Resource;
use crate::server::Body;
use crate::status::StatusError;
use hyper::Response;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(String),
    Key(String),
    Val(String),
}

type Path = Vec<Step>;

/// Keys that identify list items (upstream's list-map keys of the built-in types).
const MERGE_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "mountPath",
    "devicePath",
    "type",
    "ip",
    "port",
    "key",
    "uid",
    "topologyKey",
];

fn item_key(item: &Value) -> Option<String> {
    let o = item.as_object()?;
    let mut m = Map::new();
    for k in MERGE_KEYS {
        if let Some(v) = o.get(*k).filter(|v| !v.is_null()) {
            m.insert((*k).to_string(), v.clone());
            // containerPort + protocol identify ports; a name alone identifies most lists.
            if *k == "containerPort" || *k == "port" {
                if let Some(p) = o.get("protocol") {
                    m.insert("protocol".into(), p.clone());
                }
            }
            break;
        }
    }
    if m.is_empty() {
        None
    } else {
        Some(Value::Object(m).to_string())
    }
}

fn collect(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                prefix.push(Step::Field(k.clone()));
                collect(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| item_key(i).is_some()) => {
            for i in items {
                prefix.push(Step::Key(item_key(i).expect("checked")));
                out.insert(prefix.clone());
                collect(i, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|i| i.is_string() || i.is_number()) =>
        {
            // Sets of scalars (finalizers, ...): one path per member.
            for i in items {
                prefix.push(Step::Val(i.to_string()));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// Metadata fields no manager owns.
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The field paths of `obj` a manager can own: all but `status`, `apiVersion`, `kind` and the
/// server's metadata. Walks `obj` in place (no copy of the object).
fn paths_of(obj: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    let Some(m) = obj.as_object() else {
        collect(obj, &mut vec![], &mut out);
        out.retain(|p| !p.is_empty());
        return out;
    };
    let mut prefix = Vec::new();
    for (k, x) in m {
        if matches!(k.as_str(), "status" | "apiVersion" | "kind") {
            continue;
        }
        prefix.push(Step::Field(k.clone()));
        match x.as_object().filter(|_| k == "metadata") {
            Some(md) => {
                let mut owned = false;
                for (mk, mx) in md {
                    if SERVER_META.contains(&mk.as_str()) {
                        continue;
                    }
                    owned = true;
                    prefix.push(Step::Field(mk.clone()));
                    collect(mx, &mut prefix, &mut out);
                    prefix.pop();
                }
                if !owned {
                    // Nothing left of it: the (empty) metadata itself, as `collect` reports
                    // an empty object.
                    out.insert(prefix.clone());
                }
            }
            None => collect(x, &mut prefix, &mut out),
        }
        prefix.pop();
    }
    if !m.contains_key("metadata") {
        out.insert(vec![Step::Field("metadata".into())]);
    }
    out
}

fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = json!({});
    for p in paths {
        let mut cur = &mut root;
        for s in p {
            let k = match s {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Val(v) => format!("v:{v}"),
            };
            if cur.get(&k).is_none() {
                cur[&k] = json!({});
            }
            cur = &mut cur[&k];
        }
        if matches!(p.last(), Some(Step::Key(_))) {
            cur["."] = json!({});
        }
    }
    root
}

fn from_fields_v1(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(m) = v.as_object() else { return };
    let mut leaf = true;
    for (k, x) in m {
        let step = if let Some(f) = k.strip_prefix("f:") {
            Step::Field(f.to_string())
        } else if let Some(f) = k.strip_prefix("k:") {
            Step::Key(f.to_string())
        } else if let Some(f) = k.strip_prefix("v:") {
            Step::Val(f.to_string())
        } else {
            continue;
        };
        leaf = false;
        prefix.push(step);
        if matches!(prefix.last(), Some(Step::Key(_))) {
            out.insert(prefix.clone());
        }
        from_fields_v1(x, prefix, out);
        prefix.pop();
    }
    if leaf && !prefix.is_empty() {
        out.insert(prefix.clone());
    }
}

fn entry_paths(entry: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    from_fields_v1(&entry["fieldsV1"], &mut vec![], &mut out);
    out
}

fn now() -> String {
    handlers::now_rfc3339()
}

fn entries(obj: &Value) -> Vec<Value> {
    obj["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn set_entries(obj: &mut Value, list: Vec<Value>) {
    let list: Vec<Value> = list
        .into_iter()
        .filter(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()))
        .collect();
    if list.is_empty() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(list);
    }
}

/// Records a non-apply write: the manager takes the fields it changed or added.
pub fn record(obj: &mut Value, old: Option<&Value>, manager: &str, op: &str, api_version: &str) {
    if old.is_none() && obj["metadata"]["managedFields"].is_array() {
        // Set by the server (apply-create) or by a client managing them itself.
        return;
    }
    let new_paths = paths_of(obj);
    // On create every field is new: `changed` is `new_paths` itself.
    let changed_on_update: Option<BTreeSet<Path>> = old.map(|o| {
        let old_paths = paths_of(o);
        new_paths
            .iter()
            .filter(|p| !old_paths.contains(*p) || value_at(obj, p) != value_at(o, p))
            .cloned()
            .collect()
    });
    let changed = changed_on_update.as_ref().unwrap_or(&new_paths);
    let mut list = old.map(entries).unwrap_or_default();
    // Fields gone from the object leave every set; changed fields move to this manager.
    for e in list.iter_mut() {
        let mut ps = entry_paths(e);
        ps.retain(|p| new_paths.contains(p) && !changed.contains(p));
        e["fieldsV1"] = to_fields_v1(&ps);
    }
    if !changed.is_empty() {
        match list
            .iter_mut()
            .find(|e| e["manager"] == manager && e["operation"] == op)
        {
            Some(e) => {
                let mut ps = entry_paths(e);
                ps.extend(changed.iter().cloned());
                e["fieldsV1"] = to_fields_v1(&ps);
                e["time"] = json!(now());
            }
            None => list.push(
                json!({"manager": manager, "operation": op, "apiVersion": api_version,
                "time": now(), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(changed)}),
            ),
        }
    }
    set_entries(obj, list);
}

fn value_at<'a>(obj: &'a Value, p: &Path) -> Option<&'a Value> {
    let mut cur = obj;
    for s in p {
        cur = match s {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k) => cur
                .as_array()?
                .iter()
                .find(|i| item_key(i).as_deref() == Some(k.as_str()))?,
            Step::Val(v) => cur.as_array()?.iter().find(|i| i.to_string() == *v)?,
        };
    }
    Some(cur)
}

fn remove_at(obj: &mut Value, p: &Path) {
    let Some((last, parent)) = p.split_last() else {
        return;
    };
    let mut cur = obj;
    for s in parent {
        let next = match s {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k) => cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| item_key(i).as_deref() == Some(k.as_str()))
            }),
            Step::Val(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| item_key(i).as_deref() != Some(k.as_str()));
            }
        }
        Step::Val(v) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !step_is(i, v));
            }
        }
    }
}

/// Whether a set member is the one a `v:` step names.
fn step_is(item: &Value, v: &str) -> bool {
    let s = item.to_string();
    s == v
}

fn path_text(p: &Path) -> String {
    let mut s = String::new();
    for st in p {
        match st {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => s.push_str(&format!("[{k}]")),
            Step::Val(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

fn parse_config(body: &[u8]) -> Result<Value, StatusError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| StatusError::bad_request(format!("the apply body is not UTF-8: {e}")))?;
    let v: Value = serde_yaml::from_str(text)
        .map_err(|e| StatusError::bad_request(format!("error decoding YAML: {e}")))?;
    if !v.is_object() {
        return Err(StatusError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    Ok(v)
}

/// Server-side apply of `body` (YAML or JSON) onto `obj` by `manager`.
pub fn apply(
    obj: &mut Value,
    body: &[u8],
    manager: &str,
    force: bool,
    res: &Resource,
) -> Result<(), StatusError> {
    let config = parse_config(body)?;
    if let Some(k) = config["kind"].as_str() {
        if k != res.kind {
            return Err(StatusError::bad_request(format!(
                "the kind in the apply configuration ({k}) does not match the resource ({})",
                res.kind
            )));
        }
    }
    let applied = paths_of(&config);
    let mut list = entries(obj);
    // Conflicts: fields another manager owns whose value the configuration changes.
    let mut conflicts: Vec<(String, String)> = vec![];
    for e in &list {
        if e["manager"] == manager && e["operation"] == "Apply" {
            continue;
        }
        for p in entry_paths(e).intersection(&applied) {
            if matches!(p.last(), Some(Step::Key(_))) {
                continue;
            }
            if value_at(&config, p) != value_at(obj, p) {
                conflicts.push((
                    e["manager"].as_str().unwrap_or("").to_string(),
                    path_text(p),
                ));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f}))
            .collect();
        let msg = if conflicts.len() == 1 {
            format!(
                "Apply failed with 1 conflict: conflict with \"{}\": {}",
                conflicts[0].0, conflicts[0].1
            )
        } else {
            let lines: Vec<String> = conflicts
                .iter()
                .map(|(m, f)| format!("conflict with \"{m}\": {f}"))
                .collect();
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        };
        let mut e = StatusError::new(409, "Conflict", msg);
        e.details = Some(json!({"causes": causes}));
        return Err(e);
    }
    // Fields this manager applied before and no longer does are removed, unless another
    // manager also owns them.
    let previous: BTreeSet<Path> = list
        .iter()
        .filter(|e| e["manager"] == manager && e["operation"] == "Apply")
        .flat_map(entry_paths)
        .collect();
    let others: BTreeSet<Path> = list
        .iter()
        .filter(|e| !(e["manager"] == manager && e["operation"] == "Apply"))
        .flat_map(entry_paths)
        .collect();
    for p in previous.difference(&applied) {
        if !others.contains(p) {
            remove_at(obj, p);
        }
    }
    let mut c = config.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("status");
    }
    if let Some(md) = c["metadata"].as_object_mut() {
        md.remove("managedFields");
        md.remove("resourceVersion");
    }
    crate::patch::strategic_merge(obj, &c);
    // Ownership: this manager owns what it applied; forced fields leave the others.
    for e in list.iter_mut() {
        if e["manager"] == manager && e["operation"] == "Apply" {
            continue;
        }
        let mut ps = entry_paths(e);
        ps.retain(|p| !applied.contains(p) || matches!(p.last(), Some(Step::Key(_))));
        let present = paths_of(obj);
        ps.retain(|p| present.contains(p));
        e["fieldsV1"] = to_fields_v1(&ps);
    }
    list.retain(|e| !(e["manager"] == manager && e["operation"] == "Apply"));
    list.push(
        json!({"manager": manager, "operation": "Apply", "apiVersion": res.api_version(),
        "time": now(), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&applied)}),
    );
    set_entries(obj, list);
    Ok(())
}

/// Apply to an object that does not exist yet: a create owned by the applier.
pub async fn apply_create(
    ctx: &Ctx,
    t: &Target,
    body: &[u8],
) -> Result<Response<Body>, StatusError> {
    let manager = t.param("fieldManager").unwrap_or("").to_string();
    if manager.is_empty() {
        return Err(StatusError::bad_request(
            "PATCH, application/apply-patch+yaml requests require fieldManager to be set",
        ));
    }
    let mut config = parse_config(body)?;
    if config["metadata"]["name"].is_null() {
        config["metadata"]["name"] = json!(t.name());
    }
    let applied = paths_of(&config);
    let entry = json!([{"manager": manager, "operation": "Apply", "apiVersion": t.res.api_version(),
        "time": now(), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&applied)}]);
    config["metadata"]["managedFields"] = entry;
    let body = serde_json::to_vec(&config).expect("json");
    let t2 = Target {
        res: t.res.clone(),
        namespace: t.namespace.clone(),
        name: None,
        sub: None,
        query: t.query.clone(),
        accept: t.accept.clone(),
        content_type: "application/json".into(),
        format: t.format,
        gzip: t.gzip,
        user: t.user.clone(),
    };
    handlers::create(ctx, &t2, &body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_paths_leave_out_status_and_server_metadata() {
        let show = |o: Value| -> Vec<String> {
            let mut v: Vec<String> = paths_of(&o)
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|s| match s {
                            Step::Field(f) => format!("f:{f}"),
                            Step::Key(k) => format!("k:{k}"),
                            Step::Val(v) => format!("v:{v}"),
                        })
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            v.sort();
            v
        };
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "d", "uid": "u", "labels": {"x": "1"},
                "finalizers": ["f1", "f2"], "managedFields": [{"manager": "m"}]},
            "data": {"k": "v"}, "status": {"s": 1}});
        assert_eq!(
            show(cm),
            [
                "f:data/f:k",
                "f:metadata/f:finalizers/v:\"f1\"",
                "f:metadata/f:finalizers/v:\"f2\"",
                "f:metadata/f:labels/f:x",
            ]
        );
        // Only server-owned metadata left, or none at all: the metadata itself.
        let bare = json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}});
        assert_eq!(show(bare), ["f:data/f:k", "f:metadata"]);
        let none = json!({"kind": "ConfigMap", "data": {"k": "v"}});
        assert_eq!(show(none), ["f:data/f:k", "f:metadata"]);
        let pod = json!({"metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        assert_eq!(
            show(pod),
            [
                "f:metadata",
                "f:spec/f:containers/k:{\"name\":\"c\"}",
                "f:spec/f:containers/k:{\"name\":\"c\"}/f:image",
                "f:spec/f:containers/k:{\"name\":\"c\"}/f:name",
            ]
        );
    }

    #[test]
    fn fields_v1_round_trip() {
        let obj = json!({"metadata": {"labels": {"a": "b"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}});
        let ps = paths_of(&obj);
        let f = to_fields_v1(&ps);
        assert!(f["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object());
        let mut back = BTreeSet::new();
        from_fields_v1(&f, &mut vec![], &mut back);
        assert_eq!(back, ps);
    }
}
