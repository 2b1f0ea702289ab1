//! Skiff's NAT rules in nftables: one table `inet skiff-cni` with three NAT base chains
//! (`prerouting`/`output` at dstnat priority for port mappings, `postrouting` at srcnat priority
//! for masquerading). Every rule carries a comment naming its owner
//! (`skiff-cni <plugin> net=<network> id=<container id> if=<ifname>`), so DEL and GC delete exactly
//! the rules of one attachment. Each change is one nf_tables transaction.

use std::net::IpAddr;

use crate::nft::{
    Batch, CmpOp, Expr, Hook, NatType, Nft, NftError, BASE_LL, BASE_NETWORK, BASE_TRANSPORT,
    FIB_F_DADDR, FIB_RESULT_ADDRTYPE, META_IIFNAME, META_L4PROTO, META_MARK, META_NFPROTO,
    NFPROTO_BRIDGE, NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6, NF_DROP, REG1, REG2, RTN_LOCAL,
};
use crate::types::IpNet;

/// Our tables: `inet skiff-cni` (NAT) and `bridge skiff-cni` (MAC spoof checks).
pub const TABLE: &str = "skiff-cni";
/// The table families we own a table in.
pub const FAMILIES: [u8; 2] = [NFPROTO_INET, NFPROTO_BRIDGE];
/// The chain of the bridge-family table (filter, prerouting, priority -300).
pub const CHAIN_SPOOF: &str = "prerouting";
pub const CHAIN_PREROUTING: &str = "prerouting";
pub const CHAIN_OUTPUT: &str = "output";
pub const CHAIN_POSTROUTING: &str = "postrouting";

/// Who a rule belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub plugin: String,
    pub net: String,
    pub id: String,
    pub ifname: String,
}

impl Owner {
    pub fn new(plugin: &str, net: &str, id: &str, ifname: &str) -> Self {
        Owner {
            plugin: plugin.into(),
            net: net.into(),
            id: id.into(),
            ifname: ifname.into(),
        }
    }

    pub fn comment(&self) -> String {
        format!(
            "skiff-cni {} net={} id={} if={}",
            self.plugin, self.net, self.id, self.ifname
        )
    }

    /// Parses a comment written by [`Owner::comment`].
    pub fn parse(c: &str) -> Option<Owner> {
        let mut it = c.split(' ');
        if it.next()? != "skiff-cni" {
            return None;
        }
        let plugin = it.next()?.to_string();
        let net = it.next()?.strip_prefix("net=")?.to_string();
        let id = it.next()?.strip_prefix("id=")?.to_string();
        let ifname = it.next()?.strip_prefix("if=")?.to_string();
        Some(Owner {
            plugin,
            net,
            id,
            ifname,
        })
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn nfproto(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    }
}

/// `meta nfproto ipvX`
fn match_family(v4: bool) -> Vec<Expr> {
    vec![
        Expr::MetaLoad {
            key: META_NFPROTO,
            dreg: REG1,
        },
        Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Eq,
            data: vec![if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 }],
        },
    ]
}

/// Loads the source (`src`) or destination address into REG1.
fn load_addr(v4: bool, src: bool) -> Expr {
    let (offset, len) = match (v4, src) {
        (true, true) => (12, 4),
        (true, false) => (16, 4),
        (false, true) => (8, 16),
        (false, false) => (24, 16),
    };
    Expr::Payload {
        base: BASE_NETWORK,
        offset,
        len,
        dreg: REG1,
    }
}

/// `ip saddr|daddr [!=|==] ip`
fn match_addr(ip: IpAddr, src: bool, op: CmpOp) -> Vec<Expr> {
    vec![
        load_addr(ip.is_ipv4(), src),
        Expr::Cmp {
            sreg: REG1,
            op,
            data: ip_bytes(ip),
        },
    ]
}

/// `ip saddr|daddr [!=|==] net/prefix`
fn match_net(net: IpNet, src: bool, op: CmpOp) -> Vec<Expr> {
    let v4 = net.addr.is_ipv4();
    let bits = usize::from(net.max_prefix());
    let mut mask = vec![0u8; bits / 8];
    for i in 0..usize::from(net.prefix) {
        mask[i / 8] |= 0x80 >> (i % 8);
    }
    vec![
        load_addr(v4, src),
        Expr::Bitwise {
            sreg: REG1,
            dreg: REG1,
            xor: vec![0; mask.len()],
            mask,
        },
        Expr::Cmp {
            sreg: REG1,
            op,
            data: ip_bytes(net.network()),
        },
    ]
}

