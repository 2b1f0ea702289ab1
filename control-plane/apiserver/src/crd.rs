//! CustomResourceDefinitions: each served version of a CRD becomes a registry entry at once
//! (discovery, CRUD, watch, patch, Table, status and scale subresources), with a strategy
//! driven by the version's OpenAPI v3 schema: unknown fields pruned (unless
//! `x-kubernetes-preserve-unknown-fields`), `default`s applied, types, `required`, `enum`,
//! bounds and patterns validated with upstream's field paths. Versions share storage (`None`
//! conversion: only `apiVersion` changes).

use crate::handlers::{self, Ctx};
use crate::registry::{Resource, Subresource, Verbs};
use crate::status::FieldError;
use crate::strategy::{printers_cols, Column, Strategy};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::sync::Arc;

/// Strategy of one version of a custom resource.
pub struct Custom {
    pub(crate) schema: Value,
    pub(crate) columns: Vec<(String, String, String, u8)>,
    pub(crate) has_status: bool,
}

impl Strategy for Custom {
    fn set_defaults(&self, obj: &mut Value) {
        prune_and_default(obj, &self.schema, true);
    }
    fn prepare_create(&self, obj: &mut Value) {
        if self.has_status {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let mut body = obj.clone();
        if let Some(m) = body.as_object_mut() {
            m.remove("metadata");
            m.remove("apiVersion");
            m.remove("kind");
        }
        let mut schema = self.schema.clone();
        if let Some(p) = schema["properties"].as_object_mut() {
            p.remove("metadata");
            p.remove("apiVersion");
            p.remove("kind");
        }
        validate_value(&body, &schema, "", errs);
    }
    fn columns(&self) -> Vec<Column> {
        let mut out = printers_cols(&[]);
        for (name, ty, _, prio) in &self.columns {
            out.push(Column {
                name: Box::leak(name.clone().into_boxed_str()),
                kind: Box::leak(ty.clone().into_boxed_str()),
                format: "",
                priority: *prio,
                description: "",
            });
        }
        if self.columns.is_empty() {
            out.push(crate::strategy::printers_col("Age", "date", 0));
        }
        out
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let mut out = vec![json!(obj["metadata"]["name"])];
        for (_, ty, path, _) in &self.columns {
            let v = json_path(obj, path);
            out.push(match (ty.as_str(), v) {
                ("date", Some(Value::String(s))) => {
                    json!(crate::strategy::human_age(Some(&s), now))
                }
                (_, Some(v)) => v,
                (_, None) => Value::Null,
            });
        }
        if self.columns.is_empty() {
            out.push(json!(crate::strategy::human_age(
                obj["metadata"]["creationTimestamp"].as_str(),
                now
            )));
        }
        out
    }
}

/// `.a.b[0].c` style paths of additionalPrinterColumns.
fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        if seg.is_empty() {
            continue;
        }
        let (name, idx) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        cur = cur.get(name)?;
        if let Some(i) = idx {
            cur = cur.get(i)?;
        }
    }
    Some(cur.clone())
}

fn preserve(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == true
}

