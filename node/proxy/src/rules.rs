//! The proxy's nftables program: a fixed skeleton of chains whose rules look services up in
//! maps. What changes with Services and endpoints is only map elements, plus one small chain
//! per distinct endpoint count (and affinity timeout) in use: the rule count does not grow with
//! the number of Services, nor with services x endpoints, and an endpoint change is a few
//! element updates in one transaction.
//!
//! ```text
//! table ip <table>                          (comment "skiff-proxy: ...")
//!   map service-ips       ipv4 . proto . port : group . kind   ClusterIP, externalIPs, LB
//!   map service-nodeports proto . port : group . kind          NodePorts (any local address)
//!   map group-chains      group : verdict                      goto dnat-<N> / aff-<N>-<T>
//!   map endpoints         group . index : ipv4 . port          ready endpoints of each group
//!   set endpoint-valid    group . ipv4 . port                  (affinity: still an endpoint?)
//!   map affinity          group . client : ipv4 . port         dynamic, per-element timeout
//!   set hairpin           ipv4 . ipv4                          endpoint . itself: masquerade
//!   map no-endpoint-services / no-endpoint-nodeports           -> goto reject-chain
//!   chain nat-prerouting / nat-output: jump services
//!   chain services: daddr . l4proto . dport @service-ips -> regs; vmap @group-chains
//!                   fib daddr type local: l4proto . dport @service-nodeports -> same
//!   chain dnat-<N>: [mark for masquerade per kind]; dnat to numgen random mod N map @endpoints
//!   chain aff-<N>-<T>: [mark]; known client -> its endpoint (refreshed); else random, remembered
//!   chain nat-postrouting: mark 0x4000 masquerade; ct status dnat, saddr . daddr @hairpin masquerade
//!   chains filter-input/-forward/-output: no-endpoint lookups -> reject (ICMP port unreachable)
//! ```
//!
//! Registers: the service lookup leaves `group . kind` in REG32_04/05 (they persist across
//! jumps), which the per-count chains read.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use skiff_netfilter::nft::{
    Batch, CmpOp, ElemData, Expr, Hook, NatType, SetData, SetSpec, Verdict, BASE_NETWORK,
    BASE_TRANSPORT, CT_STATUS, FIB_F_DADDR, FIB_RESULT_ADDRTYPE, META_L4PROTO, META_MARK,
    NFPROTO_IPV4, REG32_00, RTN_LOCAL, SET_EVAL, SET_TIMEOUT, TYPE_INET_PROTO, TYPE_INET_SERVICE,
    TYPE_IPADDR, TYPE_MARK,
};

/// The packet mark bit of connections to masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;
/// `ct status dnat` (IPS_DST_NAT): the connection's destination was rewritten.
const CT_STATUS_DNAT: u32 = 1 << 5;
pub const TABLE_COMMENT: &str = "skiff-proxy: rules for Kubernetes Services";

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const GROUP_CHAINS: &str = "group-chains";
pub const NP_GROUP_CHAINS: &str = "nodeport-group-chains";
pub const NO_EP_SERVICES: &str = "no-endpoint-services";
pub const NO_EP_NODEPORTS: &str = "no-endpoint-nodeports";
pub const ENDPOINTS: &str = "endpoints";
pub const ENDPOINT_VALID: &str = "endpoint-valid";
pub const AFFINITY: &str = "affinity";
pub const HAIRPIN: &str = "hairpin";
pub const SERVICES_CHAIN: &str = "services";
pub const REJECT_CHAIN: &str = "reject-chain";

/// Where the service lookup leaves the group id and the kind.
const REG_GROUP: u32 = REG32_00 + 4;
const REG_KIND: u32 = REG32_00 + 5;

const fn cat(a: u32, b: u32) -> u32 {
    (a << 6) | b
}

/// An endpoint: address and port.
pub type Ep = (Ipv4Addr, u16);

/// When DNAT to a group marks the connection for masquerade (the `kind` in the maps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Masq {
    /// Unless the source is in the pod network (traffic to a ClusterIP).
    UnlessFromPods = 0,
    /// Always (external traffic with the Cluster policy).
    Always = 1,
    /// Never (externalTrafficPolicy Local keeps the client's address).
    Never = 2,
}

