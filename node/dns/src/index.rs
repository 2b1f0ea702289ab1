//! The cluster's names, rebuilt from Services and EndpointSlices after each change, as the
//! Kubernetes DNS specification (and CoreDNS) gives them:
//! - `<svc>.<ns>.svc.<domain>`: A/AAAA of the ClusterIP; for a headless Service the ready
//!   endpoint addresses; a CNAME to `externalName` for ExternalName Services;
//! - `<hostname>.<svc>.<ns>.svc.<domain>` for endpoints of headless Services (the pod's
//!   hostname, else its address with dashes);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for named ports;
//! - PTR for ClusterIPs and headless endpoints.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use skiff_proxy::CachedSlice;

/// A record. Names are shared: a Service's name is one allocation for its own entry, its
/// PTR and the SRV records that point at it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rec {
    Ip(IpAddr),
    Cname(Arc<str>),
    Srv { port: u16, target: Arc<str> },
}

#[derive(Debug, Default)]
pub struct Index {
    pub domain: String,
    /// Lower-case name without the final dot -> records.
    pub names: HashMap<Arc<str>, Box<[Rec]>>,
    /// Names that exist only as parents of others (`<ns>.svc.<domain>`): NODATA, not NXDOMAIN.
    pub parents: HashSet<Box<str>>,
    pub ptr: HashMap<IpAddr, Arc<str>>,
}

fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// A headless Service's SRV targets: (port name, protocol) -> (port, endpoint name).
type SrvTargets = HashMap<(String, String), Vec<(u16, Arc<str>)>>;

/// The names and records while they are gathered (records are appended per name).
#[derive(Default)]
struct Builder {
    names: HashMap<Arc<str>, Vec<Rec>>,
}

impl Builder {
    /// The shared copy of `name` (made on first use).
    fn name(&mut self, name: String) -> Arc<str> {
        match self.names.get_key_value(name.as_str()) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = name.into();
                self.names.insert(k.clone(), Vec::new());
                k
            }
        }
    }

    fn push(&mut self, name: &Arc<str>, r: Rec) {
        self.names.entry(name.clone()).or_default().push(r);
    }
}

impl Index {
    pub fn build(domain: &str, services: &[Arc<Service>], slices: &[Arc<CachedSlice>]) -> Index {
        let domain = domain.trim_end_matches('.').to_lowercase();
        let mut b = Builder::default();
        let mut parents: HashSet<Box<str>> = HashSet::new();
        let mut ptr: HashMap<IpAddr, Arc<str>> = HashMap::new();
        let mut by_svc: HashMap<(String, String), Vec<&CachedSlice>> = HashMap::new();
        for s in slices {
            if let Some(n) = s.labels().get("kubernetes.io/service-name") {
                by_svc
                    .entry((s.namespace().unwrap_or_default(), n.clone()))
                    .or_default()
                    .push(s);
            }
        }
        for svc in services {
            let ns = svc.namespace().unwrap_or_default();
            let name = svc.name_any();
            let Some(spec) = svc.spec.as_ref() else {
                continue;
            };
            let base = b.name(format!("{name}.{ns}.svc.{domain}").to_lowercase());
            parents.insert(format!("{ns}.svc.{domain}").to_lowercase().into());
            if spec.type_.as_deref() == Some("ExternalName") {
                match &spec.external_name {
                    Some(ext) => {
                        let target: Arc<str> = ext.trim_end_matches('.').to_lowercase().into();
                        b.names.insert(base, vec![Rec::Cname(target)]);
                    }
                    None => {
                        b.names.remove(&base);
                    }
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let mut recs = Vec::new();
            if headless {
                let sl = by_svc
                    .remove(&(ns.clone(), name.clone()))
                    .unwrap_or_default();
                let mut srv: SrvTargets = HashMap::new();
                for s in sl {
                    for e in &s.endpoints {
                        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                            continue;
                        }
                        for &ip in &e.addresses {
                            recs.push(Rec::Ip(ip));
                            let host = e.hostname.clone().unwrap_or_else(|| dashed(&ip));
                            let fq = b.name(format!("{host}.{base}").to_lowercase());
                            b.push(&fq, Rec::Ip(ip));
                            ptr.entry(ip).or_insert_with(|| fq.clone());
                            for p in s.ports.iter().flatten() {
                                let (Some(pn), Some(port)) = (p.name.as_ref(), p.port) else {
                                    continue;
                                };
                                if pn.is_empty() {
                                    continue;
                                }
                                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                                srv.entry((pn.clone(), proto))
                                    .or_default()
                                    .push((port as u16, fq.clone()));
                            }
                        }
                    }
                }
                for ((pn, proto), targets) in srv {
                    let n =
                        b.name(format!("_{pn}._{}.{base}", proto.to_lowercase()).to_lowercase());
                    for (port, target) in targets {
                        b.push(&n, Rec::Srv { port, target });
                    }
                }
            } else {
                let ips: Vec<String> = spec
                    .cluster_ips
                    .clone()
                    .filter(|v| !v.is_empty())
                    .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
                    .unwrap_or_default();
                for ip in ips.iter().filter_map(|i| i.parse::<IpAddr>().ok()) {
                    recs.push(Rec::Ip(ip));
                    ptr.insert(ip, base.clone());
                }
                for p in spec.ports.iter().flatten() {
                    let Some(pn) = p.name.as_ref().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                    let n =
                        b.name(format!("_{pn}._{}.{base}", proto.to_lowercase()).to_lowercase());
                    b.push(
                        &n,
                        Rec::Srv {
                            port: p.port as u16,
                            target: base.clone(),
                        },
                    );
                }
            }
            recs.sort();
            recs.dedup();
            b.names.insert(base, recs);
        }
        // Every proper suffix under the domain of a known name exists (empty non-terminal);
        // the names themselves answer for themselves.
        for n in b.names.keys() {
            let mut rest: &str = n;
            while let Some((_, r)) = rest.split_once('.') {
                if r.len() < domain.len() {
                    break;
                }
                if !b.names.contains_key(r) && !parents.contains(r) {
                    parents.insert(r.into());
                }
                rest = r;
            }
        }
        parents.insert(domain.as_str().into());
        parents.shrink_to_fit();
        ptr.shrink_to_fit();
        let mut names: HashMap<Arc<str>, Box<[Rec]>> = b
            .names
            .into_iter()
            .map(|(k, v)| (k, v.into_boxed_slice()))
            .collect();
        names.shrink_to_fit();
        Index {
            domain,
            names,
            parents,
            ptr,
        }
    }

    pub fn exists(&self, name: &str) -> bool {
        self.names.contains_key(name) || self.parents.contains(name)
    }
}
