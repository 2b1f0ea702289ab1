//! A small synchronous nf_tables client speaking netfilter netlink directly (no `nft`/`iptables`
//! exec, no libnftnl): batched transactions of table/chain/rule messages, and rule dumps.
//!
//! Only what Skiff's rules need is encoded: tables (with a comment tag), base and regular
//! chains, named sets and maps (verdict maps, data maps, timeouts) with their elements, and the
//! `meta`, `payload`, `cmp`, `bitwise`, `immediate` (also jump/goto), `fib`, `masq`, `nat`,
//! `lookup`, `numgen`, `ct`, `dynset` and `reject` expressions.

use std::io;

use crate::nlsock::{
    attrs, c_str as cstr, Attrs, NlSocket, NLA_F_NESTED, NLMSG_ERROR, NLM_F_ACK, NLM_F_APPEND,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("failed to open a netfilter netlink socket: {0} (is nf_tables available?)")]
    Socket(#[source] io::Error),
    #[error("nftables: {op} failed: {source}")]
    Request {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("nftables: {op}: malformed answer from the kernel")]
    Decode { op: String },
    /// An error reported by the detached worker process (see `detach`).
    #[error("{msg}")]
    Remote { msg: String, errno: Option<i32> },
}

impl NftError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Request { source, .. } | NftError::Socket(source) => source.raw_os_error(),
            NftError::Decode { .. } => None,
            NftError::Remote { errno, .. } => *errno,
        }
    }
}

type Result<T> = std::result::Result<T, NftError>;

// nfnetlink constants (linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_DATA_VERDICT`: the data type of a verdict map.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// Address families of nf_tables tables (NFPROTO_*).
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
pub const NFPROTO_BRIDGE: u8 = 7;

/// Netfilter hooks (NF_INET_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// 16-byte data registers (NFT_REG_1..).
pub const REG1: u32 = 1;
pub const REG2: u32 = 2;

/// `meta` keys used here.
pub const META_MARK: u32 = 3;
pub const META_IIFNAME: u32 = 6;
pub const META_NFPROTO: u32 = 15;
pub const META_L4PROTO: u32 = 16;

/// Payload bases.
pub const BASE_LL: u32 = 0;
pub const BASE_NETWORK: u32 = 1;
pub const BASE_TRANSPORT: u32 = 2;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// NAT types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatType {
    Snat = 0,
    Dnat = 1,
}

pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_RETURN: i32 = -5;

/// 32-bit data registers (NFT_REG32_00..15); a concatenation fills consecutive ones, each field
/// padded to 4 bytes.
pub const REG32_00: u32 = 8;

/// Set flags (NFT_SET_*).
pub const SET_MAP: u32 = 0x8;
pub const SET_TIMEOUT: u32 = 0x10;
pub const SET_EVAL: u32 = 0x20;
pub const SET_CONCAT: u32 = 0x80;

/// Data types of set keys and map data as `nft` names them (only used by `nft list` to print
/// elements); a concatenation is `(a << 6) | b`.
pub const TYPE_INTEGER: u32 = 4;
pub const TYPE_IPADDR: u32 = 7;
pub const TYPE_INET_PROTO: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
pub const TYPE_MARK: u32 = 19;
pub const TYPE_VERDICT: u32 = 1;

/// `ct` keys.
pub const CT_STATE: u32 = 0;
pub const CT_STATUS: u32 = 2;

/// A verdict that continues in another chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn encode(&self, a: &mut Attrs) {
        let (code, chain) = match self {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (-3, Some(c)),
            Verdict::Goto(c) => (-4, Some(c)),
        };
        // NFTA_DATA_VERDICT { NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN }
        a.nest(NFTA_DATA_VERDICT, |v| {
            v.be32(NFTA_VERDICT_CODE, code as u32);
            if let Some(c) = chain {
                v.str(NFTA_VERDICT_CHAIN, c);
            }
        });
    }
}

