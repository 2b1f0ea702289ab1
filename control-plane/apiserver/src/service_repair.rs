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
//!
//! Node ports get the same check as kube-apiserver's port repair controller
//! (`portallocator/controller/repair.go`), source `portallocator-repair-controller`: every
//! `nodePort` (the same port for TCP and UDP counted once) and `healthCheckNodePort`:
//!
//! | reason | when |
//! | --- | --- |
//! | `PortOutOfRange` | outside `--service-node-port-range` (its record is dropped) |
//! | `PortAlreadyAllocated` | recorded for another Service |
//! | `PortNotAllocated` | not recorded: the record is repaired |

use crate::handlers::{self, Ctx};
use crate::lifecycle::{self, create_internal, IpCheck, PortCheck};
use serde_json::{json, Value};

pub const COMPONENT: &str = "ipallocator-repair-controller";
pub const PORT_COMPONENT: &str = "portallocator-repair-controller";

/// The node ports of a Service as upstream's repair collects them: each `nodePort` once per
/// protocol (a port shared by TCP and UDP counts once), then `healthCheckNodePort` unless a
/// TCP node port already has it.
fn node_ports(svc: &Value) -> Vec<u64> {
    let mut out = Vec::new();
    let mut seen: Vec<(u64, Vec<String>)> = Vec::new();
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        let Some(n) = p["nodePort"].as_u64().filter(|n| *n != 0) else {
            continue;
        };
        let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
        match seen.iter_mut().find(|(port, _)| *port == n) {
            None => {
                seen.push((n, vec![proto]));
                out.push(n);
            }
            Some((_, protos)) if protos.contains(&proto) => out.push(n),
            Some((_, protos)) => protos.push(proto),
        }
    }
    if let Some(h) = svc["spec"]["healthCheckNodePort"]
        .as_u64()
        .filter(|n| *n != 0)
    {
        match seen.iter().find(|(port, _)| *port == h) {
            Some((_, protos)) if !protos.iter().any(|p| p == "TCP") => {}
            _ => out.push(h),
        }
    }
    out
}

async fn check_ports(ctx: &Ctx, svc: &Value, owner: &str) {
    let range = lifecycle::node_port_range(ctx);
    let mut held: Vec<u64> = Vec::new();
    for port in node_ports(svc) {
        // The same port twice in one Service (same protocol) is a duplicate, as upstream.
        let check = if held.contains(&port) {
            PortCheck::AlreadyAllocated
        } else {
            held.push(port);
            lifecycle::check_node_port(ctx, port, owner).await
        };
        let (reason, message) = match check {
            PortCheck::Ok => continue,
            PortCheck::OutOfRange => (
                "PortOutOfRange",
                format!(
                    "Port {port} is not within the port range {range}; please recreate service"
                ),
            ),
            PortCheck::AlreadyAllocated => (
                "PortAlreadyAllocated",
                format!("Port {port} was assigned to multiple services; please recreate service"),
            ),
            PortCheck::Repaired => (
                "PortNotAllocated",
                format!("Port {port} is not allocated; repairing"),
            ),
        };
        tracing::warn!(service = %owner, %reason, %message, "service node port repair");
        event(ctx, svc, reason, &message, PORT_COMPONENT, None).await;
    }
}

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
            event(
                ctx,
                &svc,
                reason,
                &message,
                COMPONENT,
                Some("ClusterIPValidation"),
            )
            .await;
        }
        check_ports(ctx, &svc, &owner).await;
    }
}

/// A Warning event on the Service from `component`.
async fn event(
    ctx: &Ctx,
    svc: &Value,
    reason: &str,
    message: &str,
    component: &str,
    action: Option<&str>,
) {
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
        "source": {"component": component},
        "reportingComponent": component, "reportingInstance": "",
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    });
    if let Some(a) = action {
        ev["action"] = json!(a);
    }
    create_internal(ctx, &ev_res, &mut ev).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ports_are_collected_as_upstream() {
        let svc = json!({"spec": {
            "ports": [
                {"port": 53, "protocol": "UDP", "nodePort": 30053},
                {"port": 53, "protocol": "TCP", "nodePort": 30053},
                {"port": 80, "nodePort": 30080},
                {"port": 81, "nodePort": 30080},
                {"port": 82},
            ],
            "healthCheckNodePort": 30099,
        }});
        // 30053 for TCP and UDP once; 30080 twice for TCP (a duplicate); the health port.
        assert_eq!(node_ports(&svc), vec![30053, 30080, 30080, 30099]);
        let shared = json!({"spec": {"ports": [{"port": 80, "nodePort": 30080}], "healthCheckNodePort": 30080}});
        // The health port on a TCP node port is a duplicate; on a UDP-only one it is not.
        assert_eq!(node_ports(&shared), vec![30080, 30080]);
        let udp = json!({"spec": {"ports": [{"port": 80, "protocol": "UDP", "nodePort": 30080}], "healthCheckNodePort": 30080}});
        assert_eq!(node_ports(&udp), vec![30080]);
    }
}
