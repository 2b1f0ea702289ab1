//! Kubernetes `Status` objects: every error the API returns is one, with the HTTP code and reason
//! clients switch on.

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct StatusError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// For 410 on an expired continue token: the token to go on with.
    pub list_continue: Option<String>,
}

impl StatusError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            list_continue: None,
        }
    }

    /// `<plural>[.<group>] "<name>" <what>` with the details clients read.
    fn about(
        code: u16,
        reason: &'static str,
        group: &str,
        plural: &str,
        name: &str,
        what: &str,
    ) -> Self {
        let resource = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        Self {
            details: Some(json!({"name": name, "group": group, "kind": plural})),
            ..Self::new(code, reason, format!("{resource} \"{name}\" {what}"))
        }
    }

    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::about(404, "NotFound", group, plural, name, "not found")
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::about(409, "AlreadyExists", group, plural, name, "already exists")
    }

    pub fn conflict(plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {plural} \"{name}\": {why}"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 403 Forbidden as upstream's NewForbidden words it: `<resource>[.<group>] ["<name>"] is
    /// forbidden: <why>`, or `forbidden: <why>` without a resource.
    pub fn forbidden(group: &str, plural: &str, name: &str, why: &str) -> Self {
        let message = if plural.is_empty() {
            format!("forbidden: {why}")
        } else {
            let resource = if group.is_empty() {
                plural.to_string()
            } else {
                format!("{plural}.{group}")
            };
            if name.is_empty() {
                format!("{resource} is forbidden: {why}")
            } else {
                format!("{resource} \"{name}\" is forbidden: {why}")
            }
        };
        let mut details = json!({});
        if !plural.is_empty() {
            details["kind"] = json!(plural);
        }
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        Self {
            details: Some(details),
            ..Self::new(403, "Forbidden", message)
        }
    }

    /// 401 Unauthorized, as upstream answers any request it cannot authenticate.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 for writes into a namespace that is being deleted.
    pub fn forbidden_terminating(res: &crate::registry::Resource, name: &str, ns: &str) -> Self {
        let resource = if res.group.is_empty() {
            res.plural.clone()
        } else {
            format!("{}.{}", res.plural, res.group)
        };
        let why = format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        );
        Self {
            details: Some(json!({"name": name, "group": res.group, "kind": res.plural,
                "causes": [{"reason": "NamespaceTerminating", "message": why, "field": "metadata.namespace"}]})),
            ..Self::new(
                403,
                "Forbidden",
                format!("{resource} \"{name}\" is forbidden: {why}"),
            )
        }
    }

    /// 422 Invalid with one cause per field error, as `kubectl` prints them.
    pub fn invalid(kind: &str, name: &str, group: &str, errors: &[FieldError]) -> Self {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let message = if list.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason, "message": e.detail_message(), "field": e.field}))
            .collect();
        Self {
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            ..Self::new(422, "Invalid", message)
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        if let Some(c) = &self.list_continue {
            v["metadata"]["continue"] = json!(c);
        }
        v
    }
}

/// One field error of a validation (`field.Error` upstream).
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            value: None,
            detail: detail.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            value: Some(value.to_string()),
            detail: detail.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueDuplicate",
            value: Some(value.to_string()),
            detail: String::new(),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            value: Some(value.to_string()),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueForbidden",
            value: None,
            detail: detail.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueTooLong",
            value: None,
            detail: detail.into(),
        }
    }
    fn type_text(&self) -> &'static str {
        match self.reason {
            "FieldValueRequired" => "Required value",
            "FieldValueDuplicate" => "Duplicate value",
            "FieldValueNotSupported" => "Unsupported value",
            "FieldValueForbidden" => "Forbidden",
            "FieldValueTooLong" => "Too long",
            _ => "Invalid value",
        }
    }
    fn detail_message(&self) -> String {
        let mut s = self.type_text().to_string();
        if let Some(v) = &self.value {
            s.push_str(&format!(": \"{v}\""));
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail_message())
    }
}
