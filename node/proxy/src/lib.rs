//! Skiff's service proxy (the job of kube-proxy): Services and their EndpointSlices, watched
//! through the API, programmed into one nftables table over netlink (see [`rules`] for its
//! layout). Each sync is one nf_tables transaction: the first one writes the whole table, later
//! ones only the elements and chains that changed. Also: the built-in service load balancer
//! (like k3s's servicelb: a `type: LoadBalancer` Service is served on the node's addresses and
//! gets them as `status.loadBalancer.ingress`), health-check node ports for
//! `externalTrafficPolicy: Local`, and conntrack flushes for UDP endpoints that are gone.

pub mod events;
pub mod informers;
#[cfg(test)]
mod memtest;
pub mod nodeport;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
pub use informers::CachedSlice;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use skiff_netfilter::nft::{Nft, NftError};

use rules::{Family, Group, Masq, Program, Src};

pub const DEFAULT_TABLE: &str = "skiff-proxy";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("--cluster-cidr {0:?}: expected a CIDR such as 10.42.0.0/16, or an IPv4,IPv6 pair")]
    BadCidr(String),
    #[error("--nodeport-addresses {0:?}: expected CIDRs such as 10.0.0.0/8,::1/128, or `primary`")]
    BadNodePortAddresses(String),
    #[error("the informers stopped")]
    Stopped,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This node's name (endpoints with this nodeName are local).
    pub node_name: String,
    /// The nftables table (family `ip`); several proxies on one host need one each.
    pub table: String,
    /// The pod network: traffic from elsewhere to a ClusterIP is masqueraded.
    pub cluster_cidr: Option<String>,
    /// Addresses of this node, used for `type: LoadBalancer` when the Node object has none.
    pub node_ips: Vec<IpAddr>,
    /// Shortest time between two syncs (changes arriving meanwhile are batched).
    pub min_sync_period: Duration,
    /// Also answer NodePorts on 127.0.0.1 (sets `net.ipv4.conf.all.route_localnet`).
    pub localhost_nodeports: bool,
    /// kube-proxy's `--nodeport-addresses`: CIDRs (or `primary`, the node's addresses) of the
    /// host addresses NodePorts answer on; empty: every local address.
    pub nodeport_addresses: Vec<String>,
}

impl ProxyConfig {
    pub fn new(node_name: &str) -> Self {
        ProxyConfig {
            node_name: node_name.into(),
            table: DEFAULT_TABLE.into(),
            cluster_cidr: None,
            node_ips: Vec::new(),
            min_sync_period: Duration::from_millis(20),
            localhost_nodeports: true,
            nodeport_addresses: Vec::new(),
        }
    }
}

pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), ProxyError> {
    let bad = || ProxyError::BadCidr(s.to_string());
    let (ip, len) = s.trim().split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

/// The CIDRs of a comma-separated list (`--cluster-cidr` of a dual-stack cluster).
pub fn parse_cidrs(s: &str) -> Result<Vec<(IpAddr, u8)>, ProxyError> {
    s.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(parse_cidr)
        .collect()
}

/// Deletes the proxy's tables (`--cleanup`; `ip` and `ip6`); nothing when they do not exist.
pub fn cleanup(table: &str) -> Result<(), ProxyError> {
    let mut nft = Nft::open()?;
    nft.commit("delete the proxy table", &rules::delete(table))?;
    nft.commit(
        "delete the proxy's ip6 table",
        &rules::delete_family(Family::V6, table),
    )?;
    Ok(())
}

/// Stable small ids for endpoint groups (service port x cluster/external view).
#[derive(Default)]
struct Ids {
    next: u32,
    by_key: HashMap<String, u32>,
}

impl Ids {
    fn get(&mut self, key: &str) -> u32 {
        if let Some(id) = self.by_key.get(key) {
            return *id;
        }
        self.next += 1;
        self.by_key.insert(key.to_string(), self.next);
        self.next
    }
}

/// What one sync computed beside the nftables program.
#[derive(Default)]
struct Extras {
    /// Health-check node port -> (namespace/name, local endpoints).
    health: BTreeMap<u16, (String, String, usize)>,
    /// UDP endpoint addresses in the program.
    udp_endpoints: BTreeSet<IpAddr>,
    /// Group id keys in use.
    used: BTreeSet<String>,
}

/// What the syncer keeps of one Service between syncs: the objects its share of the program
/// was computed from (the reflector hands out the same `Arc` while an object is unchanged, so
/// holding them costs nothing while the caches hold them too) and the figures of that share.
/// The program itself is not kept: a sync rebuilds the old program of a Service that changed
/// from these objects ([`build`] is deterministic, and the group ids of a Service in use stay
/// in [`Ids`]), and a full sync rebuilds them all. A program with 10 endpoints is ~5 KB of
/// maps and rules: 5 MB for 1,000 Services, kept only to be compared once in a while.
struct Frag {
    svc: Arc<Service>,
    slices: Vec<Arc<CachedSlice>>,
    extras: Extras,
    /// Elements of the program, its hairpin ones left out (they are shared).
    elements: usize,
}

impl Frag {
    fn same_sources(&self, svc: &Arc<Service>, slices: &[Arc<CachedSlice>]) -> bool {
        Arc::ptr_eq(&self.svc, svc)
            && self.slices.len() == slices.len()
            && self
                .slices
                .iter()
                .zip(slices)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

fn slice_endpoints(
    fam: Family,
    slices: &[Arc<CachedSlice>],
    port_name: &str,
    proto: &str,
) -> Vec<(IpAddr, u16, Option<Arc<str>>)> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != fam.address_type() {
            continue;
        }
        let Some(port) = s.ports.as_ref().and_then(|ps| {
            ps.iter().find_map(|p| {
                (p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == proto)
                    .then_some(p.port)
                    .flatten()
            })
        }) else {
            continue;
        };
        for e in &s.endpoints {
            // Only ready endpoints take new connections; terminating ones keep theirs
            // (conntrack), as they are simply left out here.
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for ip in &e.addresses {
                if Family::of(ip) == fam {
                    out.push((*ip, port as u16, e.node_name.clone()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[allow(clippy::too_many_arguments)]
fn build(
    cfg: &ProxyConfig,
    fam: Family,
    cluster_cidr: Option<(IpAddr, u8)>,
    node_ips: &[IpAddr],
    services: &[Arc<Service>],
    slices: &[Arc<CachedSlice>],
    ids: &mut Ids,
) -> (Program, Extras) {
    let mut p = Program {
        family: fam,
        cluster_cidr,
        ..Default::default()
    };
    let mut x = Extras::default();
    let mut used = BTreeSet::new();
    let mut by_svc: HashMap<(String, String), Vec<Arc<CachedSlice>>> = HashMap::new();
    for s in slices {
        if let Some(name) = s.labels().get("kubernetes.io/service-name") {
            by_svc
                .entry((s.namespace().unwrap_or_default(), name.clone()))
                .or_default()
                .push(s.clone());
        }
    }
    let mut services: Vec<_> = services.to_vec();
    services.sort_by_key(|s| (s.namespace(), s.name_any()));
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        // This family's ClusterIP (a dual-stack Service has one per family).
        let cluster_ip = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|c| c.parse::<IpAddr>().ok())
            .find(|ip| Family::of(ip) == fam);
        // Headless Services (clusterIP None) are DNS only.
        let Some(cluster_ip) = cluster_ip else {
            continue;
        };
        let svc_slices = by_svc
            .remove(&(ns.clone(), name.clone()))
            .unwrap_or_default();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800) as u32
        });
        let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let etp_local = spec.external_traffic_policy.as_deref() == Some("Local")
            && (ty == "NodePort" || ty == "LoadBalancer");
        let mut ext_ips: Vec<IpAddr> = spec
            .external_ips
            .clone()
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.parse().ok())
            .filter(|ip| Family::of(ip) == fam)
            .collect();
        if ty == "LoadBalancer" {
            ext_ips.extend(node_ips.iter().copied());
        }
        let mut local_total = 0;
        for sp in spec.ports.clone().unwrap_or_default() {
            let proto_name = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            let Some(proto) = rules::proto_num(&proto_name) else {
                continue;
            };
            let port_name = sp.name.clone().unwrap_or_default();
            let key = format!("{ns}/{name}/{port_name}/{proto_name}");
            let all = slice_endpoints(fam, &svc_slices, &port_name, &proto_name);
            let local: Vec<_> = all
                .iter()
                .filter(|e| e.2.as_deref() == Some(cfg.node_name.as_str()))
                .cloned()
                .collect();
            local_total += local.len();
            let eps = |v: &[(IpAddr, u16, Option<Arc<str>>)]| -> Vec<rules::Ep> {
                v.iter().map(|e| (e.0, e.1)).collect()
            };
            if proto == 17 {
                x.udp_endpoints.extend(all.iter().map(|e| e.0));
            }
            let cluster_eps = if itp_local { eps(&local) } else { eps(&all) };
            let ck = rules::key_ip_proto_port(cluster_ip, proto, sp.port as u16);
            let cid = ids.get(&format!("{key}/cluster"));
            used.insert(format!("{key}/cluster"));
            let cluster_kind = if cluster_cidr.is_some() {
                Masq::UnlessFromPods
            } else {
                Masq::Always
            };
            let mut cluster_group = false;
            if cluster_eps.is_empty() {
                p.no_ep_services.insert(ck);
            } else {
                p.add_group(&Group {
                    id: cid,
                    endpoints: cluster_eps.clone(),
                    affinity_timeout_s: affinity,
                });
                p.expose(Src::Ips, ck, cid, cluster_kind);
                cluster_group = true;
            }
            // External traffic: NodePort, externalIPs, LoadBalancer ingress.
            let node_port = sp
                .node_port
                .filter(|_| ty == "NodePort" || ty == "LoadBalancer")
                .map(|n| n as u16);
            if node_port.is_none() && ext_ips.is_empty() {
                continue;
            }
            let ext_eps = if etp_local { eps(&local) } else { eps(&all) };
            if ext_eps.is_empty() {
                if let Some(np) = node_port {
                    p.no_ep_nodeports.insert(rules::key_proto_port(proto, np));
                }
                for ip in &ext_ips {
                    p.no_ep_services
                        .insert(rules::key_ip_proto_port(*ip, proto, sp.port as u16));
                }
                continue;
            }
            let (gid, kind) = if cluster_group && ext_eps == cluster_eps && !etp_local {
                (cid, Masq::Always)
            } else {
                let xid = ids.get(&format!("{key}/external"));
                used.insert(format!("{key}/external"));
                p.add_group(&Group {
                    id: xid,
                    endpoints: ext_eps,
                    affinity_timeout_s: affinity,
                });
                (xid, if etp_local { Masq::Never } else { Masq::Always })
            };
            if let Some(np) = node_port {
                p.expose(Src::NodePorts, rules::key_proto_port(proto, np), gid, kind);
            }
            for ip in &ext_ips {
                p.expose(
                    Src::Ips,
                    rules::key_ip_proto_port(*ip, proto, sp.port as u16),
                    gid,
                    kind,
                );
            }
        }
        if etp_local && ty == "LoadBalancer" {
            if let Some(hc) = spec.health_check_node_port {
                x.health
                    .insert(hc as u16, (ns.clone(), name.clone(), local_total));
            }
        }
    }
    x.used = used;
    (p, x)
}

/// Figures of the last sync, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncStats {
    pub full: bool,
    pub rules: usize,
    pub elements: usize,
    pub messages: usize,
    pub duration: Duration,
}

/// Programs the kernel from a list of Services and EndpointSlices, keeping what it wrote per
/// Service so that the next sync only recomputes and rewrites the Services whose objects
/// changed. Usable without an API server (benchmarks).
pub struct Syncer {
    cfg: ProxyConfig,
    /// The family of this syncer's table (`ip` or `ip6` <table>).
    fam: Family,
    cluster_cidr: Option<(IpAddr, u8)>,
    nft: Nft,
    ids: Ids,
    frags: HashMap<(String, String), Frag>,
    shared: rules::Shared,
    /// Rules of each per-count chain made so far (for the figures; the chains themselves are
    /// in `shared`, counted).
    chain_rules: HashMap<String, usize>,
    node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses` resolved to this host's addresses (None: every local address).
    nodeport_ips: Option<Vec<IpAddr>>,
    /// The kernel has the program of `frags` (else the next sync is a full one).
    in_sync: bool,
    udp_endpoints: BTreeSet<IpAddr>,
}

impl Syncer {
    pub fn new(cfg: ProxyConfig) -> Result<Self, ProxyError> {
        Self::for_family(cfg, Family::V4)
    }

    /// A syncer of the `ip6` (or `ip`) table: the Services' addresses of that family.
    pub fn for_family(cfg: ProxyConfig, fam: Family) -> Result<Self, ProxyError> {
        let cluster_cidr = match cfg.cluster_cidr.as_deref() {
            Some(c) => {
                let all = parse_cidrs(c)?;
                all.into_iter().find(|n| Family::of(&n.0) == fam)
            }
            None => None,
        };
        nodeport::parse(&cfg.nodeport_addresses)?;
        Ok(Syncer {
            cfg,
            fam,
            cluster_cidr,
            nft: Nft::open_large()?,
            ids: Ids::default(),
            frags: HashMap::new(),
            shared: rules::Shared::default(),
            chain_rules: HashMap::new(),
            node_ips: Vec::new(),
            nodeport_ips: None,
            in_sync: false,
            udp_endpoints: BTreeSet::new(),
        })
    }

    /// One sync; returns its figures and what the other parts of the proxy act on (merged).
    fn sync(
        &mut self,
        node_ips: &[IpAddr],
        services: &[Arc<Service>],
        slices: &[Arc<CachedSlice>],
    ) -> Result<(SyncStats, Extras), ProxyError> {
        let start = Instant::now();
        let fam = self.fam;
        let node_ips: Vec<IpAddr> = node_ips
            .iter()
            .copied()
            .filter(|ip| Family::of(ip) == fam)
            .collect();
        if node_ips != self.node_ips {
            self.node_ips = node_ips.clone();
            self.frags.clear();
            self.in_sync = false;
        }
        // NodePorts only on the host addresses --nodeport-addresses selects (the set's elements
        // are part of the skeleton: a change of the host's addresses rewrites the table).
        let np = nodeport::resolve(&self.cfg.nodeport_addresses, fam, &self.node_ips)?;
        if np != self.nodeport_ips {
            self.nodeport_ips = np;
            self.in_sync = false;
        }
        let node_ips = &self.node_ips;
        let mut by_svc: HashMap<(String, String), Vec<Arc<CachedSlice>>> = HashMap::new();
        for s in slices {
            if let Some(name) = s.labels().get("kubernetes.io/service-name") {
                by_svc
                    .entry((s.namespace().unwrap_or_default(), name.clone()))
                    .or_default()
                    .push(s.clone());
            }
        }
        let mut old = std::mem::take(&mut self.frags);
        let mut frags = HashMap::with_capacity(services.len());
        let full = !self.in_sync;
        // The Services that changed: key, old program and extras (None: new), new ones (None:
        // gone). Programs of unchanged Services are built only for a full sync.
        type Built = Option<(Program, Extras)>;
        let mut changed: Vec<((String, String), Built, Built)> = Vec::new();
        let mut all: Vec<Program> = Vec::new();
        // Group id keys of every program built for a full sync.
        let mut all_used: BTreeSet<String> = BTreeSet::new();
        let build_one = |ids: &mut Ids, svc: &Arc<Service>, sl: &[Arc<CachedSlice>]| {
            build(
                &self.cfg,
                fam,
                self.cluster_cidr,
                node_ips,
                std::slice::from_ref(svc),
                sl,
                ids,
            )
        };
        // First what each Service is built from (long-lived), then the programs (freed at the
        // end of the sync): made in this order, the few small allocations kept per Service do
        // not sit between the programs' and pin their pages once these are freed.
        let mut stale: Vec<((String, String), Option<Frag>)> = Vec::new();
        for svc in services {
            let key = (svc.namespace().unwrap_or_default(), svc.name_any());
            let mut sl = by_svc.remove(&key).unwrap_or_default();
            sl.sort_by_key(|s| s.name_any());
            match old.remove(&key) {
                Some(f) if f.same_sources(svc, &sl) => {
                    frags.insert(key, f);
                }
                prev => {
                    let f = Frag {
                        svc: svc.clone(),
                        slices: sl,
                        extras: Extras::default(),
                        elements: 0,
                    };
                    frags.insert(key.clone(), f);
                    stale.push((key, prev));
                }
            }
        }
        let set_figures = |f: &mut Frag, prog: &Program, extras: &Extras| {
            f.extras = Extras {
                health: extras.health.clone(),
                udp_endpoints: extras.udp_endpoints.clone(),
                used: BTreeSet::new(),
            };
            f.elements = prog.element_count() - prog.hairpin.len();
        };
        if full {
            for f in frags.values_mut() {
                let (prog, extras) = build_one(&mut self.ids, &f.svc, &f.slices);
                set_figures(f, &prog, &extras);
                all_used.extend(extras.used);
                all.push(prog);
            }
        } else {
            for (key, prev) in stale {
                // The old program first: its group ids are still in `ids`.
                let before = prev.map(|p| build_one(&mut self.ids, &p.svc, &p.slices));
                let Some(f) = frags.get_mut(&key) else {
                    continue;
                };
                let (prog, extras) = build_one(&mut self.ids, &f.svc, &f.slices);
                set_figures(f, &prog, &extras);
                changed.push((key, before, Some((prog, extras))));
            }
        }
        // Services that are gone.
        for (key, f) in old {
            if !full {
                let before = build_one(&mut self.ids, &f.svc, &f.slices);
                changed.push((key, Some(before), None));
            }
        }
        let new_progs = all.iter().chain(
            changed
                .iter()
                .filter_map(|(_, _, n)| n.as_ref().map(|b| &b.0)),
        );
        for prog in new_progs {
            for (name, rules) in &prog.chains {
                if !self.chain_rules.contains_key(name) {
                    self.chain_rules.insert(name.clone(), rules.len());
                }
            }
        }
        let batch = if full {
            self.shared = rules::Shared::of(all.iter());
            let progs: Vec<&Program> = all.iter().collect();
            rules::full_with(fam, &self.cfg.table, &progs, self.nodeport_ips.as_deref())
        } else {
            let pairs: Vec<(Option<&Program>, Option<&Program>)> = changed
                .iter()
                .map(|(_, o, n)| (o.as_ref().map(|b| &b.0), n.as_ref().map(|b| &b.0)))
                .collect();
            rules::changes(&self.cfg.table, &pairs, &mut self.shared)
        };
        // Group ids of ports and Services that are gone (keys start with the Service's
        // namespace/name, so no other Service uses them). After a full sync, the ids of the
        // programs just built are the ones in use.
        if full {
            self.ids.by_key.retain(|k, _| all_used.contains(k));
        } else {
            for (_, before, now) in &changed {
                let Some((_, before)) = before else { continue };
                let now = now.as_ref().map(|n| &n.1.used);
                for k in &before.used {
                    if !now.is_some_and(|u| u.contains(k)) {
                        self.ids.by_key.remove(k);
                    }
                }
            }
        }
        let any_changed = !changed.is_empty();
        drop(changed);
        drop(all);
        let mut extras = Extras::default();
        for f in frags.values() {
            extras.health.extend(f.extras.health.clone());
            extras
                .udp_endpoints
                .extend(f.extras.udp_endpoints.iter().copied());
        }
        self.frags = frags;
        if let Err(e) = self.nft.commit_bulk("sync the service proxy table", &batch) {
            // Next time from scratch.
            self.in_sync = false;
            return Err(e.into());
        }
        self.in_sync = true;
        // Conntrack entries of UDP endpoints that are gone (a UDP "connection" would keep
        // going to the old endpoint until it times out).
        // Each family's syncer flushes its own (AF_INET or AF_INET6) conntrack table.
        for ip in self.udp_endpoints.difference(&extras.udp_endpoints) {
            match skiff_netfilter::conntrack::delete_by_reply_src(&mut self.nft, 17, *ip) {
                Ok(n) if n > 0 => {
                    tracing::debug!(endpoint = %ip, flushed = n, "flushed UDP conntrack entries")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %ip, error = %e, "flushing UDP conntrack entries failed")
                }
            }
        }
        self.udp_endpoints = extras.udp_endpoints.clone();
        let (rules_n, elements) = if full || any_changed {
            let rules_n = rules::skeleton_rule_count_of(fam)
                + self
                    .shared
                    .chains
                    .keys()
                    .filter_map(|c| self.chain_rules.get(c))
                    .sum::<usize>();
            self.chain_rules
                .retain(|c, _| self.shared.chains.contains_key(c));
            let elements =
                self.frags.values().map(|f| f.elements).sum::<usize>() + self.shared.hairpin.len();
            (rules_n, elements)
        } else {
            (0, 0)
        };
        let stats = SyncStats {
            full,
            rules: rules_n,
            elements,
            messages: batch.len(),
            duration: start.elapsed(),
        };
        Ok((stats, extras))
    }

    /// A sync for benchmarks and tests.
    pub fn sync_objects(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<CachedSlice>],
    ) -> Result<SyncStats, ProxyError> {
        let ips = self.cfg.node_ips.clone();
        Ok(self.sync(&ips, services, slices)?.0)
    }
}

fn set_route_localnet() {
    // Host-wide, as kube-proxy does: DNAT of 127.0.0.1 to a pod needs it.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1") {
        tracing::warn!(error = %e, "cannot set net.ipv4.conf.all.route_localnet: NodePorts on 127.0.0.1 will not answer");
    }
}

/// Node addresses (InternalIP, ExternalIP) from the Node object, else the configured ones.
fn node_addresses(node: Option<&Node>, fallback: &[IpAddr]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if v.is_empty() {
        v = fallback.to_vec();
    }
    v
}

/// The addresses the service load balancer announces, as k3s's servicelb picks them: the
/// node's ExternalIPs when it has any, else its InternalIPs (else the configured ones).
fn lb_node_addresses(node: Option<&Node>, fallback: &[IpAddr]) -> Vec<IpAddr> {
    let of_type = |t: &str| -> Vec<IpAddr> {
        node.and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
            .map(|a| {
                a.iter()
                    .filter(|a| a.type_ == t)
                    .filter_map(|a| a.address.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let external = of_type("ExternalIP");
    if !external.is_empty() {
        return external;
    }
    let internal = of_type("InternalIP");
    if !internal.is_empty() {
        return internal;
    }
    fallback.to_vec()
}

type HealthMap = Arc<Mutex<BTreeMap<u16, (String, String, usize)>>>;

/// Serves the health-check node ports of `externalTrafficPolicy: Local` Services: 200 with the
/// number of local endpoints while there are some, 503 otherwise (as kube-proxy).
fn serve_health(port: u16, map: HealthMap) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let l = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(port, error = %e, "cannot serve the health-check node port");
                return;
            }
        };
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let entry = map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&port)
                .cloned();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                let (ns, name, n) = entry.unwrap_or_default();
                let body = format!(
                    "{{\"service\":{{\"namespace\":\"{ns}\",\"name\":\"{name}\"}},\"localEndpoints\":{n},\"serviceProxyHealthy\":true}}"
                );
                let status = if n > 0 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

/// Runs the proxy until `stop`, with caches of its own.
pub async fn run(
    client: kube::Client,
    cfg: ProxyConfig,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    let informers = informers::Informers::spawn(&client);
    run_with(client, cfg, informers, stop).await
}

/// Runs the proxy until `stop` on Service and EndpointSlice caches it may share (with the
/// cluster DNS of the same process).
pub async fn run_with(
    client: kube::Client,
    cfg: ProxyConfig,
    informers: informers::Informers,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    if cfg.localhost_nodeports {
        set_route_localnet();
    }
    let mut syncer = Syncer::new(cfg.clone())?;
    // The ip6 table exists once the cluster is dual-stack or IPv6 (an IPv6 pod range, or a
    // Service with an IPv6 ClusterIP): single-stack IPv4 hosts keep only the ip table.
    let mut syncer6: Option<Syncer> = None;
    let v6_cidr = cfg
        .cluster_cidr
        .as_deref()
        .map(parse_cidrs)
        .transpose()?
        .unwrap_or_default()
        .iter()
        .any(|n| n.0.is_ipv6());
    let mut changed = informers.subscribe();
    let (svc_r, sl_r) = (informers.services.clone(), informers.slices.clone());
    let (node_r, node_w) = reflector::store::<Node>();
    let wake = Arc::new(tokio::sync::Notify::new());
    let node_api = Api::<Node>::all(client.clone());
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={}", cfg.node_name));
    {
        let wake = wake.clone();
        tokio::spawn(
            reflector::reflector(node_w, watcher(node_api, node_cfg).default_backoff()).for_each(
                move |_| {
                    wake.notify_one();
                    std::future::ready(())
                },
            ),
        );
    }
    informers.wait_until_ready().await?;
    tracing::info!(table = %cfg.table, node = %cfg.node_name, "service proxy caches synced");
    let health: HealthMap = Arc::default();
    let mut warned = events::Warned::default();
    let mut health_tasks: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let work = async {
        loop {
            let node = node_r
                .state()
                .into_iter()
                .find(|n| n.name_any() == cfg.node_name);
            let ips = node_addresses(node.as_deref(), &cfg.node_ips);
            let services = svc_r.state();
            let slices = sl_r.state();
            if syncer6.is_none() && (v6_cidr || services.iter().any(|s| has_v6_ip(s))) {
                match Syncer::for_family(cfg.clone(), Family::V6) {
                    Ok(s6) => syncer6 = Some(s6),
                    Err(e) => tracing::warn!(error = %e, "cannot open the ip6 service table"),
                }
            }
            // netlink calls block: off the async workers.
            let r = tokio::task::block_in_place(|| {
                let (mut stats, mut extras) = syncer.sync(&ips, &services, &slices)?;
                if let Some(s6) = syncer6.as_mut() {
                    let (st6, x6) = s6.sync(&ips, &services, &slices)?;
                    stats.messages += st6.messages;
                    stats.rules += st6.rules;
                    stats.elements += st6.elements;
                    stats.full |= st6.full;
                    for (port, h) in x6.health {
                        extras.health.entry(port).or_insert(h);
                    }
                }
                Ok::<_, ProxyError>((stats, extras))
            });
            let families: &[Family] = if syncer6.is_some() {
                &[Family::V4, Family::V6]
            } else {
                &[Family::V4]
            };
            warned.check(&client, &cfg.node_name, families, &services);
            match r {
                Ok((stats, extras)) => {
                    if stats.messages > 0 {
                        tracing::info!(
                            full = stats.full,
                            rules = stats.rules,
                            elements = stats.elements,
                            messages = stats.messages,
                            ms = stats.duration.as_secs_f64() * 1000.0,
                            "synced service rules"
                        );
                    }
                    let lb_ips = lb_node_addresses(node.as_deref(), &cfg.node_ips);
                    for (ns, name, ips) in lb_statuses(&services, &lb_ips, families) {
                        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
                        let ingress: Vec<LoadBalancerIngress> = ips
                            .into_iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip),
                                ip_mode: Some("VIP".into()),
                                ..Default::default()
                            })
                            .collect();
                        let patch =
                            serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
                        if let Err(e) = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                        {
                            tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "cannot set the load balancer status");
                        }
                    }
                    *health.lock().unwrap_or_else(|e| e.into_inner()) = extras.health.clone();
                    health_tasks.retain(|port, t| {
                        let keep = extras.health.contains_key(port);
                        if !keep {
                            t.abort();
                        }
                        keep
                    });
                    for port in extras.health.keys() {
                        health_tasks
                            .entry(*port)
                            .or_insert_with(|| serve_health(*port, health.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "syncing service rules failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            // Resync at least every 30 s (a table flushed by someone else comes back).
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = wake.notified() => {}
                }
            })
            .await;
            tokio::time::sleep(cfg.min_sync_period).await;
        }
    };
    tokio::select! {
        _ = stop => {}
        r = work => return r,
    }
    for (_, t) in health_tasks {
        t.abort();
    }
    Ok(())
}

/// The `type: LoadBalancer` Services whose `status.loadBalancer.ingress` must change, with
/// the addresses it must list: the node's addresses of the Service's `ipFamilies` (in that
/// order, each family's sorted as text) that this proxy serves (k3s's servicelb filters the
/// node addresses by the Service's families alike; [`lb_node_addresses`] picks them).
fn lb_statuses(
    services: &[Arc<Service>],
    node_ips: &[IpAddr],
    families: &[Family],
) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        if spec.type_.as_deref() != Some("LoadBalancer") {
            continue;
        }
        let mut svc_fams: Vec<Family> = spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            })
            .collect();
        if svc_fams.is_empty() {
            // Objects written before ipFamilies existed: the ClusterIPs' families.
            svc_fams = spec
                .cluster_ips
                .iter()
                .flatten()
                .filter_map(|c| c.parse::<IpAddr>().ok())
                .map(|ip| Family::of(&ip))
                .collect();
        }
        let want: Vec<String> = svc_fams
            .iter()
            .filter(|f| families.contains(f))
            .flat_map(|f| {
                let mut of_family: Vec<String> = node_ips
                    .iter()
                    .filter(|ip| Family::of(ip) == *f)
                    .map(|ip| ip.to_string())
                    .collect();
                of_family.sort();
                of_family.dedup();
                of_family
            })
            .collect();
        let have: Vec<String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        if have != want {
            out.push((svc.namespace().unwrap_or_default(), svc.name_any(), want));
        }
    }
    out
}

/// Whether a Service has an IPv6 ClusterIP.
fn has_v6_ip(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.cluster_ips
            .iter()
            .flatten()
            .any(|ip| ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()))
    })
}

/// Whether the proxy's table exists (tests, `--cleanup`).
pub fn table_exists(table: &str) -> Result<bool, ProxyError> {
    let mut nft = Nft::open()?;
    // A table that does not exist has no rules and answers ENOENT, which `rules` maps to an
    // empty list; an existing table always has the skeleton's rules.
    Ok(!nft
        .rules(skiff_netfilter::nft::NFPROTO_IPV4, table)?
        .is_empty())
}

/// The store type the proxy reads (re-exported for benchmarks building objects).
pub type ServiceStore = Store<Service>;

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(name: &str, families: &[&str], ingress: &[&str]) -> Arc<Service> {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ipFamilies": families},
            "status": {"loadBalancer": {"ingress": ingress.iter().map(|i| serde_json::json!({"ip": i})).collect::<Vec<_>>()}},
        }))
        .unwrap();
        Arc::new(svc)
    }

    fn node(addrs: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sk-node"},
            "status": {"addresses": addrs.iter().map(|(t, a)| serde_json::json!({"type": t, "address": a})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn load_balancer_prefers_external_ips_as_k3s() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let fallback = [ip("127.0.0.1")];
        let n = node(&[
            ("InternalIP", "10.0.0.5"),
            ("ExternalIP", "203.0.113.9"),
            ("Hostname", "sk-node"),
            ("InternalIP", "fd00::5"),
        ]);
        assert_eq!(
            lb_node_addresses(Some(&n), &fallback),
            vec![ip("203.0.113.9")]
        );
        let n = node(&[("InternalIP", "10.0.0.5"), ("InternalIP", "fd00::5")]);
        assert_eq!(
            lb_node_addresses(Some(&n), &fallback),
            vec![ip("10.0.0.5"), ip("fd00::5")]
        );
        assert_eq!(lb_node_addresses(None, &fallback), fallback.to_vec());
        // Each family's addresses sorted, as k3s lists them.
        let ips = [ip("10.0.0.9"), ip("10.0.0.10")];
        let got = lb_statuses(&[lb("v4", &["IPv4"], &[])], &ips, &[Family::V4]);
        assert_eq!(got[0].2, vec!["10.0.0.10".to_string(), "10.0.0.9".into()]);
    }

    #[test]
    fn load_balancer_ingress_follows_the_service_families() {
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let both = [Family::V4, Family::V6];
        let svcs = vec![
            lb("dual", &["IPv6", "IPv4"], &[]),
            lb("v4", &["IPv4"], &["10.0.0.5"]),
            lb("v6", &["IPv6"], &["10.0.0.5"]),
        ];
        let got = lb_statuses(&svcs, &ips, &both);
        assert_eq!(
            got,
            vec![
                (
                    "default".into(),
                    "dual".into(),
                    vec!["fd00::5".into(), "10.0.0.5".into()]
                ),
                ("default".into(), "v6".into(), vec!["fd00::5".into()]),
            ]
        );
        // Without an ip6 table, IPv6 addresses are not served.
        let got = lb_statuses(&svcs, &ips, &[Family::V4]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].2, vec!["10.0.0.5".to_string()]);
        assert!(got[1].2.is_empty());
    }
}
