//! Preemption (upstream's DefaultPreemption): when no node fits a pod, find a node where
//! removing lower-priority pods would let it fit, evicting as few and as unimportant pods as
//! possible. Ports and resources are what removing pods can free here; a node that failed a
//! filter removing pods cannot fix (affinity, taints, selectors, spread) is not a candidate.

use crate::cache::{NodeInfo, PodInfo};
use crate::framework::{without, Cycle, Unfit};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The chosen node and the pods to evict there.
pub struct Decision {
    pub node: String,
    pub victims: Vec<Arc<PodInfo>>,
}

fn start_time(p: &PodInfo) -> Option<k8s_openapi::jiff::Timestamp> {
    p.pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
}

/// Picks victims, or says (upstream's words) why preemption cannot help.
pub fn preempt(cycle: &Cycle, unfit: &[(&NodeInfo, Unfit)]) -> Result<Decision, String> {
    let pod = cycle.pod;
    let spec = pod.pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    let mut candidates: Vec<(&NodeInfo, Vec<Arc<PodInfo>>)> = Vec::new();
    for (n, u) in unfit {
        if !u.resolvable {
            *why.entry("Preemption is not helpful for scheduling")
                .or_default() += 1;
            continue;
        }
        let mut lower: Vec<Arc<PodInfo>> = n
            .pods
            .values()
            .filter(|p| p.priority < pod.priority && p.pod.metadata.deletion_timestamp.is_none())
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
        // Give back as many as possible, most important first.
        lower.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(start_time(a).cmp(&start_time(b)))
        });
        let mut victims = Vec::new();
        for p in lower {
            let mut trial = freed.clone();
            trial.add_pod(p.clone());
            if fits(&trial) {
                freed = trial;
            } else {
                victims.push(p);
            }
        }
        candidates.push((n, victims));
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
    // Upstream's order: lowest highest-victim priority, lowest priority sum, fewest victims,
    // latest start of the most important victims.
    let key = |v: &Vec<Arc<PodInfo>>| {
        let highest = v.iter().map(|p| p.priority).max().unwrap_or(i32::MIN);
        let sum: i64 = v.iter().map(|p| p.priority as i64 + (1i64 << 31)).sum();
        let earliest = v
            .iter()
            .filter(|p| p.priority == highest)
            .filter_map(|p| start_time(p))
            .min();
        (highest, sum, v.len(), std::cmp::Reverse(earliest))
    };
    let (n, victims) = candidates
        .into_iter()
        .min_by(|a, b| key(&a.1).cmp(&key(&b.1)))
        .expect("a candidate");
    Ok(Decision {
        node: n.name.clone(),
        victims,
    })
}

fn cycle_nodes(unfit: &[(&NodeInfo, Unfit)]) -> usize {
    unfit.len()
}