/// Drops fields the schema does not know and fills `default`s.
fn prune_and_default(v: &mut Value, schema: &Value, root: bool) {
    match v {
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            if let Some(props) = props {
                for (k, s) in props {
                    if !m.contains_key(k) {
                        if let Some(d) = s.get("default") {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                }
            }
            let addl = &schema["additionalProperties"];
            let keep_unknown = preserve(schema) || addl.is_object() || *addl == true;
            m.retain(|k, _| {
                (root && (k == "apiVersion" || k == "kind" || k == "metadata"))
                    || props.is_some_and(|p| p.contains_key(k))
                    || keep_unknown
            });
            for (k, x) in m.iter_mut() {
                if root && k == "metadata" {
                    continue;
                }
                let sub = props.and_then(|p| p.get(k)).or(if addl.is_object() {
                    Some(addl)
                } else {
                    None
                });
                if let Some(s) = sub {
                    if s["x-kubernetes-embedded-resource"] == true {
                        continue;
                    }
                    prune_and_default(x, s, false);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for i in items {
                prune_and_default(i, &schema["items"], false);
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_value(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let p = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if v.is_null() && schema["nullable"] == true {
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errs.push(FieldError::invalid(
                path,
                &v.to_string(),
                "must be an integer or a string",
            ));
        }
        return;
    }
    if let Some(want) = schema["type"].as_str() {
        let got = type_name(v);
        let ok = got == want || (want == "number" && got == "integer");
        if !ok {
            errs.push(FieldError {
                field: path.to_string(),
                reason: "FieldValueTypeInvalid",
                value: Some(v.to_string()),
                detail: format!("{path} in body must be of type {want}: \"{got}\""),
            });
            return;
        }
    }
    if let Some(en) = schema["enum"].as_array() {
        if !en.contains(v) {
            let list: Vec<&str> = en.iter().filter_map(Value::as_str).collect();
            errs.push(FieldError::not_supported(
                path,
                &v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
                &list,
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64() {
            if n < min {
                errs.push(FieldError::invalid(
                    path,
                    &v.to_string(),
                    format!("{path} in body should be greater than or equal to {min}"),
                ));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            if n > max {
                errs.push(FieldError::invalid(
                    path,
                    &v.to_string(),
                    format!("{path} in body should be less than or equal to {max}"),
                ));
            }
        }
    }
    if let Some(s) = v.as_str() {
        if let Some(max) = schema["maxLength"].as_u64() {
            if s.chars().count() as u64 > max {
                errs.push(FieldError::too_long(
                    path,
                    format!("may not be more than {max} bytes"),
                ));
            }
        }
        if let Some(min) = schema["minLength"].as_u64() {
            if (s.chars().count() as u64) < min {
                errs.push(FieldError::invalid(
                    path,
                    s,
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
        }
    }
    match v {
        Value::Object(m) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(k) = r.as_str() {
                    if !m.contains_key(k) {
                        errs.push(FieldError::required(p(k), ""));
                    }
                }
            }
            let props = schema["properties"].as_object();
            for (k, x) in m {
                let sub = props.and_then(|pp| pp.get(k)).or_else(|| {
                    let a = &schema["additionalProperties"];
                    a.is_object().then_some(a)
                });
                if let Some(s) = sub {
                    if s["x-kubernetes-embedded-resource"] != true {
                        validate_value(x, s, &p(k), errs);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64() {
                if items.len() as u64 > max {
                    errs.push(FieldError::too_long(
                        path,
                        format!("must have at most {max} items"),
                    ));
                }
            }
            if schema["items"].is_object() {
                for (i, x) in items.iter().enumerate() {
                    validate_value(x, &schema["items"], &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

/// Orders versions as upstream does: GA > beta > alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, i64, i64) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major: i64 = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (kind, n) = if let Some(b) = tail.strip_prefix("beta") {
        (2, b)
    } else if let Some(a) = tail.strip_prefix("alpha") {
        (1, a)
    } else {
        return (0, 0, 0);
    };
    (kind, major, n.parse().unwrap_or(0))
}

/// Registry entries of one CRD (its served versions).
pub fn entries(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut versions: Vec<&Value> = spec["versions"]
        .as_array()
        .map(|a| a.iter().filter(|v| v["served"] != false).collect())
        .unwrap_or_default();
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v["name"].as_str().unwrap_or(""))));
    versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let version = v["name"].as_str().unwrap_or_default().to_string();
            let has_status = v["subresources"]["status"].is_object();
            let mut subresources = vec![];
            if has_status {
                subresources.push(Subresource {
                    name: "status".into(),
                    group: group.clone(),
                    version: version.clone(),
                    kind: kind.clone(),
                    verbs: &["get", "patch", "update"],
                });
            }
            if v["subresources"]["scale"].is_object() {
                subresources.push(Subresource {
                    name: "scale".into(),
                    group: "autoscaling".into(),
                    version: "v1".into(),
                    kind: "Scale".into(),
                    verbs: &["get", "patch", "update"],
                });
            }
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            (
                                c["name"].as_str().unwrap_or_default().to_string(),
                                c["type"].as_str().unwrap_or("string").to_string(),
                                c["jsonPath"].as_str().unwrap_or_default().to_string(),
                                c["priority"].as_u64().unwrap_or(0) as u8,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Resource {
                group: group.clone(),
                version,
                kind: kind.clone(),
                plural: plural.clone(),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_lowercase()),
                namespaced: spec["scope"] == "Namespaced",
                short_names: strs(&names["shortNames"]),
                categories: strs(&names["categories"]),
                verbs: Verbs::All,
                subresources,
                has_status,
                storage_group: group.clone(),
                storage_plural: plural.clone(),
                preferred: i == 0,
                builtin: false,
                strategy: Arc::new(Custom {
                    schema: v["schema"]["openAPIV3Schema"].clone(),
                    columns,
                    has_status,
                }),
            }
        })
        .collect()
}

/// Serves a CRD's versions now and marks it Established, as upstream's controllers do.
pub async fn established(ctx: &Ctx, crd: &Value) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if crd["metadata"]["deletionTimestamp"].is_null() {
        ctx.registry
            .replace_group_resource(group, plural, entries(crd));
    }
    let Some(res) = ctx
        .registry
        .by_kind("apiextensions.k8s.io", "CustomResourceDefinition")
    else {
        return;
    };
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let key = res.key(None, name);
    let Ok(Some(kv)) = ctx.store.get(&key).await else {
        return;
    };
    let Ok(mut cur) = handlers::decode_as(&res, &kv) else {
        return;
    };
    let now = handlers::now_rfc3339();
    let storage: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    let mut stored = cur["status"]["storedVersions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let status = json!({
        "acceptedNames": cur["spec"]["names"],
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
        ]
    });
    if cur["status"]["acceptedNames"] != status["acceptedNames"]
        || cur["status"]["storedVersions"] != status["storedVersions"]
    {
        cur["status"] = status;
        let _ = ctx
            .store
            .update(
                &key,
                handlers::encode_for(&res, &cur),
                Some(kv.mod_revision),
            )
            .await;
    }
}

/// A CRD is gone: its resources stop being served and their objects are removed.
pub async fn removed(ctx: &Ctx, crd: &Value) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    ctx.registry.replace_group_resource(group, plural, vec![]);
    skiff_openapi::unregister_crd(crd["metadata"]["name"].as_str().unwrap_or_default());
    let prefix = format!("/registry/{group}/{plural}/");
    if let Ok((kvs, _)) = ctx.store.list(&prefix).await {
        for kv in kvs {
            let _ = ctx.store.delete(&kv.key, None).await;
        }
    }
}

/// At start: every stored CRD is served.
pub async fn load_all(ctx: &Ctx) {
    let Some(res) = ctx
        .registry
        .by_kind("apiextensions.k8s.io", "CustomResourceDefinition")
    else {
        return;
    };
    if let Ok((kvs, _)) = ctx.store.list(&res.prefix()).await {
        for kv in kvs {
            if let Ok(crd) = handlers::decode_as(&res, &kv) {
                if crd["metadata"]["deletionTimestamp"].is_null() {
                    established(ctx, &crd).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_prunes_defaults_and_validates() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"size": 0, "junk": 1, "free": {"any": 1}}, "other": 2});
        prune_and_default(&mut o, &schema, true);
        assert!(o.get("other").is_none());
        assert!(o["spec"].get("junk").is_none());
        assert_eq!(o["spec"]["mode"], "a");
        assert_eq!(o["spec"]["free"]["any"], 1);
        let mut errs = vec![];
        validate_value(&o["spec"], &schema["properties"]["spec"], "spec", &mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.size");
        assert!(version_priority("v1") > version_priority("v2beta1"));
        assert!(version_priority("v1beta2") > version_priority("v1alpha1"));
    }
}
