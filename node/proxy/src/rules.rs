//! The proxy's nftables program: a fixed skeleton of chains whose rules look services up in
//! maps. What changes with Services and endpoints is only map elements, plus one small chain
//! per distinct endpoint count (and affinity timeout, and masquerade kind) in use: the rule
//! count does not grow with the number of Services, nor with services x endpoints, and an
//! endpoint change is a few element updates in one transaction.
//!
//! ```text
//! table ip <table>                          (comment "skiff-proxy: ...")
//!   map service-ips        ipv4 . proto . port : verdict        ClusterIP, externalIPs, LB
//!   map service-nodeports  proto . port : verdict               NodePorts (any local address)
//!   map endpoints          ipv4 . proto . port . index : ipv4 . port   ready endpoints
//!   map nodeport-endpoints proto . port . index : ipv4 . port
//!   set affinity / nodeport-affinity  <service> . client . index  dynamic, per-element timeout
//!   set hairpin            ipv4 . ipv4                          endpoint . itself: masquerade
//!   map no-endpoint-services / no-endpoint-nodeports            -> goto reject-chain
//!   chain nat-prerouting / nat-output: jump services
//!   chain services: ip daddr . meta l4proto . th dport vmap @service-ips
//!                   fib daddr type local  meta l4proto . th dport vmap @service-nodeports
//!   chain dnat-<N>[-masq|-local]: [mark for masquerade];
//!                   dnat to ip daddr . meta l4proto . th dport . numgen random mod N map @endpoints
//!   chain aff-<N>-<T>[-masq|-local]: [mark]; one rule per index: a known client -> its
//!                   endpoint (refreshed); else a random index, remembered
//!   chain nat-postrouting: mark 0x4000 masquerade; ct status dnat, saddr . daddr @hairpin masquerade
//!   chains filter-input/-forward/-output: no-endpoint lookups -> reject (ICMP port unreachable)
//! ```
//!
//! Every lookup is keyed by packet fields only (never by the result of another lookup), so the
//! program is what `nft` itself would write for these rules and `nft list ruleset` prints it
//! (Debian 12's nftables 1.0.6 aborted on keys built from lookup results: issue 15).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use skiff_netfilter::nft::{
    Batch, CmpOp, ElemData, Expr, Hook, NatType, SetData, SetSpec, Verdict, BASE_NETWORK,
    BASE_TRANSPORT, CT_STATUS, FIB_F_DADDR, FIB_RESULT_ADDRTYPE, META_L4PROTO, META_MARK,
    NFPROTO_IPV4, NFPROTO_IPV6, REG32_00, RTN_LOCAL, SET_EVAL, SET_TIMEOUT, TYPE_INET_PROTO,
    TYPE_INET_SERVICE, TYPE_IPADDR, TYPE_MARK,
};

/// The packet mark bit of connections to masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;
/// `ct status dnat` (IPS_DST_NAT): the connection's destination was rewritten.
const CT_STATUS_DNAT: u32 = 1 << 5;
pub const TABLE_COMMENT: &str = "skiff-proxy: rules for Kubernetes Services";

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NO_EP_SERVICES: &str = "no-endpoint-services";
pub const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
pub const ENDPOINTS: &str = "endpoints";
pub const NP_ENDPOINTS: &str = "nodeport-endpoints";
pub const AFFINITY: &str = "affinity";
pub const NP_AFFINITY: &str = "nodeport-affinity";
pub const HAIRPIN: &str = "hairpin";
/// The host addresses NodePorts answer on when `--nodeport-addresses` narrows them.
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const SERVICES_CHAIN: &str = "services";
pub const REJECT_CHAIN: &str = "reject-chain";

/// nftables' `ipv6_addr` data type.
const TYPE_IP6ADDR: u32 = 8;

/// The address family of a table: `ip` (IPv4 Services) or `ip6` (IPv6 Services of a
/// dual-stack or IPv6 cluster). Both run the same program; only address sizes, header
/// offsets and the ICMP code differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn nfproto(self) -> u8 {
        match self {
            Family::V4 => NFPROTO_IPV4,
            Family::V6 => NFPROTO_IPV6,
        }
    }
    /// `ip` / `ip6`, as `nft` names the table family.
    pub fn table_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    /// The EndpointSlice address type.
    pub fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
    fn addr_len(self) -> u32 {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }
    /// 32-bit registers an address takes.
    fn regs(self) -> u32 {
        self.addr_len() / 4
    }
    fn saddr_offset(self) -> u32 {
        match self {
            Family::V4 => 12,
            Family::V6 => 8,
        }
    }
    fn daddr_offset(self) -> u32 {
        match self {
            Family::V4 => 16,
            Family::V6 => 24,
        }
    }
    fn addr_type(self) -> u32 {
        match self {
            Family::V4 => TYPE_IPADDR,
            Family::V6 => TYPE_IP6ADDR,
        }
    }
    /// ICMP port unreachable (3) / ICMPv6 port unreachable (4).
    fn port_unreachable(self) -> u8 {
        match self {
            Family::V4 => 3,
            Family::V6 => 4,
        }
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

const fn cat(a: u32, b: u32) -> u32 {
    (a << 6) | b
}

/// An endpoint: address and port.
pub type Ep = (IpAddr, u16);

/// When DNAT to a group marks the connection for masquerade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Masq {
    /// Unless the source is in the pod network (traffic to a ClusterIP).
    UnlessFromPods = 0,
    /// Always (external traffic with the Cluster policy).
    Always = 1,
    /// Never (externalTrafficPolicy Local keeps the client's address).
    Never = 2,
}

