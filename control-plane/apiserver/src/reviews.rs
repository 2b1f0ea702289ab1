//! The review kinds: computed from the request, never stored. The access reviews ask the
//! same authorizer chain requests go through ([`crate::rbac::authorize`]).

use crate::handlers::{Ctx, Target, UserInfo};
use crate::rbac::{self, Attrs};
use crate::server::Body;
use crate::status::{FieldError, StatusError};
use hyper::Response;
use serde_json::{json, Value};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn user_json(u: &UserInfo) -> Value {
    let mut o = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        o["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        o["extra"] = json!(u.extra);
    }
    o
}

fn attrs_of(spec: &Value) -> Attrs {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let r = &spec["resourceAttributes"];
    if r.is_object() {
        Attrs::resource(
            &s(&r["verb"]),
            &s(&r["namespace"]),
            &s(&r["group"]),
            &s(&r["resource"]),
            &s(&r["subresource"]),
            &s(&r["name"]),
        )
    } else {
        let n = &spec["nonResourceAttributes"];
        Attrs::non_resource(&s(&n["verb"]), &s(&n["path"]))
    }
}

pub async fn create(ctx: &Ctx, t: &Target, mut obj: Value) -> Result<Response<Body>, StatusError> {
    let res = &t.res;
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let user = &t.user;
    match res.kind.as_str() {
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": user_json(user)});
        }
        "TokenReview" => {
            if obj["spec"]["token"].as_str().unwrap_or("").is_empty() {
                return Err(StatusError::invalid(
                    "TokenReview",
                    "",
                    "authentication.k8s.io",
                    &[crate::status::FieldError::required("spec.token", "")],
                ));
            }
            let token = obj["spec"]["token"].as_str().unwrap_or("").to_string();
            let auds: Vec<String> = obj["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            obj["status"] = match crate::tokens::review(ctx, &token, &auds).await {
                Ok(st) => st,
                Err(e) => json!({"authenticated": false, "error": e, "user": {}}),
            };
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec = &obj["spec"].clone();
            let has_res = spec["resourceAttributes"].is_object();
            let has_non = spec["nonResourceAttributes"].is_object();
            if has_res == has_non {
                return Err(StatusError::invalid(
                    &res.kind,
                    "",
                    "authorization.k8s.io",
                    &[FieldError::invalid(
                        "spec.resourceAttributes",
                        if has_res { "{...}" } else { "null" },
                        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    )],
                ));
            }
            let who = if res.kind == "SelfSubjectAccessReview" {
                user.clone()
            } else {
                let u = UserInfo {
                    name: spec["user"].as_str().unwrap_or("").to_string(),
                    groups: strings(&spec["groups"]),
                    uid: spec["uid"].as_str().unwrap_or("").to_string(),
                    extra: spec["extra"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
                        .unwrap_or_default(),
                };
                if u.name.is_empty() && u.groups.is_empty() {
                    return Err(StatusError::invalid(
                        &res.kind,
                        "",
                        "authorization.k8s.io",
                        &[FieldError::invalid(
                            "spec.user",
                            "",
                            "at least one of user or group must be specified",
                        )],
                    ));
                }
                u
            };
            if res.kind == "LocalSubjectAccessReview" {
                let ns = t.namespace.clone().unwrap_or_default();
                let got = spec["resourceAttributes"]["namespace"]
                    .as_str()
                    .unwrap_or("");
                if !has_res || got != ns {
                    return Err(StatusError::invalid(
                        &res.kind,
                        "",
                        "authorization.k8s.io",
                        &[FieldError::invalid(
                            "spec.resourceAttributes.namespace",
                            got,
                            "must match metadata.namespace",
                        )],
                    ));
                }
                obj["metadata"]["namespace"] = json!(ns);
            }
            let d = rbac::authorize(ctx, &who, &attrs_of(spec)).await;
            obj["status"] = json!({"allowed": d.allowed});
            if !d.reason.is_empty() {
                obj["status"]["reason"] = json!(d.reason);
            }
        }
        "SelfSubjectRulesReview" => {
            let ns = obj["spec"]["namespace"].as_str().unwrap_or("").to_string();
            let snap = ctx.rbac.snapshot(ctx).await;
            let mut rules = snap.rules_for(user, &ns);
            if rbac::is_master(user) && rules.is_empty() {
                rules = vec![
                    rbac::Rule::new(&["*"], &["*"], &["*"]),
                    rbac::Rule::urls(&["*"], &["*"]),
                ];
            }
            if let Some(node) = crate::nodeauthz::node_of(user) {
                let _ = node;
                for r in crate::policy::node_rules() {
                    if !rules.contains(&r) {
                        rules.push(r);
                    }
                }
            }
            let mut resource_rules = vec![];
            let mut non_resource_rules = vec![];
            for r in rules {
                if r.non_resource_urls.is_empty() {
                    let mut o = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
                    if !r.resource_names.is_empty() {
                        o["resourceNames"] = json!(r.resource_names);
                    }
                    resource_rules.push(o);
                } else {
                    non_resource_rules
                        .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
                }
            }
            obj["status"] = json!({
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": false,
            });
        }
        _ => {
            return Err(StatusError::method_not_allowed(format!(
                "create is not supported on {}",
                res.plural
            )))
        }
    }
    Ok(t.respond(201, &obj))
}
