//! The garbage collector's sweep for what the API server's inline cascading deletion cannot see
//! (it acts when an owner is deleted): dependents whose owners are gone — an ownerReference to a
//! uid that no longer exists, e.g. an object created with a stale owner, or one left behind by a
//! crash mid-cascade. When every owner of an object is gone the object is deleted (Background);
//! when only some are, the dangling references are removed. Dependents of an owner being deleted
//! in the foreground (its `foregroundDeletion` finalizer) are deleted in turn, so a foreground
//! deletion interrupted by a restart still completes.
//!
//! Every kind the API serves is swept (discovery, refreshed every few passes so custom resources
//! are included); owners are looked up live (by kind, namespace and name, then compared by uid),
//! so a cache that lags never makes a live owner look gone.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, OwnerReference, Time};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::discovery::{verbs, Discovery, Scope};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use crate::{Context, ControllerError};

const NAME: &str = "garbage-collector-controller";
const PERIOD: Duration = Duration::from_secs(15);
const REDISCOVER_EVERY: u32 = 8;
/// Objects per list page of the sweep: each page's body is held whole while it is decoded.
const PAGE: u32 = 100;

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        tokio::select! {
            _ = stop => Ok(()),
            r = sweep_forever(ctx.client) => r,
        }
    })
}

async fn sweep_forever(client: Client) -> Result<(), ControllerError> {
    let mut discovery = Discovery::new(client.clone()).run().await?;
    let mut pass = 0u32;
    loop {
        tokio::time::sleep(PERIOD).await;
        pass += 1;
        if pass.is_multiple_of(REDISCOVER_EVERY) {
            match Discovery::new(client.clone()).run().await {
                Ok(d) => discovery = d,
                Err(e) => tracing::info!(error = %e, "discovery failed; keeping the previous one"),
            }
        }
        let n = sweep(&client, &discovery).await;
        if n > 0 {
            tracing::info!(
                controller = NAME,
                collected = n,
                "garbage collected dependents of missing owners"
            );
        }
    }
}

/// What the sweep knows of an owner: gone, or its uid and whether it is being deleted in the
/// foreground.
#[derive(Clone)]
enum Owner {
    Gone,
    Present { uid: String, foreground: bool },
    Unknown,
}

/// One pass over every kind; returns how many objects it deleted or fixed.
async fn sweep(client: &Client, discovery: &Discovery) -> usize {
    let mut owners: HashMap<(String, String, String), Owner> = HashMap::new();
    let mut acted = 0;
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
                || ar.kind == "Event"
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            // Metadata only, a page at a time (upstream's garbage collector runs on metadata
            // informers): the sweep never holds every object of a kind in full.
            let mut lp = ListParams::default().limit(PAGE);
            loop {
                let Ok(list) = list_owned(client, &api, &lp).await else {
                    break;
                };
                let next = list.metadata.continue_.filter(|c| !c.is_empty());
                for SweptObject { metadata: obj } in list.items {
                    let refs = obj.owner_references;
                    if refs.is_empty() || obj.deletion_timestamp.is_some() {
                        continue;
                    }
                    let ns = obj.namespace.unwrap_or_default();
                    let name = obj.name;
                    let mut dangling = Vec::new();
                    let mut foreground_owner = false;
                    let mut unknown = false;
                    for r in &refs {
                        let st = owner_state(client, discovery, &mut owners, &ns, r).await;
                        match st {
                            Owner::Gone => dangling.push(r.uid.clone()),
                            Owner::Present { uid, .. } if uid != r.uid => {
                                dangling.push(r.uid.clone())
                            }
                            Owner::Present {
                                foreground: true, ..
                            } if r.block_owner_deletion == Some(true) => foreground_owner = true,
                            Owner::Present { .. } => {}
                            Owner::Unknown => unknown = true,
                        }
                    }
                    let dapi: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
                        Api::namespaced_with(client.clone(), &ns, &ar)
                    } else {
                        Api::all_with(client.clone(), &ar)
                    };
                    let uid = obj.uid;
                    if !unknown && dangling.len() == refs.len() {
                        tracing::info!(kind = %ar.kind, namespace = %ns, name = %name, "deleting object whose owners are all gone");
                        if delete(&dapi, &name, uid, PropagationPolicy::Background).await {
                            acted += 1;
                        }
                    } else if !dangling.is_empty() {
                        let keep: Vec<_> =
                            refs.iter().filter(|r| !dangling.contains(&r.uid)).collect();
                        let patch = json!({"metadata": {"ownerReferences": keep, "uid": uid}});
                        tracing::info!(kind = %ar.kind, namespace = %ns, name = %name, "removing references to missing owners");
                        if dapi
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .is_ok()
                        {
                            acted += 1;
                        }
                    } else if foreground_owner
                        && delete(&dapi, &name, uid, PropagationPolicy::Foreground).await
                    {
                        acted += 1;
                    }
                }
                match next {
                    Some(c) => lp = lp.continue_token(&c),
                    None => break,
                }
            }
        }
    }
    acted
}