impl Masq {
    /// The suffix of the chains of this kind.
    fn suffix(self) -> &'static str {
        match self {
            Masq::UnlessFromPods => "",
            Masq::Always => "-masq",
            Masq::Never => "-local",
        }
    }
}

/// The state the kernel should have beside the fixed skeleton.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Program {
    /// The table family (every address below is of it).
    pub family: Family,
    /// The pod network (traffic to a ClusterIP from elsewhere is masqueraded).
    pub cluster_cidr: Option<(IpAddr, u8)>,
    /// `ipv4 . proto . port` -> the chain that DNATs it.
    pub service_ips: BTreeMap<Vec<u8>, String>,
    /// `proto . port` -> the chain that DNATs it.
    pub service_nodeports: BTreeMap<Vec<u8>, String>,
    pub no_ep_services: BTreeSet<Vec<u8>>,
    pub no_ep_nodeports: BTreeSet<Vec<u8>>,
    /// `ipv4 . proto . port . index` -> endpoint.
    pub endpoints: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `proto . port . index` -> endpoint.
    pub np_endpoints: BTreeMap<Vec<u8>, Vec<u8>>,
    pub hairpin: BTreeSet<Vec<u8>>,
    /// Chain name -> its rules (one per endpoint count / affinity timeout / kind in use).
    pub chains: BTreeMap<String, Vec<Vec<Expr>>>,
    /// The endpoint groups added (what [`Program::expose`] sends traffic to); not in the kernel.
    pub groups: BTreeMap<u32, Group>,
}

pub fn proto_num(p: &str) -> Option<u8> {
    match p {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

fn pad4(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

pub fn key_ip_proto_port(ip: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = octets(&ip);
    k.extend(pad4(&[proto]));
    k.extend(pad4(&port.to_be_bytes()));
    k
}

pub fn key_proto_port(proto: u8, port: u16) -> Vec<u8> {
    let mut k = pad4(&[proto]);
    k.extend(pad4(&port.to_be_bytes()));
    k
}

fn ep_value(ep: Ep) -> Vec<u8> {
    let mut v = octets(&ep.0);
    v.extend(pad4(&ep.1.to_be_bytes()));
    v
}

/// Where a packet's service was found: by destination address (ClusterIP, externalIPs, LB)
/// or by NodePort on a local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    Ips,
    NodePorts,
}

/// One group of endpoints DNAT chooses from (a service port's cluster or external view).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: u32,
    pub endpoints: Vec<Ep>,
    pub affinity_timeout_s: Option<u32>,
}

impl Program {
    /// Adds a group of endpoints (for [`Program::expose`]) and its hairpin elements.
    pub fn add_group(&mut self, g: &Group) {
        for ep in &g.endpoints {
            let mut h = octets(&ep.0);
            h.extend(octets(&ep.0));
            self.hairpin.insert(h);
        }
        self.groups.insert(g.id, g.clone());
    }

    /// Sends traffic to `key` (a [`key_ip_proto_port`] for `Src::Ips`, a [`key_proto_port`]
    /// for `Src::NodePorts`) to the endpoints of group `id` (added before), marked for
    /// masquerade by `kind`; the chain of that shape is made when it is the first.
    pub fn expose(&mut self, src: Src, key: Vec<u8>, id: u32, kind: Masq) {
        let Some(g) = self.groups.get(&id) else {
            return;
        };
        let n = g.endpoints.len() as u32;
        let prefix = match src {
            Src::Ips => "",
            Src::NodePorts => "np-",
        };
        let suffix = kind.suffix();
        let name = match g.affinity_timeout_s {
            Some(t) => format!("{prefix}aff-{n}-{t}{suffix}"),
            None => format!("{prefix}dnat-{n}{suffix}"),
        };
        let cidr = self.cluster_cidr;
        let fam = self.family;
        let affinity = g.affinity_timeout_s;
        let eps: Vec<Vec<u8>> = g.endpoints.iter().map(|e| ep_value(*e)).collect();
        self.chains.entry(name.clone()).or_insert_with(|| {
            let mut rules = vec![mark_rule(fam, kind, cidr)];
            match affinity {
                Some(t) => rules.extend(affinity_rules(fam, src, n, u64::from(t) * 1000)),
                None => rules.push(dnat_rule(fam, src, n)),
            }
            rules
        });
        for (i, ep) in eps.into_iter().enumerate() {
            let mut k = key.clone();
            k.extend((i as u32).to_ne_bytes());
            match src {
                Src::Ips => self.endpoints.insert(k, ep),
                Src::NodePorts => self.np_endpoints.insert(k, ep),
            };
        }
        match src {
            Src::Ips => self.service_ips.insert(key, name),
            Src::NodePorts => self.service_nodeports.insert(key, name),
        };
    }

    pub fn rule_count(&self) -> usize {
        skeleton_rule_count_of(self.family) + self.chains.values().map(Vec::len).sum::<usize>()
    }

    pub fn element_count(&self) -> usize {
        self.service_ips.len()
            + self.service_nodeports.len()
            + self.no_ep_services.len()
            + self.no_ep_nodeports.len()
            + self.endpoints.len()
            + self.np_endpoints.len()
            + self.hairpin.len()
    }
}

/// The first rule of a per-count chain: mark the connection for masquerade by `kind`.
fn mark_rule(fam: Family, kind: Masq, cluster_cidr: Option<(IpAddr, u8)>) -> Vec<Expr> {
    match kind {
        Masq::Always => set_masq_mark(),
        // Local policy keeps the client's address, except for clients on this node (127.0.0.1
        // cannot be answered from a pod), which are masqueraded as upstream does.
        Masq::Never => {
            let mut r = vec![
                Expr::Fib {
                    dreg: REG32_00,
                    result: FIB_RESULT_ADDRTYPE,
                    flags: 1, // NFTA_FIB_F_SADDR
                },
                Expr::Cmp {
                    sreg: REG32_00,
                    op: CmpOp::Eq,
                    data: RTN_LOCAL.to_ne_bytes().to_vec(),
                },
            ];
            r.extend(set_masq_mark());
            r
        }
        Masq::UnlessFromPods => match cluster_cidr {
            Some(net) => masq_unless(fam, net),
            None => set_masq_mark(),
        },
    }
}

/// Loads the service key (`ip daddr . meta l4proto . th dport`, or `meta l4proto . th dport`
/// for NodePorts) from REG32_00; returns the register after it.
fn load_service_key(fam: Family, src: Src, v: &mut Vec<Expr>) -> u32 {
    let r = REG32_00;
    let a = fam.regs();
    match src {
        Src::Ips => {
            v.extend([load_daddr(fam, r), l4proto(r + a), dport(r + a + 1)]);
            r + a + 2
        }
        Src::NodePorts => {
            v.extend([l4proto(r), dport(r + 1)]);
            r + 2
        }
    }
}

fn endpoints_map(src: Src) -> &'static str {
    match src {
        Src::Ips => ENDPOINTS,
        Src::NodePorts => NP_ENDPOINTS,
    }
}

