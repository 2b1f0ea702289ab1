//! The HPA's replica calculation for `Resource` metrics (upstream's
//! `ReplicaCalculator.GetResourceReplicas`, simplified): the pods the target's scale selector
//! names, their usage from `metrics.k8s.io`, their requests; utilization (or average value)
//! against the target with upstream's 10% tolerance. Pods are grouped as upstream does: deleted
//! and failed pods are left out; pending pods, and cpu samples of pods not (or only just) ready
//! are not trusted; on a scale-up those pods and the pods without a sample count as idle, on a
//! scale-down the pods without a sample count as using their request (or the target, if
//! higher), and a result whose direction that flips stays at the current count.

use k8s_openapi::api::autoscaling::v2::{
    MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

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

/// One pod's sample from the resource metrics API: usage in milli-units (millicores, or bytes
/// x 1000), when it was taken and the window it covers.
#[derive(Clone, Debug)]
pub struct PodMetric {
    pub value: i64,
    pub timestamp: Timestamp,
    pub window: Duration,
}

/// upstream's `--horizontal-pod-autoscaler-cpu-initialization-period` default.
pub const CPU_INITIALIZATION_PERIOD: Duration = Duration::from_secs(300);
/// upstream's `--horizontal-pod-autoscaler-initial-readiness-delay` default.
pub const INITIAL_READINESS_DELAY: Duration = Duration::from_secs(30);

/// The target's pods sorted as upstream's `groupPods` does.
#[derive(Debug, Default, PartialEq)]
pub struct Groups {
    /// Pods whose sample counts as it is.
    pub ready: usize,
    /// Pending pods, and (for cpu) pods not ready yet or whose sample may predate readiness.
    pub unready: BTreeSet<String>,
    /// Running pods without a sample.
    pub missing: BTreeSet<String>,
    /// Pods being deleted or failed: left out altogether.
    pub ignored: BTreeSet<String>,
}

fn ts(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Timestamp {
    t.0
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

/// upstream's `groupPods`: which pods count, which are unready (their cpu sample is not
/// trusted: never ready, or ready so recently that the sample may cover the start), which
/// lack a sample, and which are left out (deleted or failed).
pub fn group_pods(
    pods: &[Pod],
    metrics: &HashMap<String, PodMetric>,
    resource: &str,
    now: Timestamp,
) -> Groups {
    let mut g = Groups::default();
    for p in pods {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.clone().unwrap_or_default();
        let phase = status.phase.as_deref().unwrap_or("");
        if p.metadata.deletion_timestamp.is_some() || phase == "Failed" {
            g.ignored.insert(name);
            continue;
        }
        if phase == "Pending" {
            g.unready.insert(name);
            continue;
        }
        let Some(metric) = metrics.get(&name) else {
            g.missing.insert(name);
            continue;
        };
        if resource == "cpu" {
            let ready = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready");
            let unready = match (ready, status.start_time.as_ref()) {
                (Some(cond), Some(start)) => {
                    let changed = cond
                        .last_transition_time
                        .as_ref()
                        .map(ts)
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    if add(ts(start), CPU_INITIALIZATION_PERIOD) > now {
                        // Starting up: the sample must be wholly after the pod became ready.
                        cond.status == "False" || metric.timestamp < add(changed, metric.window)
                    } else {
                        // Unready and never ready since its start.
                        cond.status == "False" && add(ts(start), INITIAL_READINESS_DELAY) > changed
                    }
                }
                _ => true,
            };
            if unready {
                g.unready.insert(name);
                continue;
            }
        }
        g.ready += 1;
    }
    g
}

/// What the calculation of one metric found: the replica count, the usage (utilization in
/// percent of requests, if there is a utilization target) and the average raw usage in
/// milli-units, both over the pods that count.
#[derive(Debug, PartialEq)]
pub struct Calculated {
    pub replicas: i32,
    pub utilization: Option<i32>,
    pub average: i64,
}

/// Usage over requests of the pods with a sample and a request: (ratio to the target,
/// utilization, raw average) as upstream's `GetResourceUtilizationRatio`.
fn utilization_ratio(
    metrics: &HashMap<String, i64>,
    requests: &HashMap<String, i64>,
    target: i32,
) -> Result<(f64, i32, i64), String> {
    let (mut used, mut requested, mut n) = (0i64, 0i64, 0i64);
    for (pod, v) in metrics {
        if let Some(r) = requests.get(pod) {
            used += v;
            requested += r;
            n += 1;
        }
    }
    if requested == 0 {
        return Err("no metrics returned matched known pods".into());
    }
    let utilization = (used * 100 / requested) as i32;
    Ok((
        utilization as f64 / target.max(1) as f64,
        utilization,
        used / n,
    ))
}

/// upstream's `GetResourceReplicas` after the fetch: `current` replicas, samples per pod,
/// requests per pod (milli-units), a utilization target in percent. Unready pods are left out
/// and, on a scale-up, counted at 0 usage; pods without a sample count at 0 usage on a
/// scale-up and at the target (at least 100% of their request) on a scale-down; the result
/// stays at `current` if counting them changes the direction or brings usage within the
/// tolerance.
pub fn utilization_replicas(
    current: i32,
    target: i32,
    mut metrics: HashMap<String, i64>,
    requests: &HashMap<String, i64>,
    groups: &Groups,
) -> Result<Calculated, String> {
    for p in groups.ignored.iter().chain(groups.unready.iter()) {
        metrics.remove(p);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let (ratio, utilization, average) = utilization_ratio(&metrics, requests, target)?;
    let done = |replicas| Calculated {
        replicas,
        utilization: Some(utilization),
        average,
    };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(done(current));
        }
        return Ok(done((ratio * groups.ready as f64).ceil() as i32));
    }
    for p in &groups.missing {
        if ratio < 1.0 {
            let fallback = target.max(100) as i64;
            metrics.insert(
                p.clone(),
                requests.get(p).copied().unwrap_or(0) * fallback / 100,
            );
        } else if ratio > 1.0 {
            metrics.insert(p.clone(), 0);
        }
    }
    if scale_up_with_unready {
        for p in &groups.unready {
            metrics.insert(p.clone(), 0);
        }
    }
    let (new_ratio, _, _) = utilization_ratio(&metrics, requests, target)?;
    Ok(done(settle(current, ratio, new_ratio, metrics.len())))
}

/// The replica count once the pods without a trusted sample are counted: none if that flips
/// the direction or lands within the tolerance (upstream's checks).
fn settle(current: i32, ratio: f64, new_ratio: f64, counted: usize) -> i32 {
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (ratio < 1.0 && new_ratio > 1.0)
        || (ratio > 1.0 && new_ratio < 1.0)
    {
        return current;
    }
    let replicas = (new_ratio * counted as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return current;
    }
    replicas
}

/// upstream's `calcPlainMetricReplicas` (a Resource metric with an `averageValue` target,
/// milli-units): as [`utilization_replicas`], the average per pod against the target.
pub fn average_value_replicas(
    current: i32,
    target: i64,
    mut metrics: HashMap<String, i64>,
    groups: &Groups,
) -> Result<Calculated, String> {
    for p in groups.ignored.iter().chain(groups.unready.iter()) {
        metrics.remove(p);
    }
    if metrics.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let usage_ratio = |m: &HashMap<String, i64>| {
        let avg = m.values().sum::<i64>() / m.len() as i64;
        (avg as f64 / target.max(1) as f64, avg)
    };
    let (ratio, average) = usage_ratio(&metrics);
    let done = |replicas| Calculated {
        replicas,
        utilization: None,
        average,
    };
    let scale_up_with_unready = !groups.unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && groups.missing.is_empty() {
        if (1.0 - ratio).abs() <= TOLERANCE {
            return Ok(done(current));
        }
        return Ok(done((ratio * groups.ready as f64).ceil() as i32));
    }
    for p in &groups.missing {
        metrics.insert(p.clone(), if ratio < 1.0 { target } else { 0 });
    }
    if scale_up_with_unready {
        for p in &groups.unready {
            metrics.insert(p.clone(), 0);
        }
    }
    let (new_ratio, _) = usage_ratio(&metrics);
    Ok(done(settle(current, ratio, new_ratio, metrics.len())))
}

/// A Go duration as the metrics API writes a window ("10s", "1m0s", "1.5s").
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = 0.0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let v: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += v * mult;
        rest = &rest[u..];
    }
    Some(Duration::from_secs_f64(total))
}

