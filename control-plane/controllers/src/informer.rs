//! Shared informers: one watch per kind for every controller (client-go's shared informer
//! factory). Each keeps a `kube` reflector [`Store`] and tells its subscribers what changed —
//! additions, updates with the previous object, deletions (also those found by a re-list) — after
//! the store holds the change, so a handler that reads the store sees at least that state.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ReplicationController};

use crate::cached_pod::CachedPod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// What an informer saw.
pub enum Change<K> {
    Added(Arc<K>),
    Updated {
        old: Arc<K>,
        new: Arc<K>,
    },
    Deleted(Arc<K>),
    /// A (re-)list finished: handlers may re-check everything.
    Resynced,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Added(o) => Change::Added(o.clone()),
            Change::Updated { old, new } => Change::Updated {
                old: old.clone(),
                new: new.clone(),
            },
            Change::Deleted(o) => Change::Deleted(o.clone()),
            Change::Resynced => Change::Resynced,
        }
    }
}

/// Capacity of each informer's change channel; a subscriber further behind than this gets
/// `Lagged` and resyncs from the store. The slots are allocated up front (some 70 bytes each),
/// for every informer.
const CHANGES: usize = 1024;
/// The pod informer's: pods change in bursts (a scale-up of hundreds creates, binds and starts
/// each), and a lagging ReplicaSet controller forgets its expectations and resyncs everything.
const POD_CHANGES: usize = 8192;

pub struct Informer<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    tx: broadcast::Sender<Change<K>>,
    /// Set after the first complete list. (The store's own `wait_until_ready` wakes only one of
    /// several waiting tasks.)
    ready: tokio::sync::watch::Receiver<bool>,
}

pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}
impl<K> Watched for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K: Watched> Informer<K> {
    pub fn start(api: Api<K>, stop: tokio::sync::watch::Receiver<bool>) -> Arc<Self> {
        Self::start_with(api, stop, slim::<K>, CHANGES)
    }

    /// [`Informer::start`] with the transform every object goes through before it is cached
    /// (client-go's `SetTransform`) and the capacity of the change channel.
    pub fn start_with(
        api: Api<K>,
        stop: tokio::sync::watch::Receiver<bool>,
        transform: fn(&mut K),
        capacity: usize,
    ) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let (tx, _) = broadcast::channel(capacity);
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let inf = Arc::new(Informer {
            store: store.clone(),
            tx: tx.clone(),
            ready,
        });
        tokio::spawn(async move {
            let mut stop = stop;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = feed(api, transform, store, writer, tx, ready_tx) => {}
            }
        });
        inf
    }

    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.tx.subscribe()
    }

    /// One `()` per change (and per lag) from now on: a trigger for `reconcile_all_on`.
    pub fn ticks(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut rx| async move {
            match rx.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
    }

    /// Waits for the first complete list.
    pub async fn ready(&self) {
        let mut r = self.ready.clone();
        let _ = r.wait_for(|x| *x).await;
    }
}

