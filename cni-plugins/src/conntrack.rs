//! Flushing stale conntrack entries over ctnetlink (the netfilter netlink conntrack subsystem),
//! as the reference portmap does for UDP host ports: a UDP "connection" tracked before the
//! DNAT rule existed would otherwise keep bypassing it until it times out.

use crate::nft::{Nft, NftError};
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
