//! The EndpointSlice controller, as upstream's `endpointslice-controller.k8s.io`: for every
//! Service with a selector, slices of at most 100 endpoints (one per ready-or-not pod address
//! with `ready`/`serving`/`terminating` conditions, target ports resolved per pod, hostname for
//! pods of the Service's subdomain, nodeName, zone and targetRef), grouped by address type and
//! port set, labelled `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`
//! and owned by the Service. A Service without endpoints gets one empty placeholder slice.
//!
//! It also does the job of upstream's EndpointSlice *mirroring* controller
//! (`endpointslicemirroring-controller.k8s.io`): a Service without a selector whose Endpoints
//! were written by hand gets them mirrored into slices (unless the Endpoints carry
//! `endpointslice.kubernetes.io/skip-mirror: "true"`, as the API server's own `kubernetes` does).

use crate::cached_pod::CachedPod;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tracing::Instrument;

use crate::keyqueue::{informer, selector_matches, to_value, touched, Queue};
use crate::{Context, ControllerError};

pub const NAME: &str = "endpointslice-controller";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
pub const MIRRORING_MANAGED_BY: &str = "endpointslicemirroring-controller.k8s.io";
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The stores the controller reads.
pub(crate) struct Stores {
    pub services: Store<Service>,
    pub pods: Store<CachedPod>,
    pub nodes: Store<Node>,
    pub slices: Store<EndpointSlice>,
    pub endpoints: Store<Endpoints>,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move { run_inner(ctx, stop).await })
}

/// Starts the informers; each event puts the Services it concerns on `queue`. Pods and nodes
/// come from the process's shared informers (one cache of each for every controller).
pub(crate) fn start_informers(ctx: &Context, queue: &Queue) -> Stores {
    let client = &ctx.reader;
    let (services, svc_events) = informer(Api::<Service>::all(client.clone()));
    let pod_informer = ctx.informers.pods();
    let pods = pod_informer.store().clone();
    let nodes = ctx.informers.nodes().store().clone();
    let (slices, slice_events) = informer(Api::<EndpointSlice>::all(client.clone()));
    let (endpoints, ep_events) = informer(Api::<Endpoints>::all(client.clone()));
    let q = queue.clone();
    tokio::spawn(svc_events.for_each(move |ev| {
        if let Ok(ev) = ev {
            for s in touched(&ev) {
                q.add(&s.namespace().unwrap_or_default(), &s.name_any());
            }
        }
        std::future::ready(())
    }));
    // A pod concerns every Service of its namespace that selects it now or selected it before
    // (its old labels are gone): all the namespace's Services with a selector are checked. After
    // a re-list (or a lag) every such Service is.
    let q = queue.clone();
    let svc_store = services.clone();
    let mut pod_rx = pod_informer.subscribe();
    tokio::spawn(async move {
        use crate::informer::Change;
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let ns = match pod_rx.recv().await {
                Ok(Change::Added(p))
                | Ok(Change::Deleted(p))
                | Ok(Change::Updated { new: p, .. }) => Some(p.namespace().unwrap_or_default()),
                Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => None,
                Err(RecvError::Closed) => return,
            };
            for s in svc_store.state() {
                if ns
                    .as_ref()
                    .is_none_or(|ns| s.namespace().as_ref() == Some(ns))
                    && s.spec
                        .as_ref()
                        .and_then(|sp| sp.selector.as_ref())
                        .is_some()
                {
                    q.add(&s.namespace().unwrap_or_default(), &s.name_any());
                }
            }
        }
    });
    let q = queue.clone();
    tokio::spawn(slice_events.for_each(move |ev| {
        if let Ok(ev) = ev {
            for s in touched(&ev) {
                if let Some(svc) = s.labels().get(LABEL_SERVICE_NAME) {
                    q.add(&s.namespace().unwrap_or_default(), svc);
                }
            }
        }
        std::future::ready(())
    }));
    let q = queue.clone();
    tokio::spawn(ep_events.for_each(move |ev| {
        if let Ok(ev) = ev {
            for e in touched(&ev) {
                q.add(&e.namespace().unwrap_or_default(), &e.name_any());
            }
        }
        std::future::ready(())
    }));
    Stores {
        services,
        pods,
        nodes,
        slices,
        endpoints,
    }
}