async fn feed<K: Watched>(
    api: Api<K>,
    transform: fn(&mut K),
    reader: Store<K>,
    mut writer: reflector::store::Writer<K>,
    tx: broadcast::Sender<Change<K>>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let kind = K::kind(&());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(transform)
        .boxed();
    let mut listed: HashSet<ObjectRef<K>> = HashSet::new();
    let mut pending: Vec<Change<K>> = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(%kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        match &ev {
            watcher::Event::Apply(o) => {
                let r = ObjectRef::from_obj(o);
                let old = reader.get(&r);
                writer.apply_watcher_event(&ev);
                let new = reader.get(&r).unwrap_or_else(|| Arc::new(o.clone()));
                let _ = tx.send(match old {
                    Some(old) => Change::Updated { old, new },
                    None => Change::Added(new),
                });
            }
            watcher::Event::Delete(o) => {
                writer.apply_watcher_event(&ev);
                let _ = tx.send(Change::Deleted(Arc::new(o.clone())));
            }
            watcher::Event::Init => {
                listed.clear();
                pending.clear();
                writer.apply_watcher_event(&ev);
            }
            watcher::Event::InitApply(o) => {
                let r = ObjectRef::from_obj(o);
                let new = Arc::new(o.clone());
                match reader.get(&r) {
                    None => pending.push(Change::Added(new)),
                    Some(old) if old.meta().resource_version != o.meta().resource_version => {
                        pending.push(Change::Updated { old, new })
                    }
                    Some(_) => {}
                }
                listed.insert(r);
                writer.apply_watcher_event(&ev);
            }
            watcher::Event::InitDone => {
                let before = reader.state();
                writer.apply_watcher_event(&ev);
                for o in before {
                    if !listed.contains(&ObjectRef::from_obj(o.as_ref())) {
                        pending.push(Change::Deleted(o));
                    }
                }
                for c in pending.drain(..) {
                    let _ = tx.send(c);
                }
                listed.clear();
                let _ = ready.send(true);
                let _ = tx.send(Change::Resynced);
            }
        }
    }
}

/// What a cached object need not keep (upstream's informers do the same with a transform,
/// `TransformStripManagedFields`): no controller reads `metadata.managedFields`, and it is
/// often the largest part of an object. Writes from a cached copy send none, which keeps the
/// server's.
pub fn slim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// The informers every controller shares, each started on first use.
pub struct Informers {
    client: Client,
    stop: tokio::sync::watch::Receiver<bool>,
    pods: OnceLock<Arc<Informer<CachedPod>>>,
    replicasets: OnceLock<Arc<Informer<ReplicaSet>>>,
    rcs: OnceLock<Arc<Informer<ReplicationController>>>,
    deployments: OnceLock<Arc<Informer<Deployment>>>,
    nodes: OnceLock<Arc<Informer<Node>>>,
    node_leases: OnceLock<Arc<Informer<Lease>>>,
}

impl Informers {
    pub fn new(client: Client, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Informers {
            client,
            stop,
            pods: OnceLock::new(),
            replicasets: OnceLock::new(),
            rcs: OnceLock::new(),
            deployments: OnceLock::new(),
            nodes: OnceLock::new(),
            node_leases: OnceLock::new(),
        }
    }

    fn get<K: Watched>(&self, cell: &OnceLock<Arc<Informer<K>>>, api: Api<K>) -> Arc<Informer<K>> {
        cell.get_or_init(|| Informer::start(api, self.stop.clone()))
            .clone()
    }

    /// Every pod, as a [`CachedPod`]: deserialized straight into what the controllers read.
    pub fn pods(&self) -> Arc<Informer<CachedPod>> {
        self.pods
            .get_or_init(|| {
                Informer::start_with(
                    Api::all(self.client.clone()),
                    self.stop.clone(),
                    slim::<CachedPod>,
                    POD_CHANGES,
                )
            })
            .clone()
    }
    pub fn replicasets(&self) -> Arc<Informer<ReplicaSet>> {
        self.get(&self.replicasets, Api::all(self.client.clone()))
    }
    pub fn replication_controllers(&self) -> Arc<Informer<ReplicationController>> {
        self.get(&self.rcs, Api::all(self.client.clone()))
    }
    pub fn deployments(&self) -> Arc<Informer<Deployment>> {
        self.get(&self.deployments, Api::all(self.client.clone()))
    }
    pub fn nodes(&self) -> Arc<Informer<Node>> {
        self.get(&self.nodes, Api::all(self.client.clone()))
    }
    /// Node heartbeats: the Leases in `kube-node-lease`.
    pub fn node_leases(&self) -> Arc<Informer<Lease>> {
        self.get(
            &self.node_leases,
            Api::namespaced(self.client.clone(), "kube-node-lease"),
        )
    }
}
