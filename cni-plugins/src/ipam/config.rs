//! host-local's configuration, with the reference plugin's keys and defaults.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::IpamError;
use crate::types::{next_ip, parse_cni_args, to_bits, Dns, IpNet, Route};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, Deserialize)]
struct RangeRaw {
    subnet: IpNet,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<IpAddr>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct IpamRaw {
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(default, rename = "resolvConf")]
    resolv_conf: Option<String>,
    #[serde(default)]
    ranges: Vec<Vec<RangeRaw>>,
    #[serde(default)]
    subnet: Option<IpNet>,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<IpAddr>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

/// One canonical range: every field filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    fn canonicalize(raw: &RangeRaw) -> Result<Range, IpamError> {
        let s = raw.subnet;
        if s.prefix + 2 > s.max_prefix() {
            return Err(IpamError::Config(format!(
                "network {s} too small to allocate from"
            )));
        }
        if s.network() != s.addr {
            return Err(IpamError::Config(format!(
                "network has host bits set; for a subnet mask of length {} the network address is {}",
                s.prefix,
                s.network()
            )));
        }
        let in_subnet = |ip: IpAddr, what: &str| {
            if s.contains(ip) {
                Ok(ip)
            } else {
                Err(IpamError::Config(format!("{what} {ip} not in network {s}")))
            }
        };
        let gateway = match raw.gateway {
            Some(g) => g,
            None => next_ip(s.addr),
        };
        let start = match raw.range_start {
            Some(ip) => in_subnet(ip, "RangeStart")?,
            None => next_ip(s.addr),
        };
        let end = match raw.range_end {
            Some(ip) => in_subnet(ip, "RangeEnd")?,
            None => {
                let last = s.last();
                if last.is_ipv4() {
                    crate::types::from_bits(last, to_bits(last) - 1)
                } else {
                    last
                }
            }
        };
        if to_bits(start) > to_bits(end) {
            return Err(IpamError::Config(format!(
                "RangeStart {start} is after RangeEnd {end}"
            )));
        }
        Ok(Range {
            subnet: s,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(ip)
            && to_bits(ip) >= to_bits(self.start)
            && to_bits(ip) <= to_bits(self.end)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.subnet.addr.is_ipv4() == o.subnet.addr.is_ipv4()
            && (self.contains(o.start)
                || self.contains(o.end)
                || o.contains(self.start)
                || o.contains(self.end))
    }
}

/// A set of ranges that together give one address (one per set is allocated).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSet(pub Vec<Range>);

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The whole canonical host-local configuration.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub network: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    pub requested: Vec<IpAddr>,
}

fn parse_requested(s: &str) -> Result<IpAddr, IpamError> {
    let a = s.split('/').next().unwrap_or(s);
    a.parse()
        .map_err(|_| IpamError::Config(format!("invalid requested IP address {s:?}")))
}

fn canonical_set(raw: &[RangeRaw]) -> Result<RangeSet, IpamError> {
    if raw.is_empty() {
        return Err(IpamError::Config("empty range set".into()));
    }
    let ranges = raw
        .iter()
        .map(Range::canonicalize)
        .collect::<Result<Vec<_>, _>>()?;
    let v4 = ranges[0].subnet.addr.is_ipv4();
    if ranges.iter().any(|r| r.subnet.addr.is_ipv4() != v4) {
        return Err(IpamError::Config(
            "mixed address families in a range set".into(),
        ));
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.overlaps(b) {
                return Err(IpamError::Config(format!(
                    "subnets {} and {} overlap",
                    a.subnet, b.subnet
                )));
            }
        }
    }
    Ok(RangeSet(ranges))
}