pub(crate) async fn wait_ready(st: &Stores) -> Result<(), ControllerError> {
    let stopped = |_| ControllerError::Stopped {
        name: NAME,
        reason: "informer stopped".into(),
    };
    crate::util::ready(&st.services).await.map_err(stopped)?;
    crate::util::ready(&st.pods).await.map_err(stopped)?;
    crate::util::ready(&st.nodes).await.map_err(stopped)?;
    crate::util::ready(&st.slices).await.map_err(stopped)?;
    crate::util::ready(&st.endpoints).await.map_err(stopped)?;
    Ok(())
}

async fn run_inner(ctx: Context, stop: BoxFuture<'static, ()>) -> Result<(), ControllerError> {
    let queue = Queue::default();
    let st = start_informers(&ctx, &queue);
    wait_ready(&st).await?;
    tracing::info!(controller = NAME, "caches synced");
    let work = async {
        loop {
            for (ns, name) in queue.next_batch().await {
                let span = tracing::info_span!("reconcile", controller = NAME, service = %format!("{ns}/{name}"));
                if let Err(e) = reconcile(&ctx.client, &st, &ns, &name)
                    .instrument(span)
                    .await
                {
                    tracing::warn!(controller = NAME, service = %format!("{ns}/{name}"), error = %e, "sync failed; retrying");
                    queue.add_after(ns, name, Duration::from_secs(1));
                }
            }
        }
    };
    tokio::select! {
        _ = stop => Ok(()),
        r = work => r,
    }
}

/// Whether the pod has condition Ready=True.
pub(crate) fn pod_ready(p: &CachedPod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pods that never get endpoints: no IP yet, or finished.
pub(crate) fn pod_terminal_or_unaddressed(p: &CachedPod) -> bool {
    let st = p.status.as_ref();
    let phase = st.and_then(|s| s.phase.as_deref()).unwrap_or("");
    phase == "Succeeded"
        || phase == "Failed"
        || st
            .and_then(|s| s.pod_ip.as_deref())
            .unwrap_or("")
            .is_empty()
}

/// Pod IPs of one family (`IPv4` / `IPv6`).
pub(crate) fn pod_ips(p: &CachedPod, family: &str) -> Vec<String> {
    let st = p.status.as_ref();
    let mut ips: Vec<String> = st
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(st.and_then(|s| s.pod_ip.clone()));
    }
    ips.into_iter()
        .filter(|ip| (family == "IPv6") == ip.contains(':'))
        .collect()
}

/// The pod's hostname when it is in the Service's subdomain (upstream's ShouldSetHostname).
pub(crate) fn hostname_for(p: &CachedPod, svc: &Service) -> Option<String> {
    let spec = p.spec.as_ref()?;
    let h = spec.hostname.clone().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(svc.name_any().as_str()) && p.namespace() == svc.namespace())
        .then_some(h)
}

/// The Service ports as this pod serves them: named target ports resolved from its containers'
/// ports (a name the pod does not have leaves that port out, as upstream).
pub(crate) fn resolve_ports(p: &CachedPod, svc: &Service) -> Vec<EndpointPort> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(ports) = svc.spec.as_ref().and_then(|s| s.ports.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for sp in ports {
        let proto = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let port = match &sp.target_port {
            None => Some(sp.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => p.spec.as_ref().and_then(|s| {
                    s.containers.iter().find_map(|c| {
                        c.ports.as_ref()?.iter().find_map(|cp| {
                            (cp.name.as_deref() == Some(name.as_str())
                                && cp.protocol.as_deref().unwrap_or("TCP") == proto)
                                .then_some(cp.container_port)
                        })
                    })
                }),
            },
        };
        if let Some(port) = port {
            out.push(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(proto),
                app_protocol: sp.app_protocol.clone(),
            });
        }
    }
    out
}

/// Address families of a Service (`spec.ipFamilies`, IPv4 when unset).
pub(crate) fn families(svc: &Service) -> Vec<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()])
}

/// Labels of a Service's slices: its own labels (minus the reserved ones), the service name,
/// the manager, and the headless marker.
fn slice_labels(svc: &Service, manager: &str) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = svc
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() != LABEL_SERVICE_NAME && k.as_str() != LABEL_MANAGED_BY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(LABEL_SERVICE_NAME.into(), svc.name_any());
    l.insert(LABEL_MANAGED_BY.into(), manager.into());
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        l.insert(LABEL_HEADLESS.into(), String::new());
    }
    l
}

/// One slice to be: address type, ports and endpoints (at most 100).
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    address_type: String,
    ports: Option<Vec<EndpointPort>>,
    endpoints: Vec<Endpoint>,
}

