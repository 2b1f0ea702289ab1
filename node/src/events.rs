//! Pod events the kubelet records (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`,
//! `Failed`), as `kubectl describe pod` shows them. The reconcile code only collects them
//! ([`PodEvent`]); the pod worker posts them through the API with [`post`].

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::Client;

/// One event about a pod (or one of its containers, by `field_path`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
    /// `spec.containers{name}` when the event is about a container.
    pub field_path: Option<String>,
}

impl PodEvent {
    pub fn normal(reason: &'static str, container: &str, message: String) -> Self {
        Self {
            warning: false,
            reason,
            message,
            field_path: Some(format!("spec.containers{{{container}}}")),
        }
    }

    pub fn warning(reason: &'static str, container: &str, message: String) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, container, message)
        }
    }
}

/// Posts `events` about `pod` as the kubelet of `node`. Failures are logged and dropped: events
/// are best effort, as upstream.
pub async fn post(client: &Client, node: &str, pod: &Pod, events: Vec<PodEvent>) {
    if events.is_empty() {
        return;
    }
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    for e in events {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                // Named `<pod>.<unix nanos in hex>` like upstream's recorder, so events list in
                // the order they happened.
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
                resource_version: pod.metadata.resource_version.clone(),
                field_path: e.field_path.clone(),
            },
            reason: Some(e.reason.into()),
            message: Some(e.message.clone()),
            type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(node.into()),
            }),
            ..Default::default()
        };
        skiff_events::record(client, ev).await;
    }
}
