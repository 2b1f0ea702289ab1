//! One scheduling cycle: filters (which nodes can take the pod, and why not) and scores (which
//! feasible node is best), the default plugins of upstream's scheduler expressed over the cache.

use crate::cache::{normalize_image, Cache, NodeInfo, PodInfo, Resources};
use crate::config::Profile;
use crate::labels::{selector_matches, term_matches, tolerated, Labels};
use k8s_openapi::api::core::v1::{PodAffinityTerm, Taint, Toleration, TopologySpreadConstraint};
use std::collections::{BTreeMap, HashMap, HashSet};

pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Why a node cannot take the pod: upstream's reason strings, and whether removing pods
/// (preemption) could help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    pub reasons: Vec<String>,
    pub resolvable: bool,
}

impl Unfit {
    pub(crate) fn hard(r: impl Into<String>) -> Unfit {
        Unfit {
            reasons: vec![r.into()],
            resolvable: false,
        }
    }
}

/// A spread constraint with its counts over the eligible nodes' domains.
struct Spread {
    key: String,
    max_skew: i32,
    hard: bool,
    min_domains: Option<i32>,
    /// Domain value -> matching pods there.
    counts: HashMap<String, i64>,
    self_match: bool,
}

/// One pod-affinity term with the domains (topology values) that hold matching pods.
struct TermDomains {
    key: String,
    domains: HashSet<String>,
    weight: i32,
}

/// What a cycle works out once for the pod, before looking at nodes.
pub struct Cycle<'a> {
    pub pod: &'a PodInfo,
    cache: &'a Cache,
    tolerations: Vec<Toleration>,
    spreads: Vec<Spread>,
    /// Domains forbidden by existing pods' required anti-affinity: (topology key, value).
    forbidden: HashSet<(String, String)>,
    affinity: Vec<TermDomains>,
    affinity_unmatched_ok: bool,
    anti_affinity: Vec<TermDomains>,
    /// Preferred (anti-)affinity: domains with their weight (negative for anti).
    preferred: Vec<TermDomains>,
    /// Existing pods' preferred terms matching this pod: (key, value) -> weight.
    existing_preferred: HashMap<(String, String), i64>,
    images: HashMap<&'a str, usize>,
    /// Pods nominated to nodes with priority >= this pod's: node -> their requests and ports.
    nominated: HashMap<String, Vec<&'a PodInfo>>,
    /// The claims the pod mounts (VolumeBinding).
    pub claims: Vec<crate::volumes::Claim>,
}

fn pod_ns_labels_match(
    term: &PodAffinityTerm,
    owner_ns: &str,
    cand: &PodInfo,
    namespaces: &HashMap<String, BTreeMap<String, String>>,
) -> bool {
    let listed = term.namespaces.as_deref().unwrap_or_default();
    let ns_ok = if listed.is_empty() && term.namespace_selector.is_none() {
        cand.namespace == owner_ns
    } else {
        listed.contains(&cand.namespace)
            || term.namespace_selector.as_ref().is_some_and(|s| {
                let empty = Labels::new();
                selector_matches(Some(s), namespaces.get(&cand.namespace).unwrap_or(&empty))
            })
    };
    ns_ok && selector_matches(term.label_selector.as_ref(), cand.labels())
}

fn terminating(p: &PodInfo) -> bool {
    p.terminating
}