/// The rules that masquerade traffic from `ip` leaving its network `net` (reference semantics:
/// not to the own subnet, and for IPv4 not to multicast).
pub fn masq_rule(ip: IpAddr, net: IpNet) -> Vec<Expr> {
    let v4 = ip.is_ipv4();
    let mut e = match_family(v4);
    e.extend(match_addr(ip, true, CmpOp::Eq));
    e.extend(match_net(net.canonical(), false, CmpOp::Neq));
    if v4 {
        let mc: IpNet = "224.0.0.0/4".parse().expect("constant");
        e.extend(match_net(mc, false, CmpOp::Neq));
    }
    e.push(Expr::Masq);
    e
}

/// `iifname <host veth> ether saddr != <mac> drop` (bridge family): the container may only send
/// frames with its own MAC.
pub fn spoofchk_rule(host_if: &str, mac: [u8; 6]) -> Vec<Expr> {
    let mut name = host_if.as_bytes().to_vec();
    name.resize(16, 0);
    vec![
        Expr::MetaLoad {
            key: META_IIFNAME,
            dreg: REG1,
        },
        Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Eq,
            data: name,
        },
        Expr::Payload {
            base: BASE_LL,
            offset: 6,
            len: 6,
            dreg: REG1,
        },
        Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Neq,
            data: mac.to_vec(),
        },
        Expr::Verdict(NF_DROP),
    ]
}

/// The protocols a port mapping can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

/// One port mapping resolved for one container address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub proto: Proto,
    pub host_port: u16,
    pub host_ip: Option<IpAddr>,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// How port-mapped connections are source-NATed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatPolicy {
    /// Masquerade hairpin (container to itself) and localhost connections.
    pub snat: bool,
    /// Masquerade every mapped connection.
    pub masq_all: bool,
    /// The packet mark bit used to ask for masquerading.
    pub mark_bit: u32,
}

/// The match part of a mapping: family, protocol, destination port and address.
fn dnat_match(d: &Dnat) -> Vec<Expr> {
    let v4 = d.container_ip.is_ipv4();
    let mut e = match_family(v4);
    e.push(Expr::MetaLoad {
        key: META_L4PROTO,
        dreg: REG1,
    });
    e.push(Expr::Cmp {
        sreg: REG1,
        op: CmpOp::Eq,
        data: vec![d.proto.number()],
    });
    e.push(Expr::Payload {
        base: BASE_TRANSPORT,
        offset: 2,
        len: 2,
        dreg: REG1,
    });
    e.push(Expr::Cmp {
        sreg: REG1,
        op: CmpOp::Eq,
        data: d.host_port.to_be_bytes().to_vec(),
    });
    match d.host_ip {
        Some(h) if !h.is_unspecified() => e.extend(match_addr(h, false, CmpOp::Eq)),
        _ => {
            e.push(Expr::Fib {
                dreg: REG1,
                result: FIB_RESULT_ADDRTYPE,
                flags: FIB_F_DADDR,
            });
            e.push(Expr::Cmp {
                sreg: REG1,
                op: CmpOp::Eq,
                data: RTN_LOCAL.to_ne_bytes().to_vec(),
            });
        }
    }
    e
}

fn set_mark(bit: u32) -> Vec<Expr> {
    let m = 1u32 << bit;
    vec![
        Expr::MetaLoad {
            key: META_MARK,
            dreg: REG1,
        },
        Expr::Bitwise {
            sreg: REG1,
            dreg: REG1,
            mask: (!m).to_ne_bytes().to_vec(),
            xor: m.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: META_MARK,
            sreg: REG1,
        },
    ]
}

fn dnat_to(d: &Dnat) -> Vec<Expr> {
    vec![
        Expr::Immediate {
            dreg: REG1,
            data: ip_bytes(d.container_ip),
        },
        Expr::Immediate {
            dreg: REG2,
            data: d.container_port.to_be_bytes().to_vec(),
        },
        Expr::Nat {
            kind: NatType::Dnat,
            family: nfproto(d.container_ip),
            addr_reg: REG1,
            proto_reg: Some(REG2),
        },
    ]
}