impl IpamConfig {
    /// Reads the `ipam` section of a network config plus `CNI_ARGS`.
    pub fn load(config: &Value, cni_args: &str) -> Result<Self, IpamError> {
        let network = config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ipam_v = config
            .get("ipam")
            .ok_or_else(|| IpamError::Config("IPAM config missing 'ipam' key".into()))?;
        let raw: IpamRaw =
            serde_json::from_value(ipam_v.clone()).map_err(|e| IpamError::Config(e.to_string()))?;

        let mut sets_raw: Vec<Vec<RangeRaw>> = Vec::new();
        if let Some(subnet) = raw.subnet {
            sets_raw.push(vec![RangeRaw {
                subnet,
                range_start: raw.range_start,
                range_end: raw.range_end,
                gateway: raw.gateway,
            }]);
        }
        sets_raw.extend(raw.ranges);
        // The "ipRanges" capability replaces the configured ranges.
        if let Some(rt) = config.get("runtimeConfig").and_then(|r| r.get("ipRanges")) {
            let rt = crate::types::fold_keys(rt, &["subnet", "rangeStart", "rangeEnd", "gateway"]);
            let rt: Vec<Vec<RangeRaw>> = serde_json::from_value(rt)
                .map_err(|e| IpamError::Config(format!("runtimeConfig.ipRanges: {e}")))?;
            if !rt.is_empty() {
                sets_raw = rt;
            }
        }
        if sets_raw.is_empty() {
            return Err(IpamError::Config("no IP ranges specified".into()));
        }
        let range_sets = sets_raw
            .iter()
            .map(|s| canonical_set(s))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in range_sets.iter().enumerate() {
            for (j, b) in range_sets.iter().enumerate().skip(i + 1) {
                if a.0.iter().any(|ra| b.0.iter().any(|rb| ra.overlaps(rb))) {
                    return Err(IpamError::Config(format!(
                        "range set {i} overlaps with {j}"
                    )));
                }
            }
        }

        let mut requested = Vec::new();
        for (k, v) in parse_cni_args(cni_args).map_err(IpamError::Config)? {
            if k == "IP" {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    requested.push(parse_requested(p)?);
                }
            }
        }
        let json_ips = [
            config.pointer("/args/cni/ips"),
            config.pointer("/runtimeConfig/ips"),
        ];
        for list in json_ips.into_iter().flatten() {
            for v in list.as_array().into_iter().flatten() {
                if let Some(s) = v.as_str() {
                    requested.push(parse_requested(s)?);
                }
            }
        }

        Ok(IpamConfig {
            network,
            range_sets,
            routes: raw.routes,
            data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into())),
            resolv_conf: raw.resolv_conf.map(PathBuf::from),
            requested,
        })
    }
}

/// Reads a resolv.conf-style file into DNS settings.
pub fn parse_resolv_conf(path: &std::path::Path) -> Result<Dns, IpamError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| IpamError::io(format!("read resolvConf {}", path.display()), e))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut it = line.split_whitespace();
        match it.next() {
            Some("nameserver") => dns.nameservers.extend(it.next().map(String::from)),
            Some("domain") => dns.domain = it.next().map(String::from),
            Some("search") => dns.search = it.map(String::from).collect(),
            Some("options") => dns.options.extend(it.map(String::from)),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_legacy() {
        let c = json!({"name":"n","ipam":{"type":"host-local","subnet":"10.244.1.0/24",
            "ranges":[[{"subnet":"10.244.2.0/24","rangeStart":"10.244.2.10","gateway":"10.244.2.254"}]]}});
        let cfg = IpamConfig::load(&c, "IP=10.244.1.9").unwrap();
        assert_eq!(cfg.range_sets.len(), 2);
        let r = &cfg.range_sets[0].0[0];
        assert_eq!(r.start.to_string(), "10.244.1.1");
        assert_eq!(r.end.to_string(), "10.244.1.254");
        assert_eq!(r.gateway.to_string(), "10.244.1.1");
        assert_eq!(cfg.range_sets[1].0[0].start.to_string(), "10.244.2.10");
        assert_eq!(cfg.requested, vec!["10.244.1.9".parse::<IpAddr>().unwrap()]);
        assert_eq!(cfg.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn rejects_bad_ranges() {
        for ipam in [
            json!({"ranges":[[{"subnet":"10.244.1.5/24"}]]}),
            json!({"ranges":[[{"subnet":"10.244.1.0/31"}]]}),
            json!({"ranges":[[{"subnet":"10.244.1.0/24","rangeStart":"10.9.9.9"}]]}),
            json!({"ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"10.244.1.0/25"}]]}),
            json!({"ranges":[]}),
        ] {
            let c = json!({"name":"n","ipam":ipam});
            assert!(IpamConfig::load(&c, "").is_err(), "{c}");
        }
        assert!(IpamConfig::load(&json!({"name":"n"}), "").is_err());
    }
}
