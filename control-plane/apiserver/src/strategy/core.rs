//! Strategies of the core/v1 kinds.

use super::printers::{cols, label_text, num, or_none, s};
use super::{age, name, set_default, Column, NameRule, Strategy};
use crate::status::FieldError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

fn image_pull_policy(image: &str) -> &'static str {
    // Upstream: Always when the tag is `latest` or missing (and no digest), else IfNotPresent.
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Upstream's defaults of a PodSpec, also applied to the pod templates of workloads.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        if let Some(cs) = spec[list].as_array_mut() {
            for c in cs {
                let image = c["image"].as_str().unwrap_or_default().to_string();
                set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                if list != "ephemeralContainers" {
                    set_default(c, "resources", json!({}));
                }
                if let Some(ports) = c["ports"].as_array_mut() {
                    for p in ports {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
                // Limits without requests: the requests default to the limits.
                let limits = c["resources"]["limits"].clone();
                if let Some(l) = limits.as_object() {
                    for (k, v) in l {
                        if c["resources"]["requests"][k].is_null() {
                            c["resources"]["requests"][k] = v.clone();
                        }
                    }
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    if c[probe].is_object() {
                        let p = &mut c[probe];
                        set_default(p, "timeoutSeconds", json!(1));
                        set_default(p, "periodSeconds", json!(10));
                        set_default(p, "successThreshold", json!(1));
                        set_default(p, "failureThreshold", json!(3));
                        if p["httpGet"].is_object() {
                            set_default(&mut p["httpGet"], "path", json!("/"));
                            set_default(&mut p["httpGet"], "scheme", json!("HTTP"));
                        }
                    }
                }
            }
        }
    }
    if let Some(vols) = spec["volumes"].as_array_mut() {
        for v in vols {
            for (src, key) in [
                ("configMap", "defaultMode"),
                ("secret", "defaultMode"),
                ("projected", "defaultMode"),
                ("downwardAPI", "defaultMode"),
            ] {
                if v[src].is_object() {
                    set_default(&mut v[src], key, json!(420));
                }
            }
            if v["hostPath"].is_object() {
                set_default(&mut v["hostPath"], "type", json!(""));
            }
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let cs: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let any = cs.iter().any(|c| {
        let r = &c["resources"];
        r["requests"].as_object().is_some_and(|m| !m.is_empty())
            || r["limits"].as_object().is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        let r = &c["resources"];
        ["cpu", "memory"]
            .iter()
            .all(|k| !r["limits"][*k].is_null() && r["limits"][*k] == r["requests"][*k])
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Container list checks shared by pods and pod templates.
pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut seen: Vec<String> = Vec::new();
    for (list, cs) in [
        (
            "initContainers",
            spec["initContainers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        ),
        ("containers", containers),
    ] {
        for (i, c) in cs.iter().enumerate() {
            let p = format!("{path}.{list}[{i}]");
            let cname = c["name"].as_str().unwrap_or_default();
            if cname.is_empty() {
                errs.push(FieldError::required(format!("{p}.name"), ""));
            } else if !super::is_dns_label(cname) {
                errs.push(FieldError::invalid(
                    format!("{p}.name"),
                    cname,
                    super::DNS_LABEL_MSG,
                ));
            } else if seen.iter().any(|s| s == cname) {
                errs.push(FieldError::duplicate(format!("{p}.name"), cname));
            } else {
                seen.push(cname.to_string());
            }
            if c["image"].as_str().unwrap_or_default().trim().is_empty() {
                errs.push(FieldError::required(format!("{p}.image"), ""));
            }
            // procMount (upstream's ProcMountType validation): Default or Unmasked, and
            // Unmasked only in a pod with its own user namespace.
            if let Some(pm) = c["securityContext"]["procMount"].as_str() {
                let pp = format!("{p}.securityContext.procMount");
                if !["Default", "Unmasked"].contains(&pm) {
                    errs.push(FieldError::not_supported(pp, pm, &["Default", "Unmasked"]));
                } else if pm == "Unmasked" && spec["hostUsers"].as_bool() != Some(false) {
                    errs.push(FieldError::invalid(
                        pp,
                        pm,
                        "`hostUsers` must be false to use `Unmasked`",
                    ));
                }
            }
            if let Some(ports) = c["ports"].as_array() {
                for (j, port) in ports.iter().enumerate() {
                    let cp = num(&port["containerPort"]);
                    if !(1..=65535).contains(&cp) {
                        errs.push(FieldError::invalid(
                            format!("{p}.ports[{j}].containerPort"),
                            &cp.to_string(),
                            "must be between 1 and 65535, inclusive",
                        ));
                    }
                    let proto = port["protocol"].as_str().unwrap_or("TCP");
                    if !["TCP", "UDP", "SCTP"].contains(&proto) {
                        errs.push(FieldError::not_supported(
                            format!("{p}.ports[{j}].protocol"),
                            proto,
                            &["SCTP", "TCP", "UDP"],
                        ));
                    }
                }
            }
        }
    }
    if let Some(rp) = spec["restartPolicy"].as_str() {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                rp,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(dp) = spec["dnsPolicy"].as_str() {
        let ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !ok.contains(&dp) {
            errs.push(FieldError::not_supported(
                format!("{path}.dnsPolicy"),
                dp,
                &ok,
            ));
        }
    }
    let mut vols: Vec<String> = vec![];
    if let Some(vs) = spec["volumes"].as_array() {
        for (i, v) in vs.iter().enumerate() {
            let n = v["name"].as_str().unwrap_or_default();
            if n.is_empty() {
                errs.push(FieldError::required(
                    format!("{path}.volumes[{i}].name"),
                    "",
                ));
            } else if vols.iter().any(|x| x == n) {
                errs.push(FieldError::duplicate(
                    format!("{path}.volumes[{i}].name"),
                    n,
                ));
            } else {
                vols.push(n.to_string());
            }
        }
    }
}

pub struct Pod;

impl Strategy for Pod {
    fn set_defaults(&self, pod: &mut Value) {
        default_pod_spec(&mut pod["spec"]);
        let spec = &mut pod["spec"];
        if spec.is_object() {
            set_default(spec, "enableServiceLinks", json!(true));
            set_default(spec, "priority", json!(0));
            set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
            set_default(spec, "tolerations", json!([]));
            let tol = spec["tolerations"].as_array_mut().expect("array");
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                // Upstream's DefaultTolerationSeconds: added unless a toleration already
                // covers the taint (its key or an empty key, NoExecute or any effect).
                let covered = tol.iter().any(|t| {
                    let k = t["key"].as_str().unwrap_or("");
                    let e = t["effect"].as_str().unwrap_or("");
                    (k == key || k.is_empty()) && (e == "NoExecute" || e.is_empty())
                });
                if !covered {
                    tol.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
    }
    fn prepare_create(&self, pod: &mut Value) {
        // The class of the defaulted spec, as upstream computes it: requests default to the
        // limits (defaulting runs after this hook here).
        let mut spec = pod["spec"].clone();
        default_pod_spec(&mut spec);
        let qos = qos_class(&spec);
        pod["status"] = json!({"phase": "Pending", "qosClass": qos});
    }
    fn validate(&self, pod: &Value, errs: &mut Vec<FieldError>) {
        validate_pod_spec(&pod["spec"], "spec", errs);
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        // A pod does not turn into, or stop being, a static pod's mirror.
        const MIRROR: &str = "kubernetes.io/config.mirror";
        if new["metadata"]["annotations"][MIRROR] != old["metadata"]["annotations"][MIRROR] {
            errs.push(FieldError::forbidden(
                format!("metadata.annotations[{MIRROR}]"),
                "field is immutable",
            ));
        }
        let old_node = &old["spec"]["nodeName"];
        if !old_node.is_null() && new["spec"]["nodeName"] != *old_node {
            errs.push(FieldError::invalid(
                "spec.nodeName",
                new["spec"]["nodeName"].as_str().unwrap_or(""),
                "field is immutable",
            ));
            return;
        }
        // Only images, activeDeadlineSeconds, tolerations (additions) and the grace period may
        // change in a pod's spec.
        let strip = |spec: &Value| {
            let mut s = spec.clone();
            for list in ["containers", "initContainers"] {
                if let Some(cs) = s[list].as_array_mut() {
                    for c in cs {
                        c["image"] = Value::Null;
                    }
                }
            }
            if let Some(m) = s.as_object_mut() {
                for k in [
                    "activeDeadlineSeconds",
                    "tolerations",
                    "terminationGracePeriodSeconds",
                    "nodeName",
                    "schedulingGates",
                    // Only through the ephemeralcontainers subresource (checked there).
                    "ephemeralContainers",
                ] {
                    m.remove(k);
                }
            }
            s
        };
        if strip(&new["spec"]) != strip(&old["spec"]) {
            errs.push(FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            ));
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "|",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let spec_n = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
        let cs = obj["status"]["containerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = cs
            .iter()
            .filter(|c| c["ready"].as_bool() == Some(true))
            .count();
        let restarts: i64 = cs.iter().filter_map(|c| c["restartCount"].as_i64()).sum();
        let gates = obj["spec"]["readinessGates"]
            .as_array()
            .map(|g| {
                let conds = obj["status"]["conditions"].as_array();
                let ok = g
                    .iter()
                    .filter(|gate| {
                        conds.is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c["type"] == gate["conditionType"] && c["status"] == "True"
                            })
                        })
                    })
                    .count();
                format!("{ok}/{}", g.len())
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            json!(name(obj)),
            json!(format!("{ready}/{spec_n}")),
            json!(super::pod_status_text(obj)),
            json!(restarts.to_string()),
            json!(age(obj, now)),
            json!(or_none(s(&obj["status"]["podIP"]))),
            json!(or_none(s(&obj["spec"]["nodeName"]))),
            json!(or_none(s(&obj["status"]["nominatedNodeName"]))),
            json!(gates),
        ]
    }
}

pub struct Node;

impl Strategy for Node {
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Status",
            "Roles",
            "Age",
            "Version",
            "|",
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let md = &obj["metadata"];
        let conds = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ready = conds
            .iter()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"] == "True")
            .unwrap_or(false);
        let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
        if obj["spec"]["unschedulable"].as_bool() == Some(true) {
            status.push_str(",SchedulingDisabled");
        }
        let mut roles: Vec<String> = md["labels"]
            .as_object()
            .map(|l| {
                l.keys()
                    .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        roles.sort();
        let addr = |t: &str| {
            obj["status"]["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["type"] == t))
                .map(|x| s(&x["address"]))
                .unwrap_or_default()
        };
        let info = &obj["status"]["nodeInfo"];
        vec![
            json!(name(obj)),
            json!(status),
            json!(or_none(roles.join(","))),
            json!(age(obj, now)),
            json!(s(&info["kubeletVersion"])),
            json!(or_none(addr("InternalIP"))),
            json!(or_none(addr("ExternalIP"))),
            json!(s(&info["osImage"])),
            json!(s(&info["kernelVersion"])),
            json!(s(&info["containerRuntimeVersion"])),
        ]
    }
}

pub struct Namespace;

impl Strategy for Namespace {
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }
    fn set_defaults(&self, obj: &mut Value) {
        if obj["spec"]["finalizers"].is_null() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        if obj["status"]["phase"].is_null() {
            obj["status"] = json!({"phase": "Active"});
        }
        let n = name(obj).to_string();
        if !n.is_empty() {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(n);
        }
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Active"});
    }
    fn prepare_update(&self, new: &mut Value, old: &Value) {
        new["spec"] = old["spec"].clone();
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Status", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(name(obj)),
            json!(s(&obj["status"]["phase"])),
            json!(age(obj, now)),
        ]
    }
}

pub struct Service;

impl Strategy for Service {
    fn name_rule(&self) -> NameRule {
        NameRule::Dns1035
    }
    fn set_defaults(&self, obj: &mut Value) {
        let spec = &mut obj["spec"];
        if !spec.is_object() {
            *spec = json!({});
        }
        set_default(spec, "type", json!("ClusterIP"));
        let ty = s(&spec["type"]);
        if ty == "ExternalName" {
            return;
        }
        set_default(spec, "sessionAffinity", json!("None"));
        if spec["sessionAffinity"] == "ClientIP" {
            set_default(
                spec,
                "sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": 10800}}),
            );
        }
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        if ty == "NodePort" || ty == "LoadBalancer" {
            set_default(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if ty == "LoadBalancer" {
            set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        if let Some(ports) = spec["ports"].as_array_mut() {
            for p in ports {
                set_default(p, "protocol", json!("TCP"));
                let port = p["port"].clone();
                set_default(p, "targetPort", port);
            }
        }
        // clusterIP and clusterIPs[0] are one field (upstream's v1 conversion syncs them);
        // ipFamilyPolicy and ipFamilies depend on the cluster's ranges: the API server fills
        // them when it allocates (lifecycle.rs).
        let ips_empty = spec["clusterIPs"].as_array().is_none_or(|a| a.is_empty());
        let cip = s(&spec["clusterIP"]);
        if !cip.is_empty() && ips_empty {
            spec["clusterIPs"] = json!([cip]);
        } else if cip.is_empty() && !ips_empty {
            spec["clusterIP"] = spec["clusterIPs"][0].clone();
        }
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"loadBalancer": {}});
    }
    fn prepare_update(&self, new: &mut Value, old: &Value) {
        // Allocated values carry over when the client leaves them out (kubectl replace/apply).
        let (ns, os) = (&mut new["spec"], &old["spec"]);
        if ns.is_object() && ns["type"] == os["type"] {
            for k in ["clusterIP", "clusterIPs", "healthCheckNodePort"] {
                if ns[k].is_null() && !os[k].is_null() {
                    ns[k] = os[k].clone();
                }
            }
            if let (Some(np), Some(op)) = (ns["ports"].as_array_mut(), os["ports"].as_array()) {
                for p in np {
                    if p["nodePort"].is_null() {
                        if let Some(o) = op
                            .iter()
                            .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                        {
                            if !o["nodePort"].is_null() {
                                p["nodePort"] = o["nodePort"].clone();
                            }
                        }
                    }
                }
            }
        }
        // Fields of the old type the client left as they were go with it (upstream's
        // dropTypeDependentFields): NodePorts, the external traffic policy and the health
        // check port when a NodePort or LoadBalancer Service becomes ClusterIP.
        let external = |t: &Value| t == "NodePort" || t == "LoadBalancer";
        if ns.is_object() && external(&os["type"]) && !external(&ns["type"]) {
            if let (Some(np), Some(op)) = (ns["ports"].as_array_mut(), os["ports"].as_array()) {
                for p in np {
                    if !p["nodePort"].is_null() && op.iter().any(|o| o["nodePort"] == p["nodePort"])
                    {
                        if let Some(m) = p.as_object_mut() {
                            m.remove("nodePort");
                        }
                    }
                }
            }
            for k in ["externalTrafficPolicy", "healthCheckNodePort"] {
                if ns[k] == os[k] {
                    if let Some(m) = ns.as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let ty = s(&spec["type"]);
        let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
        if !types.contains(&ty.as_str()) {
            errs.push(FieldError::not_supported("spec.type", &ty, &types));
            return;
        }
        if ty == "ExternalName" {
            if s(&spec["externalName"]).is_empty() {
                errs.push(FieldError::required("spec.externalName", ""));
            }
            return;
        }
        validate_cluster_ips(spec, errs);
        let ports = spec["ports"].as_array().cloned().unwrap_or_default();
        let headless = spec["clusterIP"] == "None";
        if ports.is_empty() && !headless {
            errs.push(FieldError::required("spec.ports", ""));
        }
        let mut names: Vec<String> = vec![];
        for (i, p) in ports.iter().enumerate() {
            let pname = s(&p["name"]);
            if ports.len() > 1 && pname.is_empty() {
                errs.push(FieldError::required(format!("spec.ports[{i}].name"), ""));
            } else if !pname.is_empty() {
                if names.contains(&pname) {
                    errs.push(FieldError::duplicate(
                        format!("spec.ports[{i}].name"),
                        &pname,
                    ));
                }
                names.push(pname);
            }
            let port = num(&p["port"]);
            if !(1..=65535).contains(&port) {
                errs.push(invalid_int(
                    &format!("spec.ports[{i}].port"),
                    port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            let proto = s(&p["protocol"]);
            if !["TCP", "UDP", "SCTP"].contains(&proto.as_str()) {
                errs.push(FieldError::not_supported(
                    format!("spec.ports[{i}].protocol"),
                    &proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
            if !p["nodePort"].is_null() && ty == "ClusterIP" {
                errs.push(FieldError::forbidden(
                    format!("spec.ports[{i}].nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
            // One port number per protocol (upstream keys on protocol and port).
            if ports[..i]
                .iter()
                .any(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
            {
                errs.push(FieldError::duplicate(
                    format!("spec.ports[{i}]"),
                    &format!(
                        "core.ServicePort{{Protocol:{:?}, Port:{port}}}",
                        s(&p["protocol"])
                    ),
                ));
            }
            validate_target_port(
                &p["targetPort"],
                &format!("spec.ports[{i}].targetPort"),
                errs,
            );
        }
        for (i, ip) in spec["externalIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            validate_external_ip(&s(ip), &format!("spec.externalIPs[{i}]"), errs);
        }
        let affinity = s(&spec["sessionAffinity"]);
        if !affinity.is_empty() && affinity != "ClientIP" && affinity != "None" {
            errs.push(FieldError::not_supported(
                "spec.sessionAffinity",
                &affinity,
                &["ClientIP", "None"],
            ));
        }
        let timeout = &spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"];
        if affinity == "ClientIP" && !timeout.is_null() {
            let t = num(timeout);
            if !(1..=86400).contains(&t) {
                errs.push(invalid_int(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        let etp = s(&spec["externalTrafficPolicy"]);
        if !etp.is_empty() {
            if ty != "NodePort" && ty != "LoadBalancer" {
                errs.push(FieldError::invalid(
                    "spec.externalTrafficPolicy",
                    &etp,
                    "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
                ));
            } else if etp != "Cluster" && etp != "Local" {
                errs.push(FieldError::not_supported(
                    "spec.externalTrafficPolicy",
                    &etp,
                    &["Cluster", "Local"],
                ));
            }
        }
        let itp = s(&spec["internalTrafficPolicy"]);
        if !itp.is_empty() && itp != "Cluster" && itp != "Local" {
            errs.push(FieldError::not_supported(
                "spec.internalTrafficPolicy",
                &itp,
                &["Cluster", "Local"],
            ));
        }
        for (i, r) in spec["loadBalancerSourceRanges"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let v = s(r);
            if !valid_cidr(v.trim()) {
                errs.push(FieldError::invalid(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    &v,
                    "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ",
                ));
            }
        }
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        let (n, o) = (&new["spec"], &old["spec"]);
        if o["type"] != "ExternalName"
            && n["type"] != "ExternalName"
            && !o["clusterIP"].is_null()
            && n["clusterIP"] != o["clusterIP"]
        {
            errs.push(FieldError::invalid(
                "spec.clusterIPs[0]",
                n["clusterIP"].as_str().unwrap_or(""),
                "may not change once set",
            ));
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
            "|",
            "Selector",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let spec = &obj["spec"];
        let ty = s(&spec["type"]);
        let mut ext: Vec<String> = vec![];
        if ty == "ExternalName" {
            ext.push(s(&spec["externalName"]));
        }
        if ty == "LoadBalancer" {
            if let Some(ing) = obj["status"]["loadBalancer"]["ingress"].as_array() {
                for i in ing {
                    let ip = s(&i["ip"]);
                    ext.push(if ip.is_empty() { s(&i["hostname"]) } else { ip });
                }
            }
        }
        if let Some(e) = spec["externalIPs"].as_array() {
            ext.extend(e.iter().map(s));
        }
        let ext = if ext.is_empty() {
            if ty == "LoadBalancer" {
                "<pending>".to_string()
            } else {
                "<none>".to_string()
            }
        } else {
            ext.join(",")
        };
        let ports: Vec<String> = spec["ports"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        if p["nodePort"].is_null() {
                            format!("{}/{}", num(&p["port"]), s(&p["protocol"]))
                        } else {
                            format!(
                                "{}:{}/{}",
                                num(&p["port"]),
                                num(&p["nodePort"]),
                                s(&p["protocol"])
                            )
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cip = s(&spec["clusterIP"]);
        vec![
            json!(name(obj)),
            json!(ty),
            json!(if cip.is_empty() { "<none>".into() } else { cip }),
            json!(ext),
            json!(or_none(ports.join(","))),
            json!(age(obj, now)),
            json!(or_none(label_text(&spec["selector"]))),
        ]
    }
}

/// events.k8s.io/v1 field names and their core/v1 twins.
const EVENT_RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

/// Events: stored as core/v1, also served as events.k8s.io/v1 (field names converted).
pub enum Event {
    Core,
    V1,
}

impl Strategy for Event {
    fn columns(&self) -> Vec<Column> {
        vec![
            super::printers::col("Last Seen", "string", 0),
            super::printers::col("Type", "string", 0),
            super::printers::col("Reason", "string", 0),
            super::printers::col("Object", "string", 0),
            super::printers::col("Message", "string", 0),
        ]
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let md = &obj["metadata"];
        let last = obj["lastTimestamp"]
            .as_str()
            .or(obj["eventTime"].as_str())
            .or(md["creationTimestamp"].as_str());
        let io = &obj["involvedObject"];
        vec![
            json!(super::human_age(last, now)),
            json!(s(&obj["type"])),
            json!(s(&obj["reason"])),
            json!(format!(
                "{}/{}",
                s(&io["kind"]).to_lowercase(),
                s(&io["name"])
            )),
            json!(s(&obj["message"])),
        ]
    }
    fn stores_as_served(&self) -> bool {
        matches!(self, Event::Core)
    }
    fn version_to_storage(&self, obj: &mut Value) {
        if matches!(self, Event::Core) {
            return;
        }
        // events.k8s.io/v1 -> v1: the same object under the core names.
        let m = obj.as_object_mut().expect("object");
        for (from, to) in EVENT_RENAMES {
            if let Some(v) = m.remove(from) {
                m.insert(to.into(), v);
            }
        }
        m.insert("apiVersion".into(), json!("v1"));
    }
    fn storage_to_version(&self, obj: &mut Value) {
        if matches!(self, Event::Core) {
            return;
        }
        let m = obj.as_object_mut().expect("object");
        for (to, from) in EVENT_RENAMES {
            if let Some(v) = m.remove(from) {
                m.insert(to.into(), v);
            }
        }
    }
}

pub struct Lease;

impl Strategy for Lease {
    fn columns(&self) -> Vec<Column> {
        cols(&["Holder", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        vec![
            json!(name(obj)),
            json!(s(&obj["spec"]["holderIdentity"])),
            json!(age(obj, now)),
        ]
    }
}

fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn validate_keys(obj: &Value, fields: &[&str], errs: &mut Vec<FieldError>) {
    for f in fields {
        if let Some(m) = obj[*f].as_object() {
            for k in m.keys() {
                if !is_config_key(k) {
                    errs.push(FieldError::invalid(
                        format!("{f}[{k}]"),
                        k,
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                    ));
                }
            }
        }
    }
}

fn immutable_data(new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    if old["immutable"] == true {
        for f in ["data", "binaryData", "stringData"] {
            if new[f] != old[f] && !(f == "stringData" && new[f].is_null()) {
                errs.push(FieldError::forbidden(
                    "data",
                    "field is immutable when `immutable` is set",
                ));
                return;
            }
        }
        if new["immutable"] != true {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

pub struct ConfigMap;

impl Strategy for ConfigMap {
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_keys(obj, &["data", "binaryData"], errs);
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        immutable_data(new, old, errs);
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Data", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let n = obj["data"].as_object().map_or(0, |m| m.len())
            + obj["binaryData"].as_object().map_or(0, |m| m.len());
        vec![json!(name(obj)), json!(n), json!(age(obj, now))]
    }
}

pub struct Secret;

impl Strategy for Secret {
    fn set_defaults(&self, obj: &mut Value) {
        set_default(obj, "type", json!("Opaque"));
        // stringData is write-only: merged into data (base64) and dropped.
        if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            use base64::Engine;
            if let Some(m) = sd.as_object() {
                for (k, v) in m {
                    let enc = base64::engine::general_purpose::STANDARD.encode(s(v));
                    obj["data"][k] = json!(enc);
                }
            }
        }
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_keys(obj, &["data"], errs);
        let total: usize = obj["data"]
            .as_object()
            .map(|m| m.values().map(|v| s(v).len() * 3 / 4).sum())
            .unwrap_or(0);
        if total > 1024 * 1024 {
            errs.push(FieldError::too_long(
                "data",
                "may not be more than 1048576 bytes",
            ));
        }
        let ty = s(&obj["type"]);
        let need: &[&str] = match ty.as_str() {
            "kubernetes.io/tls" => &["tls.crt", "tls.key"],
            "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
            "kubernetes.io/dockercfg" => &[".dockercfg"],
            "kubernetes.io/basic-auth" | "kubernetes.io/ssh-auth" => &[],
            _ => &[],
        };
        for k in need {
            if obj["data"][*k].is_null() {
                errs.push(FieldError::required(format!("data[{k}]"), ""));
            }
        }
        if ty == "kubernetes.io/service-account-token"
            && s(&obj["metadata"]["annotations"]["kubernetes.io/service-account.name"]).is_empty()
        {
            errs.push(FieldError::required(
                "metadata.annotations[kubernetes.io/service-account.name]",
                "",
            ));
        }
    }
    fn validate_update(&self, new: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        if new["type"] != old["type"] {
            errs.push(FieldError::invalid(
                "type",
                &s(&new["type"]),
                "field is immutable",
            ));
        }
        immutable_data(new, old, errs);
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Type", "Data", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let n = obj["data"].as_object().map_or(0, |m| m.len());
        vec![
            json!(name(obj)),
            json!(s(&obj["type"])),
            json!(n),
            json!(age(obj, now)),
        ]
    }
}

pub struct Endpoints;

/// `ip:port,...` with at most three shown, as kubectl prints endpoints.
pub fn endpoints_text(pairs: Vec<String>) -> String {
    if pairs.is_empty() {
        return "<none>".into();
    }
    let more = pairs.len().saturating_sub(3);
    let mut out = pairs.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        out.push_str(&format!(" + {more} more..."));
    }
    out
}

impl Strategy for Endpoints {
    fn columns(&self) -> Vec<Column> {
        cols(&["Endpoints", "Age"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let mut pairs = vec![];
        for sub in obj["subsets"].as_array().into_iter().flatten() {
            for a in sub["addresses"].as_array().into_iter().flatten() {
                let ports = sub["ports"].as_array().cloned().unwrap_or_default();
                if ports.is_empty() {
                    pairs.push(s(&a["ip"]));
                }
                for p in ports {
                    pairs.push(format!("{}:{}", s(&a["ip"]), num(&p["port"])));
                }
            }
        }
        vec![
            json!(name(obj)),
            json!(endpoints_text(pairs)),
            json!(age(obj, now)),
        ]
    }
}

fn access_modes(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|m| match m.as_str().unwrap_or_default() {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    _ => "",
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub struct Pvc;

impl Strategy for Pvc {
    fn set_defaults(&self, obj: &mut Value) {
        set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if obj["spec"]["accessModes"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            errs.push(FieldError::required(
                "spec.accessModes",
                "at least 1 access mode is required",
            ));
        }
        if obj["spec"]["resources"]["requests"]["storage"].is_null() {
            errs.push(FieldError::required("spec.resources[storage]", ""));
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Status",
            "Volume",
            "Capacity",
            "Access Modes",
            "StorageClass",
            "VolumeAttributesClass",
            "Age",
            "|",
            "VolumeMode",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let st = &obj["status"];
        vec![
            json!(name(obj)),
            json!(s(&st["phase"])),
            json!(s(&obj["spec"]["volumeName"])),
            json!(s(&st["capacity"]["storage"])),
            json!(access_modes(&st["accessModes"])),
            json!(or_none(s(&obj["spec"]["storageClassName"]))),
            json!(or_none(s(&obj["spec"]["volumeAttributesClassName"]))),
            json!(age(obj, now)),
            json!(s(&obj["spec"]["volumeMode"])),
        ]
    }
}

pub struct Pv;

impl Strategy for Pv {
    fn set_defaults(&self, obj: &mut Value) {
        set_default(
            &mut obj["spec"],
            "persistentVolumeReclaimPolicy",
            json!("Retain"),
        );
        set_default(&mut obj["spec"], "volumeMode", json!("Filesystem"));
    }
    fn prepare_create(&self, obj: &mut Value) {
        obj["status"] = json!({"phase": "Pending"});
    }
    fn columns(&self) -> Vec<Column> {
        cols(&[
            "Capacity",
            "Access Modes",
            "Reclaim Policy",
            "Status",
            "Claim",
            "StorageClass",
            "VolumeAttributesClass",
            "Reason",
            "Age",
            "|",
            "VolumeMode",
        ])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let spec = &obj["spec"];
        let claim = if spec["claimRef"].is_object() {
            format!(
                "{}/{}",
                s(&spec["claimRef"]["namespace"]),
                s(&spec["claimRef"]["name"])
            )
        } else {
            String::new()
        };
        vec![
            json!(name(obj)),
            json!(s(&spec["capacity"]["storage"])),
            json!(access_modes(&spec["accessModes"])),
            json!(s(&spec["persistentVolumeReclaimPolicy"])),
            json!(s(&obj["status"]["phase"])),
            json!(claim),
            json!(s(&spec["storageClassName"])),
            json!(or_none(s(&spec["volumeAttributesClassName"]))),
            json!(s(&obj["status"]["reason"])),
            json!(age(obj, now)),
            json!(s(&spec["volumeMode"])),
        ]
    }
}

pub struct ResourceQuota;

fn quota_text(hard: &Value, used: &Value, pick: impl Fn(&str) -> bool) -> String {
    let mut keys: Vec<&String> = hard
        .as_object()
        .map(|m| m.keys().filter(|k| pick(k)).collect())
        .unwrap_or_default();
    keys.sort();
    keys.iter()
        .map(|k| {
            let u = used[k.as_str()].as_str().unwrap_or("0");
            format!("{k}: {u}/{}", s(&hard[k.as_str()]))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Strategy for ResourceQuota {
    fn prepare_create(&self, obj: &mut Value) {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Age", "Request", "Limit"])
    }
    fn cells(&self, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
        let hard = &obj["spec"]["hard"];
        let used = &obj["status"]["used"];
        vec![
            json!(name(obj)),
            json!(age(obj, now)),
            json!(quota_text(hard, used, |k| !k.starts_with("limits."))),
            json!(quota_text(hard, used, |k| k.starts_with("limits."))),
        ]
    }
}

pub struct PodTemplate;

impl Strategy for PodTemplate {
    fn set_defaults(&self, obj: &mut Value) {
        default_pod_spec(&mut obj["template"]["spec"]);
    }
    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_pod_spec(&obj["template"]["spec"], "template.spec", errs);
    }
    fn columns(&self) -> Vec<Column> {
        cols(&["Containers", "Images", "Pod Labels"])
    }
    fn cells(&self, obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
        let (c, i) = super::printers::containers_images(&obj["template"]["spec"]);
        vec![
            json!(name(obj)),
            json!(c),
            json!(i),
            json!(label_text(&obj["template"]["metadata"]["labels"])),
        ]
    }
}

/// A Service port's `targetPort`: a number in 1-65535 or an IANA service name (upstream's
/// `ValidatePortNumOrName`).
fn validate_target_port(v: &Value, field: &str, errs: &mut Vec<FieldError>) {
    match v {
        Value::Null => {}
        Value::Number(_) => {
            let n = num(v);
            if !(1..=65535).contains(&n) {
                errs.push(invalid_int(
                    field,
                    n,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        Value::String(name) => {
            if let Some(why) = iana_svc_name_problem(name) {
                errs.push(FieldError::invalid(field, name, why));
            }
        }
        _ => errs.push(FieldError::invalid(
            field,
            &v.to_string(),
            "must be an int or a string",
        )),
    }
}

/// Why `name` is not an IANA service name (at most 15 lowercase alphanumerics or '-', a letter
/// among them, no leading, trailing or double '-'), upstream's messages.
fn iana_svc_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        return Some("must be no more than 15 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if name.contains("--") {
        return Some("must not contain consecutive hyphens");
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must not begin or end with a hyphen");
    }
    None
}

/// An external IP: a valid address that is not unspecified, loopback, link-local or multicast
/// (upstream's `ValidateNonSpecialIP`).
fn validate_external_ip(v: &str, field: &str, errs: &mut Vec<FieldError>) {
    let Ok(ip) = v.parse::<std::net::IpAddr>() else {
        errs.push(FieldError::invalid(
            field,
            v,
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
        return;
    };
    let why = if ip.is_unspecified() {
        Some("may not be unspecified (0.0.0.0, ::)")
    } else if ip.is_loopback() {
        Some("may not be in the loopback range (127.0.0.0/8, ::1/128)")
    } else if match ip {
        std::net::IpAddr::V4(a) => a.is_link_local(),
        std::net::IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    } {
        Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
    } else if ip.is_multicast() {
        Some("may not be a multicast address")
    } else {
        None
    };
    if let Some(why) = why {
        errs.push(FieldError::invalid(field, v, why));
    }
}

fn valid_cidr(v: &str) -> bool {
    let Some((ip, len)) = v.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

/// An invalid integer value, printed unquoted as upstream prints numbers.
/// `spec.clusterIPs`, `spec.ipFamilies` and `spec.ipFamilyPolicy` on their own (upstream's
/// `ValidateServiceClusterIPsRelatedFields`); what the cluster's ranges allow is checked when
/// the API server allocates.
fn validate_cluster_ips(spec: &Value, errs: &mut Vec<FieldError>) {
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default()
    };
    let ips = list(&spec["clusterIPs"]);
    let fams = list(&spec["ipFamilies"]);
    let shown = || {
        let q: Vec<String> = ips.iter().map(|i| format!("{i:?}")).collect();
        format!("[]string{{{}}}", q.join(", "))
    };
    let invalid_ips = |detail: &str| FieldError {
        value: None,
        detail: format!("{}: {detail}", shown()),
        ..FieldError::invalid("spec.clusterIPs", "", "")
    };
    let cip = s(&spec["clusterIP"]);
    if !cip.is_empty() {
        if ips.is_empty() {
            errs.push(FieldError::required("spec.clusterIPs", ""));
        } else if ips[0] != cip {
            errs.push(invalid_ips("first value must match `clusterIP`"));
        }
    } else if !ips.is_empty() {
        errs.push(invalid_ips(
            "must be empty when `clusterIP` is not specified",
        ));
    }
    for (i, f) in fams.iter().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            errs.push(FieldError::not_supported(
                format!("spec.ipFamilies[{i}]"),
                f,
                &["IPv4", "IPv6"],
            ));
        }
        if fams[..i].contains(f) {
            errs.push(FieldError::duplicate(format!("spec.ipFamilies[{i}]"), f));
        }
    }
    let policy = &spec["ipFamilyPolicy"];
    if let Some(p) = policy.as_str() {
        if !["PreferDualStack", "RequireDualStack", "SingleStack"].contains(&p) {
            errs.push(FieldError::not_supported(
                "spec.ipFamilyPolicy",
                p,
                &["PreferDualStack", "RequireDualStack", "SingleStack"],
            ));
        }
    }
    let mut bad = false;
    let mut parsed: Vec<std::net::IpAddr> = vec![];
    for (i, ip) in ips.iter().enumerate() {
        if i == 0 && ip == "None" {
            if ips.len() > 1 {
                bad = true;
                errs.push(invalid_ips("'None' must be the first and only value"));
            }
            continue;
        }
        match ip.parse::<std::net::IpAddr>() {
            Ok(a) => parsed.push(a),
            Err(_) => {
                bad = true;
                errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                ));
            }
        }
    }
    if ips.len() > 2 {
        errs.push(invalid_ips("may only hold up to 2 values"));
    }
    if bad {
        return;
    }
    if parsed.len() == 2 && parsed[0].is_ipv4() == parsed[1].is_ipv4() {
        errs.push(invalid_ips(
            "may specify no more than one IP for each IP family",
        ));
    }
    if ips.first().map(String::as_str) != Some("None") {
        for (i, a) in parsed.iter().enumerate() {
            match fams.get(i).map(String::as_str) {
                Some("IPv4") if a.is_ipv6() => errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &a.to_string(),
                    format!("expected an IPv4 value as indicated by `ipFamilies[{i}]`"),
                )),
                Some("IPv6") if a.is_ipv4() => errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &a.to_string(),
                    format!("expected an IPv6 value as indicated by `ipFamilies[{i}]`"),
                )),
                _ => {}
            }
        }
    }
}

fn invalid_int(field: &str, v: i64, detail: &str) -> FieldError {
    FieldError {
        value: None,
        detail: format!("{v}: {detail}"),
        ..FieldError::invalid(field, "", "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_only_pod_is_guaranteed() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x",
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]}});
        Pod.prepare_create(&mut pod);
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x",
            "resources": {"limits": {"memory": "64Mi"}}}]}});
        Pod.prepare_create(&mut pod);
        assert_eq!(pod["status"]["qosClass"], "Burstable");
    }
}