/// The state the kernel should have beside the fixed skeleton.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Program {
    /// The pod network (traffic to a ClusterIP from elsewhere is masqueraded).
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    pub service_ips: BTreeMap<Vec<u8>, Vec<u8>>,
    pub service_nodeports: BTreeMap<Vec<u8>, Vec<u8>>,
    pub group_chains: BTreeMap<Vec<u8>, String>,
    pub np_group_chains: BTreeMap<Vec<u8>, String>,
    pub no_ep_services: BTreeSet<Vec<u8>>,
    pub no_ep_nodeports: BTreeSet<Vec<u8>>,
    pub endpoints: BTreeMap<Vec<u8>, Vec<u8>>,
    pub endpoint_valid: BTreeSet<Vec<u8>>,
    pub hairpin: BTreeSet<Vec<u8>>,
    /// Chain name -> its rules (one per endpoint count / affinity timeout in use).
    pub chains: BTreeMap<String, Vec<Vec<Expr>>>,
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

pub fn key_ip_proto_port(ip: Ipv4Addr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = ip.octets().to_vec();
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
    let mut v = ep.0.octets().to_vec();
    v.extend(pad4(&ep.1.to_be_bytes()));
    v
}

pub fn key_group_index(group: u32, i: u32) -> Vec<u8> {
    let mut k = group.to_ne_bytes().to_vec();
    k.extend(i.to_ne_bytes());
    k
}

/// The value of a service-ips / service-nodeports element.
pub fn group_kind(group: u32, kind: Masq) -> Vec<u8> {
    let mut v = group.to_ne_bytes().to_vec();
    v.extend((kind as u32).to_ne_bytes());
    v
}

/// Where a packet's service was found: by destination address (ClusterIP, externalIPs, LB)
/// or by NodePort on a local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    Ips,
    NodePorts,
}

/// What a group's chain depends on: its endpoint count and affinity timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub n: u32,
    pub affinity_timeout_s: Option<u32>,
}

/// One group of endpoints DNAT chooses from (a service port's cluster or external view).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: u32,
    pub endpoints: Vec<Ep>,
    pub affinity_timeout_s: Option<u32>,
}

impl Program {
    /// Adds the elements of one endpoint group; returns its shape (for [`Program::route`]).
    pub fn add_group(&mut self, g: &Group) -> Shape {
        for (i, ep) in g.endpoints.iter().enumerate() {
            self.endpoints
                .insert(key_group_index(g.id, i as u32), ep_value(*ep));
            if g.affinity_timeout_s.is_some() {
                let mut k = g.id.to_ne_bytes().to_vec();
                k.extend(ep_value(*ep));
                self.endpoint_valid.insert(k);
            }
            let mut h = ep.0.octets().to_vec();
            h.extend(ep.0.octets());
            self.hairpin.insert(h);
        }
        Shape {
            n: g.endpoints.len() as u32,
            affinity_timeout_s: g.affinity_timeout_s,
        }
    }

    /// Sends traffic found through `src` for group `id` to the chain of its shape (made when
    /// it is the first group of that shape).
    pub fn route(&mut self, id: u32, shape: Shape, src: Src) {
        let prefix = match src {
            Src::Ips => "",
            Src::NodePorts => "np-",
        };
        let n = shape.n;
        let name = match shape.affinity_timeout_s {
            Some(t) => format!("{prefix}aff-{n}-{t}"),
            None => format!("{prefix}dnat-{n}"),
        };
        let cidr = self.cluster_cidr;
        self.chains
            .entry(name.clone())
            .or_insert_with(|| match shape.affinity_timeout_s {
                Some(t) => affinity_chain(src, cidr, n, u64::from(t) * 1000),
                None => dnat_chain(src, cidr, n),
            });
        let key = id.to_ne_bytes().to_vec();
        match src {
            Src::Ips => self.group_chains.insert(key, name),
            Src::NodePorts => self.np_group_chains.insert(key, name),
        };
    }

    pub fn rule_count(&self) -> usize {
        skeleton_rule_count() + self.chains.values().map(Vec::len).sum::<usize>()
    }

