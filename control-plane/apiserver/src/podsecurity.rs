//! PodSecurity admission: the Pod Security Standards (`baseline`, `restricted`) chosen by
//! namespace labels `pod-security.kubernetes.io/enforce|warn|audit`. Pods violating the
//! enforce level are refused (403); violations of the warn level, and for workload kinds with a
//! pod template of either level, come back as `Warning` headers. The checks and their wording
//! follow upstream's `k8s.io/pod-security-admission/policy` (one reason per check, with the
//! offending containers or volumes named); check order is upstream's: baseline checks, then
//! restricted ones, each level sorted by check id, a restricted check replacing the baseline
//! check it tightens. Evaluated on create only; the version label is read as `latest`.
//! The audit level has nowhere to go until an audit log exists.

use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// The level a namespace label asks for (`mode` is enforce, warn or audit).
pub fn level_of(ns: &Value, mode: &str) -> Option<Level> {
    ns["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")]
        .as_str()
        .and_then(Level::parse)
}

/// The pod spec and metadata inside an object of `kind` (a Pod, or a workload's template).
pub fn pod_parts<'a>(kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let tpl = match kind {
        "Pod" => return Some((&obj["metadata"], &obj["spec"])),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController"
        | "PodTemplate" => {
            if kind == "PodTemplate" {
                &obj["template"]
            } else {
                &obj["spec"]["template"]
            }
        }
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"],
        _ => return None,
    };
    tpl.is_object().then_some((&tpl["metadata"], &tpl["spec"]))
}

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |l| spec[l].as_array().into_iter().flatten())
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

