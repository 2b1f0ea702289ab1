//! The check kube-apiserver's ClusterIP repair controller makes (`ipallocator/controller/
//! repair.go`), run once at every start: each Service's cluster IPs are compared with the
//! configured ranges (`--service-cidr`, which may have changed since the Service was made, e.g.
//! from dual-stack to single-stack) and the allocation records, and what is wrong becomes a
//! Warning event on the Service (`kubectl describe svc` shows it):
//!
//! | reason | when |
//! | --- | --- |
//! | `ClusterIPNotValid` | not an IP, or of a family the cluster no longer serves |
//! | `ClusterIPOutOfRange` | outside the range of its family |
//! | `ClusterIPAlreadyAllocated` | recorded for another Service |
//! | `ClusterIPNotAllocated` | not recorded: the record is repaired |
//!
//! Source component `ipallocator-repair-controller`, as upstream.

use crate::handlers::{self, Ctx};
use crate::lifecycle::{self, create_internal, IpCheck};
use serde_json::{json, Value};

pub const COMPONENT: &str = "ipallocator-repair-controller";

/// Checks every stored Service once.
pub async fn run(ctx: &Ctx) {
    let Some(svc_res) = ctx.registry.by_kind("", "Service") else {
        return;
    };
    let Ok((kvs, _)) = ctx.store.list(&svc_res.prefix()).await else {
        return;
    };
    for kv in kvs {
        let Ok(svc) = handlers::decode_as(&svc_res, &kv) else {
            continue;
        };
        if svc["spec"]["type"] == "ExternalName" {
            continue;
        }
        let owner = format!(
            "{}/{}",
            svc["metadata"]["namespace"].as_str().unwrap_or(""),
            svc["metadata"]["name"].as_str().unwrap_or("")
        );
        let ips: Vec<String> = svc["spec"]["clusterIPs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        for ip in ips.iter().filter(|i| *i != "None" && !i.is_empty()) {
            let (reason, message) = match lifecycle::check_cluster_ip(ctx, ip, &owner).await {
                IpCheck::Ok => continue,
                IpCheck::NotValid => (
                    "ClusterIPNotValid",
                    format!("Cluster IP {ip} is not a valid IP; please recreate service"),
                ),
                IpCheck::FamilyNotConfigured(fam) => (
                    "ClusterIPNotValid",
                    format!("Cluster IP {ip}({fam}) is of ip family that is no longer configured on cluster; please recreate service"),
                ),
                IpCheck::OutOfRange(fam, cidr) => (
                    "ClusterIPOutOfRange",
                    format!("Cluster IP [{fam}]:{ip} is not within the service CIDR {cidr}; please recreate service"),
                ),
                IpCheck::AlreadyAllocated(fam) => (
                    "ClusterIPAlreadyAllocated",
                    format!("Cluster IP [{fam}]:{ip} was assigned to multiple services; please recreate service"),
                ),
                IpCheck::Repaired(fam) => (
                    "ClusterIPNotAllocated",
                    format!("Cluster IP [{fam}]:{ip} is not allocated; repairing"),
                ),
            };
            tracing::warn!(service = %owner, %reason, %message, "service cluster IP repair");
            warn(ctx, &svc, reason, &message).await;
        }
    }
}

async fn warn(ctx: &Ctx, svc: &Value, reason: &str, message: &str) {
    let Some(ev_res) = ctx.registry.by_kind("", "Event") else {
        return;
    };
    let now = chrono::Utc::now();
    let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let name = svc["metadata"]["name"].as_str().unwrap_or("");
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:x}", now.timestamp_nanos_opt().unwrap_or(0)), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Service", "name": name, "namespace": ns,
                           "uid": svc["metadata"]["uid"], "resourceVersion": svc["metadata"]["resourceVersion"]},
        "reason": reason, "message": message, "type": "Warning",
        "action": "ClusterIPValidation",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT, "reportingInstance": "",
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    });
    create_internal(ctx, &ev_res, &mut ev).await;
}
