//! The Service and EndpointSlice caches of the proxy and the cluster DNS: one pair of watches
//! and stores that both can share when one process runs both (`skiff proxy --cluster-dns`),
//! holding slim objects: the fields neither reads (managedFields, annotations, owner
//! references) are dropped as each object arrives, as client-go informers with a transform
//! function do (kube-proxy and CoreDNS strip managedFields alike), and EndpointSlices are read
//! straight into [`CachedSlice`], which has only the fields the rules and names use, so a
//! cache of 1,000 Services x 10 endpoints costs what the rules need, not what the API stored.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use kube::ResourceExt;

/// Shared caches of Services and EndpointSlices.
#[derive(Clone)]
pub struct Informers {
    pub services: Store<Service>,
    pub slices: Store<CachedSlice>,
    /// Bumped after every event of either watch: each user `subscribe`s and waits for a
    /// change (a `Notify` would wake only one of them).
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Informers {
    /// Starts the two watches (on the current tokio runtime).
    pub fn spawn(client: &kube::Client) -> Informers {
        let (svc_r, svc_w) = reflector::store::<Service>();
        let (sl_r, sl_w) = reflector::store::<CachedSlice>();
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let changed = Arc::new(tx);
        spawn_watch(
            Api::<Service>::all(client.clone()),
            svc_w,
            slim_service,
            changed.clone(),
        );
        spawn_watch(
            Api::<CachedSlice>::all(client.clone()),
            sl_w,
            slim_slice,
            changed.clone(),
        );
        Informers {
            services: svc_r,
            slices: sl_r,
            changed,
        }
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until both caches hold a full list; `Err` when a watch is gone for good.
    pub async fn wait_until_ready(&self) -> Result<(), crate::ProxyError> {
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| crate::ProxyError::Stopped)?;
        self.slices
            .wait_until_ready()
            .await
            .map_err(|_| crate::ProxyError::Stopped)
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    w: reflector::store::Writer<K>,
    slim: fn(&mut K),
    changed: Arc<tokio::sync::watch::Sender<u64>>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(slim)
            .reflect(w)
            .for_each(move |_| {
                changed.send_modify(|n| *n = n.wrapping_add(1));
                std::future::ready(())
            }),
    );
}

/// Metadata neither the proxy nor the DNS reads (they use name, namespace, uid, labels).
fn slim_meta<K: kube::Resource>(o: &mut K) {
    let m = o.meta_mut();
    m.managed_fields = None;
    m.annotations = None;
    m.owner_references = None;
    m.finalizers = None;
}

/// What the proxy and the DNS do not read of a Service (its spec and status stay), and the
/// spare capacity of its lists: serde grows a list it reads from a watch body by doubling
/// (the body gives no length ahead), so one port takes the room of four.
pub fn slim_service(s: &mut Service) {
    slim_meta(s);
    if let Some(spec) = s.spec.as_mut() {
        for v in [
            &mut spec.cluster_ips,
            &mut spec.external_ips,
            &mut spec.ip_families,
        ]
        .into_iter()
        .flatten()
        {
            v.shrink_to_fit();
        }
        if let Some(p) = spec.ports.as_mut() {
            p.shrink_to_fit();
        }
    }
}

/// An EndpointSlice as the proxy and the DNS cache it: what they read (the shape and field
/// names of k8s-openapi's `EndpointSlice`, so code reads it alike), deserialized straight from
/// the list and watch bodies: serde skips each endpoint's `targetRef`, `zone`, `hints` and
/// `deprecatedTopology` without building them. A k8s-openapi `Endpoint` is 352 bytes before
/// any string, a [`CachedEndpoint`] 80: a slice of 10 endpoints read from a watch body as an
/// `EndpointSlice` is 9.3 KB (5.1 KB slimmed), in this form 2.4 KB (`memtest`).
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub address_type: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<CachedEndpoint>,
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

/// One endpoint of a [`CachedSlice`]: its addresses parsed and held inline (an endpoint has
/// one in practice; addresses that do not parse are left out, as neither the rules nor the
/// names could use them) and its node name shared with every endpoint of that node
/// ([`intern_node`]): no allocation per endpoint but a headless pod's hostname.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedEndpoint {
    #[serde(default, deserialize_with = "parsed_addresses")]
    pub addresses: Addresses,
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "interned_node")]
    pub node_name: Option<Arc<str>>,
}

/// An endpoint's addresses, the first one inline.
pub type Addresses = smallvec::SmallVec<[IpAddr; 1]>;