    pub fn element_count(&self) -> usize {
        self.service_ips.len()
            + self.service_nodeports.len()
            + self.group_chains.len()
            + self.np_group_chains.len()
            + self.no_ep_services.len()
            + self.no_ep_nodeports.len()
            + self.endpoints.len()
            + self.endpoint_valid.len()
            + self.hairpin.len()
    }
}

/// The masquerade marks of a per-count chain: by the kind the service lookup left.
fn mark_rules(src: Src, cluster_cidr: Option<(Ipv4Addr, u8)>) -> Vec<Vec<Expr>> {
    let kind_is = |k: Masq| Expr::Cmp {
        sreg: REG_KIND,
        op: CmpOp::Eq,
        data: (k as u32).to_ne_bytes().to_vec(),
    };
    let mut always = find_service(src);
    always.push(kind_is(Masq::Always));
    always.extend(set_masq_mark());
    // Local policy keeps the client's address, except for clients on this node (127.0.0.1
    // cannot be answered from a pod), which are masqueraded as upstream does.
    let mut local_client = find_service(src);
    local_client.push(kind_is(Masq::Never));
    local_client.extend([
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
    ]);
    local_client.extend(set_masq_mark());
    let mut cluster = find_service(src);
    cluster.push(kind_is(Masq::UnlessFromPods));
    match cluster_cidr {
        Some(net) => cluster.extend(masq_unless(net)),
        None => cluster.extend(set_masq_mark()),
    }
    vec![always, local_client, cluster]
}

/// The service lookup again, at the start of every rule of a group's chain: the kernel lets a
/// rule read only registers it wrote itself, so `group . kind` cannot come from the jump.
fn find_service(src: Src) -> Vec<Expr> {
    let r = REG32_00;
    match src {
        Src::Ips => vec![
            load_daddr(r),
            l4proto(r + 1),
            dport(r + 2),
            Expr::Lookup {
                set: SERVICE_IPS.into(),
                sreg: r,
                dreg: Some(REG_GROUP),
                invert: false,
            },
        ],
        Src::NodePorts => vec![
            l4proto(r + 1),
            dport(r + 2),
            Expr::Lookup {
                set: SERVICE_NODEPORTS.into(),
                sreg: r + 1,
                dreg: Some(REG_GROUP),
                invert: false,
            },
        ],
    }
}

fn copy_group(dreg: u32) -> Expr {
    Expr::Bitwise {
        sreg: REG_GROUP,
        dreg,
        mask: vec![0xff; 4],
        xor: vec![0; 4],
    }
}

/// `dnat to numgen random mod n map @endpoints` keyed by `group . n`.
fn dnat_chain(src: Src, cidr: Option<(Ipv4Addr, u8)>, n: u32) -> Vec<Vec<Expr>> {
    let mut rules = mark_rules(src, cidr);
    let r = REG32_00;
    let mut dnat_rule = find_service(src);
    dnat_rule.extend([
        copy_group(r),
        Expr::NumgenRandom {
            dreg: r + 1,
            modulus: n.max(1),
        },
        Expr::Lookup {
            set: ENDPOINTS.into(),
            sreg: r,
            dreg: Some(r + 2),
            invert: false,
        },
        dnat(r + 2),
    ]);
    rules.push(dnat_rule);
    rules
}

