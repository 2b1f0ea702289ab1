//! Pod garbage collection (upstream's `pkg/controller/podgc`), every 20 s (gcCheckPeriod):
//! - terminated pods (Succeeded/Failed) beyond `terminated-pod-gc-threshold` (12,500 by default)
//!   are deleted, oldest first;
//! - pods bound to a node that no longer exists (checked live after the node informer misses it)
//!   are marked Failed with a DisruptionTarget condition (DeletionByPodGC) and force-deleted;
//! - terminating pods never scheduled are force-deleted (no kubelet will ever confirm them).

use crate::cached_pod::CachedPod;
use std::collections::HashSet;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::replicaset::is_not_found;
use crate::{Context, ControllerError};

const PERIOD: Duration = Duration::from_secs(20);
/// Upstream's `--terminated-pod-gc-threshold` default.
pub const TERMINATED_THRESHOLD: usize = 12_500;

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let pods = ctx.informers.pods();
        let nodes = ctx.informers.nodes();
        pods.ready().await;
        nodes.ready().await;
        let work = async {
            loop {
                tokio::time::sleep(PERIOD).await;
                let all: Vec<_> = pods.store().state();
                let known: HashSet<String> =
                    nodes.store().state().iter().map(|n| n.name_any()).collect();
                if let Err(e) = gc(&ctx.client, &all, &known).await {
                    tracing::info!(error = %e, "pod GC pass failed");
                }
            }
        };
        tokio::select! {
            _ = stop => Ok(()),
            r = work => r,
        }
    })
}

fn phase(p: &CachedPod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

async fn gc(
    client: &Client,
    pods: &[std::sync::Arc<CachedPod>],
    nodes: &HashSet<String>,
) -> Result<(), ControllerError> {
    // Terminated pods over the threshold, oldest first.
    let mut terminated: Vec<_> = pods
        .iter()
        .filter(|p| {
            matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    if terminated.len() > TERMINATED_THRESHOLD {
        terminated.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let n = terminated.len() - TERMINATED_THRESHOLD;
        tracing::info!(
            count = n,
            "garbage collecting terminated pods over the threshold"
        );
        for p in terminated.into_iter().take(n) {
            delete(client, p, None).await?;
        }
    }
    // Orphans of deleted nodes.
    let node_api: Api<Node> = Api::all(client.clone());
    let mut checked: HashSet<String> = HashSet::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            if p.metadata.deletion_timestamp.is_some() {
                tracing::info!(pod = %p.name_any(), "force-deleting an unscheduled terminating pod");
                delete(client, p, Some(0)).await?;
            }
            continue;
        };
        if nodes.contains(&node) {
            continue;
        }
        if !checked.contains(&node) {
            if node_api.get_opt(&node).await?.is_some() {
                continue;
            }
            checked.insert(node.clone());
        }
        tracing::info!(pod = %p.name_any(), node = %node, "garbage collecting a pod of a deleted node");
        if !matches!(phase(p), "Succeeded" | "Failed") {
            let patch = json!({"status": {"phase": "Failed", "conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
                "message": "PodGC: node no longer exists",
                "lastTransitionTime": Time(Timestamp::now()),
            }]}});
            let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
            let _ = api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
        }
        delete(client, p, Some(0)).await?;
    }
    Ok(())
}

async fn delete(client: &Client, p: &CachedPod, grace: Option<u32>) -> Result<(), ControllerError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: grace,
        preconditions: Some(Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&p.name_any(), &dp).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