fn group_key(address_type: &str, ports: &Option<Vec<EndpointPort>>) -> String {
    format!("{address_type}|{}", to_value(ports))
}

/// Desired slices of a Service with a selector.
fn desired_from_pods(st: &Stores, svc: &Service) -> Vec<Desired> {
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut pods: Vec<_> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| selector_matches(&selector, p.labels()))
        .filter(|p| !pod_terminal_or_unaddressed(p))
        .collect();
    pods.sort_by_key(|p| p.name_any());
    let mut groups: BTreeMap<String, Desired> = BTreeMap::new();
    for family in families(svc) {
        for p in &pods {
            let ports = resolve_ports(p, svc);
            let ports = (!ports.is_empty()).then_some(ports);
            let terminating = p.metadata.deletion_timestamp.is_some();
            let serving = publish_not_ready || pod_ready(p);
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let zone = node.as_ref().and_then(|n| {
                st.nodes
                    .get(&ObjectRef::new(n))
                    .and_then(|n| n.labels().get(ZONE_LABEL).cloned())
            });
            for ip in pod_ips(p, &family) {
                let ep = Endpoint {
                    addresses: vec![ip],
                    conditions: Some(EndpointConditions {
                        ready: Some(serving && !terminating),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    hostname: hostname_for(p, svc),
                    node_name: node.clone(),
                    zone: zone.clone(),
                    target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(ns.clone()),
                        name: Some(p.name_any()),
                        uid: p.uid(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                groups
                    .entry(group_key(&family, &ports))
                    .or_insert_with(|| Desired {
                        address_type: family.clone(),
                        ports: ports.clone(),
                        endpoints: Vec::new(),
                    })
                    .endpoints
                    .push(ep);
            }
        }
    }
    chunk(groups, svc)
}

/// Desired slices mirrored from the Endpoints of a Service without a selector.
fn desired_from_endpoints(ep: &Endpoints, svc: &Service) -> Vec<Desired> {
    let mut groups: BTreeMap<String, Desired> = BTreeMap::new();
    for subset in ep.subsets.clone().unwrap_or_default() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|p| EndpointPort {
                name: Some(p.name.unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol,
            })
            .collect();
        let ports = (!ports.is_empty()).then_some(ports);
        let ready = subset.addresses.clone().unwrap_or_default();
        let not_ready = subset.not_ready_addresses.clone().unwrap_or_default();
        for (addrs, is_ready) in [(ready, true), (not_ready, false)] {
            for a in addrs {
                // Addresses that are not IPs (or of the wrong family) are not mirrored.
                let Ok(ip) = a.ip.parse::<std::net::IpAddr>() else {
                    continue;
                };
                let family = if ip.is_ipv6() { "IPv6" } else { "IPv4" };
                let e = Endpoint {
                    addresses: vec![a.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(is_ready),
                        serving: Some(is_ready),
                        terminating: Some(false),
                    }),
                    hostname: a.hostname.clone(),
                    node_name: a.node_name.clone(),
                    target_ref: a.target_ref.clone(),
                    ..Default::default()
                };
                groups
                    .entry(group_key(family, &ports))
                    .or_insert_with(|| Desired {
                        address_type: family.into(),
                        ports: ports.clone(),
                        endpoints: Vec::new(),
                    })
                    .endpoints
                    .push(e);
            }
        }
    }
    chunk(groups, svc)
}

fn chunk(groups: BTreeMap<String, Desired>, svc: &Service) -> Vec<Desired> {
    let mut out = Vec::new();
    for (_, g) in groups {
        for c in g.endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(Desired {
                address_type: g.address_type.clone(),
                ports: g.ports.clone(),
                endpoints: c.to_vec(),
            });
        }
    }
    if out.is_empty() {
        // The placeholder slice of a Service without endpoints.
        for family in families(svc) {
            out.push(Desired {
                address_type: family,
                ports: None,
                endpoints: Vec::new(),
            });
        }
    }
    out
}

fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