/// What a map maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    /// A plain set.
    None,
    /// A verdict map.
    Verdict,
    /// A data map with values of `len` bytes of type `ty`.
    Value { ty: u32, len: u32 },
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec<'a> {
    pub name: &'a str,
    pub key_type: u32,
    pub key_len: u32,
    pub data: SetData,
    /// Extra NFT_SET_* flags ([`SET_TIMEOUT`], [`SET_EVAL`], [`SET_CONCAT`]); MAP is implied by `data`.
    pub flags: u32,
    /// Default element timeout (needs [`SET_TIMEOUT`]).
    pub timeout_ms: Option<u64>,
}

/// The value of a map element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    None,
    Verdict(Verdict),
    Value(Vec<u8>),
}

/// `fib daddr type` (NFT_FIB_RESULT_ADDRTYPE with NFTA_FIB_F_DADDR) and the RTN_LOCAL value.
pub const FIB_RESULT_ADDRTYPE: u32 = 3;
pub const FIB_F_DADDR: u32 = 2;
pub const RTN_LOCAL: u32 = 2;

/// One nf_tables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    MetaLoad {
        key: u32,
        dreg: u32,
    },
    MetaSet {
        key: u32,
        sreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    Fib {
        dreg: u32,
        result: u32,
        flags: u32,
    },
    Masq,
    /// A verdict such as [`NF_DROP`].
    Verdict(i32),
    Nat {
        kind: NatType,
        family: u8,
        addr_reg: u32,
        proto_reg: Option<u32>,
    },
    /// A jump, goto, return... as the rule's verdict.
    Jump(Verdict),
    /// Looks `sreg` up in the named set; a miss ends the rule (or a hit, with `invert`). With
    /// `dreg`, the map's value goes there (register 0 is the verdict register: a verdict map).
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// `numgen random mod modulus` into `dreg`.
    NumgenRandom {
        dreg: u32,
        modulus: u32,
    },
    /// A conntrack key (original direction) into `dreg`.
    Ct {
        key: u32,
        dreg: u32,
    },
    /// Adds (or refreshes) the element `sreg_key` (-> `sreg_data`) in a dynamic set.
    Dynset {
        set: String,
        update: bool,
        sreg_key: u32,
        sreg_data: Option<u32>,
        timeout_ms: Option<u64>,
    },
    /// `reject` with an ICMP type/code (IPv4: type 0 = ICMP unreachable, code 3 = port unreachable).
    Reject {
        kind: u32,
        code: u8,
    },
}

/// `NFTA_DATA_VALUE` nested in `ty`.
fn data_value(a: &mut Attrs, ty: u16, v: &[u8]) {
    a.nest(ty, |a| a.put(NFTA_DATA_VALUE, v));
}