/// (chain, expressions) for one mapping.
pub fn portmap_rules(d: &Dnat, p: SnatPolicy) -> Vec<(&'static str, Vec<Expr>)> {
    let mut out = Vec::new();
    let base = dnat_match(d);
    let v4 = d.container_ip.is_ipv4();
    let with = |extra: Vec<Expr>, tail: Vec<Expr>| {
        let mut e = base.clone();
        e.extend(extra);
        e.extend(tail);
        e
    };
    for chain in [CHAIN_PREROUTING, CHAIN_OUTPUT] {
        if p.masq_all {
            out.push((chain, with(Vec::new(), set_mark(p.mark_bit))));
        } else if p.snat {
            if chain == CHAIN_PREROUTING {
                // Hairpin: the container reaching itself through the host port.
                out.push((
                    chain,
                    with(
                        match_addr(d.container_ip, true, CmpOp::Eq),
                        set_mark(p.mark_bit),
                    ),
                ));
            } else {
                let lo: IpAddr = if v4 {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                };
                out.push((
                    chain,
                    with(match_addr(lo, true, CmpOp::Eq), set_mark(p.mark_bit)),
                ));
            }
        }
        out.push((chain, with(Vec::new(), dnat_to(d))));
    }
    if p.masq_all || p.snat {
        // Masquerade what was marked above, on its way to this container.
        let m = 1u32 << p.mark_bit;
        let mut e = match_family(v4);
        e.extend(match_addr(d.container_ip, false, CmpOp::Eq));
        e.push(Expr::MetaLoad {
            key: META_MARK,
            dreg: REG1,
        });
        e.push(Expr::Bitwise {
            sreg: REG1,
            dreg: REG1,
            mask: m.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        });
        e.push(Expr::Cmp {
            sreg: REG1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        });
        e.push(Expr::Masq);
        if !out.iter().any(|(c, x)| *c == CHAIN_POSTROUTING && x == &e) {
            out.push((CHAIN_POSTROUTING, e));
        }
    }
    out
}

fn base(b: &mut Batch, family: u8) {
    b.add_table(TABLE);
    if family == NFPROTO_BRIDGE {
        b.add_base_chain(TABLE, CHAIN_SPOOF, "filter", Hook::Prerouting, -300);
    } else {
        b.add_base_chain(TABLE, CHAIN_PREROUTING, "nat", Hook::Prerouting, -100);
        b.add_base_chain(TABLE, CHAIN_OUTPUT, "nat", Hook::Output, -100);
        b.add_base_chain(TABLE, CHAIN_POSTROUTING, "nat", Hook::Postrouting, 100);
    }
}

fn owned(rules: &[crate::nft::RuleInfo], keep: impl Fn(&Owner) -> bool) -> Vec<(String, u64)> {
    rules
        .iter()
        .filter_map(|r| {
            let o = Owner::parse(r.comment.as_deref()?)?;
            (!keep(&o)).then(|| (r.chain.clone(), r.handle))
        })
        .collect()
}

/// Replaces the NAT rules of `owner` with `rules` in one transaction (idempotent).
pub fn replace(owner: &Owner, rules: &[(&str, Vec<Expr>)]) -> Result<(), NftError> {
    replace_in(NFPROTO_INET, owner, rules)
}

/// Replaces the rules of `owner` in our table of `family` with `rules`, in one transaction.
pub fn replace_in(family: u8, owner: &Owner, rules: &[(&str, Vec<Expr>)]) -> Result<(), NftError> {
    replace_start(family, owner, rules).wait().map(|_| ())
}

/// Starts [`replace_in`] in a detached worker; the caller must `wait()` for the outcome.
pub fn replace_start(
    family: u8,
    owner: &Owner,
    rules: &[(&str, Vec<Expr>)],
) -> crate::detach::Pending {
    crate::detach::spawn(|nft| replace_here(nft, family, owner, rules).map(|()| rules.len()))
}