fn affinity_map(src: Src) -> &'static str {
    match src {
        Src::Ips => AFFINITY,
        Src::NodePorts => NP_AFFINITY,
    }
}

/// `dnat to <service> . numgen random mod n map @endpoints`. The endpoint lands in REG32_00/01
/// (as `nft` places it), the address and port the NAT reads.
fn dnat_rule(fam: Family, src: Src, n: u32) -> Vec<Expr> {
    let mut v = Vec::new();
    let next = load_service_key(fam, src, &mut v);
    v.extend([
        Expr::NumgenRandom {
            dreg: next,
            modulus: n.max(1),
        },
        Expr::Lookup {
            set: endpoints_map(src).into(),
            sreg: REG32_00,
            dreg: Some(REG32_00),
            invert: false,
        },
        dnat(fam, REG32_00),
    ]);
    v
}

/// Session affinity: `affinity` remembers `<service> . client . index` (with the timeout) of
/// each client's endpoint. One rule per index sends a known client to its endpoint again (and
/// refreshes the entry); a new client gets a random index, remembered. An index past the
/// current endpoint count (after endpoints went away) matches no rule, so that client picks
/// again. (A map from client to endpoint would need a lookup keyed by a lookup's result,
/// which `nft` cannot print.)
fn affinity_rules(fam: Family, src: Src, n: u32, timeout_ms: u64) -> Vec<Vec<Expr>> {
    let r = REG32_00;
    let n = n.max(1);
    let a = fam.regs();
    // Where the endpoint lookup's `<service> . index` key goes: IPv4 loads the service key
    // again after the client key (what `nft` writes); an IPv6 key would not fit in the 16
    // registers twice, so the index overwrites the client address after the service key.
    let endpoint_key = |next: u32| -> (u32, Vec<Expr>, u32) {
        match fam {
            Family::V4 => {
                let k2 = next + a + 1;
                (k2, service_key_at(fam, src, k2), k2 + (next - r))
            }
            Family::V6 => (r, vec![], next),
        }
    };
    let mut rules = Vec::new();
    for i in 0..n {
        let mut hit = Vec::new();
        let next = load_service_key(fam, src, &mut hit);
        hit.extend([
            load_saddr(fam, next),
            Expr::Immediate {
                dreg: next + a,
                data: i.to_ne_bytes().to_vec(),
            },
            Expr::Lookup {
                set: affinity_map(src).into(),
                sreg: r,
                dreg: None,
                invert: false,
            },
            Expr::Dynset {
                set: affinity_map(src).into(),
                update: true,
                sreg_key: r,
                sreg_data: None,
                timeout_ms: Some(timeout_ms),
            },
        ]);
        // <service> . index, then the endpoint into r0.. .
        let (k2, load, idx) = endpoint_key(next);
        hit.extend(load);
        hit.extend([
            Expr::Immediate {
                dreg: idx,
                data: i.to_ne_bytes().to_vec(),
            },
            Expr::Lookup {
                set: endpoints_map(src).into(),
                sreg: k2,
                dreg: Some(r),
                invert: false,
            },
            dnat(fam, r),
        ]);
        rules.push(hit);
    }
    // A new client: a random index, remembered, and its endpoint.
    let mut new = Vec::new();
    let next = load_service_key(fam, src, &mut new);
    new.extend([
        load_saddr(fam, next),
        Expr::NumgenRandom {
            dreg: next + a,
            modulus: n,
        },
        Expr::Dynset {
            set: affinity_map(src).into(),
            update: false,
            sreg_key: r,
            sreg_data: None,
            timeout_ms: Some(timeout_ms),
        },
    ]);
    let (k2, load, idx) = endpoint_key(next);
    new.extend(load);
    new.extend([
        Expr::Bitwise {
            sreg: next + a,
            dreg: idx,
            mask: vec![0xff; 4],
            xor: vec![0; 4],
        },
        Expr::Lookup {
            set: endpoints_map(src).into(),
            sreg: k2,
            dreg: Some(r),
            invert: false,
        },
        dnat(fam, r),
    ]);
    rules.push(new);
    rules
}