impl Expr {
    fn encode(&self, a: &mut Attrs) {
        let (name, body): (&str, Attrs) = {
            let mut d = Attrs::default();
            let name = match self {
                Expr::MetaLoad { key, dreg } => {
                    d.be32(2, *key); // NFTA_META_KEY
                    d.be32(1, *dreg); // NFTA_META_DREG
                    "meta"
                }
                Expr::MetaSet { key, sreg } => {
                    d.be32(2, *key);
                    d.be32(3, *sreg); // NFTA_META_SREG
                    "meta"
                }
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    d.be32(1, *dreg); // NFTA_PAYLOAD_DREG
                    d.be32(2, *base);
                    d.be32(3, *offset);
                    d.be32(4, *len);
                    "payload"
                }
                Expr::Cmp { sreg, op, data } => {
                    d.be32(1, *sreg); // NFTA_CMP_SREG
                    d.be32(2, *op as u32);
                    data_value(&mut d, 3, data); // NFTA_CMP_DATA
                    "cmp"
                }
                Expr::Bitwise {
                    sreg,
                    dreg,
                    mask,
                    xor,
                } => {
                    d.be32(1, *sreg); // NFTA_BITWISE_SREG
                    d.be32(2, *dreg);
                    d.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                    data_value(&mut d, 4, mask);
                    data_value(&mut d, 5, xor);
                    "bitwise"
                }
                Expr::Immediate { dreg, data } => {
                    d.be32(1, *dreg); // NFTA_IMMEDIATE_DREG
                    data_value(&mut d, 2, data);
                    "immediate"
                }
                Expr::Fib {
                    dreg,
                    result,
                    flags,
                } => {
                    d.be32(1, *dreg); // NFTA_FIB_DREG
                    d.be32(2, *result);
                    d.be32(3, *flags);
                    "fib"
                }
                Expr::Masq => "masq",
                Expr::Verdict(code) => {
                    d.be32(1, 0); // NFTA_IMMEDIATE_DREG = NFT_REG_VERDICT
                    d.nest(2, |data| {
                        // NFTA_DATA_VERDICT { NFTA_VERDICT_CODE }
                        data.nest(2, |v| v.be32(1, *code as u32));
                    });
                    "immediate"
                }
                Expr::Nat {
                    kind,
                    family,
                    addr_reg,
                    proto_reg,
                } => {
                    d.be32(1, *kind as u32); // NFTA_NAT_TYPE
                    d.be32(2, u32::from(*family)); // NFTA_NAT_FAMILY
                    d.be32(3, *addr_reg); // ADDR_MIN
                    d.be32(4, *addr_reg); // ADDR_MAX
                    let mut flags = 1; // NF_NAT_RANGE_MAP_IPS
                    if let Some(p) = proto_reg {
                        d.be32(5, *p); // PROTO_MIN
                        d.be32(6, *p); // PROTO_MAX
                        flags |= 2; // NF_NAT_RANGE_PROTO_SPECIFIED
                    }
                    d.be32(7, flags); // NFTA_NAT_FLAGS
                    "nat"
                }
                Expr::Jump(v) => {
                    d.be32(1, 0); // NFT_REG_VERDICT
                    d.nest(2, |data| v.encode(data));
                    "immediate"
                }
                Expr::Lookup {
                    set,
                    sreg,
                    dreg,
                    invert,
                } => {
                    d.str(1, set); // NFTA_LOOKUP_SET
                    d.be32(2, *sreg); // NFTA_LOOKUP_SREG
                    if let Some(r) = dreg {
                        d.be32(3, *r); // NFTA_LOOKUP_DREG
                    }
                    if *invert {
                        d.be32(5, 1); // NFTA_LOOKUP_FLAGS: NFT_LOOKUP_F_INV
                    }
                    "lookup"
                }
                Expr::NumgenRandom { dreg, modulus } => {
                    d.be32(1, *dreg); // NFTA_NG_DREG
                    d.be32(2, *modulus); // NFTA_NG_MODULUS
                    d.be32(3, 1); // NFTA_NG_TYPE: NFT_NG_RANDOM
                    "numgen"
                }
                Expr::Ct { key, dreg } => {
                    d.be32(1, *dreg); // NFTA_CT_DREG
                    d.be32(2, *key); // NFTA_CT_KEY
                    "ct"
                }
                Expr::Dynset {
                    set,
                    update,
                    sreg_key,
                    sreg_data,
                    timeout_ms,
                } => {
                    d.str(1, set); // NFTA_DYNSET_SET_NAME
                    d.be32(3, u32::from(*update)); // NFTA_DYNSET_OP: ADD / UPDATE
                    d.be32(4, *sreg_key); // NFTA_DYNSET_SREG_KEY
                    if let Some(r) = sreg_data {
                        d.be32(5, *r); // NFTA_DYNSET_SREG_DATA
                    }
                    if let Some(t) = timeout_ms {
                        d.be64(6, *t); // NFTA_DYNSET_TIMEOUT
                    }
                    "dynset"
                }
                Expr::Reject { kind, code } => {
                    d.be32(1, *kind); // NFTA_REJECT_TYPE
                    d.u8(2, *code); // NFTA_REJECT_ICMP_CODE
                    "reject"
                }
            };
            (name, d)
        };
        a.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name);
            if !body.buf.is_empty() {
                e.put(NFTA_EXPR_DATA | NLA_F_NESTED, &body.buf);
            }
        });
    }
}

