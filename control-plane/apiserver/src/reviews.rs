//! The review kinds: computed from the request, never stored. Until RBAC lands (the API
//! security issue) every authenticated user may do everything, and the access reviews say so.

use crate::handlers::{Ctx, Target};
use crate::server::Body;
use crate::status::StatusError;
use hyper::Response;
use serde_json::{json, Value};

const NO_AUTHZ: &str = "no authorizer is configured: every authenticated user may do everything";

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
            obj["status"] = json!({"userInfo": {"username": user.name, "groups": user.groups}});
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
            let attrs = &obj["spec"];
            if attrs["resourceAttributes"].is_null() && attrs["nonResourceAttributes"].is_null() {
                return Err(StatusError::invalid(
                    &res.kind,
                    "",
                    "authorization.k8s.io",
                    &[crate::status::FieldError::invalid(
                        "spec.resourceAttributes",
                        "null",
                        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    )],
                ));
            }
            obj["status"] = json!({"allowed": true, "reason": NO_AUTHZ});
        }
        "SelfSubjectRulesReview" => {
            obj["status"] = json!({
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": false,
                "evaluationError": NO_AUTHZ
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
