//! Strategies of the remaining kinds: RBAC, scheduling, storage, networking, certificates,
//! discovery, CRDs and the review kinds.

use super::core::endpoints_text;
use super::printers::{cols, num, or_none, s};
use super::{age, name, set_default, Column, NameRule, Strategy};
use crate::status::FieldError;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

fn created_at(obj: &Value) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        })
        .unwrap_or_default()
}

pub enum Rbac {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

impl Strategy for Rbac {
    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match self {
            Rbac::Role | Rbac::ClusterRole => {
                for (i, r) in obj["rules"].as_array().into_iter().flatten().enumerate() {
                    if r["verbs"].as_array().is_none_or(Vec::is_empty) {
                        errs.push(FieldError::required(
                            format!("rules[{i}].verbs"),
                            "verbs must contain at least one value",
                        ));
                    }
                }
            }
            Rbac::RoleBinding | Rbac::ClusterRoleBinding => {
                let rr = &obj["roleRef"];
                if s(&rr["name"]).is_empty() {
                    errs.push(FieldError::required("roleRef.name", ""));
                }
                let kind = s(&rr["kind"]);
                let allowed: &[&str] = if matches!(self, Rbac::RoleBinding) {
                    &["Role", "ClusterRole"]
                } else {
                    &["ClusterRole"]
                };
                if !allowed.contains(&kind.as_str()) {
                    errs.push(FieldError::not_supported("roleRef.kind", &kind, allowed));
                }
                for (i, sub) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
                    let k = s(&sub["kind"]);
                    if !["User", "Group", "ServiceAccount"].contains(&k.as_str()) {
                        errs.push(FieldError::not_supported(
                            format!("subjects[{i}].kind"),
                            &k,
                            &["ServiceAccount", "User", "Group"],
                        ));
                    }
                    if s(&sub["name"]).is_empty() {
                        errs.push(FieldError::required(format!("subjects[{i}].name"), ""));
                    }
                }
            }
        }
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        if matches!(self, Rbac::RoleBinding | Rbac::ClusterRoleBinding)
            && new["roleRef"] != old["roleRef"]
        {
            errs.push(FieldError::invalid(
                "roleRef",
                &s(&new["roleRef"]),
                "cannot change roleRef",
            ));
        }
    }
    fn columns(&self) -> Vec<Column> {
        match self {
            Rbac::Role | Rbac::ClusterRole => cols(&["Created At"]),
            _ => cols(&["Role", "Age", "|", "Users", "Groups", "ServiceAccounts"]),
        }
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        match self {
            Rbac::Role | Rbac::ClusterRole => vec![json!(name(obj)), json!(created_at(obj))],
            _ => {
                let subs = obj["subjects"].as_array().cloned().unwrap_or_default();
                let pick = |k: &str| {
                    subs.iter()
                        .filter(|x| x["kind"] == k)
                        .map(|x| {
                            if k == "ServiceAccount" {
                                format!("{}/{}", s(&x["namespace"]), s(&x["name"]))
                            } else {
                                s(&x["name"])
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                vec![
                    json!(name(obj)),
                    json!(format!(
                        "{}/{}",
                        s(&obj["roleRef"]["kind"]),
                        s(&obj["roleRef"]["name"])
                    )),
                    json!(age(obj, now)),
                    json!(pick("User")),
                    json!(pick("Group")),
                    json!(pick("ServiceAccount")),
                ]
            }
        }
    }
}

pub struct PriorityClass;

impl Strategy for PriorityClass {
    fn set_defaults(&self, obj: &mut Value) {
        set_default(obj, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let n = name(obj);
        let v = num(&obj["value"]);
        if n.starts_with("system-")
            && !["system-node-critical", "system-cluster-critical"].contains(&n)
        {
            errs.push(FieldError::forbidden(
                "metadata.name",
                "priority class names with 'system-' prefix are reserved for system use only",
            ));
        }
        if v > 1_000_000_000 && !n.starts_with("system-") {
            errs.push(FieldError::forbidden(
                "value",
                "maximum allowed value of a user defined priority is 1000000000",
            ));
        }
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        if new["value"] != old["value"] {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Value", "Global-Default", "Age", "PreemptionPolicy"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(name(obj)),
            json!(num(&obj["value"])),
            json!(obj["globalDefault"] == true),
            json!(age(obj, now)),
            json!(s(&obj["preemptionPolicy"])),
        ]
    }
}

pub struct StorageClass;

impl Strategy for StorageClass {
    fn set_defaults(&self, obj: &mut Value) {
        set_default(obj, "reclaimPolicy", json!("Delete"));
        set_default(obj, "volumeBindingMode", json!("Immediate"));
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if s(&obj["provisioner"]).is_empty() {
            errs.push(FieldError::required("provisioner", ""));
        }
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        for f in [
            "provisioner",
            "parameters",
            "reclaimPolicy",
            "volumeBindingMode",
        ] {
            if new[f] != old[f] {
                errs.push(FieldError::forbidden(
                    f,
                    "updates to provisioner are forbidden.",
                ));
            }
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Provisioner",
            "ReclaimPolicy",
            "VolumeBindingMode",
            "AllowVolumeExpansion",
            "Age",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let ann = &obj["metadata"]["annotations"];
        let default = ann["storageclass.kubernetes.io/is-default-class"] == "true"
            || ann["storageclass.beta.kubernetes.io/is-default-class"] == "true";
        let n = if default {
            format!("{} (default)", name(obj))
        } else {
            name(obj).to_string()
        };
        vec![
            json!(n),
            json!(s(&obj["provisioner"])),
            json!(s(&obj["reclaimPolicy"])),
            json!(s(&obj["volumeBindingMode"])),
            json!(obj["allowVolumeExpansion"] == true),
            json!(age(obj, now)),
        ]
    }
}

pub struct Ingress;

impl Strategy for Ingress {
    fn set_defaults(&self, obj: &mut Value) {
        for rule in obj["spec"]["rules"].as_array_mut().into_iter().flatten() {
            for p in rule["http"]["paths"].as_array_mut().into_iter().flatten() {
                set_default(p, "pathType", json!("ImplementationSpecific"));
            }
        }
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Class", "Hosts", "Address", "Ports", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let spec = &obj["spec"];
        let hosts: Vec<String> = spec["rules"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| s(&x["host"]))
                    .map(|h| if h.is_empty() { "*".into() } else { h })
                    .collect()
            })
            .unwrap_or_default();
        let addr: Vec<String> = obj["status"]["loadBalancer"]["ingress"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| {
                        let ip = s(&i["ip"]);
                        if ip.is_empty() {
                            s(&i["hostname"])
                        } else {
                            ip
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
            "80, 443"
        } else {
            "80"
        };
        vec![
            json!(name(obj)),
            json!(or_none(s(&spec["ingressClassName"]))),
            json!(if hosts.is_empty() {
                "*".into()
            } else {
                hosts.join(",")
            }),
            json!(addr.join(",")),
            json!(ports),
            json!(age(obj, now)),
        ]
    }
}

pub struct Csr;

impl Strategy for Csr {
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({});
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if s(&obj["spec"]["request"]).is_empty() {
            errs.push(FieldError::required("spec.request", ""));
        }
        if s(&obj["spec"]["signerName"]).is_empty() {
            errs.push(FieldError::required("spec.signerName", ""));
        }
        if let Some(exp) = obj["spec"]["expirationSeconds"]
            .as_i64()
            .filter(|e| *e < 600)
        {
            // An integer value, printed unquoted as upstream prints it.
            errs.push(FieldError {
                value: None,
                detail: format!(
                    "{exp}: may not specify a duration less than 600 seconds (10 minutes)"
                ),
                ..FieldError::invalid("spec.expirationSeconds", "", "")
            });
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Age",
            "SignerName",
            "Requestor",
            "RequestedDuration",
            "Condition",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let mut conds: Vec<String> = obj["status"]["conditions"]
            .as_array()
            .map(|c| c.iter().map(|x| s(&x["type"])).collect())
            .unwrap_or_default();
        if !s(&obj["status"]["certificate"]).is_empty() {
            conds.push("Issued".into());
        }
        let dur = obj["spec"]["expirationSeconds"]
            .as_i64()
            .map(super::printers::human_duration)
            .unwrap_or_else(|| "<none>".into());
        vec![
            json!(name(obj)),
            json!(age(obj, now)),
            json!(s(&obj["spec"]["signerName"])),
            json!(s(&obj["spec"]["username"])),
            json!(dur),
            json!(if conds.is_empty() {
                "Pending".into()
            } else {
                conds.join(",")
            }),
        ]
    }
}

pub struct Crd;

impl Strategy for Crd {
    fn set_defaults(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if let Some(vs) = spec["versions"].as_array_mut() {
            for v in vs {
                set_default(v, "served", json!(true));
            }
        }
        set_default(&mut spec["conversion"], "strategy", json!("None"));
        let plural = s(&spec["names"]["plural"]);
        let kind = s(&spec["names"]["kind"]);
        set_default(&mut spec["names"], "singular", json!(kind.to_lowercase()));
        set_default(&mut spec["names"], "listKind", json!(format!("{kind}List")));
        let _ = plural;
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"storedVersions": [], "conditions": [], "acceptedNames": {"plural": "", "kind": ""}});
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let want = format!("{}.{}", s(&spec["names"]["plural"]), s(&spec["group"]));
        if name(obj) != want {
            errs.push(FieldError::invalid(
                "metadata.name",
                name(obj),
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        if s(&spec["group"]).is_empty() {
            errs.push(FieldError::required("spec.group", ""));
        } else if !s(&spec["group"]).contains('.') {
            errs.push(FieldError::invalid(
                "spec.group",
                &s(&spec["group"]),
                "should be a domain with at least one dot",
            ));
        }
        let scope = s(&spec["scope"]);
        if scope != "Namespaced" && scope != "Cluster" {
            errs.push(FieldError::not_supported(
                "spec.scope",
                &scope,
                &["Cluster", "Namespaced"],
            ));
        }
        if s(&spec["names"]["kind"]).is_empty() {
            errs.push(FieldError::required("spec.names.kind", ""));
        }
        let versions = spec["versions"].as_array().cloned().unwrap_or_default();
        if versions.iter().filter(|v| v["storage"] == true).count() != 1 || versions.is_empty() {
            errs.push(FieldError::invalid(
                "spec.versions",
                "",
                "must have exactly one version marked as storage version",
            ));
        }
        for (i, v) in versions.iter().enumerate() {
            if v["schema"]["openAPIV3Schema"].is_null() {
                errs.push(FieldError::required(
                    format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    "schemas are required",
                ));
            }
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Created At"])
    }
    fn cells(&self, obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
        vec![json!(name(obj)), json!(created_at(obj))]
    }
}

pub struct EndpointSlice;

impl Strategy for EndpointSlice {
    fn columns(&self) -> Vec<Column> {
        cols(&["AddressType", "Ports", "Endpoints", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let ports: Vec<String> = obj["ports"]
            .as_array()
            .map(|p| p.iter().map(|x| num(&x["port"]).to_string()).collect())
            .unwrap_or_default();
        let addrs: Vec<String> = obj["endpoints"]
            .as_array()
            .map(|e| {
                e.iter()
                    .flat_map(|x| x["addresses"].as_array().cloned().unwrap_or_default())
                    .map(|a| s(&a))
                    .collect()
            })
            .unwrap_or_default();
        vec![
            json!(name(obj)),
            json!(s(&obj["addressType"])),
            json!(if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            }),
            json!(endpoints_text(addrs)),
            json!(age(obj, now)),
        ]
    }
}

/// The review kinds (TokenReview, SubjectAccessReview, ...): computed, never stored.
pub struct Review;

impl Strategy for Review {}
