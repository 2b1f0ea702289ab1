//! Preemption (upstream's DefaultPreemption): when no node fits a pod, find a node where
//! removing lower-priority pods would let it fit, evicting as few and as unimportant pods as
//! possible. Ports and resources are what removing pods can free here; a node that failed a
//! filter removing pods cannot fix (affinity, taints, selectors, spread) is not a candidate.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{without, Cycle, Unfit};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The chosen node and the pods to evict there.
pub struct Decision {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

fn start_time(p: &PodInfo) -> Option<k8s_openapi::jiff::Timestamp> {
    p.start_time
}

/// Picks victims, or says (upstream's words) why preemption cannot help.
pub fn preempt(cycle: &Cycle, unfit: &[(&NodeInfo, Unfit)]) -> Result<Decision, String> {
    let pod = cycle.pod;
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    let mut candidates: Vec<(&NodeInfo, Vec<Arc<PodInfo>>, usize)> = Vec::new();
    for (n, u) in unfit {
        if !u.resolvable {
            *why.entry("Preemption is not helpful for scheduling")
                .or_default() += 1;
            continue;
        }
        let mut lower: Vec<Arc<PodInfo>> = n
            .pods
            .values()
            .filter(|p| p.priority < pod.priority && !p.terminating)
            .cloned()
            .collect();
        let fits = |node: &NodeInfo| {
            cycle.ports_fit(node, &[]).is_ok() && cycle.resources_fit(node, &[]).is_ok()
        };
        let all: Vec<&PodInfo> = lower.iter().map(|p| p.as_ref()).collect();
        let mut freed = without(n, &all);
        if lower.is_empty() || !fits(&freed) {
            *why.entry("No preemption victims found for incoming pod")
                .or_default() += 1;
            continue;
        }
        // Give back as many as possible, most important first; pods whose eviction would
        // violate a PodDisruptionBudget get their reprieve first (upstream's
        // filterPodsWithPDBViolation), and each of them still evicted counts as a violation.
        lower.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(start_time(a).cmp(&start_time(b)))
        });
        let (violating, safe) = split_by_budgets(&lower, &cycle.budgets());
        let mut victims = Vec::new();
        let mut violations = 0usize;
        for (p, violates) in violating
            .into_iter()
            .map(|p| (p, true))
            .chain(safe.into_iter().map(|p| (p, false)))
        {
            let mut trial = freed.clone();
            trial.add_pod(p.clone());
            if fits(&trial) {
                freed = trial;
            } else {
                violations += usize::from(violates);
                victims.push(p);
            }
        }
        candidates.push((n, victims, violations));
    }
    if candidates.is_empty() {
        let mut parts: Vec<String> = why.iter().map(|(r, c)| format!("{c} {r}")).collect();
        parts.sort();
        return Err(format!(
            "preemption: 0/{} nodes are available: {}.",
            cycle_nodes(unfit),
            parts.join(", ")
        ));
    }
    // Upstream's order: fewest PodDisruptionBudget violations, lowest highest-victim priority,
    // lowest priority sum, fewest victims, latest start of the most important victims.
    let key = |v: &Vec<Arc<PodInfo>>, violations: usize| {
        let highest = v.iter().map(|p| p.priority).max().unwrap_or(i32::MIN);
        let sum: i64 = v.iter().map(|p| p.priority as i64 + (1i64 << 31)).sum();
        let earliest = v
            .iter()
            .filter(|p| p.priority == highest)
            .filter_map(|p| start_time(p))
            .min();
        (
            violations,
            highest,
            sum,
            v.len(),
            std::cmp::Reverse(earliest),
        )
    };
    let (n, victims, _) = candidates
        .into_iter()
        .min_by(|a, b| key(&a.1, a.2).cmp(&key(&b.1, b.2)))
        .expect("a candidate");
    Ok(Decision {
        node: n.name.clone(),
        victims,
    })
}

/// Splits `pods` (most important first) into those whose eviction would violate a matching
/// budget and the others, counting down each budget's `disruptionsAllowed` as pods are taken
/// (upstream's `filterPodsWithPDBViolation`).
fn split_by_budgets(
    pods: &[Arc<PodInfo>],
    budgets: &[Arc<PodDisruptionBudget>],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = budgets
        .iter()
        .map(|b| {
            b.status
                .as_ref()
                .map(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    let (mut violating, mut safe) = (Vec::new(), Vec::new());
    for p in pods {
        let mut violates = false;
        for (i, b) in budgets.iter().enumerate() {
            if b.metadata.namespace.as_deref() != Some(p.namespace.as_str()) {
                continue;
            }
            // An empty selector matches nothing (policy/v1 with the selector left out).
            let Some(sel) = b.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
                continue;
            };
            if sel.match_labels.is_none() && sel.match_expressions.is_none() {
                continue;
            }
            if !crate::labels::selector_matches(Some(sel), p.labels()) {
                continue;
            }
            // A pod the budget already counts as disrupted does not use it up again.
            let disrupted = b
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(&p.name));
            if disrupted {
                continue;
            }
            allowed[i] -= 1;
            if allowed[i] < 0 {
                violates = true;
            }
        }
        if violates {
            violating.push(p.clone());
        } else {
            safe.push(p.clone());
        }
    }
    (violating, safe)
}

fn cycle_nodes(unfit: &[(&NodeInfo, Unfit)]) -> usize {
    unfit.len()
}
