//! Flushing stale conntrack entries over ctnetlink (the netfilter netlink conntrack subsystem),
//! as the reference portmap does for UDP host ports: a UDP "connection" tracked before the
//! DNAT rule existed would otherwise keep bypassing it until it times out.

use crate::nft::{Nft, NftError};
use std::net::IpAddr;

use crate::nlsock::{attrs, Attrs, NLA_F_NESTED};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;

/// True when the original-direction tuple is (`proto`, any, any -> `dport`).
fn matches(tuple: &[u8], proto: u8, dport: u16) -> bool {
    attrs(tuple)
        .filter(|(t, _)| *t == CTA_TUPLE_PROTO)
        .any(|(_, p)| {
            let mut num = None;
            let mut port = None;
            for (t, v) in attrs(p) {
                match t {
                    CTA_PROTO_NUM => num = v.first().copied(),
                    CTA_PROTO_DST_PORT if v.len() >= 2 => {
                        port = Some(u16::from_be_bytes([v[0], v[1]]))
                    }
                    _ => {}
                }
            }
            num == Some(proto) && port == Some(dport)
        })
}

/// Deletes every conntrack entry of `family` (AF_INET or AF_INET6) whose original tuple is
/// `proto` to destination port `dport`; returns how many. A kernel without conntrack has none.
pub fn delete_by_dst_port(
    nl: &mut Nft,
    family: u8,
    proto: u8,
    dport: u16,
) -> Result<usize, NftError> {
    let entries = match nl.dump_raw(
        "list conntrack entries",
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
        family,
        &[],
    ) {
        Ok(e) => e,
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries {
        let mut tuple = None;
        let mut zone = None;
        for (t, v) in attrs(&e) {
            match t {
                CTA_TUPLE_ORIG => tuple = Some(v.to_vec()),
                CTA_ZONE => zone = Some(v.to_vec()),
                _ => {}
            }
        }
        let Some(tuple) = tuple.filter(|t| matches(t, proto, dport)) else {
            continue;
        };
        let mut body = Attrs::default();
        body.put(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        if let Some(z) = zone {
            body.put(CTA_ZONE, &z);
        }
        match nl.request_ack(
            "delete a conntrack entry",
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            family,
            &body.into_bytes(),
        ) {
            Ok(()) => n += 1,
            // Gone meanwhile (timed out or deleted by someone else).
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V6_SRC: u16 = 3;

/// The source address of a tuple (IPv4 or IPv6) and its protocol number.
fn src_proto(tuple: &[u8]) -> (Option<IpAddr>, Option<u8>) {
    let mut src = None;
    let mut proto = None;
    for (t, v) in attrs(tuple) {
        match t {
            CTA_TUPLE_IP => {
                for (t2, v2) in attrs(v) {
                    match t2 {
                        CTA_IP_V4_SRC if v2.len() >= 4 => {
                            src = Some(IpAddr::from([v2[0], v2[1], v2[2], v2[3]]));
                        }
                        CTA_IP_V6_SRC if v2.len() >= 16 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(&v2[..16]);
                            src = Some(IpAddr::from(a));
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t2, v2) in attrs(v) {
                    if t2 == CTA_PROTO_NUM {
                        proto = v2.first().copied();
                    }
                }
            }
            _ => {}
        }
    }
    (src, proto)
}

/// Deletes every conntrack entry of protocol `proto` whose reply comes from `src` (the
/// connections DNATed to an endpoint that is gone, as kube-proxy flushes them for UDP), in
/// the table of `src`'s family (AF_INET or AF_INET6); returns how many.
pub fn delete_by_reply_src(nl: &mut Nft, proto: u8, src: IpAddr) -> Result<usize, NftError> {
    let family = match src {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    };
    let entries = match nl.dump_raw(
        "list conntrack entries",
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
        family,
        &[],
    ) {
        Ok(e) => e,
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in entries {
        let mut orig = None;
        let mut hit = false;
        let mut zone = None;
        for (t, v) in attrs(&e) {
            match t {
                CTA_TUPLE_ORIG => orig = Some(v.to_vec()),
                CTA_TUPLE_REPLY => hit = src_proto(v) == (Some(src), Some(proto)),
                CTA_ZONE => zone = Some(v.to_vec()),
                _ => {}
            }
        }
        let (Some(tuple), true) = (orig, hit) else {
            continue;
        };
        let mut body = Attrs::default();
        body.put(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
        if let Some(z) = zone {
            body.put(CTA_ZONE, &z);
        }
        match nl.request_ack(
            "delete a conntrack entry",
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            family,
            &body.into_bytes(),
        ) {
            Ok(()) => n += 1,
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(ip_attr: u16, ip: &[u8], proto: u8) -> Vec<u8> {
        let mut ipn = Attrs::default();
        ipn.put(ip_attr, ip);
        let mut pn = Attrs::default();
        pn.put(CTA_PROTO_NUM, &[proto]);
        let mut t = Attrs::default();
        t.put(CTA_TUPLE_IP | NLA_F_NESTED, &ipn.into_bytes());
        t.put(CTA_TUPLE_PROTO | NLA_F_NESTED, &pn.into_bytes());
        t.into_bytes()
    }

    #[test]
    fn reply_sources_of_both_families() {
        let v4 = tuple(CTA_IP_V4_SRC, &[10, 244, 0, 5], 17);
        assert_eq!(
            src_proto(&v4),
            (Some("10.244.0.5".parse().unwrap()), Some(17))
        );
        let a: std::net::Ipv6Addr = "fd00:10:244::5".parse().unwrap();
        let v6 = tuple(CTA_IP_V6_SRC, &a.octets(), 17);
        assert_eq!(src_proto(&v6), (Some(IpAddr::V6(a)), Some(17)));
    }
}