/// The service key loaded from register `at`.
fn service_key_at(fam: Family, src: Src, at: u32) -> Vec<Expr> {
    let a = fam.regs();
    match src {
        Src::Ips => vec![load_daddr(fam, at), l4proto(at + a), dport(at + a + 1)],
        Src::NodePorts => vec![l4proto(at), dport(at + 1)],
    }
}

fn set_masq_mark() -> Vec<Expr> {
    vec![
        Expr::MetaLoad {
            key: META_MARK,
            dreg: REG32_00,
        },
        Expr::Bitwise {
            sreg: REG32_00,
            dreg: REG32_00,
            mask: (!MASQ_MARK).to_ne_bytes().to_vec(),
            xor: MASQ_MARK.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: META_MARK,
            sreg: REG32_00,
        },
    ]
}

fn masq_unless(fam: Family, net: (IpAddr, u8)) -> Vec<Expr> {
    let bits = fam.addr_len() * 8;
    let len = u32::from(net.1).min(bits);
    let mask: u128 = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    let value = match net.0 {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    } & mask;
    let n = fam.addr_len() as usize;
    let mut r = vec![
        load_saddr(fam, REG32_00),
        Expr::Bitwise {
            sreg: REG32_00,
            dreg: REG32_00,
            mask: mask.to_be_bytes()[..n].to_vec(),
            xor: vec![0; n],
        },
        Expr::Cmp {
            sreg: REG32_00,
            op: CmpOp::Neq,
            data: value.to_be_bytes()[..n].to_vec(),
        },
    ];
    r.extend(set_masq_mark());
    r
}

fn load_saddr(fam: Family, dreg: u32) -> Expr {
    Expr::Payload {
        base: BASE_NETWORK,
        offset: fam.saddr_offset(),
        len: fam.addr_len(),
        dreg,
    }
}

fn load_daddr(fam: Family, dreg: u32) -> Expr {
    Expr::Payload {
        base: BASE_NETWORK,
        offset: fam.daddr_offset(),
        len: fam.addr_len(),
        dreg,
    }
}

fn dnat(fam: Family, addr_reg: u32) -> Expr {
    Expr::Nat {
        kind: NatType::Dnat,
        family: fam.nfproto(),
        addr_reg,
        proto_reg: Some(addr_reg + fam.regs()),
    }
}

fn l4proto(dreg: u32) -> Expr {
    Expr::MetaLoad {
        key: META_L4PROTO,
        dreg,
    }
}

fn dport(dreg: u32) -> Expr {
    Expr::Payload {
        base: BASE_TRANSPORT,
        offset: 2,
        len: 2,
        dreg,
    }
}

