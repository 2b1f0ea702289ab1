//! The OpenAPI v3 (per group-version) and swagger 2.0 documents, paths included.

use crate::model::{self, META, V2_REF};
use crate::Resource;
use serde_json::{json, Map, Value};

/// `api/v1` or `apis/<group>/<version>`.
pub(crate) fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn pascal(s: &str) -> String {
    let mut out = String::new();
    for part in s.split(['.', '-']) {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.extend(f.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    out
}

/// The `CoreV1` / `AppsV1` / `RbacAuthorizationV1` of upstream's operation ids.
fn op_prefix(group: &str, version: &str) -> String {
    let g = if group.is_empty() {
        "core"
    } else {
        group.strip_suffix(".k8s.io").unwrap_or(group)
    };
    format!("{}{}", pascal(g), pascal(version))
}

fn query(name: &str, ty: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "type": ty, "uniqueItems": true})
}

fn p_dry_run() -> Value {
    query(
        "dryRun",
        "string",
        "When present, modifications are not persisted (All: all dry run stages).",
    )
}
fn p_field_manager() -> Value {
    query(
        "fieldManager",
        "string",
        "Name of the actor or entity making these changes.",
    )
}
fn p_field_validation() -> Value {
    query(
        "fieldValidation",
        "string",
        "How to handle unknown or duplicate fields in the object: Ignore, Warn or Strict.",
    )
}
fn p_force() -> Value {
    query(
        "force",
        "boolean",
        "Re-acquire fields owned by other managers (apply requests only).",
    )
}
fn p_pretty() -> Value {
    query(
        "pretty",
        "string",
        "If 'true', then the output is pretty printed.",
    )
}
fn list_params() -> Vec<Value> {
    vec![
        query(
            "allowWatchBookmarks",
            "boolean",
            "Request BOOKMARK watch events.",
        ),
        query("continue", "string", "Token to retrieve the next page."),
        query("fieldSelector", "string", "Restricts the list by fields."),
        query("labelSelector", "string", "Restricts the list by labels."),
        query("limit", "integer", "Maximum number of objects to return."),
        query(
            "resourceVersion",
            "string",
            "Resource version to serve the request from.",
        ),
        query(
            "resourceVersionMatch",
            "string",
            "How resourceVersion applies to list calls.",
        ),
        query(
            "sendInitialEvents",
            "boolean",
            "With watch, begin with synthetic ADDED events.",
        ),
        query(
            "timeoutSeconds",
            "integer",
            "Timeout for the list/watch call.",
        ),
        query("watch", "boolean", "Watch for changes instead of listing."),
    ]
}
fn delete_params() -> Vec<Value> {
    vec![
        p_dry_run(),
        query(
            "gracePeriodSeconds",
            "integer",
            "The duration in seconds before the object should be deleted.",
        ),
        query(
            "ignoreStoreReadErrorWithClusterBreakingPotential",
            "boolean",
            "Unsafe deletion of an object that cannot be decoded.",
        ),
        query(
            "propagationPolicy",
            "string",
            "Orphan, Background or Foreground garbage collection.",
        ),
    ]
}
fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "type": "string", "uniqueItems": true})
}

/// One operation in swagger 2.0 form (converted for v3 by [`op_to_v3`]).
struct Op<'a> {
    verb: &'static str,
    id: String,
    action: &'static str,
    gvk: Value,
    params: Vec<Value>,
    body: Option<&'a str>,
    response: Option<&'a str>,
    patch: bool,
}

impl Op<'_> {
    fn value(self) -> Value {
        let mut params = self.params;
        if let Some(b) = self.body {
            params.insert(
                0,
                json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": format!("{V2_REF}{b}")}}),
            );
        }
        let ok = match self.response {
            Some(r) => json!({"description": "OK", "schema": {"$ref": format!("{V2_REF}{r}")}}),
            None => json!({"description": "OK"}),
        };
        let mut responses = json!({"200": ok, "401": {"description": "Unauthorized"}});
        if self.verb == "post" || self.verb == "put" {
            responses["201"] = responses["200"].clone();
            responses["201"]["description"] = "Created".into();
        }
        let consumes = if self.patch {
            json!([
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml"
            ])
        } else {
            json!(["*/*"])
        };
        json!({
            "operationId": self.id,
            "description": format!("{} the specified resource", self.action),
            "consumes": consumes,
            "produces": ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"],
            "schemes": ["https"],
            "parameters": params,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk,
        })
    }
}

