//! Per-kind behaviour as objects: each registry entry holds one [`Strategy`] that defaults,
//! validates, splits status from spec and prints Table rows for its kind, on the JSON form of
//! objects. [`Typed`] wraps every built-in strategy and checks a body against the kind's
//! `k8s-openapi` type first, so a wrong field type is a 400 as upstream's decoder makes it.

mod core;
mod misc;
mod printers;
mod workloads;

pub use self::core::{
    ConfigMap, Endpoints, Event, Lease, Namespace, Node, Pod, PodTemplate, Pv, Pvc, ResourceQuota,
    Secret, Service,
};
pub use self::misc::{Crd, Csr, EndpointSlice, Ingress, PriorityClass, Rbac, Review, StorageClass};
pub use self::workloads::{ControllerRevision, Hpa, Pdb, Workload};
pub use printers::{
    col as printers_col, cols as printers_cols, human_age, label_text as printers_label_text,
    pod_status_text, selector_text as printers_selector_text, Column,
};

use crate::status::FieldError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::marker::PhantomData;

/// How `metadata.name` is validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces).
    Label,
    /// RFC 1035 label (services).
    Dns1035,
    /// Any name usable as a path segment (RBAC kinds).
    PathSegment,
}

/// Per-kind rules. Every method has the generic behaviour as its default.
pub trait Strategy: Send + Sync {
    /// Checks the body against the kind's schema types (400 on a mismatch).
    fn check_types(&self, _obj: &Value) -> Result<(), String> {
        Ok(())
    }
    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }
    /// Fills in defaults (on create and update, as upstream's defaulting on decode).
    fn set_defaults(&self, _obj: &mut Value) {}
    /// Resets what a client may not set on create (status of most kinds).
    fn prepare_create(&self, _obj: &mut Value) {}
    /// Carries over what an update of the main resource may not change.
    fn prepare_update(&self, _new: &mut Value, _old: &Value) {}
    fn validate(&self, _obj: &Value, _errs: &mut Vec<FieldError>) {}
    fn validate_update(&self, _new: &Value, _old: &Value, _errs: &mut Vec<FieldError>) {}
    /// Whether `metadata.generation` follows changes of the whole non-metadata body (kinds
    /// without a status split) rather than of `spec` only.
    fn columns(&self) -> Vec<Column> {
        vec![printers::NAME, printers::col("Age", "date", 0)]
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![json!(name(obj)), json!(age(obj, now))]
    }
    /// Converts an object of this resource's version to the stored form (a shared storage
    /// version), and back.
    fn version_to_storage(&self, _obj: &mut Value) {}
    fn storage_to_version(&self, _obj: &mut Value) {}
    /// Whether `version_to_storage` leaves every object as it is (the served version is the
    /// stored one): writes then encode the object without copying it first.
    fn stores_as_served(&self) -> bool {
        true
    }
}

/// A built-in strategy plus the `k8s-openapi` type of its kind.
pub struct Typed<T, S> {
    inner: S,
    _t: PhantomData<fn() -> T>,
}

impl<T, S> Typed<T, S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            _t: PhantomData,
        }
    }
}

impl<T, S> Strategy for Typed<T, S>
where
    T: serde::de::DeserializeOwned + k8s_openapi::Resource,
    S: Strategy,
{
    fn check_types(&self, obj: &Value) -> Result<(), String> {
        T::deserialize(obj).map(drop).map_err(|e| {
            format!(
                "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
                kind = T::KIND,
                v = T::VERSION
            )
        })
    }
    fn name_rule(&self) -> NameRule {
        self.inner.name_rule()
    }
    fn set_defaults(&self, obj: &mut Value) {
        self.inner.set_defaults(obj)
    }
    fn prepare_create(&self, obj: &mut Value) {
        self.inner.prepare_create(obj)
    }
    fn prepare_update(&self, new: &mut Value, old: &Value) {
        self.inner.prepare_update(new, old)
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        self.inner.validate(obj, errs)
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        self.inner.validate_update(new, old, errs)
    }
    fn columns(&self) -> Vec<Column> {
        self.inner.columns()
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        self.inner.cells(obj, now)
    }
    fn version_to_storage(&self, obj: &mut Value) {
        self.inner.version_to_storage(obj)
    }
    fn storage_to_version(&self, obj: &mut Value) {
        self.inner.storage_to_version(obj)
    }
    fn stores_as_served(&self) -> bool {
        self.inner.stores_as_served()
    }
}

/// Kinds with no rules beyond the generic ones.
#[derive(Default)]
pub struct Generic {
    pub name_rule: Option<NameRule>,
}

impl Strategy for Generic {
    fn name_rule(&self) -> NameRule {
        self.name_rule.unwrap_or(NameRule::Subdomain)
    }
}

// ---- helpers shared by the strategies ----

pub(crate) fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

pub(crate) fn age(obj: &Value, now: DateTime<Utc>) -> String {
    human_age(obj["metadata"]["creationTimestamp"].as_str(), now)
}

pub(crate) fn set_default(obj: &mut Value, key: &str, v: Value) {
    if !obj.is_object() {
        return;
    }
    if obj.get(key).is_none_or(Value::is_null) {
        obj[key] = v;
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub const DNS_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Validates `metadata` as every kind does: the name by the kind's rule, labels and annotations.
pub fn validate_meta(rule: NameRule, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = name(obj);
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        let bad = match rule {
            NameRule::Subdomain if !is_dns_subdomain(name) => Some(DNS_SUBDOMAIN_MSG),
            NameRule::Label if !is_dns_label(name) => Some(DNS_LABEL_MSG),
            NameRule::Dns1035 if !is_dns1035_label(name) => Some(DNS1035_MSG),
            NameRule::PathSegment if name == "." || name == ".." => Some("may not be '.' or '..'"),
            NameRule::PathSegment if name.contains('/') || name.contains('%') => {
                Some("may not contain '/' or '%'")
            }
            _ => None,
        };
        if let Some(msg) = bad {
            errs.push(FieldError::invalid("metadata.name", name, msg));
        }
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                ));
            }
            let v = v.as_str().unwrap_or_default();
            if !is_label_value(v) {
                errs.push(FieldError::invalid(
                    "metadata.labels",
                    v,
                    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                ));
            }
        }
    }
    if let Some(ann) = obj["metadata"]["annotations"].as_object() {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if total > 256 * 1024 {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                "may not be more than 262144 bytes",
            ));
        }
        for k in ann.keys() {
            if !is_qualified_name(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// `prefix/name` keys of labels and annotations.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((p, n)) => is_dns_subdomain(p) && is_name_part(n),
        None => is_name_part(s),
    }
}

pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

/// Label selector (`matchLabels`/`matchExpressions`) matching a label map, as workload
/// controllers and validation use it.
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    if let Some(ml) = selector["matchLabels"].as_object() {
        for (k, v) in ml {
            if labels.get(k) != Some(v) {
                return false;
            }
        }
    }
    if let Some(exprs) = selector["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or_default();
            let have = labels.get(key).and_then(Value::as_str);
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ok = match e["operator"].as_str().unwrap_or_default() {
                "In" => have.is_some_and(|h| values.contains(&h)),
                "NotIn" => !have.is_some_and(|h| values.contains(&h)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}