/// Encodes a rule comment the way `nft` stores it (so `nft list` shows it).
pub fn comment_userdata(comment: &str) -> Vec<u8> {
    let mut s = comment.as_bytes().to_vec();
    s.truncate(250);
    s.push(0);
    let mut out = vec![0u8, s.len() as u8]; // NFTNL_UDATA_RULE_COMMENT
    out.extend_from_slice(&s);
    out
}

/// Reads the comment back from rule userdata.
pub fn userdata_comment(ud: &[u8]) -> Option<String> {
    let mut i = 0;
    while i + 2 <= ud.len() {
        let (ty, len) = (ud[i], usize::from(ud[i + 1]));
        let v = ud.get(i + 2..i + 2 + len)?;
        if ty == 0 {
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
        i += 2 + len;
    }
    None
}

/// A rule as dumped from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// A transaction: every message is applied, or none.
pub struct Batch {
    family: u8,
    msgs: Vec<(u16, u16, Vec<u8>)>,
    next_set_id: u32,
}

impl Batch {
    pub fn new(family: u8) -> Self {
        Batch {
            family,
            msgs: Vec::new(),
            next_set_id: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Creates the table unless it exists.
    pub fn add_table(&mut self, table: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, table);
        self.msgs.push((NFT_MSG_NEWTABLE, NLM_F_CREATE, a.buf));
    }

    /// Creates the table unless it exists, tagged with a comment (`nft list` shows it), so
    /// the owner can be told from other tables.
    pub fn add_table_tagged(&mut self, table: &str, comment: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, table);
        a.put(NFTA_TABLE_USERDATA, &comment_userdata(comment));
        self.msgs.push((NFT_MSG_NEWTABLE, NLM_F_CREATE, a.buf));
    }

    /// Creates a regular chain (a jump/goto target) unless it exists.
    pub fn add_chain(&mut self, table: &str, chain: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, table);
        a.str(NFTA_CHAIN_NAME, chain);
        self.msgs.push((NFT_MSG_NEWCHAIN, NLM_F_CREATE, a.buf));
    }

    /// Deletes every rule of a chain.
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table);
        a.str(NFTA_RULE_CHAIN, chain);
        self.msgs.push((NFT_MSG_DELRULE, 0, a.buf));
    }

    /// Deletes an (empty, unreferenced) chain.
    pub fn del_chain(&mut self, table: &str, chain: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, table);
        a.str(NFTA_CHAIN_NAME, chain);
        self.msgs.push((NFT_MSG_DELCHAIN, 0, a.buf));
    }

    /// Creates a named set or map unless it exists.
    pub fn add_set(&mut self, table: &str, set: &SetSpec<'_>) {
        let mut a = Attrs::default();
        a.str(NFTA_SET_TABLE, table);
        a.str(NFTA_SET_NAME, set.name);
        let mut flags = set.flags;
        if set.data != SetData::None {
            flags |= SET_MAP;
        }
        a.be32(NFTA_SET_FLAGS, flags);
        a.be32(NFTA_SET_KEY_TYPE, set.key_type);
        a.be32(NFTA_SET_KEY_LEN, set.key_len);
        // The kernel wants a transaction-local id for every new set.
        self.next_set_id += 1;
        a.be32(NFTA_SET_ID, self.next_set_id);
        match set.data {
            SetData::None => {}
            SetData::Verdict => a.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT),
            SetData::Value { ty, len } => {
                a.be32(NFTA_SET_DATA_TYPE, ty);
                a.be32(NFTA_SET_DATA_LEN, len);
            }
        }
        if let Some(t) = set.timeout_ms {
            a.be64(NFTA_SET_TIMEOUT, t);
        }
        self.msgs.push((NFT_MSG_NEWSET, NLM_F_CREATE, a.buf));
    }

    pub fn del_set(&mut self, table: &str, set: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_SET_TABLE, table);
        a.str(NFTA_SET_NAME, set);
        self.msgs.push((NFT_MSG_DELSET, 0, a.buf));
    }

    fn elems(&mut self, ty: u16, table: &str, set: &str, elems: &[(Vec<u8>, ElemData)]) {
        // Large element lists are split so that one message stays well under 64 KiB.
        for chunk in elems.chunks(256) {
            let mut a = Attrs::default();
            a.str(NFTA_SET_ELEM_LIST_TABLE, table);
            a.str(NFTA_SET_ELEM_LIST_SET, set);
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                for (key, data) in chunk {
                    l.nest(NFTA_LIST_ELEM, |e| {
                        e.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, key));
                        match data {
                            ElemData::None => {}
                            ElemData::Verdict(v) => e.nest(NFTA_SET_ELEM_DATA, |d| v.encode(d)),
                            ElemData::Value(v) => {
                                e.nest(NFTA_SET_ELEM_DATA, |d| d.put(NFTA_DATA_VALUE, v))
                            }
                        }
                    });
                }
            });
            let flags = if ty == NFT_MSG_NEWSETELEM {
                NLM_F_CREATE
            } else {
                0
            };
            self.msgs.push((ty, flags, a.buf));
        }
    }

    /// Adds elements (key, value) to a set or map.
    pub fn add_elems(&mut self, table: &str, set: &str, elems: &[(Vec<u8>, ElemData)]) {
        self.elems(NFT_MSG_NEWSETELEM, table, set, elems);
    }

    /// Deletes elements (by key) from a set or map.
    pub fn del_elems(&mut self, table: &str, set: &str, keys: &[Vec<u8>]) {
        let e: Vec<_> = keys.iter().map(|k| (k.clone(), ElemData::None)).collect();
        self.elems(NFT_MSG_DELSETELEM, table, set, &e);
    }

    /// The first `n` messages as a batch of their own (to find the one the kernel refuses).
    pub fn prefix(&self, n: usize) -> Batch {
        Batch {
            family: self.family,
            msgs: self.msgs[..n.min(self.msgs.len())].to_vec(),
            next_set_id: self.next_set_id,
        }
    }

    /// Message `i`'s type and flags, for error reports.
    pub fn describe(&self, i: usize) -> Option<(u16, u16)> {
        self.msgs.get(i).map(|(t, f, _)| (*t, *f))
    }

    /// How many messages the transaction holds.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn del_table(&mut self, table: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, table);
        self.msgs.push((NFT_MSG_DELTABLE, 0, a.buf));
    }

    /// Creates a base chain of `kind` ("nat", "filter") on `hook` unless it exists (policy accept).
    pub fn add_base_chain(&mut self, table: &str, chain: &str, kind: &str, hook: Hook, prio: i32) {
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, table);
        a.str(NFTA_CHAIN_NAME, chain);
        a.nest(NFTA_CHAIN_HOOK, |h| {
            h.be32(NFTA_HOOK_HOOKNUM, hook as u32);
            h.be32(NFTA_HOOK_PRIORITY, prio as u32);
        });
        a.be32(NFTA_CHAIN_POLICY, 1); // NF_ACCEPT
        a.str(NFTA_CHAIN_TYPE, kind);
        self.msgs.push((NFT_MSG_NEWCHAIN, NLM_F_CREATE, a.buf));
    }

    /// Appends a rule carrying `comment` to a chain.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], comment: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table);
        a.str(NFTA_RULE_CHAIN, chain);
        a.nest(NFTA_RULE_EXPRESSIONS, |l| {
            for e in exprs {
                e.encode(l);
            }
        });
        // No comment, no userdata (`nft list` would print `comment ""`).
        if !comment.is_empty() {
            a.put(NFTA_RULE_USERDATA, &comment_userdata(comment));
        }
        self.msgs
            .push((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a.buf));
    }

    pub fn del_rule(&mut self, table: &str, chain: &str, handle: u64) {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table);
        a.str(NFTA_RULE_CHAIN, chain);
        a.be64(NFTA_RULE_HANDLE, handle);
        self.msgs.push((NFT_MSG_DELRULE, 0, a.buf));
    }
}

