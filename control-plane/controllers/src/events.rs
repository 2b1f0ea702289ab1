//! Events as upstream's legacy recorder writes them (core/v1, `source.component` the controller's
//! name, named `<object>.<unix nanos in hex>`), correlated (deduplicated into counts, similar ones
//! combined, spam dropped) by `skiff-events` and sent without making the caller wait.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::{Client, Resource, ResourceExt};

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
}

pub const NORMAL: &str = "Normal";
pub const WARNING: &str = "Warning";

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Self {
        Recorder { client, component }
    }

    /// Records an event about `obj`.
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let involved = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(obj.name_any()),
            namespace: obj.namespace(),
            uid: obj.meta().uid.clone(),
            resource_version: obj.meta().resource_version.clone(),
            ..Default::default()
        };
        self.event_ref(involved, type_, reason, message)
    }

    pub fn event_ref(&self, involved: ObjectReference, type_: &str, reason: &str, message: String) {
        let ns = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = k8s_openapi::jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    involved.name.as_deref().unwrap_or("object"),
                    now.as_nanosecond()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(String::new()),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            ..Default::default()
        };
        skiff_events::record_later(&self.client, ev);
    }
}
