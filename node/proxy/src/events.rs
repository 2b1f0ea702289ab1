//! Events the proxy records about Services it cannot serve as asked, as kube-proxy does:
//! `KubeProxyIncorrectIPVersion` (Warning, action `GatherEndpoints`) when `spec.externalIPs` or
//! `spec.loadBalancerSourceRanges` hold addresses of a family this node's proxy has no table
//! for (an IPv6 address on a single-stack IPv4 cluster): `<values> in <field> has incorrect IP
//! version`. Each (Service, message) is recorded once per proxy run; `skiff-events` correlates
//! repeats across restarts.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;

use crate::rules::Family;

/// The reason upstream's proxy gives.
pub const INCORRECT_IP_VERSION: &str = "KubeProxyIncorrectIPVersion";

/// What was recorded already (Service uid, message).
#[derive(Default)]
pub struct Warned {
    seen: HashSet<(String, String)>,
}

fn family_of_value(v: &str) -> Option<Family> {
    let addr = v.trim().split('/').next().unwrap_or("");
    addr.parse::<IpAddr>().ok().map(|a| Family::of(&a))
}

/// The warnings about one Service: `(field, values)` of the families not in `families`.
pub fn wrong_family(svc: &Service, families: &[Family]) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return vec![];
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return vec![];
    }
    let mut out = vec![];
    let fields = [
        ("externalIPs", spec.external_ips.clone().unwrap_or_default()),
        (
            "loadBalancerSourceRanges",
            spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        ),
    ];
    for (field, values) in fields {
        let bad: Vec<String> = values
            .into_iter()
            .filter(|v| family_of_value(v).is_some_and(|f| !families.contains(&f)))
            .collect();
        if !bad.is_empty() {
            out.push((field.to_string(), bad.join(",")));
        }
    }
    out
}

impl Warned {
    /// Records the warnings of `services` not recorded yet.
    pub fn check(
        &mut self,
        client: &kube::Client,
        node: &str,
        families: &[Family],
        services: &[Arc<Service>],
    ) {
        for svc in services {
            for (field, values) in wrong_family(svc, families) {
                let message = format!("{values} in {field} has incorrect IP version");
                let uid = svc.uid().unwrap_or_default();
                if !self.seen.insert((uid, message.clone())) {
                    continue;
                }
                tracing::warn!(service = %format!("{}/{}", svc.namespace().unwrap_or_default(), svc.name_any()), %message, "incorrect IP version");
                skiff_events::record_later(client, event(svc, node, &message));
            }
        }
    }
}

fn event(svc: &Service, node: &str, message: &str) -> Event {
    let now = k8s_openapi::jiff::Timestamp::now();
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", svc.name_any(), now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Service".into()),
            name: Some(svc.name_any()),
            namespace: Some(ns),
            uid: svc.uid(),
            ..Default::default()
        },
        reason: Some(INCORRECT_IP_VERSION.into()),
        message: Some(message.into()),
        type_: Some("Warning".into()),
        action: Some("GatherEndpoints".into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("kube-proxy".into()),
        reporting_instance: Some(format!("kube-proxy-{node}")),
        source: Some(EventSource {
            component: Some("kube-proxy".into()),
            host: Some(node.into()),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServiceSpec;

    #[test]
    fn other_family_external_ips_are_reported() {
        let svc = Service {
            spec: Some(ServiceSpec {
                external_ips: Some(vec!["192.0.2.1".into(), "2001:db8::1".into()]),
                load_balancer_source_ranges: Some(vec!["2001:db8::/64".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let w = wrong_family(&svc, &[Family::V4]);
        assert_eq!(
            w,
            vec![
                ("externalIPs".to_string(), "2001:db8::1".to_string()),
                (
                    "loadBalancerSourceRanges".to_string(),
                    "2001:db8::/64".to_string()
                ),
            ]
        );
        assert!(wrong_family(&svc, &[Family::V4, Family::V6]).is_empty());
    }
}