/// What the sweep reads of an object: its metadata list entry without labels, annotations,
/// managed fields or anything else. Deserialized straight from the metadata list body (serde
/// skips the rest without building it), so a page of pods costs a few hundred bytes each, not
/// a `PartialObjectMeta` with its managed fields as JSON values.
#[derive(Deserialize)]
struct SweptObject {
    #[serde(default)]
    metadata: SweptMeta,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SweptMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize)]
struct SweptList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<SweptObject>,
}

/// One page of `api`'s objects as a metadata list (`Api::list_metadata`'s request), decoded as
/// [`SweptList`].
async fn list_owned(
    client: &Client,
    api: &Api<DynamicObject>,
    lp: &ListParams,
) -> Result<SweptList, kube::Error> {
    let mut req = kube::core::Request::new(api.resource_url())
        .list_metadata(lp)
        .map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert("list_metadata");
    client.request::<SweptList>(req).await
}

async fn delete(
    api: &Api<DynamicObject>,
    name: &str,
    uid: Option<String>,
    p: PropagationPolicy,
) -> bool {
    let dp = DeleteParams {
        propagation_policy: Some(p),
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, name, "garbage collector delete failed");
            false
        }
    }
}

async fn owner_state(
    client: &Client,
    discovery: &Discovery,
    cache: &mut HashMap<(String, String, String), Owner>,
    ns: &str,
    r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Owner {
    let (group, version) = match r.api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), r.api_version.clone()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &r.kind);
    let Some((ar, caps)) = discovery.resolve_gvk(&gvk) else {
        return Owner::Unknown;
    };
    let owner_ns = if caps.scope == Scope::Namespaced {
        ns.to_string()
    } else {
        String::new()
    };
    let key = (
        format!("{}/{}", ar.group, ar.plural),
        owner_ns.clone(),
        r.name.clone(),
    );
    if let Some(o) = cache.get(&key) {
        return o.clone();
    }
    let st = lookup(client, &ar, &owner_ns, &r.name).await;
    cache.insert(key, st.clone());
    st
}

async fn lookup(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> Owner {
    let api: Api<DynamicObject> = if ns.is_empty() {
        Api::all_with(client.clone(), ar)
    } else {
        Api::namespaced_with(client.clone(), ns, ar)
    };
    match api.get_metadata_opt(name).await {
        Ok(None) => Owner::Gone,
        Ok(Some(o)) => Owner::Present {
            uid: o.metadata.uid.clone().unwrap_or_default(),
            foreground: o.metadata.deletion_timestamp.is_some()
                && o.finalizers().iter().any(|f| f == "foregroundDeletion"),
        },
        Err(_) => Owner::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metadata list page as the API server sends it decodes to what the sweep reads, the
    /// rest (labels, managed fields) skipped.
    #[test]
    fn a_metadata_list_page_decodes_to_the_swept_fields() {
        let body = json!({
            "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": "42", "continue": "next-page"},
            "items": [
                {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                 "metadata": {"name": "p1", "namespace": "ns", "uid": "u1",
                    "labels": {"app": "a"},
                    "managedFields": [{"manager": "m", "operation": "Update",
                        "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "rs", "uid": "o1", "controller": true,
                        "blockOwnerDeletion": true}]}},
                {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                 "metadata": {"name": "n1", "uid": "u2",
                    "deletionTimestamp": "2026-12-07T01:00:00Z"}},
            ],
        });
        let list: SweptList = serde_json::from_value(body).unwrap();
        assert_eq!(list.metadata.continue_.as_deref(), Some("next-page"));
        let [a, b] = &list.items[..] else {
            panic!("two items expected");
        };
        assert_eq!(a.metadata.name, "p1");
        assert_eq!(a.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(a.metadata.uid.as_deref(), Some("u1"));
        assert!(a.metadata.deletion_timestamp.is_none());
        let r = &a.metadata.owner_references[0];
        assert_eq!(
            (r.kind.as_str(), r.name.as_str(), r.uid.as_str()),
            ("ReplicaSet", "rs", "o1")
        );
        assert_eq!(r.block_owner_deletion, Some(true));
        assert_eq!(b.metadata.namespace, None);
        assert!(b.metadata.owner_references.is_empty());
        assert!(b.metadata.deletion_timestamp.is_some());
    }
}