/// `container "a"` / `containers "a", "b"`.
fn named(what: &str, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    if names.len() == 1 {
        format!("{what} {}", quoted[0])
    } else {
        format!("{what}s {}", quoted.join(", "))
    }
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The violations of `level` by a pod (metadata, spec), as `<reason> (<detail>)` strings.
pub fn check(level: Level, meta: &Value, spec: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return vec![];
    }
    let restricted = level == Level::Restricted;
    let psc = &spec["securityContext"];
    let mut out = vec![];
    let push = |out: &mut Vec<String>, reason: &str, detail: String| {
        out.push(format!("{reason} ({detail})"));
    };
    // --- baseline, by check id ---
    // appArmorProfile
    {
        let bad = |p: &Value| {
            p["type"]
                .as_str()
                .is_some_and(|t| t != "RuntimeDefault" && t != "Localhost")
        };
        let mut names = vec![];
        if bad(&psc["appArmorProfile"]) {
            names.push("pod".to_string());
        }
        let annotated: Vec<String> = meta["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| {
                k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                    && v.as_str()
                        .is_some_and(|v| v != "runtime/default" && !v.starts_with("localhost/"))
            })
            .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or("")))
            .collect();
        let cs: Vec<String> = containers(spec)
            .filter(|c| bad(&c["securityContext"]["appArmorProfile"]))
            .map(cname)
            .collect();
        if !names.is_empty() || !annotated.is_empty() || !cs.is_empty() {
            let mut parts = vec![];
            if !names.is_empty() {
                parts.push("pod must not set appArmorProfile.type to \"Unconfined\"".to_string());
            }
            if !cs.is_empty() {
                parts.push(format!(
                    "{} must not set appArmorProfile.type to \"Unconfined\"",
                    named("container", &cs)
                ));
            }
            for a in annotated {
                parts.push(format!("forbidden AppArmor profile {a}"));
            }
            push(&mut out, "forbidden AppArmor profile", parts.join("; "));
        }
    }
    // capabilities_baseline (replaced by capabilities_restricted)
    if !restricted {
        let mut bad: Vec<(String, Vec<String>)> = vec![];
        for c in containers(spec) {
            let caps: Vec<String> = c["securityContext"]["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|cap| !BASELINE_CAPS.contains(cap))
                .map(str::to_string)
                .collect();
            if !caps.is_empty() {
                bad.push((cname(c), caps));
            }
        }
        if !bad.is_empty() {
            let names: Vec<String> = bad.iter().map(|(n, _)| n.clone()).collect();
            let mut caps: Vec<String> = bad.into_iter().flat_map(|(_, c)| c).collect();
            caps.dedup();
            let caps: Vec<String> = caps.iter().map(|c| format!("{c:?}")).collect();
            push(
                &mut out,
                "non-default capabilities",
                format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    named("container", &names),
                    caps.join(", ")
                ),
            );
        }
    }
    // hostNamespaces
    {
        let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
            .iter()
            .filter(|k| spec[**k] == true)
            .map(|k| format!("{k}=true"))
            .collect();
        if !set.is_empty() {
            push(&mut out, "host namespaces", set.join(", "));
        }
    }
    // hostPathVolumes (replaced by restrictedVolumes)
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    if !restricted {
        let names: Vec<String> = volumes
            .iter()
            .filter(|v| v["hostPath"].is_object())
            .map(|v| cname(v))
            .collect();
        if !names.is_empty() {
            push(&mut out, "hostPath volumes", named("volume", &names));
        }
    }
    // hostPorts
    {
        let mut names = vec![];
        let mut ports = vec![];
        for c in containers(spec) {
            let mut any = false;
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(hp) = p["hostPort"].as_i64().filter(|p| *p != 0) {
                    ports.push(hp.to_string());
                    any = true;
                }
            }
            if any {
                names.push(cname(c));
            }
        }
        if !names.is_empty() {
            let word = if ports.len() == 1 {
                "hostPort"
            } else {
                "hostPorts"
            };
            push(
                &mut out,
                "hostPort",
                format!(
                    "{} uses {word} {}",
                    named("container", &names),
                    ports.join(", ")
                ),
            );
        }
    }
    // privileged
    {
        let names: Vec<String> = containers(spec)
            .filter(|c| c["securityContext"]["privileged"] == true)
            .map(cname)
            .collect();
        if !names.is_empty() {
            push(
                &mut out,
                "privileged",
                format!(
                    "{} must not set securityContext.privileged=true",
                    named("container", &names)
                ),
            );
        }
    }
    // procMount
    {
        let names: Vec<String> = containers(spec)
            .filter(|c| {
                c["securityContext"]["procMount"]
                    .as_str()
                    .is_some_and(|m| m != "Default")
            })
            .map(cname)
            .collect();
        if !names.is_empty() {
            push(
                &mut out,
                "procMount",
                format!(
                    "{} must not set securityContext.procMount to \"Unmasked\"",
                    named("container", &names)
                ),
            );
        }
    }
    // seccompProfile_baseline (replaced by seccompProfile_restricted)
    if !restricted {
        let unconfined = |sc: &Value| sc["seccompProfile"]["type"] == "Unconfined";
        let mut parts = vec![];
        if unconfined(psc) {
            parts.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".into(),
            );
        }
        let names: Vec<String> = containers(spec)
            .filter(|c| unconfined(&c["securityContext"]))
            .map(cname)
            .collect();
        if !names.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                named("container", &names)
            ));
        }
        if !parts.is_empty() {
            push(&mut out, "seccompProfile", parts.join("; "));
        }
    }
    // seLinuxOptions
    {
        let bad = |sc: &Value| {
            let o = &sc["seLinuxOptions"];
            let t = o["type"].as_str().unwrap_or("");
            !(t.is_empty()
                || t == "container_t"
                || t == "container_init_t"
                || t == "container_kvm_t"
                || t == "container_engine_t")
                || o["user"].as_str().is_some_and(|s| !s.is_empty())
                || o["role"].as_str().is_some_and(|s| !s.is_empty())
        };
        let mut bad_any = bad(psc);
        let names: Vec<String> = containers(spec)
            .filter(|c| bad(&c["securityContext"]))
            .map(cname)
            .collect();
        bad_any |= !names.is_empty();
        if bad_any {
            let mut parts = vec![];
            if bad(psc) {
                parts.push("pod".to_string());
            }
            if !names.is_empty() {
                parts.push(named("container", &names));
            }
            push(
                &mut out,
                "seLinuxOptions",
                format!(
                    "{} set forbidden securityContext.seLinuxOptions",
                    parts.join(" and ")
                ),
            );
        }
    }
    // sysctls
    {
        let bad: Vec<String> = psc["sysctls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .filter(|n| !SAFE_SYSCTLS.contains(n))
            .map(|n| format!("{n:?}"))
            .collect();
        if !bad.is_empty() {
            push(&mut out, "forbidden sysctls", bad.join(", "));
        }
    }
    // windowsHostProcess
    {
        let set = psc["windowsOptions"]["hostProcess"] == true
            || containers(spec)
                .any(|c| c["securityContext"]["windowsOptions"]["hostProcess"] == true);
        if set {
            push(
                &mut out,
                "hostProcess",
                "pod or containers must not set securityContext.windowsOptions.hostProcess=true"
                    .into(),
            );
        }
    }
    if !restricted {
        return out;
    }
    // --- restricted, by check id ---
    // allowPrivilegeEscalation
    {
        let names: Vec<String> = containers(spec)
            .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != false)
            .map(cname)
            .collect();
        if !names.is_empty() {
            push(
                &mut out,
                "allowPrivilegeEscalation != false",
                format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    named("container", &names)
                ),
            );
        }
    }
    // capabilities_restricted
    {
        let mut no_drop = vec![];
        let mut adds = vec![];
        let mut add_caps: Vec<String> = vec![];
        for c in containers(spec) {
            let caps = &c["securityContext"]["capabilities"];
            let drops_all = caps["drop"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d == "ALL");
            if !drops_all {
                no_drop.push(cname(c));
            }
            let extra: Vec<String> = caps["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|c| *c != "NET_BIND_SERVICE")
                .map(str::to_string)
                .collect();
            if !extra.is_empty() {
                adds.push(cname(c));
                for e in extra {
                    if !add_caps.contains(&e) {
                        add_caps.push(e);
                    }
                }
            }
        }
        let mut parts = vec![];
        if !no_drop.is_empty() {
            parts.push(format!(
                "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                named("container", &no_drop)
            ));
        }
        if !adds.is_empty() {
            let caps: Vec<String> = add_caps.iter().map(|c| format!("{c:?}")).collect();
            parts.push(format!(
                "{} must not include {} in securityContext.capabilities.add",
                named("container", &adds),
                caps.join(", ")
            ));
        }
        if !parts.is_empty() {
            push(&mut out, "unrestricted capabilities", parts.join("; "));
        }
    }
    // restrictedVolumes
    {
        let mut names = vec![];
        let mut types = vec![];
        for v in &volumes {
            let ty = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str())
                .find(|k| *k != "name");
            if let Some(ty) = ty.filter(|t| !RESTRICTED_VOLUMES.contains(t)) {
                names.push(cname(v));
                if !types.contains(&ty.to_string()) {
                    types.push(ty.to_string());
                }
            }
        }
        if !names.is_empty() {
            let tys: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
            let word = if types.len() == 1 {
                "volume type"
            } else {
                "volume types"
            };
            let verb = if names.len() == 1 { "uses" } else { "use" };
            push(
                &mut out,
                "restricted volume types",
                format!(
                    "{} {verb} restricted {word} {}",
                    named("volume", &names),
                    tys.join(", ")
                ),
            );
        }
    }
    // runAsNonRoot
    {
        let pod_true = psc["runAsNonRoot"] == true;
        let pod_false = psc["runAsNonRoot"] == false;
        let mut explicit_false = vec![];
        let mut unset = vec![];
        for c in containers(spec) {
            match c["securityContext"]["runAsNonRoot"].as_bool() {
                Some(true) => {}
                Some(false) => explicit_false.push(cname(c)),
                None if !pod_true => unset.push(cname(c)),
                None => {}
            }
        }
        let mut parts = vec![];
        if pod_false {
            parts.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        if !explicit_false.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                named("container", &explicit_false)
            ));
        }
        if !unset.is_empty() && !pod_false {
            parts.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                named("container", &unset)
            ));
        }
        if !parts.is_empty() {
            push(&mut out, "runAsNonRoot != true", parts.join("; "));
        }
    }
    // runAsUser
    {
        let mut parts = vec![];
        if psc["runAsUser"] == 0 {
            parts.push("pod must not set runAsUser=0".to_string());
        }
        let names: Vec<String> = containers(spec)
            .filter(|c| c["securityContext"]["runAsUser"] == 0)
            .map(cname)
            .collect();
        if !names.is_empty() {
            parts.push(format!(
                "{} must not set runAsUser=0",
                named("container", &names)
            ));
        }
        if !parts.is_empty() {
            push(&mut out, "runAsUser=0", parts.join("; "));
        }
    }
    // seccompProfile_restricted
    {
        let ok = |sc: &Value| {
            matches!(
                sc["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault" | "Localhost")
            )
        };
        let unconfined = |sc: &Value| sc["seccompProfile"]["type"] == "Unconfined";
        let pod_ok = ok(psc);
        let mut parts = vec![];
        if unconfined(psc) {
            parts.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\""
                    .to_string(),
            );
        }
        let bad: Vec<String> = containers(spec)
            .filter(|c| unconfined(&c["securityContext"]))
            .map(cname)
            .collect();
        if !bad.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                named("container", &bad)
            ));
        }
        let unset: Vec<String> = containers(spec)
            .filter(|c| !ok(&c["securityContext"]) && !unconfined(&c["securityContext"]))
            .map(cname)
            .collect();
        if !pod_ok && !unconfined(psc) && !unset.is_empty() {
            parts.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                named("container", &unset)
            ));
        }
        if !parts.is_empty() {
            push(&mut out, "seccompProfile", parts.join("; "));
        }
    }
    out
}

/// `violates PodSecurity "<level>:latest": a, b` (or `would violate` for warnings).
pub fn message(prefix: &str, level: Level, violations: &[String]) -> String {
    format!(
        "{prefix} PodSecurity \"{}:latest\": {}",
        level.name(),
        violations.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restricted_message_matches_upstream_order() {
        let spec = json!({"containers": [{"name": "nginx", "image": "nginx",
            "securityContext": {"privileged": true}}]});
        let v = check(Level::Restricted, &json!({}), &spec);
        assert_eq!(
            message("violates", Level::Restricted, &v),
            "violates PodSecurity \"restricted:latest\": privileged (container \"nginx\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"nginx\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"nginx\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"nginx\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert!(check(
            Level::Baseline,
            &json!({}),
            &json!({"containers": [{"name": "a"}]})
        )
        .is_empty());
        let host = json!({"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        assert_eq!(
            check(Level::Baseline, &json!({}), &host),
            vec![
                "host namespaces (hostNetwork=true)".to_string(),
                "hostPath volumes (volume \"h\")".to_string(),
                "hostPort (container \"a\" uses hostPort 8080)".to_string(),
            ]
        );
    }
}