fn replace_here(
    nft: &mut Nft,
    family: u8,
    owner: &Owner,
    rules: &[(&str, Vec<Expr>)],
) -> Result<(), NftError> {
    let comment = owner.comment();
    let mut last = None;
    for _ in 0..3 {
        let existing = nft.rules(family, TABLE)?;
        let mut b = Batch::new(family);
        base(&mut b, family);
        for (chain, h) in owned(&existing, |o| o != owner) {
            b.del_rule(TABLE, &chain, h);
        }
        for (chain, e) in rules {
            b.add_rule(TABLE, chain, e, &comment);
        }
        match nft.commit(&format!("program rules of {}", owner.id), &b) {
            Ok(()) => return Ok(()),
            // A concurrent DEL/GC removed a rule we meant to delete: look again.
            Err(e) if e.errno() == Some(libc::ENOENT) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(NftError::Decode {
        op: "program rules".into(),
    }))
}

/// Deletes every rule for which `drop` is true; returns how many.
pub fn delete_where(drop: impl Fn(&Owner) -> bool) -> Result<usize, NftError> {
    match crate::detach::run(|nft| delete_here(nft, &drop)) {
        // No nf_tables in this kernel: nothing of ours can exist.
        Err(e) if e.errno() == Some(libc::EPROTONOSUPPORT) => Ok(0),
        r => r,
    }
}

fn delete_here(nft: &mut Nft, drop: &impl Fn(&Owner) -> bool) -> Result<usize, NftError> {
    let mut total = 0;
    for family in FAMILIES {
        total += delete_in(nft, family, drop)?;
    }
    Ok(total)
}

fn delete_in(nft: &mut Nft, family: u8, drop: &impl Fn(&Owner) -> bool) -> Result<usize, NftError> {
    let mut last = None;
    for _ in 0..3 {
        let rules = nft.rules(family, TABLE)?;
        let victims = owned(&rules, |o| !drop(o));
        if victims.is_empty() {
            return Ok(0);
        }
        let mut b = Batch::new(family);
        for (chain, h) in &victims {
            b.del_rule(TABLE, chain, *h);
        }
        match nft.commit("delete rules", &b) {
            Ok(()) => return Ok(victims.len()),
            Err(e) if e.errno() == Some(libc::ENOENT) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(NftError::Decode {
        op: "delete rules".into(),
    }))
}

/// Deletes the rules of exactly this attachment.
pub fn delete_owner(owner: &Owner) -> Result<usize, NftError> {
    delete_where(|o| o == owner)
}

/// GC: deletes the rules `plugin` made for network `net` whose attachment is not valid.
pub fn gc(plugin: &str, net: &str, valid: &[(String, String)]) -> Result<usize, NftError> {
    delete_where(|o| {
        o.plugin == plugin
            && o.net == net
            && !valid
                .iter()
                .any(|(id, ifn)| *id == o.id && *ifn == o.ifname)
    })
}

/// How many rules `owner` has in our table of `family`.
pub fn count_owner_in(family: u8, owner: &Owner) -> Result<usize, NftError> {
    crate::detach::run(|nft| {
        let rules = nft.rules(family, TABLE)?;
        Ok(owned(&rules, |o| o != owner).len())
    })
}

/// How many NAT rules `owner` has.
pub fn count_owner(owner: &Owner) -> Result<usize, NftError> {
    count_owner_in(NFPROTO_INET, owner)
}

/// Removes our tables (tests, uninstall).
pub fn delete_tables() -> Result<(), NftError> {
    let mut nft = Nft::open()?;
    for family in FAMILIES {
        let mut b = Batch::new(family);
        b.del_table(TABLE);
        match nft.commit("delete table", &b) {
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            r => r?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_comment_roundtrip() {
        let o = Owner::new("bridge", "my-net", "abc.1", "eth0");
        assert_eq!(Owner::parse(&o.comment()), Some(o));
        assert_eq!(Owner::parse("something else"), None);
    }

    #[test]
    fn prefix_mask() {
        let e = match_net("10.1.0.0/20".parse().unwrap(), false, CmpOp::Neq);
        match &e[1] {
            Expr::Bitwise { mask, .. } => assert_eq!(mask, &vec![255, 255, 240, 0]),
            o => panic!("{o:?}"),
        }
    }
}
