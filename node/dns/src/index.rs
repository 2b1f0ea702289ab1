//! The cluster's names, rebuilt from Services and EndpointSlices after each change, as the
//! Kubernetes DNS specification (and CoreDNS) gives them:
//! - `<svc>.<ns>.svc.<domain>`: A/AAAA of the ClusterIP; for a headless Service the ready
//!   endpoint addresses; a CNAME to `externalName` for ExternalName Services;
//! - `<hostname>.<svc>.<ns>.svc.<domain>` for endpoints of headless Services (the pod's
//!   hostname, else its address with dashes);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV for named ports;
//! - PTR for ClusterIPs and headless endpoints.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use skiff_proxy::CachedSlice;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Ip(IpAddr),
    Cname(String),
    Srv { port: u16, target: String },
}

#[derive(Debug, Default)]
pub struct Index {
    pub domain: String,
    /// Lower-case name without the final dot -> records.
    pub names: HashMap<String, Vec<Rec>>,
    /// Names that exist only as parents of others (`<ns>.svc.<domain>`): NODATA, not NXDOMAIN.
    pub parents: BTreeSet<String>,
    pub ptr: HashMap<IpAddr, String>,
}

fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

impl Index {
    pub fn build(domain: &str, services: &[Arc<Service>], slices: &[Arc<CachedSlice>]) -> Index {
        let domain = domain.trim_end_matches('.').to_lowercase();
        let mut idx = Index {
            domain: domain.clone(),
            ..Default::default()
        };
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
            let base = format!("{name}.{ns}.svc.{domain}").to_lowercase();
            idx.parents
                .insert(format!("{ns}.svc.{domain}").to_lowercase());
            if spec.type_.as_deref() == Some("ExternalName") {
                if let Some(ext) = &spec.external_name {
                    idx.names.insert(
                        base,
                        vec![Rec::Cname(ext.trim_end_matches('.').to_lowercase())],
                    );
                }
                continue;
            }
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let mut recs = Vec::new();
            if headless {
                let sl = by_svc
                    .remove(&(ns.clone(), name.clone()))
                    .unwrap_or_default();
                // port name/proto -> (port, endpoint names)
                let mut srv: HashMap<(String, String), Vec<(u16, String)>> = HashMap::new();
                for s in sl {
                    for e in &s.endpoints {
                        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                            continue;
                        }
                        for &ip in &e.addresses {
                            recs.push(Rec::Ip(ip));
                            let host = e.hostname.clone().unwrap_or_else(|| dashed(&ip));
                            let fq = format!("{host}.{base}").to_lowercase();
                            idx.names.entry(fq.clone()).or_default().push(Rec::Ip(ip));
                            idx.ptr.entry(ip).or_insert(fq.clone());
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
                    let n = format!("_{pn}._{}.{base}", proto.to_lowercase()).to_lowercase();
                    let v = idx.names.entry(n).or_default();
                    for (port, target) in targets {
                        v.push(Rec::Srv { port, target });
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
                    idx.ptr.insert(ip, base.clone());
                }
                for p in spec.ports.iter().flatten() {
                    let Some(pn) = p.name.as_ref().filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                    let n = format!("_{pn}._{}.{base}", proto.to_lowercase()).to_lowercase();
                    idx.names.entry(n).or_default().push(Rec::Srv {
                        port: p.port as u16,
                        target: base.clone(),
                    });
                }
            }
            recs.sort_by_key(|r| format!("{r:?}"));
            recs.dedup();
            idx.names.insert(base, recs);
        }
        // Every proper suffix under the domain of a known name exists (empty non-terminal).
        let names: Vec<String> = idx.names.keys().cloned().collect();
        for n in names {
            let mut rest = n.as_str();
            while let Some((_, r)) = rest.split_once('.') {
                if r.len() < domain.len() {
                    break;
                }
                idx.parents.insert(r.to_string());
                rest = r;
            }
        }
        idx.parents.insert(domain.clone());
        idx
    }

    pub fn exists(&self, name: &str) -> bool {
        self.names.contains_key(name) || self.parents.contains(name)
    }
}
