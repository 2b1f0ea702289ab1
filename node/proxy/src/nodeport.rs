//! kube-proxy's `--nodeport-addresses`: the host addresses NodePorts answer on, as CIDRs
//! (`10.0.0.0/8,::1/128`) or `primary` (the node's own addresses). Without the flag (or with
//! a `/0` of a family) NodePorts answer on every local address of that family; a family the
//! list does not mention gets no NodePorts, as upstream.

use std::net::IpAddr;

use crate::rules::Family;
use crate::ProxyError;

/// One entry of the flag.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Primary,
    Cidr(IpAddr, u8),
}

/// Parses the flag's values (already split at commas).
pub fn parse(values: &[String]) -> Result<Vec<Entry>, ProxyError> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            if v == "primary" {
                Ok(Entry::Primary)
            } else {
                let (ip, len) = crate::parse_cidr(v)
                    .map_err(|_| ProxyError::BadNodePortAddresses(v.to_string()))?;
                Ok(Entry::Cidr(ip, len))
            }
        })
        .collect()
}

fn contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    if net.0.is_ipv4() != ip.is_ipv4() {
        return false;
    }
    let (n, max) = bits(net.0);
    let (a, _) = bits(ip);
    let len = u32::from(net.1).min(max);
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - len);
    n & mask == a & mask
}

/// The addresses of `fam` NodePorts answer on: `None` for every local address (no flag, or a
/// `/0` of this family), else the host's addresses in the listed ranges (and the node's
/// addresses for `primary`).
pub fn resolve(
    values: &[String],
    fam: Family,
    node_ips: &[IpAddr],
) -> Result<Option<Vec<IpAddr>>, ProxyError> {
    let entries = parse(values)?;
    if entries.is_empty() {
        return Ok(None);
    }
    let of_fam = |ip: &IpAddr| Family::of(ip) == fam;
    if entries
        .iter()
        .any(|e| matches!(e, Entry::Cidr(ip, 0) if of_fam(ip)))
    {
        return Ok(None);
    }
    let local = local_addresses()?;
    let mut out: Vec<IpAddr> = vec![];
    for e in &entries {
        match e {
            Entry::Primary => out.extend(node_ips.iter().copied().filter(of_fam)),
            Entry::Cidr(ip, len) if of_fam(ip) => {
                out.extend(local.iter().copied().filter(|a| contains((*ip, *len), *a)))
            }
            Entry::Cidr(..) => {}
        }
    }
    out.sort();
    out.dedup();
    Ok(Some(out))
}

/// Every address of the host's interfaces.
pub fn local_addresses() -> Result<Vec<IpAddr>, ProxyError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(ProxyError::Io(std::io::Error::last_os_error()));
    }
    let mut out = vec![];
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let e = parse(&["10.0.0.0/8".into(), "primary".into(), "::1/128".into()]).unwrap();
        assert_eq!(e.len(), 3);
        assert!(parse(&["10.0.0.0".into()]).is_err());
        assert!(contains(
            ("10.0.0.0".parse().unwrap(), 8),
            "10.1.2.3".parse().unwrap()
        ));
        assert!(!contains(
            ("10.0.0.0".parse().unwrap(), 8),
            "11.1.2.3".parse().unwrap()
        ));
        assert!(!contains(
            ("::".parse().unwrap(), 0),
            "10.0.0.1".parse().unwrap()
        ));
        assert!(contains(
            ("::1".parse().unwrap(), 128),
            "::1".parse().unwrap()
        ));
    }

    #[test]
    fn loopback_only_selects_127() {
        let got = resolve(&["127.0.0.0/8".into()], Family::V4, &[])
            .unwrap()
            .unwrap();
        assert!(got.contains(&"127.0.0.1".parse().unwrap()), "{got:?}");
        assert!(
            got.iter().all(|a| a.to_string().starts_with("127.")),
            "{got:?}"
        );
        assert_eq!(resolve(&[], Family::V4, &[]).unwrap(), None);
        assert_eq!(
            resolve(&["0.0.0.0/0".into()], Family::V4, &[]).unwrap(),
            None
        );
        assert_eq!(
            resolve(&["0.0.0.0/0".into()], Family::V6, &[]).unwrap(),
            Some(vec![])
        );
    }
}