fn parse_addresses<'a>(v: impl IntoIterator<Item = &'a str>) -> Addresses {
    v.into_iter().filter_map(|a| a.parse().ok()).collect()
}

fn parsed_addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Addresses, D::Error> {
    use serde::Deserialize;
    let v = Option::<Vec<String>>::deserialize(d)?.unwrap_or_default();
    Ok(parse_addresses(v.iter().map(String::as_str)))
}

fn interned_node<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<String>::deserialize(d)?.map(|n| intern_node(&n)))
}

/// The one shared copy of a node name (a cluster has few nodes and each has many endpoints).
/// Names no endpoint holds any more are dropped whenever the table has doubled since the last
/// sweep.
pub fn intern_node(name: &str) -> Arc<str> {
    type Table = (HashSet<Arc<str>>, usize);
    static NODES: LazyLock<Mutex<Table>> = LazyLock::new(|| Mutex::new((HashSet::new(), 64)));
    let mut guard = NODES.lock().unwrap_or_else(|e| e.into_inner());
    let (names, sweep_at) = &mut *guard;
    if let Some(n) = names.get(name) {
        return n.clone();
    }
    if names.len() >= *sweep_at {
        names.retain(|n| Arc::strong_count(n) > 1);
        *sweep_at = (names.len() * 2).max(64);
    }
    let n: Arc<str> = Arc::from(name);
    names.insert(n.clone());
    n
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl k8s_openapi::Resource for CachedSlice {
    const API_VERSION: &'static str = "discovery.k8s.io/v1";
    const GROUP: &'static str = "discovery.k8s.io";
    const KIND: &'static str = "EndpointSlice";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "endpointslices";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedSlice {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<k8s_openapi::api::discovery::v1::EndpointSlice> for CachedSlice {
    fn from(s: k8s_openapi::api::discovery::v1::EndpointSlice) -> Self {
        CachedSlice {
            metadata: s.metadata,
            address_type: s.address_type,
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| CachedEndpoint {
                    addresses: parse_addresses(e.addresses.iter().map(String::as_str)),
                    conditions: e.conditions,
                    hostname: e.hostname,
                    node_name: e.node_name.as_deref().map(intern_node),
                })
                .collect(),
            ports: s.ports,
        }
    }
}

/// What the proxy and the DNS do not read of a cached EndpointSlice's metadata (labels other
/// than the Service name too), and the spare room of its lists (serde doubles a list of
/// unknown length as it reads it: 10 endpoints sit in room for 16).
pub fn slim_slice(s: &mut CachedSlice) {
    slim_meta(s);
    let keep = s.labels().get("kubernetes.io/service-name").cloned();
    s.metadata.labels = keep.map(|n| [("kubernetes.io/service-name".to_string(), n)].into());
    s.endpoints.shrink_to_fit();
    if let Some(p) = s.ports.as_mut() {
        p.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_shared_and_dropped_when_unused() {
        let a = intern_node("sk-intern-a");
        let b = intern_node("sk-intern-a");
        assert!(Arc::ptr_eq(&a, &b));
        // Enough other names to reach a sweep: the unused ones go, the held one stays shared.
        for i in 0..200 {
            intern_node(&format!("sk-intern-tmp-{i}"));
        }
        assert!(Arc::ptr_eq(&a, &intern_node("sk-intern-a")));
    }

    #[test]
    fn slim_slices_keep_what_the_rules_and_names_need() {
        let mut s: CachedSlice = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "sk-a-x", "namespace": "default", "uid": "u1",
                "labels": {"kubernetes.io/service-name": "sk-a", "endpointslice.kubernetes.io/managed-by": "x"},
                "annotations": {"a": "b"},
                "managedFields": [{"manager": "m", "operation": "Update"}],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "sk-a", "uid": "u0"}],
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.244.0.5"], "hostname": "h", "nodeName": "n",
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u2"},
            }],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }))
        .unwrap();
        slim_slice(&mut s);
        assert_eq!(s.labels().len(), 1);
        assert_eq!(s.labels()["kubernetes.io/service-name"], "sk-a");
        assert!(s.metadata.managed_fields.is_none() && s.metadata.annotations.is_none());
        assert!(s.metadata.owner_references.is_none());
        assert_eq!(s.metadata.uid.as_deref(), Some("u1"));
        let e = &s.endpoints[0];
        assert_eq!(e.hostname.as_deref(), Some("h"));
        assert_eq!(e.node_name.as_deref(), Some("n"));
        assert_eq!(
            e.addresses.as_slice(),
            ["10.244.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    }
}
