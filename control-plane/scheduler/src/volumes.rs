//! VolumeBinding, as upstream's plugin of that name decides it: every claim the pod mounts
//! must exist and not be going away; a bound claim's volume must be reachable from the node
//! (its required node affinity); an unbound `Immediate` claim keeps the pod pending until the
//! PV controller binds it; an unbound `WaitForFirstConsumer` claim needs an available volume
//! that fits on the node, or a class that provisions one. Before binding the pod, claims that
//! will be provisioned get the `volume.kubernetes.io/selected-node` annotation.

use crate::cache::{NodeInfo, Volumes};
use crate::framework::Unfit;
use crate::labels::term_matches;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::sync::Arc;

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

/// What one claim of the pod needs.
pub enum Claim {
    /// Stops the pod on every node (upstream's PreFilter failures).
    Unresolvable(String),
    Bound(Option<Arc<PersistentVolume>>),
    WaitForConsumer {
        claim: Arc<PersistentVolumeClaim>,
        class: Option<Arc<StorageClass>>,
    },
}

/// The claims `pod` mounts, looked up in `v`.
pub fn claims_of(pod: &Pod, v: &Volumes) -> Vec<Claim> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Vec::new();
    let vols = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for vol in vols.into_iter().flatten() {
        let name = match (&vol.persistent_volume_claim, &vol.ephemeral) {
            (Some(c), _) => c.claim_name.clone(),
            // A generic ephemeral volume's claim is `<pod>-<volume>`.
            (None, Some(_)) => format!(
                "{}-{}",
                pod.metadata.name.as_deref().unwrap_or(""),
                vol.name
            ),
            _ => continue,
        };
        let Some(claim) = v.claims.get(&format!("{ns}/{name}")) else {
            out.push(Claim::Unresolvable(format!(
                "persistentvolumeclaim \"{name}\" not found"
            )));
            continue;
        };
        if claim.metadata.deletion_timestamp.is_some() {
            out.push(Claim::Unresolvable(format!(
                "persistentvolumeclaim \"{name}\" is being deleted"
            )));
            continue;
        }
        let spec = claim.spec.clone().unwrap_or_default();
        if let Some(pv) = spec.volume_name.as_deref().filter(|s| !s.is_empty()) {
            out.push(Claim::Bound(v.pvs.get(pv).cloned()));
            continue;
        }
        let class = spec
            .storage_class_name
            .as_deref()
            .and_then(|c| v.classes.get(c).cloned());
        let wait = class
            .as_ref()
            .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
        if wait {
            out.push(Claim::WaitForConsumer {
                claim: claim.clone(),
                class,
            });
        } else {
            out.push(Claim::Unresolvable(
                "pod has unbound immediate PersistentVolumeClaims".into(),
            ));
        }
    }
    out
}

fn reachable(pv: &PersistentVolume, n: &NodeInfo) -> bool {
    let terms = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.as_slice());
    match terms {
        None | Some([]) => true,
        Some(t) => t.iter().any(|t| term_matches(t, &n.name, n.labels())),
    }
}

fn bytes(q: &Quantity) -> i64 {
    crate::quantity::value(&q.0)
}

/// An Available volume the claim could bind to on node `n`.
fn static_fit(claim: &PersistentVolumeClaim, pv: &PersistentVolume, n: &NodeInfo) -> bool {
    let (Some(cs), Some(ps)) = (claim.spec.as_ref(), pv.spec.as_ref()) else {
        return false;
    };
    let free = ps.claim_ref.as_ref().is_none_or(|r| {
        r.name.as_deref() == claim.metadata.name.as_deref()
            && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
    });
    let phase_ok = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Available" || p == "Pending");
    let class_ok = ps.storage_class_name.as_deref().unwrap_or("")
        == cs.storage_class_name.as_deref().unwrap_or("");
    let modes_ok = cs
        .access_modes
        .iter()
        .flatten()
        .all(|m| ps.access_modes.iter().flatten().any(|x| x == m));
    let want = cs
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(bytes)
        .unwrap_or(0);
    let have = ps
        .capacity
        .as_ref()
        .and_then(|c| c.get("storage"))
        .map(bytes)
        .unwrap_or(0);
    free && phase_ok && class_ok && modes_ok && have >= want && reachable(pv, n)
}

/// The VolumeBinding filter for node `n`.
pub fn fit(claims: &[Claim], v: &Volumes, n: &NodeInfo) -> Result<(), Unfit> {
    for c in claims {
        match c {
            Claim::Unresolvable(why) => return Err(Unfit::hard(why.clone())),
            Claim::Bound(None) => {
                return Err(Unfit::hard(
                    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)",
                ))
            }
            Claim::Bound(Some(pv)) => {
                if !reachable(pv, n) {
                    return Err(Unfit::hard("node(s) had volume node affinity conflict"));
                }
            }
            Claim::WaitForConsumer { claim, class } => {
                let static_ok = v.pvs.values().any(|pv| static_fit(claim, pv, n));
                let provisions = class
                    .as_ref()
                    .is_some_and(|c| !c.provisioner.is_empty() && c.provisioner != NO_PROVISIONER);
                if !static_ok && !provisions {
                    return Err(Unfit::hard(
                        "node(s) didn't find available persistent volumes to bind",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Claims to annotate with the chosen node before the pod is bound (those that will be
/// provisioned: no volume fits there).
pub fn to_provision(claims: &[Claim], v: &Volumes, n: &NodeInfo) -> Vec<(String, String)> {
    claims
        .iter()
        .filter_map(|c| match c {
            Claim::WaitForConsumer { claim, .. }
                if !v.pvs.values().any(|pv| static_fit(claim, pv, n))
                    && !claim
                        .metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(SELECTED_NODE)) =>
            {
                Some((
                    claim.metadata.namespace.clone().unwrap_or_default(),
                    claim.metadata.name.clone().unwrap_or_default(),
                ))
            }
            _ => None,
        })
        .collect()
}
