//! A work queue of object keys (`namespace/name`) shared by controllers that are driven by
//! several kinds at once (the EndpointSlice and Endpoints controllers: a Service, its Pods, its
//! slices). Keys are deduplicated while they wait; a failed key comes back after a pause.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde_json::Value;
use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Queue {
    keys: Arc<Mutex<BTreeSet<(String, String)>>>,
    wake: Arc<Notify>,
}

impl Queue {
    pub fn add(&self, ns: &str, name: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), name.to_string()));
        self.wake.notify_one();
    }

    /// Comes back with `key` after `after`.
    pub fn add_after(&self, ns: String, name: String, after: Duration) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            q.add(&ns, &name);
        });
    }

    /// Waits for keys and takes all of them.
    pub async fn next_batch(&self) -> Vec<(String, String)> {
        loop {
            let batch: Vec<_> =
                std::mem::take(&mut *self.keys.lock().unwrap_or_else(|e| e.into_inner()))
                    .into_iter()
                    .collect();
            if !batch.is_empty() {
                return batch;
            }
            self.wake.notified().await;
        }
    }
}

/// A reflector over every object of `K` in the cluster: the store reader, and the stream of
/// watch events (to drive the queue), which must be polled for the store to fill.
pub fn informer<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(crate::informer::slim::<K>),
    );
    (reader, stream)
}

/// Objects of a watch event (both the applied and the deleted ones).
pub fn touched<K: Clone>(ev: &watcher::Event<K>) -> Vec<K> {
    match ev {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
            vec![o.clone()]
        }
        _ => Vec::new(),
    }
}

/// Whether a label selector map (`spec.selector` of a Service) matches `labels`.
pub fn selector_matches(
    sel: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// JSON of a typed object, for comparisons that ignore server-set fields.
pub fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}
