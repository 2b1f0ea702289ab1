//! Picks addresses round-robin from a range set, the way the reference host-local does: start after
//! the last reserved address of the set, skip the gateway, wrap around once.

use std::net::IpAddr;

use super::config::RangeSet;
use super::store::Store;
use super::IpamError;
use crate::types::{next_ip, IpConfig, IpNet};

struct Iter<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<IpAddr>,
    start: Option<IpAddr>,
}

impl<'a> Iter<'a> {
    fn new(set: &'a RangeSet, last: Option<IpAddr>) -> Self {
        if let Some(last) = last {
            if let Some(idx) = set.0.iter().position(|r| r.contains(last)) {
                return Iter {
                    set,
                    idx,
                    cur: Some(last),
                    start: None,
                };
            }
        }
        Iter {
            set,
            idx: 0,
            cur: None,
            start: None,
        }
    }

    /// The next candidate (address/prefix, gateway); `None` once every address was offered.
    fn next_candidate(&mut self) -> Option<(IpNet, IpAddr)> {
        loop {
            let r = &self.set.0[self.idx];
            let cur = match self.cur {
                None => {
                    self.start = Some(r.start);
                    r.start
                }
                Some(c) => {
                    let n = if c == r.end {
                        self.idx = (self.idx + 1) % self.set.0.len();
                        self.set.0[self.idx].start
                    } else {
                        next_ip(c)
                    };
                    match self.start {
                        None => self.start = Some(n),
                        Some(s) if s == n => return None,
                        Some(_) => {}
                    }
                    n
                }
            };
            self.cur = Some(cur);
            let r = &self.set.0[self.idx];
            if cur == r.gateway {
                continue;
            }
            return Some((IpNet::new(cur, r.subnet.prefix)?, r.gateway));
        }
    }
}

/// Allocates one address from range set `set_id` for the container's interface.
pub fn allocate(
    store: &Store,
    set: &RangeSet,
    set_id: usize,
    id: &str,
    ifname: &str,
    requested: Option<IpAddr>,
) -> Result<IpConfig, IpamError> {
    if let Some(ip) = requested {
        let r = set.range_for(ip).ok_or_else(|| IpamError::Unavailable {
            ip,
            set: set.to_string(),
        })?;
        if ip == r.gateway {
            return Err(IpamError::Config(format!(
                "requested ip {ip} is subnet's gateway"
            )));
        }
        if !store.reserve(id, ifname, ip, set_id)? {
            return Err(IpamError::Unavailable {
                ip,
                set: set.to_string(),
            });
        }
        return Ok(IpConfig {
            interface: None,
            address: IpNet {
                addr: ip,
                prefix: r.subnet.prefix,
            },
            gateway: Some(r.gateway),
        });
    }
    for ip in store.get_by_id(id, ifname)? {
        if set.contains(ip) {
            return Err(IpamError::Duplicate { ip, id: id.into() });
        }
    }
    let mut it = Iter::new(set, store.last_reserved(set_id));
    while let Some((net, gw)) = it.next_candidate() {
        if store.reserve(id, ifname, net.addr, set_id)? {
            return Ok(IpConfig {
                interface: None,
                address: net,
                gateway: Some(gw),
            });
        }
    }
    Err(IpamError::Exhausted(set.to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::config::IpamConfig;
    use super::*;
    use serde_json::json;

    fn set(ipam: serde_json::Value) -> RangeSet {
        IpamConfig::load(&json!({"name":"n","ipam":ipam}), "")
            .unwrap()
            .range_sets
            .remove(0)
    }

    #[test]
    fn round_robin_skips_gateway_and_exhausts() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        // 10.244.5.0/29: .1 gateway, .2-.6 usable
        let rs = set(json!({"ranges":[[{"subnet":"10.244.5.0/29"}]]}));
        let mut got = Vec::new();
        for i in 0..5 {
            let c = allocate(&s, &rs, 0, &format!("c{i}"), "eth0", None).unwrap();
            assert_eq!(c.gateway.unwrap().to_string(), "10.244.5.1");
            got.push(c.address.to_string());
        }
        assert_eq!(got[0], "10.244.5.2/29");
        assert_eq!(got[4], "10.244.5.6/29");
        assert!(matches!(
            allocate(&s, &rs, 0, "c9", "eth0", None),
            Err(IpamError::Exhausted(_))
        ));
        // free .3, next allocation wraps around to it
        s.release_by_id("c1", "eth0").unwrap();
        let c = allocate(&s, &rs, 0, "c10", "eth0", None).unwrap();
        assert_eq!(c.address.to_string(), "10.244.5.3/29");
        assert!(matches!(
            allocate(&s, &rs, 0, "c10", "eth0", None),
            Err(IpamError::Duplicate { .. })
        ));
    }

    #[test]
    fn requested_ip() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "n").unwrap();
        let rs = set(json!({"ranges":[[{"subnet":"10.244.6.0/24"}]]}));
        let ip: IpAddr = "10.244.6.50".parse().unwrap();
        let c = allocate(&s, &rs, 0, "a", "eth0", Some(ip)).unwrap();
        assert_eq!(c.address.to_string(), "10.244.6.50/24");
        assert!(allocate(&s, &rs, 0, "b", "eth0", Some(ip)).is_err());
        assert!(allocate(&s, &rs, 0, "b", "eth0", Some("10.244.6.1".parse().unwrap())).is_err());
    }
}