/// Definition name of `(group, version, kind)` among the built-ins and the registered CRDs.
pub(crate) type DefName<'a> = &'a dyn Fn(&str, &str, &str) -> Option<String>;

/// The swagger 2.0 paths of one served resource.
pub(crate) fn resource_paths(r: &Resource, def_of: DefName, paths: &mut Map<String, Value>) {
    let base = gv_path(&r.group, &r.version);
    let prefix = op_prefix(&r.group, &r.version);
    let ns = if r.namespaced { "Namespaced" } else { "" };
    let def = def_of(&r.group, &r.version, &r.kind);
    let list_def = def.as_ref().map(|d| format!("{d}List"));
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let has = |v: &str| r.verbs.iter().any(|x| x == v);
    let collection = if r.namespaced {
        format!("/{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("/{base}/{}", r.plural)
    };
    let mut common = vec![p_pretty()];
    if r.namespaced {
        common.insert(
            0,
            path_param(
                "namespace",
                "object name and auth scope, such as for teams and projects",
            ),
        );
    }
    let write = || vec![p_dry_run(), p_field_manager(), p_field_validation()];
    let delete_opts = format!("{META}DeleteOptions");
    let status = format!("{META}Status");

    let mut coll = Map::new();
    if has("list") {
        coll.insert(
            "get".into(),
            Op {
                verb: "get",
                id: format!("list{prefix}{ns}{}", r.kind),
                action: "list",
                gvk: gvk.clone(),
                params: list_params(),
                body: None,
                response: list_def.as_deref(),
                patch: false,
            }
            .value(),
        );
    }
    if has("create") {
        coll.insert(
            "post".into(),
            Op {
                verb: "post",
                id: format!("create{prefix}{ns}{}", r.kind),
                action: "post",
                gvk: gvk.clone(),
                params: write(),
                body: def.as_deref(),
                response: def.as_deref(),
                patch: false,
            }
            .value(),
        );
    }
    if has("deletecollection") {
        let mut params = delete_params();
        params.extend(list_params());
        coll.insert(
            "delete".into(),
            Op {
                verb: "delete",
                id: format!("deletecollection{prefix}{ns}{}", r.kind),
                action: "deletecollection",
                gvk: gvk.clone(),
                params,
                body: Some(&delete_opts),
                response: Some(&status),
                patch: false,
            }
            .value(),
        );
    }
    if !coll.is_empty() {
        coll.insert("parameters".into(), Value::Array(common.clone()));
        paths.insert(collection.clone(), Value::Object(coll));
    }
    if r.namespaced && has("list") {
        let mut all = Map::new();
        all.insert(
            "get".into(),
            Op {
                verb: "get",
                id: format!("list{prefix}{}ForAllNamespaces", r.kind),
                action: "list",
                gvk: gvk.clone(),
                params: list_params(),
                body: None,
                response: list_def.as_deref(),
                patch: false,
            }
            .value(),
        );
        all.insert("parameters".into(), json!([p_pretty()]));
        paths.insert(format!("/{base}/{}", r.plural), Value::Object(all));
    }

    let mut item_common = common.clone();
    item_common.insert(0, path_param("name", &format!("name of the {}", r.kind)));
    let mut item = Map::new();
    if has("get") {
        item.insert(
            "get".into(),
            Op {
                verb: "get",
                id: format!("read{prefix}{ns}{}", r.kind),
                action: "get",
                gvk: gvk.clone(),
                params: vec![],
                body: None,
                response: def.as_deref(),
                patch: false,
            }
            .value(),
        );
    }
    if has("update") {
        item.insert(
            "put".into(),
            Op {
                verb: "put",
                id: format!("replace{prefix}{ns}{}", r.kind),
                action: "put",
                gvk: gvk.clone(),
                params: write(),
                body: def.as_deref(),
                response: def.as_deref(),
                patch: false,
            }
            .value(),
        );
    }
    if has("patch") {
        let mut params = write();
        params.push(p_force());
        item.insert(
            "patch".into(),
            Op {
                verb: "patch",
                id: format!("patch{prefix}{ns}{}", r.kind),
                action: "patch",
                gvk: gvk.clone(),
                params,
                body: Some(&format!("{META}Patch")),
                response: def.as_deref(),
                patch: true,
            }
            .value(),
        );
    }
    if has("delete") {
        item.insert(
            "delete".into(),
            Op {
                verb: "delete",
                id: format!("delete{prefix}{ns}{}", r.kind),
                action: "delete",
                gvk: gvk.clone(),
                params: delete_params(),
                body: Some(&delete_opts),
                response: Some(&status),
                patch: false,
            }
            .value(),
        );
    }
    if !item.is_empty() {
        item.insert("parameters".into(), Value::Array(item_common.clone()));
        paths.insert(format!("{collection}/{{name}}"), Value::Object(item));
    }

    for sub in &r.subresources {
        let (sub_gvk, sub_def) = match sub.as_str() {
            "status" => (gvk.clone(), def.clone()),
            "scale" => (
                json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                Some("io.k8s.api.autoscaling.v1.Scale".to_string()),
            ),
            _ => continue,
        };
        let name = pascal(sub);
        let mut m = Map::new();
        m.insert(
            "get".into(),
            Op {
                verb: "get",
                id: format!("read{prefix}{ns}{}{name}", r.kind),
                action: "get",
                gvk: sub_gvk.clone(),
                params: vec![],
                body: None,
                response: sub_def.as_deref(),
                patch: false,
            }
            .value(),
        );
        m.insert(
            "put".into(),
            Op {
                verb: "put",
                id: format!("replace{prefix}{ns}{}{name}", r.kind),
                action: "put",
                gvk: sub_gvk.clone(),
                params: write(),
                body: sub_def.as_deref(),
                response: sub_def.as_deref(),
                patch: false,
            }
            .value(),
        );
        let mut params = write();
        params.push(p_force());
        m.insert(
            "patch".into(),
            Op {
                verb: "patch",
                id: format!("patch{prefix}{ns}{}{name}", r.kind),
                action: "patch",
                gvk: sub_gvk,
                params,
                body: Some(&format!("{META}Patch")),
                response: sub_def.as_deref(),
                patch: true,
            }
            .value(),
        );
        m.insert("parameters".into(), Value::Array(item_common.clone()));
        paths.insert(format!("{collection}/{{name}}/{sub}"), Value::Object(m));
    }
}

/// A swagger 2.0 parameter in OpenAPI 3.0 form.
fn param_to_v3(p: &Value) -> Value {
    let mut out = Map::new();
    for k in ["name", "in", "description", "required"] {
        if let Some(v) = p.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut schema = json!({"type": p.get("type").cloned().unwrap_or("string".into())});
    if p.get("uniqueItems").is_some() {
        schema["uniqueItems"] = true.into();
    }
    out.insert("schema".into(), schema);
    Value::Object(out)
}

/// A swagger 2.0 path item in OpenAPI 3.0 form (body parameters become `requestBody`,
/// response schemas move under `content`).
pub(crate) fn path_to_v3(item: &mut Value) {
    let Value::Object(m) = item else { return };
    for (k, v) in m.iter_mut() {
        if k == "parameters" {
            if let Value::Array(ps) = v {
                *ps = ps.iter().map(param_to_v3).collect();
            }
            continue;
        }
        let Value::Object(op) = v else { continue };
        let consumes = op.remove("consumes").unwrap_or(json!([]));
        let produces = op.remove("produces").unwrap_or(json!([]));
        op.remove("schemes");
        let mut params = Vec::new();
        if let Some(Value::Array(ps)) = op.remove("parameters") {
            for p in ps {
                if p["in"] == "body" {
                    let mut schema = p["schema"].clone();
                    model::to_v3(&mut schema);
                    let content: Map<String, Value> = consumes
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.as_str())
                        .map(|c| (c.to_string(), json!({"schema": schema})))
                        .collect();
                    op.insert(
                        "requestBody".into(),
                        json!({"content": content, "required": true}),
                    );
                } else {
                    params.push(param_to_v3(&p));
                }
            }
        }
        op.insert("parameters".into(), Value::Array(params));
        if let Some(Value::Object(rs)) = op.get_mut("responses") {
            for r in rs.values_mut() {
                if let Some(mut schema) = r.as_object_mut().and_then(|r| r.remove("schema")) {
                    model::to_v3(&mut schema);
                    let content: Map<String, Value> = produces
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c.as_str())
                        .map(|c| (c.to_string(), json!({"schema": schema})))
                        .collect();
                    r["content"] = Value::Object(content);
                }
            }
        }
    }
}
