//! The Endpoints controller (upstream's `endpoint-controller`): for every Service with a
//! selector, an Endpoints object of the same name whose subsets list the ready pod addresses
//! (`addresses`) and the not-ready ones (`notReadyAddresses`), grouped by resolved port set;
//! terminating pods are left out unless the Service publishes not-ready addresses. Endpoints of
//! Services without a selector belong to their writer and are left alone; the Endpoints of a
//! deleted Service are deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::Instrument;

use crate::endpointslice::{
    hostname_for, pod_ips, pod_ready, pod_terminal_or_unaddressed, resolve_ports, start_informers,
    wait_ready, Stores, LABEL_HEADLESS,
};
use crate::keyqueue::{selector_matches, to_value, Queue};
use crate::{Context, ControllerError};

pub const NAME: &str = "endpoints-controller";

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
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
    })
}

fn desired_subsets(st: &Stores, svc: &Service) -> Vec<EndpointSubset> {
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let selector = spec.selector.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut pods: Vec<_> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| selector_matches(&selector, p.labels()))
        .filter(|p| !pod_terminal_or_unaddressed(p))
        .filter(|p| publish || p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    // Port set (as JSON) -> (ports, ready addresses, not-ready addresses).
    type Group = (
        Vec<EndpointPort>,
        Vec<EndpointAddress>,
        Vec<EndpointAddress>,
    );
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for p in pods {
        let ports: Vec<EndpointPort> = resolve_ports(&p, svc)
            .into_iter()
            .map(|ep| EndpointPort {
                name: ep.name.filter(|n| !n.is_empty()),
                port: ep.port.unwrap_or_default(),
                protocol: ep.protocol,
                app_protocol: ep.app_protocol,
            })
            .collect();
        let has_ports = spec.ports.as_ref().is_some_and(|p| !p.is_empty());
        if has_ports && ports.is_empty() {
            continue;
        }
        let ready = publish || pod_ready(&p);
        let g = groups
            .entry(to_value(&ports).to_string())
            .or_insert_with(|| (ports.clone(), Vec::new(), Vec::new()));
        for family in crate::endpointslice::families(svc) {
            for ip in pod_ips(&p, &family) {
                let a = EndpointAddress {
                    ip,
                    hostname: hostname_for(&p, svc),
                    node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(ns.clone()),
                        name: Some(p.name_any()),
                        uid: p.uid(),
                        ..Default::default()
                    }),
                };
                if ready {
                    g.1.push(a);
                } else {
                    g.2.push(a);
                }
            }
        }
    }
    groups
        .into_values()
        .filter(|(_, r, n)| !r.is_empty() || !n.is_empty())
        .map(|(ports, r, n)| EndpointSubset {
            addresses: (!r.is_empty()).then_some(r),
            not_ready_addresses: (!n.is_empty()).then_some(n),
            ports: (!ports.is_empty()).then_some(ports),
        })
        .collect()
}

async fn reconcile(
    client: &kube::Client,
    st: &Stores,
    ns: &str,
    name: &str,
) -> Result<(), ControllerError> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), ns);
    let svc = st.services.get(&ObjectRef::new(name).within(ns));
    let cur = st.endpoints.get(&ObjectRef::new(name).within(ns));
    let Some(svc) = svc else {
        // The Service is gone: so are its Endpoints (unless someone else's, with skip-mirror:
        // the API server keeps `default/kubernetes` itself).
        if let Some(cur) = cur {
            if cur
                .labels()
                .contains_key(crate::endpointslice::LABEL_SKIP_MIRROR)
            {
                return Ok(());
            }
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Ok(());
    };
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.selector.as_ref().is_none_or(|s| s.is_empty())
        || spec.type_.as_deref() == Some("ExternalName")
    {
        return Ok(());
    }
    let subsets = desired_subsets(st, &svc);
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    if spec.cluster_ip.as_deref() == Some("None") {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    let subsets = (!subsets.is_empty()).then_some(subsets);
    match cur {
        Some(cur) => {
            if to_value(&cur.subsets) == to_value(&subsets)
                && cur.metadata.labels.clone().unwrap_or_default() == labels
            {
                return Ok(());
            }
            let mut n = (*cur).clone();
            n.subsets = subsets;
            n.metadata.labels = Some(labels);
            n.metadata.managed_fields = None;
            api.replace(name, &PostParams::default(), &n).await?;
        }
        None => {
            let e = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(ns.into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets,
            };
            match api.create(&PostParams::default(), &e).await {
                Ok(_) => {}
                // Written meanwhile: the informer's event syncs it again.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