fn fib_local() -> Vec<Expr> {
    vec![
        Expr::Fib {
            dreg: REG32_00,
            result: FIB_RESULT_ADDRTYPE,
            flags: FIB_F_DADDR,
        },
        Expr::Cmp {
            sreg: REG32_00,
            op: CmpOp::Eq,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

fn services_rules(fam: Family, restricted: bool) -> Vec<Vec<Expr>> {
    vec![
        vmap_ip_proto_port(fam, SERVICE_IPS),
        vmap_local_proto_port(fam, restricted, SERVICE_NODEPORTS),
    ]
}

fn vmap_ip_proto_port(fam: Family, set: &str) -> Vec<Expr> {
    let r = REG32_00;
    let a = fam.regs();
    vec![
        load_daddr(fam, r),
        l4proto(r + a),
        dport(r + a + 1),
        Expr::Lookup {
            set: set.into(),
            sreg: r,
            dreg: Some(0),
            invert: false,
        },
    ]
}

/// `fib daddr type local` (every local address), or `ip daddr @nodeport-ips` with
/// `--nodeport-addresses`, then `meta l4proto . th dport vmap @<set>`.
fn vmap_local_proto_port(fam: Family, restricted: bool, set: &str) -> Vec<Expr> {
    let r = REG32_00;
    let mut v = if restricted {
        vec![
            load_daddr(fam, r),
            Expr::Lookup {
                set: NODEPORT_IPS.into(),
                sreg: r,
                dreg: None,
                invert: false,
            },
        ]
    } else {
        fib_local()
    };
    v.extend([
        l4proto(r + 1),
        dport(r + 2),
        Expr::Lookup {
            set: set.into(),
            sreg: r + 1,
            dreg: Some(0),
            invert: false,
        },
    ]);
    v
}

/// The fixed chains and their rules.
/// A fixed chain: name, base chain hook (hook, type, priority) if any, rules.
type FixedChain = (
    &'static str,
    Option<(Hook, &'static str, i32)>,
    Vec<Vec<Expr>>,
);

fn skeleton(fam: Family, restricted: bool) -> Vec<FixedChain> {
    let jump_services = vec![Expr::Jump(Verdict::Jump(SERVICES_CHAIN.into()))];
    let r = REG32_00;
    vec![
        (SERVICES_CHAIN, None, services_rules(fam, restricted)),
        (
            REJECT_CHAIN,
            None,
            vec![vec![Expr::Reject {
                kind: 0,
                code: fam.port_unreachable(),
            }]],
        ),
        (
            "nat-prerouting",
            Some((Hook::Prerouting, "nat", -100)),
            vec![jump_services.clone()],
        ),
        (
            "nat-output",
            Some((Hook::Output, "nat", -100)),
            vec![jump_services],
        ),
        (
            "nat-postrouting",
            Some((Hook::Postrouting, "nat", 100)),
            vec![
                vec![
                    Expr::MetaLoad {
                        key: META_MARK,
                        dreg: r,
                    },
                    Expr::Bitwise {
                        sreg: r,
                        dreg: r,
                        mask: MASQ_MARK.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                    },
                    Expr::Cmp {
                        sreg: r,
                        op: CmpOp::Neq,
                        data: vec![0; 4],
                    },
                    Expr::Masq,
                ],
                // Hairpin: only a connection this table DNATed (`ct status dnat`) back to
                // its own source, as kube-proxy marks `ip saddr <endpoint>` in the endpoint's
                // chain. Without the DNAT check an element such as 127.0.0.1 . 127.0.0.1
                // (the API server's endpoint) masqueraded every host loopback connection.
                vec![
                    Expr::Ct {
                        key: CT_STATUS,
                        dreg: r,
                    },
                    Expr::Bitwise {
                        sreg: r,
                        dreg: r,
                        mask: CT_STATUS_DNAT.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                    },
                    Expr::Cmp {
                        sreg: r,
                        op: CmpOp::Neq,
                        data: vec![0; 4],
                    },
                    load_saddr(fam, r),
                    load_daddr(fam, r + fam.regs()),
                    Expr::Lookup {
                        set: HAIRPIN.into(),
                        sreg: r,
                        dreg: None,
                        invert: false,
                    },
                    Expr::Masq,
                ],
            ],
        ),
        (
            "filter-input",
            Some((Hook::Input, "filter", -10)),
            vec![
                vmap_ip_proto_port(fam, NO_EP_SERVICES),
                vmap_local_proto_port(fam, restricted, NO_EP_NODEPORTS),
            ],
        ),
        (
            "filter-forward",
            Some((Hook::Forward, "filter", -10)),
            vec![vmap_ip_proto_port(fam, NO_EP_SERVICES)],
        ),
        (
            "filter-output",
            Some((Hook::Output, "filter", -10)),
            vec![vmap_ip_proto_port(fam, NO_EP_SERVICES)],
        ),
    ]
}

pub fn skeleton_rule_count() -> usize {
    skeleton_rule_count_of(Family::V4)
}

pub fn skeleton_rule_count_of(fam: Family) -> usize {
    skeleton(fam, false).iter().map(|c| c.2.len()).sum()
}

fn sets(fam: Family) -> Vec<SetSpec<'static>> {
    let ip = fam.addr_type();
    let al = fam.addr_len();
    let ipp = cat(cat(ip, TYPE_INET_PROTO), TYPE_INET_SERVICE);
    let pp = cat(TYPE_INET_PROTO, TYPE_INET_SERVICE);
    let ep = cat(ip, TYPE_INET_SERVICE);
    let spec = |name, key_type, key_len, data, flags| SetSpec {
        name,
        key_type,
        key_len,
        data,
        flags,
        timeout_ms: None,
    };
    let epv = SetData::Value {
        ty: ep,
        len: al + 4,
    };
    let affinity = |name, key_type, key_len| SetSpec {
        name,
        key_type,
        key_len,
        data: SetData::None,
        flags: SET_TIMEOUT | SET_EVAL,
        timeout_ms: Some(10_800_000),
    };
    vec![
        spec(SERVICE_IPS, ipp, al + 8, SetData::Verdict, 0),
        spec(SERVICE_NODEPORTS, pp, 8, SetData::Verdict, 0),
        spec(NO_EP_SERVICES, ipp, al + 8, SetData::Verdict, 0),
        spec(NO_EP_NODEPORTS, pp, 8, SetData::Verdict, 0),
        spec(ENDPOINTS, cat(ipp, TYPE_MARK), al + 12, epv.clone(), 0),
        spec(NP_ENDPOINTS, cat(pp, TYPE_MARK), 12, epv, 0),
        affinity(AFFINITY, cat(cat(ipp, ip), TYPE_MARK), 2 * al + 12),
        affinity(NP_AFFINITY, cat(cat(pp, ip), TYPE_MARK), al + 12),
        spec(HAIRPIN, cat(ip, ip), 2 * al, SetData::None, 0),
    ]
}

/// The whole program from scratch: the table is created empty (deleting what was there) in
/// the same transaction.
pub fn full(table: &str, p: &Program) -> Batch {
    full_of(table, &[p])
}

/// [`full`] of the union of several (per-Service) programs.
pub fn full_of(table: &str, progs: &[&Program]) -> Batch {
    let fam = progs.first().map(|p| p.family).unwrap_or_default();
    full_of_family(fam, table, progs)
}

/// [`full_of`] for a table of family `fam` (programs of that family).
pub fn full_of_family(fam: Family, table: &str, progs: &[&Program]) -> Batch {
    full_with(fam, table, progs, None)
}

/// [`full_of_family`]; with `nodeport_ips`, NodePorts answer only on those host addresses
/// (kube-proxy's `--nodeport-addresses`), else on every local address.
pub fn full_with(
    fam: Family,
    table: &str,
    progs: &[&Program],
    nodeport_ips: Option<&[IpAddr]>,
) -> Batch {
    let mut b = Batch::new(fam.nfproto());
    b.add_table(table);
    b.del_table(table);
    b.add_table_tagged(table, TABLE_COMMENT);
    for s in sets(fam) {
        b.add_set(table, &s);
    }
    if let Some(ips) = nodeport_ips {
        b.add_set(
            table,
            &SetSpec {
                name: NODEPORT_IPS,
                key_type: fam.addr_type(),
                key_len: fam.addr_len(),
                data: SetData::None,
                flags: 0,
                timeout_ms: None,
            },
        );
        let elems: Vec<(Vec<u8>, ElemData)> = ips
            .iter()
            .filter(|ip| Family::of(ip) == fam)
            .map(|ip| (octets(ip), ElemData::None))
            .collect();
        if !elems.is_empty() {
            b.add_elems(table, NODEPORT_IPS, &elems);
        }
    }
    let skel = skeleton(fam, nodeport_ips.is_some());
    // Chains first (verdicts name them), rules after.
    for (name, base, _) in &skel {
        match base {
            Some((hook, kind, prio)) => b.add_base_chain(table, name, kind, *hook, *prio),
            None => b.add_chain(table, name),
        }
    }
    let mut chains: BTreeMap<&String, &Vec<Vec<Expr>>> = BTreeMap::new();
    for p in progs {
        chains.extend(p.chains.iter());
    }
    for name in chains.keys() {
        b.add_chain(table, name);
    }
    for (name, rules) in &chains {
        for r in rules.iter() {
            b.add_rule(table, name, r, "");
        }
    }
    // Elements of every program, one list per set (sent in chunks).
    let mut adds = Adds::new();
    let mut hairpin: BTreeSet<&Vec<u8>> = BTreeSet::new();
    let empty = Program::default();
    for p in progs {
        diff_program(&empty, p, &mut Dels::new(), &mut adds);
        hairpin.extend(p.hairpin.iter());
    }
    adds.entry(HAIRPIN)
        .or_default()
        .extend(hairpin.into_iter().map(|k| (k.clone(), ElemData::None)));
    for (set, elems) in &adds {
        b.add_elems(table, set, elems);
    }
    for (name, _, rules) in &skel {
        for r in rules {
            b.add_rule(table, name, r, "");
        }
    }
    b
}

/// Elements of a data map that `old` lacks or maps to another value.
fn value_elems(
    new: &BTreeMap<Vec<u8>, Vec<u8>>,
    old: Option<&BTreeMap<Vec<u8>, Vec<u8>>>,
) -> Vec<(Vec<u8>, ElemData)> {
    new.iter()
        .filter(|(k, v)| old.and_then(|o| o.get(*k)) != Some(*v))
        .map(|(k, v)| (k.clone(), ElemData::Value(v.clone())))
        .collect()
}

/// Keys of `old` that `new` lacks or maps to another value (deleted before the re-add).
fn stale<V: PartialEq>(old: &BTreeMap<Vec<u8>, V>, new: &BTreeMap<Vec<u8>, V>) -> Vec<Vec<u8>> {
    old.iter()
        .filter(|(k, v)| new.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

fn gone(old: &BTreeSet<Vec<u8>>, new: &BTreeSet<Vec<u8>>) -> Vec<Vec<u8>> {
    old.difference(new).cloned().collect()
}

/// The changes from `old` to `new` as one transaction (empty when nothing changed).
pub fn incremental(table: &str, old: &Program, new: &Program) -> Batch {
    let mut b = Batch::new(new.family.nfproto());
    // New chains exist before elements name them; changed chains get their rules rewritten.
    for name in new.chains.keys().filter(|c| !old.chains.contains_key(*c)) {
        b.add_chain(table, name);
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(o) if o == rules => continue,
            Some(_) => b.flush_chain(table, name),
            None => {}
        }
        for r in rules {
            b.add_rule(table, name, r, "");
        }
    }
    let mut dels = Dels::new();
    let mut adds = Adds::new();
    diff_program(old, new, &mut dels, &mut adds);
    dels.entry(HAIRPIN)
        .or_default()
        .extend(gone(&old.hairpin, &new.hairpin));
    adds.entry(HAIRPIN).or_default().extend(
        new.hairpin
            .difference(&old.hairpin)
            .map(|k| (k.clone(), ElemData::None)),
    );
    for (set, keys) in &dels {
        b.del_elems(table, set, keys);
    }
    for (set, elems) in &adds {
        b.add_elems(table, set, elems);
    }
    // Chains no element points at any more.
    let removed: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for name in &removed {
        b.flush_chain(table, name);
    }
    for name in &removed {
        b.del_chain(table, name);
    }
    b
}

/// Deletes the table (nothing if it does not exist).
pub fn delete(table: &str) -> Batch {
    delete_family(Family::V4, table)
}

/// Deletes the table of family `fam` (nothing if it does not exist).
pub fn delete_family(fam: Family, table: &str) -> Batch {
    let mut b = Batch::new(fam.nfproto());
    b.add_table(table);
    b.del_table(table);
    b
}

impl Program {
    /// Adds another (service's) program to this one.
    pub fn merge(&mut self, o: &Program) {
        self.service_ips.extend(o.service_ips.clone());
        self.service_nodeports.extend(o.service_nodeports.clone());
        self.no_ep_services.extend(o.no_ep_services.iter().cloned());
        self.no_ep_nodeports
            .extend(o.no_ep_nodeports.iter().cloned());
        self.endpoints.extend(o.endpoints.clone());
        self.np_endpoints.extend(o.np_endpoints.clone());
        self.groups.extend(o.groups.clone());
        self.hairpin.extend(o.hairpin.iter().cloned());
        for (k, v) in &o.chains {
            self.chains.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// What several services share: hairpin elements and per-count chains, counted.
#[derive(Debug, Default)]
pub struct Shared {
    /// Hairpin elements, counted by the services that have them, keyed inline (see
    /// [`HairpinKey`]): one allocation for the whole map, not one small one per element
    /// (10,000 of those, made while a full sync's programs are alive, pinned the pages the
    /// programs freed).
    pub hairpin: std::collections::HashMap<HairpinKey, u32>,
    pub chains: std::collections::HashMap<String, usize>,
}

/// A hairpin element (`ip . ip`: an endpoint and itself) by its endpoint address, the first
/// half of the element (a syncer's elements are all of its table's family). 20 bytes a
/// bucket with its count, where the whole element and a `usize` took 48: 10,000 endpoints'
/// worth was 770 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HairpinKey([u8; 16]);

impl HairpinKey {
    pub fn new(k: &[u8]) -> HairpinKey {
        let mut bytes = [0u8; 16];
        let half = &k[..k.len() / 2];
        let len = half.len().min(16);
        bytes[..len].copy_from_slice(&half[..len]);
        HairpinKey(bytes)
    }
}

impl Shared {
    /// The counts of a whole set of per-service programs.
    pub fn of<'a>(progs: impl Iterator<Item = &'a Program>) -> Shared {
        let mut s = Shared::default();
        for p in progs {
            for h in &p.hairpin {
                *s.hairpin.entry(HairpinKey::new(h)).or_default() += 1;
            }
            for c in p.chains.keys() {
                *s.chains.entry(c.clone()).or_default() += 1;
            }
        }
        s
    }
}

type Dels = BTreeMap<&'static str, Vec<Vec<u8>>>;
type Adds = BTreeMap<&'static str, Vec<(Vec<u8>, ElemData)>>;

fn diff_values(
    set: &'static str,
    old: &BTreeMap<Vec<u8>, Vec<u8>>,
    new: &BTreeMap<Vec<u8>, Vec<u8>>,
    dels: &mut Dels,
    adds: &mut Adds,
) {
    dels.entry(set).or_default().extend(stale(old, new));
    adds.entry(set)
        .or_default()
        .extend(value_elems(new, Some(old)));
}

fn diff_verdicts(
    set: &'static str,
    old: &BTreeMap<Vec<u8>, String>,
    new: &BTreeMap<Vec<u8>, String>,
    dels: &mut Dels,
    adds: &mut Adds,
) {
    dels.entry(set).or_default().extend(stale(old, new));
    adds.entry(set).or_default().extend(
        new.iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, c)| (k.clone(), ElemData::Verdict(Verdict::Goto(c.clone())))),
    );
}

/// The element changes of the maps keyed by service (all but hairpin) from `o` to `n`.
fn diff_program(o: &Program, n: &Program, dels: &mut Dels, adds: &mut Adds) {
    diff_verdicts(SERVICE_IPS, &o.service_ips, &n.service_ips, dels, adds);
    diff_verdicts(
        SERVICE_NODEPORTS,
        &o.service_nodeports,
        &n.service_nodeports,
        dels,
        adds,
    );
    diff_values(ENDPOINTS, &o.endpoints, &n.endpoints, dels, adds);
    diff_values(NP_ENDPOINTS, &o.np_endpoints, &n.np_endpoints, dels, adds);
    diff_set(
        NO_EP_SERVICES,
        &o.no_ep_services,
        &n.no_ep_services,
        Some(REJECT_CHAIN),
        dels,
        adds,
    );
    diff_set(
        NO_EP_NODEPORTS,
        &o.no_ep_nodeports,
        &n.no_ep_nodeports,
        Some(REJECT_CHAIN),
        dels,
        adds,
    );
}

fn diff_set(
    set: &'static str,
    old: &BTreeSet<Vec<u8>>,
    new: &BTreeSet<Vec<u8>>,
    verdict: Option<&str>,
    dels: &mut Dels,
    adds: &mut Adds,
) {
    dels.entry(set).or_default().extend(gone(old, new));
    adds.entry(set)
        .or_default()
        .extend(new.difference(old).map(|k| {
            let d = match verdict {
                Some(c) => ElemData::Verdict(Verdict::Goto(c.to_string())),
                None => ElemData::None,
            };
            (k.clone(), d)
        }));
}

/// One transaction for the services whose programs changed: `(old, new)` per service (`None`:
/// the service is new / gone). Only their elements are touched; shared hairpin elements and
/// per-count chains are added on first use and deleted after the last, by `shared`'s counts.
pub fn changes(
    table: &str,
    pairs: &[(Option<&Program>, Option<&Program>)],
    shared: &mut Shared,
) -> Batch {
    let fam = pairs
        .iter()
        .find_map(|(o, n)| n.or(*o).map(|p| p.family))
        .unwrap_or_default();
    let empty = Program::default();
    let mut dels = Dels::new();
    let mut adds = Adds::new();
    let mut new_chains: BTreeMap<String, Vec<Vec<Expr>>> = BTreeMap::new();
    let mut gone_chains: BTreeSet<String> = BTreeSet::new();
    for (o, n) in pairs {
        let o = o.unwrap_or(&empty);
        let n = n.unwrap_or(&empty);
        diff_program(o, n, &mut dels, &mut adds);
        for k in o.hairpin.difference(&n.hairpin) {
            let c = shared.hairpin.entry(HairpinKey::new(k)).or_default();
            *c = c.saturating_sub(1);
            if *c == 0 {
                shared.hairpin.remove(&HairpinKey::new(k));
                dels.entry(HAIRPIN).or_default().push(k.clone());
            }
        }
        for k in n.hairpin.difference(&o.hairpin) {
            let c = shared.hairpin.entry(HairpinKey::new(k)).or_default();
            *c += 1;
            if *c == 1 {
                adds.entry(HAIRPIN)
                    .or_default()
                    .push((k.clone(), ElemData::None));
            }
        }
        for name in o.chains.keys().filter(|c| !n.chains.contains_key(*c)) {
            let c = shared.chains.entry(name.clone()).or_default();
            *c = c.saturating_sub(1);
            if *c == 0 {
                shared.chains.remove(name);
                gone_chains.insert(name.clone());
            }
        }
        for (name, rules) in n.chains.iter().filter(|(c, _)| !o.chains.contains_key(*c)) {
            let c = shared.chains.entry(name.clone()).or_default();
            *c += 1;
            if *c == 1 {
                new_chains.insert(name.clone(), rules.clone());
            }
        }
    }
    // A chain dropped by one service and taken up by another stays as it is.
    let both: Vec<String> = new_chains
        .keys()
        .filter(|c| gone_chains.contains(*c))
        .cloned()
        .collect();
    for c in both {
        new_chains.remove(&c);
        gone_chains.remove(&c);
    }
    let mut b = Batch::new(fam.nfproto());
    for (name, rules) in &new_chains {
        b.add_chain(table, name);
        for r in rules {
            b.add_rule(table, name, r, "");
        }
    }
    for (set, keys) in &dels {
        b.del_elems(table, set, keys);
    }
    for (set, elems) in &adds {
        b.add_elems(table, set, elems);
    }
    for name in &gone_chains {
        b.flush_chain(table, name);
    }
    for name in &gone_chains {
        b.del_chain(table, name);
    }
    b
}