/// Appends one nfnetlink message (`nlmsghdr`, `nfgenmsg`, body).
fn nlmsg(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let mut m = Vec::with_capacity(4 + body.len());
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(body);
    crate::nlsock::message(buf, ty, flags, seq, &m);
}

/// One netfilter netlink socket in the calling thread's network namespace.
pub struct Nft {
    sock: NlSocket,
    seq: u32,
}

impl Nft {
    pub fn open() -> Result<Self> {
        let sock = NlSocket::open(libc::NETLINK_NETFILTER).map_err(NftError::Socket)?;
        let seq = crate::random_u32() & 0x00ff_ffff;
        Ok(Nft { sock, seq })
    }

    /// Like [`Nft::open`], with socket buffers large enough for transactions of thousands of
    /// messages (a service proxy's full sync). Needs CAP_NET_ADMIN (it is root's anyway).
    pub fn open_large() -> Result<Self> {
        let nft = Self::open()?;
        nft.sock.force_buffers(16 << 20).map_err(NftError::Socket)?;
        Ok(nft)
    }

    /// Sends the batch as one transaction; only its last message asks for an ack, so the
    /// answer is the errors (if any) and that ack: the kernel queues them all at the batch's
    /// end, whatever the batch's size.
    pub fn commit_bulk(&mut self, op: &str, b: &Batch) -> Result<()> {
        if b.msgs.is_empty() {
            return Ok(());
        }
        let err = |source: io::Error| NftError::Request {
            op: op.to_string(),
            source,
        };
        let mut buf = Vec::new();
        self.seq = self.seq.wrapping_add(1);
        let begin = self.seq;
        nlmsg(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let n = b.msgs.len();
        for (i, (ty, flags, body)) in b.msgs.iter().enumerate() {
            self.seq = self.seq.wrapping_add(1);
            let ack = if i + 1 == n { NLM_F_ACK } else { 0 };
            nlmsg(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                NLM_F_REQUEST | ack | flags,
                self.seq,
                b.family,
                0,
                body,
            );
        }
        let last = self.seq;
        self.seq = self.seq.wrapping_add(1);
        nlmsg(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.sock.send(&buf).map_err(err)?;
        let mut first_err: Option<i32> = None;
        let mut done = false;
        while !done {
            self.sock
                .recv_with(|m| {
                    let in_batch = m.seq.wrapping_sub(begin) <= last.wrapping_sub(begin);
                    if m.ty == NLMSG_ERROR && in_batch {
                        let code = m.error_code();
                        if code != 0 && first_err.is_none() {
                            first_err = Some(code);
                        }
                        if m.seq == last || m.seq == begin {
                            done = true;
                        }
                    }
                    done.then_some(Ok(()))
                })
                .map_err(err)?;
        }
        match first_err {
            Some(e) => Err(err(io::Error::from_raw_os_error(e))),
            None => Ok(()),
        }
    }

    /// Sends the batch as one transaction and waits for the kernel's verdict on every message.
    pub fn commit(&mut self, op: &str, b: &Batch) -> Result<()> {
        if b.msgs.is_empty() {
            return Ok(());
        }
        let err = |source: io::Error| NftError::Request {
            op: op.to_string(),
            source,
        };
        let mut buf = Vec::new();
        self.seq = self.seq.wrapping_add(1);
        let begin = self.seq;
        nlmsg(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        for (ty, flags, body) in &b.msgs {
            self.seq = self.seq.wrapping_add(1);
            nlmsg(
                &mut buf,
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                self.seq,
                b.family,
                0,
                body,
            );
        }
        let last = self.seq;
        self.seq = self.seq.wrapping_add(1);
        nlmsg(
            &mut buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.sock.send(&buf).map_err(err)?;
        // One answer per message (an ack or an error), all queued before send() returned.
        let mut pending = b.msgs.len();
        let mut first_err: Option<i32> = None;
        while pending > 0 {
            self.sock
                .recv_with(|m| {
                    let in_batch = m.seq.wrapping_sub(begin) <= last.wrapping_sub(begin);
                    if m.ty == NLMSG_ERROR && in_batch {
                        let code = m.error_code();
                        if code != 0 && first_err.is_none() {
                            first_err = Some(code);
                        }
                        pending -= 1;
                    }
                    (pending == 0).then_some(Ok(()))
                })
                .map_err(err)?;
        }
        match first_err {
            Some(e) => Err(err(io::Error::from_raw_os_error(e))),
            None => Ok(()),
        }
    }

    /// Sends one nfnetlink request and hands every answer's payload (after the `nfgenmsg`
    /// header) of type `reply_type` to `on_reply`, until the ack or the end of the dump.
    fn exchange(
        &mut self,
        op: &str,
        (msg_type, flags, family): (u16, u16, u8),
        body: &[u8],
        reply_type: u16,
        mut on_reply: impl FnMut(&[u8]),
    ) -> Result<()> {
        let err = |source: io::Error| NftError::Request {
            op: op.to_string(),
            source,
        };
        let mut buf = Vec::new();
        self.seq = self.seq.wrapping_add(1);
        nlmsg(&mut buf, msg_type, flags, self.seq, family, 0, body);
        for (ty, payload) in self.sock.transact(&buf, self.seq).map_err(err)? {
            if ty == reply_type {
                on_reply(payload.get(4..).unwrap_or_default());
            }
        }
        Ok(())
    }

    /// A dump request of any nfnetlink subsystem: the payload (after the nfgenmsg header) of
    /// every answer message of type `reply_type`.
    pub fn dump_raw(
        &mut self,
        op: &str,
        msg_type: u16,
        reply_type: u16,
        family: u8,
        body: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.exchange(
            op,
            (msg_type, NLM_F_REQUEST | NLM_F_DUMP, family),
            body,
            reply_type,
            |p| out.push(p.to_vec()),
        )?;
        Ok(out)
    }

    /// One request of any nfnetlink subsystem, acknowledged.
    pub fn request_ack(&mut self, op: &str, msg_type: u16, family: u8, body: &[u8]) -> Result<()> {
        self.exchange(
            op,
            (msg_type, NLM_F_REQUEST | NLM_F_ACK, family),
            body,
            u16::MAX,
            |_| {},
        )
    }

    /// Every rule of `table` (empty when the table does not exist).
    pub fn rules(&mut self, family: u8, table: &str) -> Result<Vec<RuleInfo>> {
        let op = format!("list rules of table {table}");
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table);
        let mut out = Vec::new();
        let r = self.exchange(
            &op,
            (
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
                NLM_F_REQUEST | NLM_F_DUMP,
                family,
            ),
            &a.buf,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE_REPLY,
            |p| {
                let mut r = RuleInfo {
                    chain: String::new(),
                    handle: 0,
                    comment: None,
                };
                let mut tbl = String::new();
                for (aty, v) in attrs(p) {
                    match aty {
                        NFTA_RULE_TABLE => tbl = cstr(v),
                        NFTA_RULE_CHAIN => r.chain = cstr(v),
                        NFTA_RULE_HANDLE if v.len() == 8 => {
                            r.handle = u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))
                        }
                        NFTA_RULE_USERDATA => r.comment = userdata_comment(v),
                        _ => {}
                    }
                }
                if tbl == table {
                    out.push(r);
                }
            },
        );
        match r {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
            Err(e) => Err(e),
            Ok(()) => Ok(out),
        }
    }
}

/// Dumped rules come back as NEWRULE messages.
const NFT_MSG_NEWRULE_REPLY: u16 = NFT_MSG_NEWRULE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_roundtrip() {
        let u = comment_userdata("skiff-cni bridge net=a id=b if=eth0");
        assert_eq!(u[0], 0);
        assert_eq!(
            userdata_comment(&u).as_deref(),
            Some("skiff-cni bridge net=a id=b if=eth0")
        );
    }

    #[test]
    fn attr_layout() {
        let mut a = Attrs::default();
        a.str(1, "abc");
        assert_eq!(a.buf, vec![8, 0, 1, 0, b'a', b'b', b'c', 0]);
        let got: Vec<_> = attrs(&a.buf).collect();
        assert_eq!(got, vec![(1u16, &b"abc\0"[..])]);
    }
}
