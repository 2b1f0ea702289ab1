//! The node lifecycle controller (upstream's `pkg/controller/nodelifecycle`) and the taint
//! eviction it drives (`pkg/controller/tainteviction`):
//! - every 5 s (nodeMonitorPeriod) each node's heartbeat — its Lease in `kube-node-lease` or its
//!   Ready condition's lastHeartbeatTime — is checked; after 40 s of silence (nodeMonitorGracePeriod)
//!   Ready, MemoryPressure, DiskPressure and PIDPressure become Unknown with reason
//!   NodeStatusUnknown, "Kubelet stopped posting node status." (NodeStatusNeverUpdated when there
//!   was none), and the node's pods are marked not ready;
//! - MemoryPressure/DiskPressure/PIDPressure=True bring `node.kubernetes.io/{memory,disk,pid}-pressure`
//!   NoSchedule taints, removed when the condition clears;
//! - the node carries `node.kubernetes.io/not-ready` (Ready=False) or `unreachable`
//!   (Ready=Unknown) taints, NoSchedule and NoExecute, removed when it is Ready again;
//! - pods on a node with a NoExecute taint they do not tolerate are deleted at once, those that
//!   tolerate it for `tolerationSeconds` (300 s by the API server's DefaultTolerationSeconds)
//!   once that has passed, with a DisruptionTarget condition and a TaintManagerEviction event.

use crate::cached_pod::CachedPod;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::events::{Recorder, NORMAL};
use crate::informer::Informer;
use crate::replicaset::is_not_found;
use crate::{Context, ControllerError};

const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// Upstream's `--node-monitor-grace-period` default.
pub const GRACE: i64 = 40;
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Node conditions and the NoSchedule taints they bring (upstream's `nodeConditionToTaintKeyStatusMap`).
const PRESSURE_TAINTS: &[(&str, &str)] = &[
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];
const CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

struct Ctl {
    client: Client,
    nodes: Arc<Informer<Node>>,
    leases: Arc<Informer<k8s_openapi::api::coordination::v1::Lease>>,
    pods: Arc<Informer<CachedPod>>,
    rec: Recorder,
}

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let c = Ctl {
            client: ctx.client.clone(),
            nodes: ctx.informers.nodes(),
            leases: ctx.informers.node_leases(),
            pods: ctx.informers.pods(),
            rec: Recorder::new(ctx.client.clone(), "node-controller"),
        };
        c.nodes.ready().await;
        c.leases.ready().await;
        c.pods.ready().await;
        let work = async {
            loop {
                for n in c.nodes.store().state() {
                    if let Err(e) = c.monitor(&n).await {
                        tracing::info!(node = %n.name_any(), error = %e, "node monitor failed");
                    }
                }
                if let Err(e) = c.evict().await {
                    tracing::info!(error = %e, "taint eviction failed");
                }
                tokio::time::sleep(MONITOR_PERIOD).await;
            }
        };
        tokio::select! {
            _ = stop => Ok(()),
            r = work => r,
        }
    })
}

fn ready_condition(n: &Node) -> Option<&NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