/// Session affinity: a client seen before (within the timeout) goes to its endpoint while
/// that is still one (and the entry is refreshed); a new client gets a random endpoint,
/// remembered for the timeout.
fn affinity_chain(
    src: Src,
    cidr: Option<(Ipv4Addr, u8)>,
    n: u32,
    timeout_ms: u64,
) -> Vec<Vec<Expr>> {
    let mut rules = mark_rules(src, cidr);
    let r = REG32_00;
    // r8 = group, r9 = client; r10,r11 = its endpoint; r13..r15 = group . endpoint.
    let mut hit = find_service(src);
    hit.extend([
        copy_group(r),
        load_saddr(r + 1),
        Expr::Lookup {
            set: AFFINITY.into(),
            sreg: r,
            dreg: Some(r + 2),
            invert: false,
        },
        copy_group(r + 5),
        Expr::Bitwise {
            sreg: r + 2,
            dreg: r + 6,
            mask: vec![0xff; 8],
            xor: vec![0; 8],
        },
        Expr::Lookup {
            set: ENDPOINT_VALID.into(),
            sreg: r + 5,
            dreg: None,
            invert: false,
        },
        Expr::Dynset {
            set: AFFINITY.into(),
            update: true,
            sreg_key: r,
            sreg_data: Some(r + 2),
            timeout_ms: Some(timeout_ms),
        },
        dnat(r + 2),
    ]);
    rules.push(hit);
    let mut new = find_service(src);
    new.extend([
        copy_group(r),
        Expr::NumgenRandom {
            dreg: r + 1,
            modulus: n.max(1),
        },
        Expr::Lookup {
            set: ENDPOINTS.into(),
            sreg: r,
            dreg: Some(r + 2),
            invert: false,
        },
        load_saddr(r + 1),
        Expr::Dynset {
            set: AFFINITY.into(),
            update: false,
            sreg_key: r,
            sreg_data: Some(r + 2),
            timeout_ms: Some(timeout_ms),
        },
        dnat(r + 2),
    ]);
    rules.push(new);
    rules
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

fn masq_unless(net: (Ipv4Addr, u8)) -> Vec<Expr> {
    let mask = if net.1 == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(net.1))
    };
    let mut r = vec![
        load_saddr(REG32_00),
        Expr::Bitwise {
            sreg: REG32_00,
            dreg: REG32_00,
            mask: mask.to_be_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG32_00,
            op: CmpOp::Neq,
            data: (u32::from(net.0) & mask).to_be_bytes().to_vec(),
        },
    ];
    r.extend(set_masq_mark());
    r
}

fn load_saddr(dreg: u32) -> Expr {
    Expr::Payload {
        base: BASE_NETWORK,
        offset: 12,
        len: 4,
        dreg,
    }
}

fn load_daddr(dreg: u32) -> Expr {
    Expr::Payload {
        base: BASE_NETWORK,
        offset: 16,
        len: 4,
        dreg,
    }
}

