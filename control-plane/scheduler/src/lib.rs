//! Skiff's scheduler. A client of the API server like any other (it could run apart): it watches
//! pods with no node, picks a Ready, schedulable node with the fewest pods, and POSTs a Binding.
//!
//! Start with [`run`]. Filtering is by node readiness and `spec.unschedulable`; scoring is
//! least-pods. Resource fit, taints/tolerations and affinity come with the scheduler issue.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Event, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use std::collections::HashMap;
use std::time::Duration;

pub const SCHEDULER_NAME: &str = "default-scheduler";

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

fn node_ready(n: &Node) -> bool {
    let schedulable = !n
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    schedulable && ready
}

/// Picks the feasible node with the fewest pods (ties by name, for stable tests).
pub fn pick_node<'a>(nodes: &'a [Node], pods: &[Pod]) -> Option<&'a str> {
    let mut load: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            *load.entry(n).or_default() += 1;
        }
    }
    nodes
        .iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| n.metadata.name.as_deref())
        .min_by_key(|n| (load.get(n).copied().unwrap_or(0), n.to_string()))
}

async fn event(client: &Client, pod: &Pod, type_: &str, reason: &str, message: String) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let now = k8s_openapi::jiff::Timestamp::now();
    let ev = Event {
        metadata: ObjectMeta {
            // `<pod>.<unix nanos in hex>` like upstream's recorder: events list in time order.
            name: Some(format!(
                "{}.{:x}",
                pod.metadata.name.as_deref().unwrap_or("pod"),
                now.as_nanosecond()
            )),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: Some("Pod".into()),
            api_version: Some("v1".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        reporting_component: Some(SCHEDULER_NAME.into()),
        reporting_instance: Some(SCHEDULER_NAME.into()),
        action: Some("Binding".into()),
        count: Some(1),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some(SCHEDULER_NAME.into()),
            host: None,
        }),
        ..Default::default()
    };
    if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::debug!(error = %e, "could not record event");
    }
}

/// One pass: binds every pending pod it can.
/// Pods already told they do not fit (by uid), so the retry loop records one event per pod, not
/// one per pass.
type Warned = std::collections::HashSet<String>;

async fn schedule_pending(client: &Client, warned: &mut Warned) -> Result<(), SchedulerError> {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let pending = pods_api
        .list(&ListParams::default().fields("spec.nodeName="))
        .await?;
    let pending: Vec<Pod> = pending
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.scheduler_name.as_deref())
                .unwrap_or(SCHEDULER_NAME)
                == SCHEDULER_NAME
        })
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut all = pods_api.list(&ListParams::default()).await?.items;
    for pod in pending {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let span = tracing::info_span!("schedule", pod = %format!("{ns}/{name}"), uid = pod.metadata.uid.as_deref().unwrap_or(""));
        let _g = span.enter();
        let Some(node) = pick_node(&nodes, &all).map(str::to_string) else {
            let msg = format!(
                "0/{} nodes are available: no Ready, schedulable node.",
                nodes.len()
            );
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if warned.insert(uid) {
                tracing::info!("{msg}");
                event(client, &pod, "Warning", "FailedScheduling", msg).await;
            }
            continue;
        };
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                api_version: Some("v1".into()),
                name: Some(node.clone()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(%node, "bound");
                event(
                    client,
                    &pod,
                    "Normal",
                    "Scheduled",
                    format!("Successfully assigned {ns}/{name} to {node}"),
                )
                .await;
                let mut p = pod.clone();
                if let Some(s) = p.spec.as_mut() {
                    s.node_name = Some(node);
                }
                all.push(p);
            }
            Err(e) => tracing::warn!(error = %e, "binding failed"),
        }
    }
    Ok(())
}

/// Runs the scheduler until `shutdown` completes.
pub async fn run(
    client: Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut changes = watcher(pods, watcher::Config::default().fields("spec.nodeName=")).boxed();
    tokio::pin!(shutdown);
    tracing::info!("scheduler running");
    let mut warned = Warned::new();
    loop {
        if warned.len() > 10_000 {
            warned.clear();
        }
        if let Err(e) = schedule_pending(&client, &mut warned).await {
            tracing::warn!(error = %e, "scheduling pass failed; retrying");
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = changes.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}