impl Ctl {
    /// The newest sign of life: Lease renewal or Ready heartbeat (or creation, for a node that
    /// never reported).
    fn last_heartbeat(&self, n: &Node) -> i64 {
        let lease = self
            .leases
            .store()
            .get(&ObjectRef::new(&n.name_any()).within("kube-node-lease"))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.as_second())
            });
        let ready = ready_condition(n)
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.as_second()));
        let created = n
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        [lease, ready, created]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
    }

    #[tracing::instrument(skip(self, n), fields(node = %n.name_any()))]
    async fn monitor(&self, n: &Node) -> Result<(), ControllerError> {
        let now = Timestamp::now();
        let name = n.name_any();
        let api: Api<Node> = Api::all(self.client.clone());
        let mut ready_status = ready_condition(n).map(|c| c.status.clone());
        if now.as_second() - self.last_heartbeat(n) > GRACE {
            let mut conds = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let mut changed = false;
            for t in CONDITIONS {
                match conds.iter_mut().find(|c| c.type_ == *t) {
                    Some(c) if c.status != "Unknown" => {
                        c.status = "Unknown".into();
                        c.reason = Some("NodeStatusUnknown".into());
                        c.message = Some("Kubelet stopped posting node status.".into());
                        c.last_transition_time = Some(Time(now));
                        changed = true;
                    }
                    Some(_) => {}
                    None => {
                        conds.push(NodeCondition {
                            type_: t.to_string(),
                            status: "Unknown".into(),
                            reason: Some("NodeStatusNeverUpdated".into()),
                            message: Some("Kubelet never posted node status.".into()),
                            last_heartbeat_time: n.metadata.creation_timestamp.clone(),
                            last_transition_time: Some(Time(now)),
                        });
                        changed = true;
                    }
                }
            }
            if changed {
                tracing::info!(node = %name, "node stopped posting status; conditions set to Unknown");
                let patch = json!({"status": {"conditions": conds}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                self.rec.event(
                    n,
                    NORMAL,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                );
                self.mark_pods_not_ready(&name).await;
            }
            ready_status = Some("Unknown".into());
        }
        // Taints follow the Ready condition.
        let want: &[&str] = match ready_status.as_deref() {
            // Not reported yet: nothing to say about taints.
            None => return Ok(()),
            Some("True") => &[],
            Some("False") => &[NOT_READY],
            _ => &[UNREACHABLE],
        };
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        // Pressure conditions become NoSchedule taints (upstream's taint-node-by-condition),
        // kept while the node is not Ready (their condition is Unknown then).
        let conds = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let pressure: Vec<&str> = PRESSURE_TAINTS
            .iter()
            .filter(|(cond, key)| {
                match conds
                    .iter()
                    .find(|c| c.type_ == *cond)
                    .map(|c| c.status.as_str())
                {
                    Some("True") => true,
                    Some("Unknown") => taints.iter().any(|t| t.key == *key),
                    _ => false,
                }
            })
            .map(|(_, key)| *key)
            .collect();
        let mut next: Vec<Taint> = taints
            .iter()
            .filter(|t| {
                !((t.key == NOT_READY || t.key == UNREACHABLE) && !want.contains(&t.key.as_str()))
            })
            .filter(|t| {
                !PRESSURE_TAINTS.iter().any(|(_, k)| *k == t.key)
                    || pressure.contains(&t.key.as_str())
            })
            .cloned()
            .collect();
        for key in &pressure {
            if !next
                .iter()
                .any(|t| t.key == *key && t.effect == "NoSchedule")
            {
                next.push(Taint {
                    key: key.to_string(),
                    effect: "NoSchedule".into(),
                    time_added: None,
                    value: None,
                });
            }
        }
        for key in want {
            for effect in ["NoSchedule", "NoExecute"] {
                if !next.iter().any(|t| t.key == *key && t.effect == effect) {
                    next.push(Taint {
                        key: key.to_string(),
                        effect: effect.into(),
                        time_added: (effect == "NoExecute").then_some(Time(now)),
                        value: None,
                    });
                }
            }
        }
        if next != taints {
            let patch = json!({"spec": {"taints": next}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(())
    }

    /// Upstream's `MarkPodsNotReady`: the node's pods get Ready=False.
    async fn mark_pods_not_ready(&self, node: &str) {
        let now = Timestamp::now();
        for p in self
            .pods
            .store()
            .state_filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        {
            let Some(conds) = p.status.as_ref().and_then(|s| s.conditions.clone()) else {
                continue;
            };
            if !conds
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                continue;
            }
            let conds: Vec<_> = conds
                .into_iter()
                .map(|mut c| {
                    if c.type_ == "Ready" {
                        c.status = "False".into();
                        c.last_transition_time = Some(Time(now));
                    }
                    c
                })
                .collect();
            let patch = json!({"status": {"conditions": conds}});
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            if let Err(e) = api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::debug!(pod = %p.name_any(), error = %e, "could not mark pod not ready");
            }
        }
    }

    /// Deletes pods whose NoExecute taints are not (or no longer) tolerated.
    async fn evict(&self) -> Result<(), ControllerError> {
        let now = Timestamp::now().as_second();
        for n in self.nodes.store().state() {
            let taints: Vec<Taint> = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            if taints.is_empty() {
                continue;
            }
            let node = n.name_any();
            for p in self.pods.store().state_filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            }) {
                let tolerations = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.tolerations.clone())
                    .unwrap_or_default();
                if let Some(at) = eviction_time(&taints, &tolerations) {
                    if at <= now {
                        self.evict_pod(&p).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn evict_pod(&self, p: &CachedPod) -> Result<(), ControllerError> {
        let ns = p.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        tracing::info!(pod = %p.name_any(), namespace = %ns, "evicting pod from a NoExecute-tainted node");
        self.rec.event(
            p,
            NORMAL,
            "TaintManagerEviction",
            format!("Marking for deletion Pod {}/{}", ns, p.name_any()),
        );
        let mut conds = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        conds.retain(|c| c.type_ != "DisruptionTarget");
        conds.push(k8s_openapi::api::core::v1::PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            last_transition_time: Some(Time(Timestamp::now())),
            ..Default::default()
        });
        let _ = api
            .patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"conditions": conds}})),
            )
            .await;
        let dp = DeleteParams {
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
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = tol.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = tol.key.as_deref().unwrap_or("");
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// When a pod must go given the node's NoExecute taints (unix seconds): now if a taint is not
/// tolerated, else the earliest `timeAdded + tolerationSeconds`; None when tolerated forever.
pub fn eviction_time(taints: &[Taint], tolerations: &[Toleration]) -> Option<i64> {
    let now = Timestamp::now().as_second();
    let mut at: Option<i64> = None;
    for t in taints {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|tol| tolerates(tol, t)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // The shortest tolerationSeconds of those that match; none means forever.
        let secs = matching
            .iter()
            .filter_map(|tol| tol.toleration_seconds)
            .min();
        if let Some(s) = secs {
            let added = t
                .time_added
                .as_ref()
                .map(|x| x.0.as_second())
                .unwrap_or(now);
            let when = added + s.max(0);
            at = Some(at.map_or(when, |a| a.min(when)));
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toleration_seconds_delay_eviction() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            effect: "NoExecute".into(),
            time_added: Some(Time(Timestamp::from_second(1_000).unwrap())),
            value: None,
        };
        let tol = Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(300),
            value: None,
        };
        assert_eq!(
            eviction_time(std::slice::from_ref(&taint), std::slice::from_ref(&tol)),
            Some(1_300)
        );
        let forever = Toleration {
            toleration_seconds: None,
            ..tol
        };
        assert_eq!(
            eviction_time(std::slice::from_ref(&taint), &[forever]),
            None
        );
        assert!(eviction_time(&[taint], &[]).is_some());
    }
}