/// The samples of `resource` per pod in a PodMetricsList (summed over the containers).
fn samples(list: &Value, resource: &str) -> HashMap<String, PodMetric> {
    let mut out = HashMap::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let pod = item["metadata"]["name"].as_str().unwrap_or("").to_string();
        let total: f64 = item["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["usage"][resource].as_str().and_then(quantity))
            .sum();
        let timestamp = item["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or_else(Timestamp::now);
        let window = item["window"]
            .as_str()
            .and_then(go_duration)
            .unwrap_or(Duration::from_secs(30));
        out.insert(
            pod,
            PodMetric {
                value: (total * 1000.0).round() as i64,
                timestamp,
                window,
            },
        );
    }
    out
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
    let failed = |e: String| {
        if utilization_target.is_some() {
            format!("failed to get {name} utilization: {e}")
        } else {
            format!("failed to get {name} usage: {e}")
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| {
            failed(format!(
                "unable to get pods while calculating replica count: {e}"
            ))
        })?;
    let req = http::Request::get(format!("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"))
        .body(Vec::new())
        .expect("a GET request");
    let text = client.request_text(req).await.map_err(|e| {
        failed(format!(
            "unable to get metrics for resource {name}: unable to fetch metrics from resource metrics API: {e}"
        ))
    })?;
    let metrics: Value = serde_json::from_str(&text).unwrap_or_default();
    // The metrics API answers for the namespace: keep the samples of the selected pods.
    let mut metrics = samples(&metrics, name);
    let selected: BTreeSet<&str> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    metrics.retain(|pod, _| selected.contains(pod.as_str()));
    if metrics.is_empty() {
        return Err(failed(format!(
            "unable to get metrics for resource {name}: no metrics returned from resource metrics API"
        )));
    }
    if list.items.is_empty() {
        return Err(failed(
            "no pods returned by selector while calculating replica count".into(),
        ));
    }
    let groups = group_pods(&list.items, &metrics, name, Timestamp::now());
    let values: HashMap<String, i64> = metrics.iter().map(|(k, v)| (k.clone(), v.value)).collect();
    let (calc, description) = match (utilization_target, value_target) {
        (Some(target), _) => {
            let requests = pod_requests(&list.items, name).map_err(failed)?;
            (
                utilization_replicas(current, target, values, &requests, &groups)
                    .map_err(failed)?,
                format!("{name} resource utilization (percentage of request)"),
            )
        }
        (None, Some(target)) if target > 0.0 => (
            average_value_replicas(
                current,
                (target * 1000.0).round() as i64,
                values,
                &groups,
            )
            .map_err(failed)?,
            format!("{name} resource"),
        ),
        _ => {
            return Err(format!(
                "invalid resource metric source: neither a utilization target nor a value target is set for {name}"
            ))
        }
    };
    Ok(Recommendation {
        replicas: calc.replicas,
        status: MetricStatus {
            type_: "Resource".into(),
            resource: Some(ResourceMetricStatus {
                name: name.to_string(),
                current: MetricValueStatus {
                    average_utilization: calc.utilization,
                    average_value: Some(format_quantity(name, calc.average as f64 / 1000.0)),
                    value: None,
                },
            }),
            ..Default::default()
        },
        description,
    })
}

/// Each pod's request of `resource` (milli-units, summed over its containers), as upstream's
/// `calculatePodRequests`: a container without one is an error.
pub fn pod_requests(pods: &[Pod], resource: &str) -> Result<HashMap<String, i64>, String> {
    let mut out = HashMap::new();
    for p in pods {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        let mut total = 0i64;
        for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
            let r = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get(resource))
                .and_then(|q| quantity(&q.0));
            match r {
                Some(r) => total += (r * 1000.0).round() as i64,
                None => {
                    return Err(format!(
                        "missing request for {resource} in container {} of Pod {pod_name}",
                        c.name
                    ))
                }
            }
        }
        out.insert(pod_name, total);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn quantities() {
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("1500000000n"), Some(1.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Ki"), Some(1024.0));
        assert_eq!(quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1x"), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("x"), None);
    }

    /// A running pod `name`, started `started` s before `now`, Ready (or not) since `since` s
    /// before `now`.
    fn pod(name: &str, now: Timestamp, started: i64, ready: Option<(bool, i64)>) -> Pod {
        let ago = |s: i64| Time(now - SignedDuration::from_secs(s));
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                start_time: Some(ago(started)),
                conditions: ready.map(|(r, since)| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: if r { "True" } else { "False" }.into(),
                        last_transition_time: Some(ago(since)),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sample(value: i64, now: Timestamp) -> PodMetric {
        PodMetric {
            value,
            timestamp: now,
            window: Duration::from_secs(30),
        }
    }

    /// Pods `p0..` with cpu samples `levels` (millicores; `None`: no sample), each requesting
    /// `request` millicores, Ready per `ready` for 10 minutes.
    fn calc(
        current: i32,
        target: i32,
        levels: &[Option<i64>],
        ready: &[bool],
        request: i64,
    ) -> Result<Calculated, String> {
        let now = Timestamp::now();
        let mut pods = vec![];
        let mut metrics = HashMap::new();
        for (i, l) in levels.iter().enumerate() {
            let name = format!("p{i}");
            pods.push(pod(&name, now, 600, Some((ready[i], 600))));
            if let Some(l) = l {
                metrics.insert(name, sample(*l, now));
            }
        }
        let groups = group_pods(&pods, &metrics, "cpu", now);
        let requests: HashMap<String, i64> = pods
            .iter()
            .map(|p| (p.metadata.name.clone().unwrap(), request))
            .collect();
        let values = metrics.into_iter().map(|(k, v)| (k, v.value)).collect();
        utilization_replicas(current, target, values, &requests, &groups)
    }

    #[test]
    fn utilization_scale_up_and_down() {
        // 3 pods at 30%, 50%, 70% of 1 core against 30%: 50% -> 5 replicas.
        let r = calc(3, 30, &[Some(300), Some(500), Some(700)], &[true; 3], 1000).unwrap();
        assert_eq!((r.replicas, r.utilization, r.average), (5, Some(50), 500));
        // 5 pods at 10-50% (30% on average) against 50%: 3 replicas.
        let levels = [Some(100), Some(300), Some(500), Some(250), Some(350)];
        let r = calc(5, 50, &levels, &[true; 5], 1000).unwrap();
        assert_eq!((r.replicas, r.utilization), (3, Some(30)));
        // Within 10% of the target: no change.
        let r = calc(3, 50, &[Some(520), Some(540), Some(560)], &[true; 3], 1000).unwrap();
        assert_eq!(r.replicas, 3);
    }

    #[test]
    fn unready_pods_count_as_idle_on_a_scale_up() {
        // Ready pods at 50% and 70% (60%) against 30% would double; the unready pod counted
        // at 0 makes it 40%: 4 replicas.
        let r = calc(
            3,
            30,
            &[Some(300), Some(500), Some(700)],
            &[false, true, true],
            1000,
        )
        .unwrap();
        assert_eq!((r.replicas, r.utilization), (4, Some(60)));
        // A ready pod at 40% against 30% with two unready ones: counted at 0 the usage is
        // 13%, below the target, so no scale-up (and no scale-down either).
        let r = calc(
            3,
            30,
            &[Some(400), Some(500), Some(700)],
            &[true, false, false],
            1000,
        )
        .unwrap();
        assert_eq!((r.replicas, r.utilization), (3, Some(40)));
    }

    #[test]
    fn unready_pods_are_left_out_of_a_scale_down() {
        // Ready pods at 10% and 20% against 50%: 2 x 0.3 -> 1 replica; the unready one (at
        // 90%) does not count.
        let r = calc(
            3,
            50,
            &[Some(900), Some(100), Some(200)],
            &[false, true, true],
            1000,
        )
        .unwrap();
        assert_eq!((r.replicas, r.utilization), (1, Some(15)));
    }

    #[test]
    fn missing_metrics() {
        // Scale-up: the pod without a sample counts at 0. 1900m of 1 core against 100%, the
        // other pod at 0: 95%, within the tolerance -> stays at 2.
        let r = calc(2, 100, &[Some(1900), None], &[true; 2], 1000).unwrap();
        assert_eq!((r.replicas, r.utilization), (2, Some(190)));
        // 4000m against 100%, one of 3 pods missing: (4000+0+0)/3000 = 133% -> 4.
        let r = calc(3, 100, &[Some(4000), None, None], &[true; 3], 1000).unwrap();
        assert_eq!(r.replicas, 4);
        // Scale-down: the missing pod counts at 100% of its request. 100m and 0 against 50%
        // with one of 3 missing: (100+0+1000)/3000 = 36% -> ceil(0.73 x 3) = 3.
        let r = calc(3, 50, &[Some(100), Some(0), None], &[true; 3], 1000).unwrap();
        assert_eq!((r.replicas, r.utilization), (3, Some(5)));
        // ... and at the target if it is above 100%: 200% target, 100m and 200m, one missing:
        // (100+200+2000)/3000 = 76% -> ratio 0.38 -> 2.
        let r = calc(3, 200, &[Some(100), Some(200), None], &[true; 3], 1000).unwrap();
        assert_eq!(r.replicas, 2);
        // Counting the missing pod must not flip a scale-down into a scale-up.
        let r = calc(2, 60, &[Some(500), None], &[true; 2], 1000).unwrap();
        assert_eq!(r.replicas, 2);
    }

    #[test]
    fn no_trusted_sample() {
        let e = calc(2, 50, &[Some(100), Some(100)], &[false, false], 1000).unwrap_err();
        assert_eq!(
            e,
            "did not receive metrics for targeted pods (pods might be unready)"
        );
    }

    #[test]
    fn grouping() {
        let now = Timestamp::now();
        let s = |v| sample(v, now);
        let mut deleted = pod("deleted", now, 600, Some((true, 600)));
        deleted.metadata.deletion_timestamp = Some(Time(now));
        let mut failed = pod("failed", now, 600, Some((true, 600)));
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut pending = pod("pending", now, 5, None);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = vec![
            deleted,
            failed,
            pending,
            pod("missing", now, 600, Some((true, 600))),
            // Started a minute ago, ready for 40 s: its 30 s sample is after readiness.
            pod("fresh", now, 60, Some((true, 40))),
            // Ready 10 s ago: its 30 s sample covers the start.
            pod("just-ready", now, 60, Some((true, 10))),
            // Unready within the initialization period.
            pod("starting", now, 60, Some((false, 50))),
            // Old and unready for long after its readiness delay: was ready once, counts.
            pod("flapped", now, 3600, Some((false, 600))),
            // Old, never ready since its start.
            pod("never-ready", now, 3600, Some((false, 3590))),
            pod("no-condition", now, 600, None),
        ];
        let metrics: HashMap<String, PodMetric> = [
            "deleted",
            "failed",
            "pending",
            "fresh",
            "just-ready",
            "starting",
            "flapped",
            "never-ready",
            "no-condition",
        ]
        .iter()
        .map(|n| (n.to_string(), s(100)))
        .collect();
        let g = group_pods(&pods, &metrics, "cpu", now);
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(g.ignored, set(&["deleted", "failed"]));
        assert_eq!(g.missing, set(&["missing"]));
        assert_eq!(
            g.unready,
            set(&[
                "pending",
                "just-ready",
                "starting",
                "never-ready",
                "no-condition"
            ])
        );
        assert_eq!(g.ready, 2);
        // Memory samples are trusted whatever the readiness.
        let g = group_pods(&pods, &metrics, "memory", now);
        assert_eq!(g.unready, set(&["pending"]));
        assert_eq!(g.ready, 6);
    }

    #[test]
    fn average_value() {
        let now = Timestamp::now();
        let pods: Vec<Pod> = (0..4)
            .map(|i| pod(&format!("p{i}"), now, 600, Some((true, 600))))
            .collect();
        let metrics: HashMap<String, PodMetric> = (0..4)
            .map(|i| (format!("p{i}"), sample(200 * (i + 1), now)))
            .collect();
        let g = group_pods(&pods, &metrics, "cpu", now);
        let values = metrics.into_iter().map(|(k, v)| (k, v.value)).collect();
        // Average 500m against 250m: 8 replicas.
        let r = average_value_replicas(4, 250, values, &g).unwrap();
        assert_eq!((r.replicas, r.average, r.utilization), (8, 500, None));
    }
}