impl<'a> Cycle<'a> {
    pub fn new(pod: &'a PodInfo, cache: &'a Cache) -> Cycle<'a> {
        let spec = pod.pod.spec.as_ref();
        let mut c = Cycle {
            pod,
            cache,
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            spreads: Vec::new(),
            forbidden: HashSet::new(),
            affinity: Vec::new(),
            affinity_unmatched_ok: false,
            anti_affinity: Vec::new(),
            preferred: Vec::new(),
            existing_preferred: HashMap::new(),
            images: cache.image_spread(),
            nominated: HashMap::new(),
            claims: crate::volumes::claims_of(&pod.pod, &cache.volumes),
        };
        for (uid, (node, p)) in &cache.nominated {
            if *uid != pod.uid && p.priority >= pod.priority {
                c.nominated.entry(node.clone()).or_default().push(p);
            }
        }
        c.prepare_spread();
        c.prepare_affinity();
        c
    }

    /// Node selector and required node affinity.
    fn node_affinity_ok(&self, n: &NodeInfo) -> bool {
        let Some(spec) = self.pod.pod.spec.as_ref() else {
            return true;
        };
        for (k, v) in spec.node_selector.iter().flatten() {
            if n.labels().get(k) != Some(v) {
                return false;
            }
        }
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        match required {
            Some(r) => r
                .node_selector_terms
                .iter()
                .any(|t| term_matches(t, &n.name, n.labels())),
            None => true,
        }
    }

    fn prepare_spread(&mut self) {
        let spec = self.pod.pod.spec.as_ref();
        let explicit: Vec<TopologySpreadConstraint> = spec
            .and_then(|s| s.topology_spread_constraints.clone())
            .unwrap_or_default();
        let owner = self.pod.controller_uid().map(str::to_string);
        // Upstream's system defaults when a pod states none: spread a controller's pods
        // softly over hosts (skew 3) and zones (skew 5).
        let defaults = explicit.is_empty() && owner.is_some();
        let mut list: Vec<(TopologySpreadConstraint, bool)> =
            explicit.into_iter().map(|c| (c, false)).collect();
        if defaults {
            for (key, skew) in [(HOSTNAME_LABEL, 3), (ZONE_LABEL, 5)] {
                list.push((
                    TopologySpreadConstraint {
                        topology_key: key.into(),
                        max_skew: skew,
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        ..Default::default()
                    },
                    true,
                ));
            }
        }
        for (c, system) in list {
            let mut sel = c.label_selector.clone();
            if let (Some(keys), Some(s)) = (c.match_label_keys.as_ref(), sel.as_mut()) {
                let ml = s.match_labels.get_or_insert_with(Default::default);
                for k in keys {
                    if let Some(v) = self.pod.labels().get(k) {
                        ml.insert(k.clone(), v.clone());
                    }
                }
            }
            let matches = |p: &PodInfo| -> bool {
                if system {
                    p.controller_uid().is_some() && p.controller_uid() == owner.as_deref()
                } else {
                    p.namespace == self.pod.namespace && selector_matches(sel.as_ref(), p.labels())
                }
            };
            let honor_affinity = c.node_affinity_policy.as_deref() != Some("Ignore");
            let honor_taints = c.node_taints_policy.as_deref() == Some("Honor");
            let mut counts: HashMap<String, i64> = HashMap::new();
            for n in self.cache.nodes.values() {
                let Some(v) = n.labels().get(&c.topology_key) else {
                    continue;
                };
                if honor_affinity && !self.node_affinity_ok(n) {
                    continue;
                }
                if honor_taints && self.untolerated(&n.taints).is_some() {
                    continue;
                }
                let cnt = n
                    .pods
                    .values()
                    .filter(|p| !terminating(p) && matches(p))
                    .count() as i64;
                *counts.entry(v.clone()).or_default() += cnt;
            }
            let self_match = system || selector_matches(sel.as_ref(), self.pod.labels());
            self.spreads.push(Spread {
                key: c.topology_key.clone(),
                max_skew: c.max_skew.max(1),
                hard: c.when_unsatisfiable == "DoNotSchedule",
                min_domains: c.min_domains,
                counts,
                self_match,
            });
        }
    }

    fn prepare_affinity(&mut self) {
        let namespaces = &self.cache.namespaces;
        let pod = self.pod;
        let aff = pod.pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let req_aff: Vec<PodAffinityTerm> = aff
            .and_then(|a| a.pod_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let req_anti: Vec<PodAffinityTerm> = aff
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let mut pref: Vec<(PodAffinityTerm, i32)> = Vec::new();
        if let Some(p) = aff.and_then(|a| a.pod_affinity.as_ref()) {
            for w in p
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                pref.push((w.pod_affinity_term.clone(), w.weight));
            }
        }
        if let Some(p) = aff.and_then(|a| a.pod_anti_affinity.as_ref()) {
            for w in p
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                pref.push((w.pod_affinity_term.clone(), -w.weight));
            }
        }
        let mk = |t: &PodAffinityTerm, w: i32| TermDomains {
            key: t.topology_key.clone(),
            domains: HashSet::new(),
            weight: w,
        };
        self.affinity = req_aff.iter().map(|t| mk(t, 1)).collect();
        self.anti_affinity = req_anti.iter().map(|t| mk(t, 1)).collect();
        self.preferred = pref.iter().map(|(t, w)| mk(t, *w)).collect();
        let mut any_affinity_match = false;
        for n in self.cache.nodes.values() {
            let labels = n.labels();
            for p in n.pods.values() {
                if p.uid == pod.uid {
                    continue;
                }
                for (i, t) in req_aff.iter().enumerate() {
                    if pod_ns_labels_match(t, &pod.namespace, p, namespaces) {
                        any_affinity_match = true;
                        if let Some(v) = labels.get(&t.topology_key) {
                            self.affinity[i].domains.insert(v.clone());
                        }
                    }
                }
                for (i, t) in req_anti.iter().enumerate() {
                    if pod_ns_labels_match(t, &pod.namespace, p, namespaces) {
                        if let Some(v) = labels.get(&t.topology_key) {
                            self.anti_affinity[i].domains.insert(v.clone());
                        }
                    }
                }
                for (i, (t, _)) in pref.iter().enumerate() {
                    if pod_ns_labels_match(t, &pod.namespace, p, namespaces) {
                        if let Some(v) = labels.get(&t.topology_key) {
                            self.preferred[i].domains.insert(v.clone());
                        }
                    }
                }
                // The other direction: existing pods' anti-affinity (hard) and preferences.
                let Some(eaff) = p.affinity.as_deref() else {
                    continue;
                };
                for t in eaff
                    .pod_anti_affinity
                    .as_ref()
                    .and_then(|a| {
                        a.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .into_iter()
                    .flatten()
                {
                    if pod_ns_labels_match(t, &p.namespace, pod, namespaces) {
                        if let Some(v) = labels.get(&t.topology_key) {
                            self.forbidden.insert((t.topology_key.clone(), v.clone()));
                        }
                    }
                }
                let weighted = eaff
                    .pod_affinity
                    .as_ref()
                    .and_then(|a| {
                        a.preferred_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .into_iter()
                    .flatten()
                    .map(|w| (&w.pod_affinity_term, w.weight as i64))
                    .chain(
                        eaff.pod_anti_affinity
                            .as_ref()
                            .and_then(|a| {
                                a.preferred_during_scheduling_ignored_during_execution
                                    .as_ref()
                            })
                            .into_iter()
                            .flatten()
                            .map(|w| (&w.pod_affinity_term, -(w.weight as i64))),
                    );
                for (t, w) in weighted {
                    if pod_ns_labels_match(t, &p.namespace, pod, namespaces) {
                        if let Some(v) = labels.get(&t.topology_key) {
                            *self
                                .existing_preferred
                                .entry((t.topology_key.clone(), v.clone()))
                                .or_default() += w;
                        }
                    }
                }
            }
        }
        // The first pod of a group that must be together may go anywhere its terms can hold.
        self.affinity_unmatched_ok = !any_affinity_match
            && req_aff
                .iter()
                .all(|t| pod_ns_labels_match(t, &pod.namespace, pod, namespaces));
    }

    fn untolerated<'t>(&self, taints: &'t [Taint]) -> Option<&'t Taint> {
        taints.iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !tolerated(&self.tolerations, t)
        })
    }

    /// The cluster's PodDisruptionBudgets (preemption avoids violating them).
    pub fn budgets(
        &self,
    ) -> Vec<std::sync::Arc<k8s_openapi::api::policy::v1::PodDisruptionBudget>> {
        self.cache.volumes.pdbs.values().cloned().collect()
    }

    /// Runs the filters on one node, in upstream's order, stopping at the first that fails.
    pub fn filter(&self, n: &NodeInfo, profile: &Profile) -> Result<(), Unfit> {
        let on = |name: &str| profile.filter_enabled(name);
        let spec = self.pod.pod.spec.as_ref();
        if on("NodeUnschedulable") && n.unschedulable() {
            let t = Taint {
                key: "node.kubernetes.io/unschedulable".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            };
            if !tolerated(&self.tolerations, &t) {
                return Err(Unfit::hard("node(s) were unschedulable"));
            }
        }
        if on("NodeName") {
            if let Some(want) = spec
                .and_then(|s| s.node_name.as_deref())
                .filter(|s| !s.is_empty())
            {
                if want != n.name {
                    return Err(Unfit::hard("node(s) didn't match the requested node name"));
                }
            }
        }
        if on("TaintToleration") {
            if let Some(t) = self.untolerated(&n.taints) {
                return Err(Unfit::hard(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key,
                    t.value.as_deref().unwrap_or("")
                )));
            }
        }
        if on("NodeAffinity") && !self.node_affinity_ok(n) {
            return Err(Unfit::hard(
                "node(s) didn't match Pod's node affinity/selector",
            ));
        }
        let nominated = self
            .nominated
            .get(&n.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if on("NodePorts") {
            self.ports_fit(n, nominated)?;
        }
        if on("NodeResourcesFit") {
            self.resources_fit(n, nominated)?;
        }
        if on("VolumeBinding") {
            crate::volumes::fit(&self.claims, &self.cache.volumes, n)?;
        }
        if on("PodTopologySpread") {
            self.spread_fit(n)?;
        }
        if on("InterPodAffinity") {
            self.affinity_fit(n)?;
        }
        Ok(())
    }

    pub fn ports_fit(&self, n: &NodeInfo, extra: &[&PodInfo]) -> Result<(), Unfit> {
        let used = n
            .ports
            .iter()
            .chain(extra.iter().flat_map(|p| p.ports.iter()));
        let used: Vec<_> = used.collect();
        for (proto, ip, port) in &self.pod.ports {
            let clash = used.iter().any(|(p2, ip2, port2)| {
                p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
            });
            if clash {
                return Err(Unfit {
                    reasons: vec![
                        "node(s) didn't have free ports for the requested pod ports".into()
                    ],
                    resolvable: true,
                });
            }
        }
        Ok(())
    }

    pub fn resources_fit(&self, n: &NodeInfo, extra: &[&PodInfo]) -> Result<(), Unfit> {
        let mut used = n.requested.clone();
        for p in extra {
            used.add(&p.requests);
        }
        let want = &self.pod.requests;
        let alloc = &n.allocatable;
        let mut reasons = Vec::new();
        if used.pods + 1 > alloc.pods {
            reasons.push("Too many pods".to_string());
        }
        if want.milli_cpu > 0 && want.milli_cpu > alloc.milli_cpu - used.milli_cpu {
            reasons.push("Insufficient cpu".into());
        }
        if want.memory > 0 && want.memory > alloc.memory - used.memory {
            reasons.push("Insufficient memory".into());
        }
        if want.ephemeral_storage > 0
            && want.ephemeral_storage > alloc.ephemeral_storage - used.ephemeral_storage
        {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (k, v) in &want.scalar {
            if *v > 0
                && *v
                    > alloc.scalar.get(k).copied().unwrap_or(0)
                        - used.scalar.get(k).copied().unwrap_or(0)
            {
                reasons.push(format!("Insufficient {k}"));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Unfit {
                reasons,
                resolvable: true,
            })
        }
    }

    fn spread_fit(&self, n: &NodeInfo) -> Result<(), Unfit> {
        for s in self.spreads.iter().filter(|s| s.hard) {
            let Some(v) = n.labels().get(&s.key) else {
                return Err(Unfit::hard(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let mut min = s.counts.values().copied().min().unwrap_or(0);
            if s.min_domains.is_some_and(|m| (s.counts.len() as i32) < m) {
                min = 0;
            }
            let here = s.counts.get(v).copied().unwrap_or(0) + i64::from(s.self_match);
            if here - min > s.max_skew as i64 {
                return Err(Unfit::hard(
                    "node(s) didn't match pod topology spread constraints",
                ));
            }
        }
        Ok(())
    }

    fn affinity_fit(&self, n: &NodeInfo) -> Result<(), Unfit> {
        let labels = n.labels();
        let aff_ok = self.affinity.iter().all(|t| {
            labels
                .get(&t.key)
                .is_some_and(|v| t.domains.contains(v) || self.affinity_unmatched_ok)
        });
        if !aff_ok {
            return Err(Unfit::hard("node(s) didn't match pod affinity rules"));
        }
        if self
            .anti_affinity
            .iter()
            .any(|t| labels.get(&t.key).is_some_and(|v| t.domains.contains(v)))
        {
            return Err(Unfit::hard("node(s) didn't match pod anti-affinity rules"));
        }
        if self.forbidden.iter().any(|(k, v)| labels.get(k) == Some(v)) {
            return Err(Unfit::hard(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            ));
        }
        Ok(())
    }

    /// Scores the feasible nodes (0-100 per plugin, times its weight) and returns the totals.
    pub fn score(&self, nodes: &[&NodeInfo], profile: &Profile) -> Vec<i64> {
        let mut total = vec![0i64; nodes.len()];
        let mut add = |name: &str, raw: Vec<i64>, normalize: Normalize| {
            let w = profile.score_weight(name);
            if w == 0 {
                return;
            }
            for (t, s) in total.iter_mut().zip(normalize.apply(raw)) {
                *t += s * w;
            }
        };
        add(
            "NodeResourcesFit",
            nodes.iter().map(|n| self.least_allocated(n)).collect(),
            Normalize::None,
        );
        add(
            "NodeResourcesBalancedAllocation",
            nodes.iter().map(|n| self.balanced(n)).collect(),
            Normalize::None,
        );
        add(
            "ImageLocality",
            nodes.iter().map(|n| self.image_locality(n)).collect(),
            Normalize::None,
        );
        add(
            "NodeAffinity",
            nodes
                .iter()
                .map(|n| self.preferred_node_affinity(n))
                .collect(),
            Normalize::ToMax,
        );
        add(
            "TaintToleration",
            nodes.iter().map(|n| self.intolerable_prefer(n)).collect(),
            Normalize::Reverse,
        );
        add(
            "InterPodAffinity",
            nodes
                .iter()
                .map(|n| self.preferred_pod_affinity(n))
                .collect(),
            Normalize::MinMax,
        );
        add(
            "PodTopologySpread",
            nodes.iter().map(|n| self.soft_spread(n)).collect(),
            Normalize::Spread,
        );
        total
    }

    fn fractions(&self, n: &NodeInfo) -> [(i64, i64); 2] {
        let want = &self.pod.non_zero;
        let used = &n.non_zero_requested;
        [
            (used.milli_cpu + want.milli_cpu, n.allocatable.milli_cpu),
            (used.memory + want.memory, n.allocatable.memory),
        ]
    }

    fn least_allocated(&self, n: &NodeInfo) -> i64 {
        let f = self.fractions(n);
        let per = |(req, cap): (i64, i64)| {
            if cap <= 0 || req > cap {
                0
            } else {
                (cap - req) * 100 / cap
            }
        };
        (per(f[0]) + per(f[1])) / 2
    }

    fn balanced(&self, n: &NodeInfo) -> i64 {
        let f = self.fractions(n);
        let frac = |(req, cap): (i64, i64)| {
            if cap <= 0 {
                1.0
            } else {
                (req as f64 / cap as f64).min(1.0)
            }
        };
        let std = (frac(f[0]) - frac(f[1])).abs() / 2.0;
        ((1.0 - std) * 100.0) as i64
    }

    fn image_locality(&self, n: &NodeInfo) -> i64 {
        const MIN: i64 = 23 << 20;
        const MAX_PER_CONTAINER: i64 = 1000 << 20;
        let Some(spec) = self.pod.pod.spec.as_ref() else {
            return 0;
        };
        let total_nodes = self.cache.nodes.len().max(1) as f64;
        let mut sum = 0f64;
        for c in &spec.containers {
            let Some(img) = c.image.as_deref() else {
                continue;
            };
            let img = normalize_image(img);
            if let Some(size) = n.images.get(&img) {
                let spread =
                    self.images.get(img.as_str()).copied().unwrap_or(1) as f64 / total_nodes;
                sum += *size as f64 * spread;
            }
        }
        let max = MAX_PER_CONTAINER * spec.containers.len().max(1) as i64;
        let sum = (sum as i64).clamp(MIN, max);
        (sum - MIN) * 100 / (max - MIN)
    }

    fn preferred_node_affinity(&self, n: &NodeInfo) -> i64 {
        self.pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| term_matches(&p.preference, &n.name, n.labels()))
            .map(|p| p.weight as i64)
            .sum()
    }

    fn intolerable_prefer(&self, n: &NodeInfo) -> i64 {
        n.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(&self.tolerations, t))
            .count() as i64
    }

    fn preferred_pod_affinity(&self, n: &NodeInfo) -> i64 {
        let labels = n.labels();
        let mut s: i64 = self
            .preferred
            .iter()
            .filter(|t| labels.get(&t.key).is_some_and(|v| t.domains.contains(v)))
            .map(|t| t.weight as i64)
            .sum();
        for ((k, v), w) in &self.existing_preferred {
            if labels.get(k) == Some(v) {
                s += w;
            }
        }
        s
    }

    fn soft_spread(&self, n: &NodeInfo) -> i64 {
        let mut s = 0i64;
        for sp in self.spreads.iter().filter(|s| !s.hard) {
            let Some(v) = n.labels().get(&sp.key) else {
                continue;
            };
            // Weighted by the log of the number of domains, as upstream: spreading over many
            // hosts counts for less than over few zones.
            let w = ((sp.counts.len() + 2) as f64).ln();
            let c = sp.counts.get(v).copied().unwrap_or(0) + sp.max_skew as i64 - 1;
            s += (c as f64 * w).round() as i64;
        }
        s
    }
}

/// How raw plugin values become 0-100.
enum Normalize {
    None,
    /// value * 100 / max.
    ToMax,
    /// 100 - value * 100 / max (fewer is better).
    Reverse,
    /// (value - min) * 100 / (max - min).
    MinMax,
    /// 100 * (max + min - value) / max: the fewest matching pods is best.
    Spread,
}

impl Normalize {
    fn apply(self, raw: Vec<i64>) -> Vec<i64> {
        let max = raw.iter().copied().max().unwrap_or(0);
        let min = raw.iter().copied().min().unwrap_or(0);
        match self {
            Normalize::None => raw,
            Normalize::ToMax if max > 0 => raw.iter().map(|v| v * 100 / max).collect(),
            Normalize::ToMax => raw.iter().map(|_| 0).collect(),
            Normalize::Reverse if max > 0 => raw.iter().map(|v| 100 - v * 100 / max).collect(),
            Normalize::Reverse => raw.iter().map(|_| 100).collect(),
            Normalize::MinMax if max > min => {
                raw.iter().map(|v| (v - min) * 100 / (max - min)).collect()
            }
            Normalize::MinMax => raw.iter().map(|_| 0).collect(),
            Normalize::Spread if max > 0 => {
                raw.iter().map(|v| 100 * (max + min - v) / max).collect()
            }
            Normalize::Spread => raw.iter().map(|_| 100).collect(),
        }
    }
}

/// Upstream's summary of why no node fits: `0/3 nodes are available: 1 Insufficient cpu, 2
/// node(s) didn't match Pod's node affinity/selector.` (reasons counted, sorted).
pub fn fit_error(total_nodes: usize, unfit: &[Unfit]) -> String {
    if total_nodes == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for u in unfit {
        for r in &u.reasons {
            *counts.entry(r.as_str()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = counts.iter().map(|(r, c)| format!("{c} {r}")).collect();
    parts.sort();
    format!("0/{total_nodes} nodes are available: {}.", parts.join(", "))
}

/// Resources a node would have free with `victims` gone, for preemption.
pub fn without(n: &NodeInfo, victims: &[&PodInfo]) -> NodeInfo {
    let mut c = n.clone();
    for v in victims {
        c.remove_pod(&v.uid);
    }
    c
}

/// Sum of requests, used in tests and benchmarks.
pub fn total_requests<'p>(pods: impl Iterator<Item = &'p PodInfo>) -> Resources {
    let mut r = Resources::default();
    for p in pods {
        r.add(&p.requests);
    }
    r
}
