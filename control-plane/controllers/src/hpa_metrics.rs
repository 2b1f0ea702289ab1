//! The HPA's replica calculation for `Resource` metrics (upstream's
//! `ReplicaCalculator.GetResourceReplicas`, simplified): the pods the target's scale selector
//! names, their usage from `metrics.k8s.io`, their requests; utilization (or average value)
//! against the target with upstream's 10% tolerance. Pods without metrics are left out (upstream
//! also weighs them conservatively; Skiff does not).

use k8s_openapi::api::autoscaling::v2::{
    MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;
use std::collections::HashMap;

/// Upstream's default tolerance: no scaling while usage is within 10% of the target.
const TOLERANCE: f64 = 0.1;

/// A quantity in base units (cores for cpu, bytes for memory).
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

/// A quantity for status: millicores for cpu, bytes otherwise.
fn format_quantity(resource: &str, v: f64) -> Quantity {
    if resource == "cpu" {
        Quantity(format!("{}m", (v * 1000.0).round() as i64))
    } else {
        Quantity(format!("{}", v.round() as i64))
    }
}

/// What one Resource metric recommends: the replica count and the metric's current status.
pub struct Recommendation {
    pub replicas: i32,
    pub status: MetricStatus,
    /// Upstream's words for the metric, e.g. "cpu resource utilization (percentage of request)".
    pub description: String,
}

/// The recommendation for metric `m` of an autoscaler in `ns` whose target runs `current`
/// replicas selected by `selector` (the scale's `status.selector`); the error is upstream's
/// message.
pub async fn resource_replicas(
    client: &Client,
    ns: &str,
    m: &MetricSpec,
    current: i32,
    selector: &str,
) -> Result<Recommendation, String> {
    let Some(src) = m.resource.as_ref() else {
        return Err("invalid resource metric source: missing resource".into());
    };
    let name = src.name.as_str();
    let utilization_target = src.target.average_utilization;
    let value_target = src
        .target
        .average_value
        .as_ref()
        .and_then(|q| quantity(&q.0));
    let no_metrics = || {
        format!(
            "failed to get {name} utilization: unable to get metrics for resource {name}: no metrics returned from resource metrics API"
        )
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| format!("unable to get pods while calculating replica count: {e}"))?;
    let live: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed") | Some("Succeeded")
            )
        })
        .collect();
    if live.is_empty() {
        return Err(no_metrics());
    }
    let req = http::Request::get(format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"))
        .body(Vec::new())
        .expect("a GET request");
    let text = client.request_text(req).await.map_err(|e| {
        format!(
            "failed to get {name} utilization: unable to get metrics for resource {name}: unable to fetch metrics from resource metrics API: {e}"
        )
    })?;
    let metrics: Value = serde_json::from_str(&text).unwrap_or_default();
    let mut usage_by_pod: HashMap<String, f64> = HashMap::new();
    for item in metrics["items"].as_array().into_iter().flatten() {
        let pod = item["metadata"]["name"].as_str().unwrap_or("").to_string();
        let total: f64 = item["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["usage"][name].as_str().and_then(quantity))
            .sum();
        usage_by_pod.insert(pod, total);
    }
    let mut usage = 0.0;
    let mut requests = 0.0;
    let mut counted = 0usize;
    for p in &live {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        let Some(u) = usage_by_pod.get(&pod_name) else {
            continue;
        };
        if utilization_target.is_some() {
            for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
                let r = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .and_then(|r| r.get(name))
                    .and_then(|q| quantity(&q.0));
                match r {
                    Some(r) => requests += r,
                    None => {
                        return Err(format!(
                            "failed to get {name} utilization: missing request for {name} in container {} of Pod {pod_name}",
                            c.name
                        ))
                    }
                }
            }
        }
        usage += u;
        counted += 1;
    }
    if counted == 0 {
        return Err(no_metrics());
    }
    let average = usage / counted as f64;
    let (ratio, current_status, description) = match (utilization_target, value_target) {
        (Some(target), _) => {
            if requests <= 0.0 {
                return Err(format!(
                    "failed to get {name} utilization: missing request for {name}"
                ));
            }
            let utilization = (usage * 100.0 / requests) as i32;
            (
                utilization as f64 / target.max(1) as f64,
                MetricValueStatus {
                    average_utilization: Some(utilization),
                    average_value: Some(format_quantity(name, average)),
                    value: None,
                },
                format!("{name} resource utilization (percentage of request)"),
            )
        }
        (None, Some(target)) if target > 0.0 => (
            average / target,
            MetricValueStatus {
                average_utilization: None,
                average_value: Some(format_quantity(name, average)),
                value: None,
            },
            format!("{name} resource"),
        ),
        _ => {
            return Err(format!(
                "invalid resource metric source: neither a utilization target nor a value target is set for {name}"
            ))
        }
    };
    let replicas = if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * counted as f64).ceil() as i32
    };
    Ok(Recommendation {
        replicas,
        status: MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: name.to_string(),
                current: current_status,
            }),
            ..Default::default()
        },
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::quantity;

    #[test]
    fn quantities() {
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("1500000000n"), Some(1.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Ki"), Some(1024.0));
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1x"), None);
    }
}
