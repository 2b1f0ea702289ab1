//! ListMetricDescriptors / ListPodSandboxMetrics: cAdvisor-named metrics read from the same
//! cgroup v1 files and pod netns counters as the stats verbs. CPU time is in nanoseconds (the
//! CRI metric value is an integer).

use skiff_proto::cri;

use crate::server::State;
use crate::store::container::Container;
use crate::store::sandbox::Sandbox;

const CONTAINER_LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];
const NETWORK_LABELS: [&str; 3] = ["interface", "namespace", "pod"];

/// (name, help, is counter, is a network metric)
const METRICS: [(&str, &str, bool, bool); 8] = [
    (
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed, in nanoseconds",
        true,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage, including all memory regardless of when it was accessed",
        false,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set (usage minus inactive file cache)",
        false,
        false,
    ),
    ("container_memory_rss", "Size of RSS in bytes", false, false),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit of the container",
        false,
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container",
        false,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        true,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        true,
        true,
    ),
];

pub(crate) fn descriptors() -> cri::ListMetricDescriptorsResponse {
    cri::ListMetricDescriptorsResponse {
        descriptors: METRICS
            .iter()
            .map(|(name, help, _, net)| cri::MetricDescriptor {
                name: name.to_string(),
                help: help.to_string(),
                label_keys: if *net {
                    NETWORK_LABELS.iter().map(|s| s.to_string()).collect()
                } else {
                    CONTAINER_LABELS.iter().map(|s| s.to_string()).collect()
                },
            })
            .collect(),
    }
}

fn metric(name: &str, ts: i64, labels: &[String], value: u64) -> cri::Metric {
    let counter = METRICS.iter().any(|(n, _, c, _)| *n == name && *c);
    cri::Metric {
        name: name.to_string(),
        timestamp: ts,
        metric_type: if counter {
            cri::MetricType::Counter
        } else {
            cri::MetricType::Gauge
        } as i32,
        label_values: labels.to_vec(),
        value: Some(cri::UInt64Value { value }),
    }
}

fn cgroup_metrics(path: &str, ts: i64, labels: &[String]) -> Vec<cri::Metric> {
    let mut out = Vec::new();
    if let Some(ns) = crate::cgroups::cpu_usage_ns(path) {
        out.push(metric("container_cpu_usage_seconds_total", ts, labels, ns));
    }
    if let Some(m) = crate::cgroups::memory(path) {
        out.push(metric("container_memory_usage_bytes", ts, labels, m.usage));
        out.push(metric(
            "container_memory_working_set_bytes",
            ts,
            labels,
            m.working_set,
        ));
        out.push(metric("container_memory_rss", ts, labels, m.rss));
        out.push(metric(
            "container_spec_memory_limit_bytes",
            ts,
            labels,
            m.limit,
        ));
    }
    if let Some(n) = crate::cgroups::pids(path) {
        out.push(metric("container_processes", ts, labels, n));
    }
    out
}

fn container_metrics(st: &State, sb: &Sandbox, ct: &Container, ts: i64) -> cri::ContainerMetrics {
    let meta = sb.metadata();
    let labels = vec![
        ct.metadata().name,
        ct.id.clone(),
        super::container_status::image_spec(st, ct).image,
        ct.id.clone(),
        meta.namespace,
        meta.name,
    ];
    cri::ContainerMetrics {
        container_id: ct.id.clone(),
        metrics: cgroup_metrics(&super::spec::cgroups_path(sb, &ct.id), ts, &labels),
    }
}

pub(crate) fn list(st: &State) -> cri::ListPodSandboxMetricsResponse {
    let ts = crate::util::now_nanos();
    let containers = st.containers.list();
    let pod_metrics = st
        .sandboxes
        .list()
        .into_iter()
        .filter(|sb| sb.cri_state() == cri::PodSandboxState::SandboxReady)
        .map(|sb| {
            let meta = sb.metadata();
            // The pod as a whole: the "POD" container of cAdvisor, on the pod's cgroup parent.
            let labels = vec![
                "POD".to_string(),
                sb.id.clone(),
                String::new(),
                sb.id.clone(),
                meta.namespace.clone(),
                meta.name.clone(),
            ];
            let parent = format!("/{}", sb.cgroup_parent.trim_matches('/'));
            let mut metrics = cgroup_metrics(&parent, ts, &labels);
            if let Some(net) = super::stats::network(&sb, ts) {
                for i in net.interfaces {
                    let l = vec![i.name.clone(), meta.namespace.clone(), meta.name.clone()];
                    if let Some(v) = i.rx_bytes {
                        metrics.push(metric(
                            "container_network_receive_bytes_total",
                            ts,
                            &l,
                            v.value,
                        ));
                    }
                    if let Some(v) = i.tx_bytes {
                        metrics.push(metric(
                            "container_network_transmit_bytes_total",
                            ts,
                            &l,
                            v.value,
                        ));
                    }
                }
            }
            cri::PodSandboxMetrics {
                pod_sandbox_id: sb.id.clone(),
                metrics,
                container_metrics: containers
                    .iter()
                    .filter(|c| {
                        c.sandbox_id == sb.id
                            && c.cri_state() == cri::ContainerState::ContainerRunning
                    })
                    .map(|c| container_metrics(st, &sb, c, ts))
                    .collect(),
            }
        })
        .collect();
    cri::ListPodSandboxMetricsResponse { pod_metrics }
}