fn dnat(addr_reg: u32) -> Expr {
    Expr::Nat {
        kind: NatType::Dnat,
        family: NFPROTO_IPV4,
        addr_reg,
        proto_reg: Some(addr_reg + 1),
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

/// The service lookup: `group . kind` into REG_GROUP/REG_KIND, then the group's chain.
fn service_lookup(set: &str, sreg: u32) -> [Expr; 2] {
    let vmap = if set == SERVICE_IPS {
        GROUP_CHAINS
    } else {
        NP_GROUP_CHAINS
    };
    [
        Expr::Lookup {
            set: set.into(),
            sreg,
            dreg: Some(REG_GROUP),
            invert: false,
        },
        Expr::Lookup {
            set: vmap.into(),
            sreg: REG_GROUP,
            dreg: Some(0),
            invert: false,
        },
    ]
}

fn services_rules() -> Vec<Vec<Expr>> {
    let r = REG32_00;
    let mut a = vec![load_daddr(r), l4proto(r + 1), dport(r + 2)];
    a.extend(service_lookup(SERVICE_IPS, r));
    let mut b = fib_local();
    b.extend([l4proto(r + 1), dport(r + 2)]);
    b.extend(service_lookup(SERVICE_NODEPORTS, r + 1));
    vec![a, b]
}

fn vmap_ip_proto_port(set: &str) -> Vec<Expr> {
    let r = REG32_00;
    vec![
        load_daddr(r),
        l4proto(r + 1),
        dport(r + 2),
        Expr::Lookup {
            set: set.into(),
            sreg: r,
            dreg: Some(0),
            invert: false,
        },
    ]
}

fn vmap_local_proto_port(set: &str) -> Vec<Expr> {
    let r = REG32_00;
    let mut v = fib_local();
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

fn skeleton() -> Vec<FixedChain> {
    let jump_services = vec![Expr::Jump(Verdict::Jump(SERVICES_CHAIN.into()))];
    let r = REG32_00;
    vec![
        (SERVICES_CHAIN, None, services_rules()),
        (
            REJECT_CHAIN,
            None,
            vec![vec![Expr::Reject { kind: 0, code: 3 }]],
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
                    load_saddr(r),
                    load_daddr(r + 1),
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
                vmap_ip_proto_port(NO_EP_SERVICES),
                vmap_local_proto_port(NO_EP_NODEPORTS),
            ],
        ),
        (
            "filter-forward",
            Some((Hook::Forward, "filter", -10)),
            vec![vmap_ip_proto_port(NO_EP_SERVICES)],
        ),
        (
            "filter-output",
            Some((Hook::Output, "filter", -10)),
            vec![vmap_ip_proto_port(NO_EP_SERVICES)],
        ),
    ]
}

pub fn skeleton_rule_count() -> usize {
    skeleton().iter().map(|c| c.2.len()).sum()
}

fn sets() -> Vec<SetSpec<'static>> {
    let ipp = cat(cat(TYPE_IPADDR, TYPE_INET_PROTO), TYPE_INET_SERVICE);
    let pp = cat(TYPE_INET_PROTO, TYPE_INET_SERVICE);
    let ep = cat(TYPE_IPADDR, TYPE_INET_SERVICE);
    let spec = |name, key_type, key_len, data, flags| SetSpec {
        name,
        key_type,
        key_len,
        data,
        flags,
        timeout_ms: None,
    };
    let gk = SetData::Value {
        ty: cat(TYPE_MARK, TYPE_MARK),
        len: 8,
    };
    vec![
        spec(SERVICE_IPS, ipp, 12, gk.clone(), 0),
        spec(SERVICE_NODEPORTS, pp, 8, gk, 0),
        spec(GROUP_CHAINS, TYPE_MARK, 4, SetData::Verdict, 0),
        spec(NP_GROUP_CHAINS, TYPE_MARK, 4, SetData::Verdict, 0),
        spec(NO_EP_SERVICES, ipp, 12, SetData::Verdict, 0),
        spec(NO_EP_NODEPORTS, pp, 8, SetData::Verdict, 0),
        spec(
            ENDPOINTS,
            cat(TYPE_MARK, TYPE_MARK),
            8,
            SetData::Value { ty: ep, len: 8 },
            0,
        ),
        spec(ENDPOINT_VALID, cat(TYPE_MARK, ep), 12, SetData::None, 0),
        SetSpec {
            name: AFFINITY,
            key_type: cat(TYPE_MARK, TYPE_IPADDR),
            key_len: 8,
            data: SetData::Value { ty: ep, len: 8 },
            flags: SET_TIMEOUT | SET_EVAL,
            timeout_ms: Some(10_800_000),
        },
        spec(HAIRPIN, cat(TYPE_IPADDR, TYPE_IPADDR), 8, SetData::None, 0),
    ]
}

/// The whole program from scratch: the table is created empty (deleting what was there) in
/// the same transaction.
pub fn full(table: &str, p: &Program) -> Batch {
    full_of(table, &[p])
}

/// [`full`] of the union of several (per-Service) programs.
pub fn full_of(table: &str, progs: &[&Program]) -> Batch {
    let mut b = Batch::new(NFPROTO_IPV4);
    b.add_table(table);
    b.del_table(table);
    b.add_table_tagged(table, TABLE_COMMENT);
    for s in sets() {
        b.add_set(table, &s);
    }
    let skel = skeleton();
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
        diff_values(
            SERVICE_IPS,
            &empty.service_ips,
            &p.service_ips,
            &mut Dels::new(),
            &mut adds,
        );
        diff_values(
            SERVICE_NODEPORTS,
            &empty.service_nodeports,
            &p.service_nodeports,
            &mut Dels::new(),
            &mut adds,
        );
        diff_values(
            ENDPOINTS,
            &empty.endpoints,
            &p.endpoints,
            &mut Dels::new(),
            &mut adds,
        );
        diff_verdicts(
            GROUP_CHAINS,
            &empty.group_chains,
            &p.group_chains,
            &mut Dels::new(),
            &mut adds,
        );
        diff_verdicts(
            NP_GROUP_CHAINS,
            &empty.np_group_chains,
            &p.np_group_chains,
            &mut Dels::new(),
            &mut adds,
        );
        diff_set(
            NO_EP_SERVICES,
            &empty.no_ep_services,
            &p.no_ep_services,
            Some(REJECT_CHAIN),
            &mut Dels::new(),
            &mut adds,
        );
        diff_set(
            NO_EP_NODEPORTS,
            &empty.no_ep_nodeports,
            &p.no_ep_nodeports,
            Some(REJECT_CHAIN),
            &mut Dels::new(),
            &mut adds,
        );
        diff_set(
            ENDPOINT_VALID,
            &empty.endpoint_valid,
            &p.endpoint_valid,
            None,
            &mut Dels::new(),
            &mut adds,
        );
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

fn verdict_elems(m: &BTreeMap<Vec<u8>, String>) -> Vec<(Vec<u8>, ElemData)> {
    m.iter()
        .map(|(k, c)| (k.clone(), ElemData::Verdict(Verdict::Goto(c.clone()))))
        .collect()
}

fn reject_elems(s: &BTreeSet<Vec<u8>>) -> Vec<(Vec<u8>, ElemData)> {
    s.iter()
        .map(|k| {
            (
                k.clone(),
                ElemData::Verdict(Verdict::Goto(REJECT_CHAIN.into())),
            )
        })
        .collect()
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

fn plain(s: &BTreeSet<Vec<u8>>) -> Vec<(Vec<u8>, ElemData)> {
    s.iter().map(|k| (k.clone(), ElemData::None)).collect()
}

/// Adds the elements of `p` that `old` does not have with the same value (all without `old`).
fn add_elems(b: &mut Batch, table: &str, p: &Program, old: Option<&Program>) {
    let newer_map = |new: &BTreeMap<Vec<u8>, String>, old: Option<&BTreeMap<Vec<u8>, String>>| {
        new.iter()
            .filter(|(k, v)| old.and_then(|o| o.get(*k)) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let newer_set = |new: &BTreeSet<Vec<u8>>, old: Option<&BTreeSet<Vec<u8>>>| {
        new.iter()
            .filter(|k| !old.is_some_and(|o| o.contains(*k)))
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let e = verdict_elems(&newer_map(&p.group_chains, old.map(|o| &o.group_chains)));
    b.add_elems(table, GROUP_CHAINS, &e);
    let e = verdict_elems(&newer_map(
        &p.np_group_chains,
        old.map(|o| &o.np_group_chains),
    ));
    b.add_elems(table, NP_GROUP_CHAINS, &e);
    let e = value_elems(&p.service_ips, old.map(|o| &o.service_ips));
    b.add_elems(table, SERVICE_IPS, &e);
    let e = value_elems(&p.service_nodeports, old.map(|o| &o.service_nodeports));
    b.add_elems(table, SERVICE_NODEPORTS, &e);
    let e = reject_elems(&newer_set(
        &p.no_ep_services,
        old.map(|o| &o.no_ep_services),
    ));
    b.add_elems(table, NO_EP_SERVICES, &e);
    let e = reject_elems(&newer_set(
        &p.no_ep_nodeports,
        old.map(|o| &o.no_ep_nodeports),
    ));
    b.add_elems(table, NO_EP_NODEPORTS, &e);
    let e = value_elems(&p.endpoints, old.map(|o| &o.endpoints));
    b.add_elems(table, ENDPOINTS, &e);
    let e = plain(&newer_set(
        &p.endpoint_valid,
        old.map(|o| &o.endpoint_valid),
    ));
    b.add_elems(table, ENDPOINT_VALID, &e);
    let e = plain(&newer_set(&p.hairpin, old.map(|o| &o.hairpin)));
    b.add_elems(table, HAIRPIN, &e);
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
    let mut b = Batch::new(NFPROTO_IPV4);
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
    b.del_elems(
        table,
        SERVICE_IPS,
        &stale(&old.service_ips, &new.service_ips),
    );
    b.del_elems(
        table,
        GROUP_CHAINS,
        &stale(&old.group_chains, &new.group_chains),
    );
    b.del_elems(
        table,
        NP_GROUP_CHAINS,
        &stale(&old.np_group_chains, &new.np_group_chains),
    );
    b.del_elems(
        table,
        SERVICE_NODEPORTS,
        &stale(&old.service_nodeports, &new.service_nodeports),
    );
    b.del_elems(
        table,
        NO_EP_SERVICES,
        &gone(&old.no_ep_services, &new.no_ep_services),
    );
    b.del_elems(
        table,
        NO_EP_NODEPORTS,
        &gone(&old.no_ep_nodeports, &new.no_ep_nodeports),
    );
    b.del_elems(table, ENDPOINTS, &stale(&old.endpoints, &new.endpoints));
    b.del_elems(
        table,
        ENDPOINT_VALID,
        &gone(&old.endpoint_valid, &new.endpoint_valid),
    );
    b.del_elems(table, HAIRPIN, &gone(&old.hairpin, &new.hairpin));
    add_elems(&mut b, table, new, Some(old));
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
    let mut b = Batch::new(NFPROTO_IPV4);
    b.add_table(table);
    b.del_table(table);
    b
}

impl Program {
    /// Adds another (service's) program to this one.
    pub fn merge(&mut self, o: &Program) {
        self.service_ips.extend(o.service_ips.clone());
        self.service_nodeports.extend(o.service_nodeports.clone());
        self.group_chains.extend(o.group_chains.clone());
        self.np_group_chains.extend(o.np_group_chains.clone());
        self.no_ep_services.extend(o.no_ep_services.iter().cloned());
        self.no_ep_nodeports
            .extend(o.no_ep_nodeports.iter().cloned());
        self.endpoints.extend(o.endpoints.clone());
        self.endpoint_valid.extend(o.endpoint_valid.iter().cloned());
        self.hairpin.extend(o.hairpin.iter().cloned());
        for (k, v) in &o.chains {
            self.chains.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// What several services share: hairpin elements and per-count chains, counted.
#[derive(Debug, Default)]
pub struct Shared {
    pub hairpin: std::collections::HashMap<Vec<u8>, usize>,
    pub chains: std::collections::HashMap<String, usize>,
}

impl Shared {
    /// The counts of a whole set of per-service programs.
    pub fn of<'a>(progs: impl Iterator<Item = &'a Program>) -> Shared {
        let mut s = Shared::default();
        for p in progs {
            for h in &p.hairpin {
                *s.hairpin.entry(h.clone()).or_default() += 1;
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
    let empty = Program::default();
    let mut dels = Dels::new();
    let mut adds = Adds::new();
    let mut new_chains: BTreeMap<String, Vec<Vec<Expr>>> = BTreeMap::new();
    let mut gone_chains: BTreeSet<String> = BTreeSet::new();
    for (o, n) in pairs {
        let o = o.unwrap_or(&empty);
        let n = n.unwrap_or(&empty);
        diff_values(
            SERVICE_IPS,
            &o.service_ips,
            &n.service_ips,
            &mut dels,
            &mut adds,
        );
        diff_values(
            SERVICE_NODEPORTS,
            &o.service_nodeports,
            &n.service_nodeports,
            &mut dels,
            &mut adds,
        );
        diff_values(ENDPOINTS, &o.endpoints, &n.endpoints, &mut dels, &mut adds);
        diff_verdicts(
            GROUP_CHAINS,
            &o.group_chains,
            &n.group_chains,
            &mut dels,
            &mut adds,
        );
        diff_verdicts(
            NP_GROUP_CHAINS,
            &o.np_group_chains,
            &n.np_group_chains,
            &mut dels,
            &mut adds,
        );
        diff_set(
            NO_EP_SERVICES,
            &o.no_ep_services,
            &n.no_ep_services,
            Some(REJECT_CHAIN),
            &mut dels,
            &mut adds,
        );
        diff_set(
            NO_EP_NODEPORTS,
            &o.no_ep_nodeports,
            &n.no_ep_nodeports,
            Some(REJECT_CHAIN),
            &mut dels,
            &mut adds,
        );
        diff_set(
            ENDPOINT_VALID,
            &o.endpoint_valid,
            &n.endpoint_valid,
            None,
            &mut dels,
            &mut adds,
        );
        for k in o.hairpin.difference(&n.hairpin) {
            let c = shared.hairpin.entry(k.clone()).or_default();
            *c = c.saturating_sub(1);
            if *c == 0 {
                shared.hairpin.remove(k);
                dels.entry(HAIRPIN).or_default().push(k.clone());
            }
        }
        for k in n.hairpin.difference(&o.hairpin) {
            let c = shared.hairpin.entry(k.clone()).or_default();
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
    let mut b = Batch::new(NFPROTO_IPV4);
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
