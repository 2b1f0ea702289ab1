//! The ConfigMaps and Secrets the node's pods use, each watched on its own (upstream's
//! watch-based ConfigMap/Secret manager, the kubelet's default change-detection strategy).
//!
//! The first read of an object is a GET (its errors are the caller's); from then on a watch
//! selecting that one object by name (`fieldSelector=metadata.name=<name>`, which the node
//! authorizer allows for objects the node's pods use) keeps the cached copy current, and every
//! change moves a counter the pod workers wait on, so a changed ConfigMap reaches mounted files
//! at once instead of at the next periodic refresh. An object no pod has read for
//! [`IDLE_AFTER`] is dropped and its watch ended. Tokens and claims go straight to the API.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::debug;

use crate::objects::{
    config_map_data, secret_data, BoxFut, ClaimVolume, Data, KubeObjects, ObjectSource, Token,
};

/// How long an object stays cached (and watched) after its last read. Pod workers re-read
/// their objects at least every [`crate::reconcile::VOLUME_REFRESH`].
pub const IDLE_AFTER: Duration = Duration::from_secs(180);
/// How often a watch checks whether its object is still read.
const IDLE_CHECK: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    ConfigMap,
    Secret,
}

type Key = (Kind, String, String);

struct Entry {
    /// `None`: the object does not exist.
    value: Option<Data>,
    last_read: Instant,
}

type Entries = Arc<Mutex<HashMap<Key, Entry>>>;

/// ConfigMaps and Secrets through per-object watches; tokens and claims through the API.
pub struct WatchedObjects {
    direct: KubeObjects,
    entries: Entries,
    changes: watch::Sender<u64>,
}

impl WatchedObjects {
    pub fn new(client: Client) -> Self {
        WatchedObjects {
            direct: KubeObjects(client),
            entries: Arc::default(),
            changes: watch::channel(0).0,
        }
    }

    /// How many objects are watched now.
    pub fn watched(&self) -> usize {
        lock(&self.entries).len()
    }

    fn cached(&self, key: &Key) -> Option<Option<Data>> {
        let mut m = lock(&self.entries);
        let e = m.get_mut(key)?;
        e.last_read = Instant::now();
        Some(e.value.clone())
    }

    /// Caches `value` (just read with a GET) and starts watching the object, unless another
    /// reader did so meanwhile.
    fn start_watch(&self, key: Key, value: Option<Data>) {
        let mut m = lock(&self.entries);
        if m.contains_key(&key) {
            return;
        }
        m.insert(
            key.clone(),
            Entry {
                value,
                last_read: Instant::now(),
            },
        );
        drop(m);
        let (kind, ns, name) = key.clone();
        let client = self.direct.0.clone();
        let (entries, changes) = (self.entries.clone(), self.changes.clone());
        match kind {
            Kind::ConfigMap => tokio::spawn(follow(
                Api::<ConfigMap>::namespaced(client, &ns),
                key,
                entries,
                changes,
                config_map_data,
            )),
            Kind::Secret => tokio::spawn(follow(
                Api::<Secret>::namespaced(client, &ns),
                key,
                entries,
                changes,
                secret_data,
            )),
        };
        debug!(?kind, %ns, %name, "watching");
    }

    async fn read(&self, kind: Kind, ns: String, name: String) -> Result<Option<Data>, String> {
        let key = (kind, ns, name);
        if let Some(v) = self.cached(&key) {
            return Ok(v);
        }
        let (ns, name) = (key.1.clone(), key.2.clone());
        let v = match kind {
            Kind::ConfigMap => self.direct.config_map(ns, name).await?,
            Kind::Secret => self.direct.secret(ns, name).await?,
        };
        self.start_watch(key, v.clone());
        Ok(v)
    }
}

fn lock(e: &Entries) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stores `value` for `key`; `false` once the entry is gone (the watch should end).
fn store(entries: &Entries, changes: &watch::Sender<u64>, key: &Key, value: Option<Data>) -> bool {
    let mut m = lock(entries);
    let Some(e) = m.get_mut(key) else {
        return false;
    };
    if e.value != value {
        e.value = value;
        drop(m);
        changes.send_modify(|n| *n = n.wrapping_add(1));
        debug!(kind = ?key.0, ns = %key.1, name = %key.2, "changed");
    }
    true
}

/// Watches one object until no pod has read it for [`IDLE_AFTER`].
async fn follow<K>(
    api: Api<K>,
    key: Key,
    entries: Entries,
    changes: watch::Sender<u64>,
    data: fn(K) -> Data,
) where
    K: kube::Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", key.2));
    let mut events = watcher(api, cfg).default_backoff().boxed();
    let mut idle = tokio::time::interval(IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the object showed up in the list being replayed (a relist that does not show it
    // means it is gone).
    let mut listed = false;
    loop {
        tokio::select! {
            ev = events.next() => {
                let alive = match ev {
                    Some(Ok(Event::Init)) => {
                        listed = false;
                        true
                    }
                    Some(Ok(Event::InitApply(o))) => {
                        listed = true;
                        store(&entries, &changes, &key, Some(data(o)))
                    }
                    Some(Ok(Event::InitDone)) if !listed => store(&entries, &changes, &key, None),
                    Some(Ok(Event::InitDone)) => true,
                    Some(Ok(Event::Apply(o))) => store(&entries, &changes, &key, Some(data(o))),
                    Some(Ok(Event::Delete(_))) => store(&entries, &changes, &key, None),
                    Some(Err(e)) => {
                        debug!(kind = ?key.0, ns = %key.1, name = %key.2, error = %e, "watch failed; retrying");
                        true
                    }
                    None => {
                        // The stream ended on its own: leave no entry behind that nothing
                        // would refresh.
                        lock(&entries).remove(&key);
                        false
                    }
                };
                if !alive {
                    break;
                }
            }
            _ = idle.tick() => {
                let mut m = lock(&entries);
                if m.get(&key).is_some_and(|e| e.last_read.elapsed() >= IDLE_AFTER) {
                    m.remove(&key);
                    debug!(kind = ?key.0, ns = %key.1, name = %key.2, "no longer read; watch ended");
                    break;
                }
            }
        }
    }
    // Every other way out found the entry gone already (dropped as idle, or by another
    // reader's watch): removing it again here could drop a newer entry and its watch.
}

impl ObjectSource for WatchedObjects {
    fn config_map(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        Box::pin(self.read(Kind::ConfigMap, ns, name))
    }
    fn secret(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        Box::pin(self.read(Kind::Secret, ns, name))
    }
    fn token(
        &self,
        ns: String,
        sa: String,
        audiences: Vec<String>,
        expiration_secs: i64,
        pod: (String, String),
    ) -> BoxFut<'_, Result<Token, String>> {
        self.direct.token(ns, sa, audiences, expiration_secs, pod)
    }
    fn claim_volume(&self, ns: String, name: String) -> BoxFut<'_, Result<ClaimVolume, String>> {
        self.direct.claim_volume(ns, name)
    }
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}
