//! CNI data types: versions, IP networks, and the result in each spec version's shape.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Spec versions every plugin here accepts.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest spec version implemented.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Parses "a.b.c" into a comparable tuple; `None` when malformed.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    if it.next().is_some() {
        return None;
    }
    Some(t)
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// An address with a prefix length, like Go's `net.IPNet` printed as `10.0.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn max_prefix(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn mask_bits(&self) -> u128 {
        let bits = u32::from(self.max_prefix());
        let p = u32::from(self.prefix);
        if p == 0 {
            0
        } else {
            (u128::MAX << (128 - p)) >> (128 - bits)
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        from_bits(self.addr, to_bits(self.addr) & self.mask_bits())
    }

    /// The last address of the network.
    pub fn last(&self) -> IpAddr {
        let all = if self.addr.is_ipv4() {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        from_bits(
            self.addr,
            (to_bits(self.addr) & self.mask_bits()) | (all & !self.mask_bits()),
        )
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && (to_bits(ip) & self.mask_bits()) == (to_bits(self.addr) & self.mask_bits())
    }

    /// The same prefix with the network address.
    pub fn canonical(&self) -> IpNet {
        IpNet {
            addr: self.network(),
            prefix: self.prefix,
        }
    }

    /// True when both networks share addresses.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

pub fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Builds an address of the same family as `like` from its integer value.
pub fn from_bits(like: IpAddr, bits: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// The next address (wrapping inside the family).
pub fn next_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR address: {s}"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid CIDR address: {s}"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("invalid CIDR address: {s}"))?;
        IpNet::new(addr, prefix).ok_or_else(|| format!("invalid CIDR address: {s}"))
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address of a result (the "version" key of 0.3/0.4 results is derived on output).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IpConfig {
    #[serde(default)]
    pub interface: Option<usize>,
    pub address: IpNet,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// A route of a result or of an IPAM config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings of a result or config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// A plugin result, held in the newest shape and printed in any supported version.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct CniResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Serialize)]
struct IpConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<usize>,
    address: &'a IpNet,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
}

#[derive(Serialize)]
struct ResultOut<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    interfaces: &'a [Interface],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ips: Vec<IpConfigOut<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    routes: &'a [Route],
    dns: &'a Dns,
}

impl CniResult {
    /// Parses a result of any supported version (0.3.x/0.4.0 "version" keys are ignored).
    pub fn from_value(v: serde_json::Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn out<'a>(&'a self, version: &'a str) -> ResultOut<'a> {
        let old = parse_version(version).is_some_and(|v| v < (1, 0, 0));
        let ips = self
            .ips
            .iter()
            .map(|ip| IpConfigOut {
                version: old.then_some(if ip.address.addr.is_ipv4() { "4" } else { "6" }),
                interface: ip.interface,
                address: &ip.address,
                gateway: ip.gateway,
            })
            .collect();
        ResultOut {
            cni_version: version,
            interfaces: &self.interfaces,
            ips,
            routes: &self.routes,
            dns: &self.dns,
        }
    }

    /// The result as JSON in the shape of spec `version`.
    pub fn to_json(&self, version: &str) -> serde_json::Value {
        serde_json::to_value(self.out(version)).unwrap_or(serde_json::Value::Null)
    }

    /// The result printed in the shape of spec `version`, keys in the reference order.
    pub fn render(&self, version: &str) -> String {
        render(&self.out(version))
    }
}

/// Pretty JSON with the reference plugins' 4-space indent and a final newline.
pub fn render<T: Serialize + ?Sized>(v: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if v.serialize(&mut ser).is_err() {
        return String::from("{}\n");
    }
    buf.push(b'\n');
    String::from_utf8(buf).unwrap_or_default()
}

/// Renames object keys (recursively) that match one of `canonical` case-insensitively to that
/// spelling. Runtimes fill capability arguments from Go structs without JSON tags (containerd's
/// go-cni sends `{"HostPort":8080,...}`); Go's decoder matches keys case-insensitively, so the
/// reference plugins accept any casing, and so must we.
pub fn fold_keys(v: &serde_json::Value, canonical: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let k = canonical
                        .iter()
                        .find(|c| c.eq_ignore_ascii_case(k))
                        .map_or_else(|| k.clone(), |c| (*c).to_string());
                    (k, fold_keys(v, canonical))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| fold_keys(x, canonical)).collect()),
        other => other.clone(),
    }
}

/// Parses `CNI_ARGS` (`K=V;K2=V2`) into pairs; pairs without `=` are rejected.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("invalid CNI_ARGS pair {p:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipnet_math() {
        let n: IpNet = "10.244.3.7/24".parse().unwrap();
        assert_eq!(n.network().to_string(), "10.244.3.0");
        assert_eq!(n.last().to_string(), "10.244.3.255");
        assert!(n.contains("10.244.3.200".parse().unwrap()));
        assert!(!n.contains("10.244.4.1".parse().unwrap()));
        let z: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(z.contains("1.2.3.4".parse().unwrap()));
        let v6: IpNet = "fd00:10:244::5/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00:10:244::");
        assert_eq!(v6.last().to_string(), "fd00:10:244:0:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn result_shapes() {
        let r = CniResult {
            ips: vec![IpConfig {
                interface: Some(2),
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
            }],
            ..Default::default()
        };
        let old = r.to_json("0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        let new = r.to_json("1.0.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["dns"], serde_json::json!({}));
        assert_eq!(CniResult::from_value(old).unwrap(), r);
    }

    #[test]
    fn keys_fold_like_go() {
        let v = serde_json::json!([{"HostPort": 1, "containerport": 2, "Other": 3}]);
        assert_eq!(
            fold_keys(&v, &["hostPort", "containerPort"]),
            serde_json::json!([{"hostPort": 1, "containerPort": 2, "Other": 3}])
        );
    }

    #[test]
    fn versions() {
        assert!(parse_version("1.0.0") > parse_version("0.4.0"));
        assert!(parse_version("x").is_none());
        assert!(is_supported("0.3.1") && !is_supported("0.2.0"));
    }
}