async fn reconcile(
    client: &kube::Client,
    st: &Stores,
    ns: &str,
    name: &str,
) -> Result<(), ControllerError> {
    let svc = st.services.get(&ObjectRef::new(name).within(ns));
    let eps = st.endpoints.get(&ObjectRef::new(name).within(ns));
    let ours = |manager: &str| -> Vec<EndpointSlice> {
        let mut v: Vec<EndpointSlice> = st
            .slices
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(ns))
            .filter(|s| s.labels().get(LABEL_SERVICE_NAME).map(String::as_str) == Some(name))
            .filter(|s| s.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(manager))
            .map(|s| (**s).clone())
            .collect();
        v.sort_by_key(|s| s.name_any());
        v
    };
    let has_selector = svc
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty());
    let external_name = svc
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("ExternalName");
    // Slices of the selector-based controller.
    let want = match &svc {
        Some(s) if has_selector && !external_name => Some(desired_from_pods(st, s)),
        _ => None,
    };
    apply(
        client,
        &st.slices,
        ns,
        svc.as_deref(),
        ours(MANAGED_BY),
        want,
        MANAGED_BY,
    )
    .await?;
    // Mirrored slices.
    let skip = eps
        .as_ref()
        .is_some_and(|e| e.labels().get(LABEL_SKIP_MIRROR).map(String::as_str) == Some("true"));
    if skip {
        return Ok(());
    }
    let want = match (&svc, &eps) {
        (Some(s), Some(e)) if !has_selector && !external_name => Some(desired_from_endpoints(e, s)),
        _ => None,
    };
    apply(
        client,
        &st.slices,
        ns,
        svc.as_deref(),
        ours(MIRRORING_MANAGED_BY),
        want,
        MIRRORING_MANAGED_BY,
    )
    .await
}

/// Makes the Service's slices of `manager` be `want` (none when `None`): updates slices in
/// place where address type and ports match, creates the missing ones, deletes the rest.
async fn apply(
    client: &kube::Client,
    store: &Store<EndpointSlice>,
    ns: &str,
    svc: Option<&Service>,
    existing: Vec<EndpointSlice>,
    want: Option<Vec<Desired>>,
    manager: &str,
) -> Result<(), ControllerError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let (Some(svc), Some(want)) = (svc, want) else {
        for s in existing {
            delete(&api, &s.name_any()).await?;
        }
        return Ok(());
    };
    let labels = slice_labels(svc, manager);
    // What the informer must show before this Service is synced again (upstream's slice
    // tracker): without it a second sync could create a slice twice.
    let mut expect: Vec<(String, Option<String>)> = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    let mut creates = Vec::new();
    for d in want {
        let reuse = existing.iter().find(|s| {
            !used.contains(&s.name_any())
                && s.address_type == d.address_type
                && to_value(&s.ports) == to_value(&d.ports)
        });
        match reuse {
            Some(s) => {
                used.insert(s.name_any());
                let same = to_value(&s.endpoints) == to_value(&d.endpoints)
                    && s.metadata.labels.as_ref() == Some(&labels);
                if !same {
                    let mut n = s.clone();
                    n.endpoints = d.endpoints;
                    n.metadata.labels = Some(labels.clone());
                    n.metadata.managed_fields = None;
                    match api.replace(&s.name_any(), &PostParams::default(), &n).await {
                        Ok(r) => expect.push((r.name_any(), r.resource_version())),
                        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                            return Err(ControllerError::Stopped {
                                name: NAME,
                                reason: format!("slice {} changed meanwhile", s.name_any()),
                            })
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            None => creates.push(d),
        }
    }
    for s in existing.iter().filter(|s| !used.contains(&s.name_any())) {
        delete(&api, &s.name_any()).await?;
        expect.push((s.name_any(), None));
    }
    for d in creates {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", svc.name_any())),
                namespace: Some(ns.into()),
                labels: Some(labels.clone()),
                owner_references: Some(vec![owner_ref(svc)]),
                ..Default::default()
            },
            address_type: d.address_type,
            endpoints: d.endpoints,
            ports: d.ports,
        };
        let r = api.create(&PostParams::default(), &slice).await?;
        expect.push((r.name_any(), r.resource_version()));
    }
    wait_seen(store, ns, &expect).await;
    Ok(())
}

/// Waits (up to 2 s) until the slice informer shows the writes in `expect` (a name with the
/// resourceVersion written, or gone for `None`).
async fn wait_seen(store: &Store<EndpointSlice>, ns: &str, expect: &[(String, Option<String>)]) {
    for _ in 0..100 {
        let seen = expect.iter().all(|(name, rv)| {
            let cur = store.get(&ObjectRef::new(name).within(ns));
            match rv {
                None => cur.is_none(),
                Some(rv) => cur.is_some_and(|c| c.resource_version().as_ref() == Some(rv)),
            }
        });
        if seen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delete(api: &Api<EndpointSlice>, name: &str) -> Result<(), ControllerError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
