//! A small synchronous rtnetlink client: one socket, one request at a time, in whichever network
//! namespace the calling thread is in when [`Netlink::open`] runs.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use crate::nlsock::{
    self, attrs, c_str, ne_i32, ne_u32, Attrs, NlSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::types::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("failed to open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink: {op} failed: {source}")]
    Request {
        op: String,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } | NetlinkError::Socket(source) => {
                source.raw_os_error()
            }
        }
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// What the plugins need to know about a link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    /// IFLA_LINK_NETNSID: set when the peer of a veth is in another namespace.
    pub link_netnsid: Option<i32>,
    /// IFLA_LINK: the peer's index (in the namespace `link_netnsid` names) for a veth.
    pub peer_index: Option<u32>,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
    pub fn mac_string(&self) -> Option<String> {
        self.mac.as_ref().map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })
    }
}

/// A route as read back from the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
}

/// Extra route attributes from a CNI route.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteOpts {
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

// rtnetlink message types, attributes and flags (linux/rtnetlink.h, if_link.h, if_addr.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRIDGE_FLAGS: u16 = 0;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const BRIDGE_FLAGS_MASTER: u16 = 1;
const BRIDGE_VLAN_INFO_PVID: u16 = 2;
const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 4;
const IFF_UP: u32 = 0x1;
const IFF_PROMISC: u32 = 0x100;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
/// Duplicate address detection failed for the address.
pub const IFA_F_DADFAILED: u32 = 0x08;
/// Duplicate address detection is still running for the address.
pub const IFA_F_TENTATIVE: u32 = 0x40;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RTAX_ADVMSS: u16 = 8;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_TABLE_UNSPEC: u8 = 0;
const RT_TABLE_MAIN: u8 = 254;

/// `struct ifinfomsg`: family, type, index, flags, change mask.
fn ifinfomsg(a: &mut Attrs, family: u8, index: u32, flags: u32, change: u32) {
    let mut h = [0u8; 16];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    a.raw(&h);
}

/// A link message with just a header (and the name, when given).
fn link_msg(index: u32, name: Option<&str>) -> Attrs {
    let mut a = Attrs::default();
    ifinfomsg(&mut a, 0, index, 0, 0);
    if let Some(n) = name {
        a.str(IFLA_IFNAME, n);
    }
    a
}

fn family_of(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Decodes an `RTM_NEWLINK` payload (`ifinfomsg` + attributes).
fn parse_link(p: &[u8]) -> Option<Link> {
    let index = ne_i32(p.get(4..)?)? as u32;
    let flags = ne_u32(p.get(8..)?)?;
    let mut l = Link {
        index,
        up: flags & IFF_UP != 0,
        promisc: flags & IFF_PROMISC != 0,
        ..Default::default()
    };
    for (ty, v) in attrs(p.get(16..)?) {
        match ty {
            IFLA_IFNAME => l.name = c_str(v),
            IFLA_ADDRESS => l.mac = Some(v.to_vec()),
            IFLA_MASTER => l.master = ne_u32(v),
            IFLA_MTU => l.mtu = ne_u32(v),
            IFLA_LINK_NETNSID => l.link_netnsid = ne_i32(v),
            IFLA_LINK => l.peer_index = ne_u32(v),
            IFLA_LINKINFO => {
                l.kind = attrs(v)
                    .find(|(t, _)| *t == IFLA_INFO_KIND)
                    .map(|(_, k)| c_str(k));
            }
            _ => {}
        }
    }
    Some(l)
}

/// One rtnetlink socket bound in the current thread's network namespace.
pub struct Netlink {
    sock: NlSocket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let sock = NlSocket::open(libc::NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        Ok(Netlink { sock, seq: 0 })
    }

    /// Sends one request and collects the payloads of its answers (the reply of an acked
    /// request, or every message of a dump).
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        ty: u16,
        flags: u16,
        body: &Attrs,
    ) -> Result<Vec<Vec<u8>>> {
        let err = |source: io::Error| NetlinkError::Request { op: op(), source };
        self.seq = self.seq.wrapping_add(1);
        let mut buf = Vec::with_capacity(nlsock::HDR + body.buf.len());
        nlsock::message(&mut buf, ty, flags, self.seq, &body.buf);
        let answers = self.sock.transact(&buf, self.seq).map_err(err)?;
        Ok(answers.into_iter().map(|(_, p)| p).collect())
    }

    fn ack(&mut self, op: &dyn Fn() -> String, ty: u16, body: &Attrs, extra: u16) -> Result<()> {
        self.request(op, ty, NLM_F_REQUEST | NLM_F_ACK | extra, body)
            .map(|_| ())
    }

    fn get_link(&mut self, op: &dyn Fn() -> String, m: &Attrs) -> Result<Option<Link>> {
        match self.request(op, RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, m) {
            Ok(v) => Ok(v.iter().find_map(|p| parse_link(p))),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        self.get_link(&|| format!("get link {name}"), &link_msg(0, Some(name)))
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.get_link(&|| format!("get link #{index}"), &link_msg(index, None))
    }

    /// Creates a bridge (down); `EEXIST` is returned as an error.
    /// `mac` pins the bridge's address so it never follows its ports.
    pub fn add_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        vlan_filtering: bool,
    ) -> Result<()> {
        let mut m = link_msg(0, Some(name));
        if let Some(mac) = mac {
            m.put(IFLA_ADDRESS, &mac);
        }
        if let Some(mtu) = mtu {
            m.u32(IFLA_MTU, mtu);
        }
        m.nest(IFLA_LINKINFO, |a| {
            a.str(IFLA_INFO_KIND, "bridge");
            if vlan_filtering {
                a.nest(IFLA_INFO_DATA, |a| a.u8(IFLA_BR_VLAN_FILTERING, 1));
            }
        });
        self.ack(
            &|| format!("create bridge {name}"),
            RTM_NEWLINK,
            &m,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a link of a kind without options (`dummy`), down; `EEXIST` is an error.
    pub fn add_simple_link(&mut self, name: &str, kind: &str) -> Result<()> {
        let mut m = link_msg(0, Some(name));
        m.nest(IFLA_LINKINFO, |a| a.str(IFLA_INFO_KIND, kind));
        self.ack(
            &|| format!("create {kind} link {name}"),
            RTM_NEWLINK,
            &m,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair: `host` here (up, attached to `master`), `peer` directly in the
    /// namespace `peer_ns_fd` refers to (down). Returns the new host link as the kernel echoes
    /// it (`NLM_F_ECHO`, Linux >= 6.2; its `peer_index` is the peer's index in its namespace),
    /// or `None` from kernels that do not echo.
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns_fd: RawFd,
        mtu: Option<u32>,
        master: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<Option<Link>> {
        let mut m = Attrs::default();
        ifinfomsg(&mut m, 0, 0, IFF_UP, IFF_UP);
        m.str(IFLA_IFNAME, host);
        if let Some(mtu) = mtu {
            m.u32(IFLA_MTU, mtu);
        }
        m.u32(IFLA_MASTER, master);
        m.nest(IFLA_LINKINFO, |a| {
            a.str(IFLA_INFO_KIND, "veth");
            a.nest(IFLA_INFO_DATA, |a| {
                // The peer cannot be created up: the kernel configures it before the pair is
                // linked (veth_open would fail with ENOTCONN). It is brought up in its namespace.
                a.nest(VETH_INFO_PEER, |a| {
                    ifinfomsg(a, 0, 0, 0, 0);
                    a.str(IFLA_IFNAME, peer);
                    if let Some(mtu) = mtu {
                        a.u32(IFLA_MTU, mtu);
                    }
                    if let Some(mac) = peer_mac {
                        a.put(IFLA_ADDRESS, &mac);
                    }
                    a.u32(IFLA_NET_NS_FD, peer_ns_fd as u32);
                });
            });
        });
        let echoed = self.request(
            &|| format!("create veth {host} (peer {peer})"),
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | NLM_F_CREATE | NLM_F_EXCL,
            &m,
        )?;
        Ok(echoed
            .iter()
            .filter_map(|p| parse_link(p))
            .find(|l| l.name == host && l.index != 0))
    }

    fn set_flag(&mut self, index: u32, flag: u32, what: &str) -> Result<()> {
        let mut m = Attrs::default();
        ifinfomsg(&mut m, 0, index, flag, flag);
        self.ack(&|| format!("set link #{index} {what}"), RTM_SETLINK, &m, 0)
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, IFF_UP, "up")
    }

    /// Turns promiscuous mode on.
    pub fn set_promisc(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, IFF_PROMISC, "promiscuous")
    }

    fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
        add: bool,
    ) -> Result<()> {
        let mut m = Attrs::default();
        ifinfomsg(&mut m, libc::AF_BRIDGE as u8, index, 0, 0);
        let mut flags = 0u16;
        if pvid {
            flags |= BRIDGE_VLAN_INFO_PVID;
        }
        if untagged {
            flags |= BRIDGE_VLAN_INFO_UNTAGGED;
        }
        m.nest(IFLA_AF_SPEC, |a| {
            a.u16(IFLA_BRIDGE_FLAGS, BRIDGE_FLAGS_MASTER);
            let mut info = [0u8; 4];
            info[..2].copy_from_slice(&flags.to_ne_bytes());
            info[2..].copy_from_slice(&vid.to_ne_bytes());
            a.put(IFLA_BRIDGE_VLAN_INFO, &info);
        });
        if add {
            self.ack(
                &|| format!("add vlan {vid} to bridge port #{index}"),
                RTM_SETLINK,
                &m,
                0,
            )
        } else {
            self.ack(
                &|| format!("remove vlan {vid} from bridge port #{index}"),
                RTM_DELLINK,
                &m,
                0,
            )
        }
    }

    /// Adds VLAN `vid` to a bridge port (`pvid`: untagged ingress lands in it).
    pub fn bridge_vlan_add(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        self.bridge_vlan(index, vid, pvid, untagged, true)
    }

    /// Removes VLAN `vid` from a bridge port.
    pub fn bridge_vlan_del(&mut self, index: u32, vid: u16) -> Result<()> {
        self.bridge_vlan(index, vid, false, false, false)
    }

    /// Sets the hardware address (pins a bridge's MAC so it does not follow its ports).
    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> Result<()> {
        let mut m = link_msg(index, None);
        m.put(IFLA_ADDRESS, mac);
        self.ack(&|| format!("set mac on link #{index}"), RTM_SETLINK, &m, 0)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = link_msg(index, None);
        m.u32(IFLA_MTU, mtu);
        self.ack(
            &|| format!("set mtu {mtu} on link #{index}"),
            RTM_SETLINK,
            &m,
            0,
        )
    }

    /// Sets hairpin mode on a bridge port (the link must already be enslaved).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = link_msg(index, None);
        m.nest(IFLA_LINKINFO, |a| {
            a.str(IFLA_INFO_SLAVE_KIND, "bridge");
            a.nest(IFLA_INFO_SLAVE_DATA, |a| {
                a.u8(IFLA_BRPORT_MODE, u8::from(on))
            });
        });
        self.ack(
            &|| format!("set hairpin mode on link #{index}"),
            RTM_NEWLINK,
            &m,
            0,
        )
    }

    pub fn del_link(&mut self, index: u32) -> Result<()> {
        self.ack(
            &|| format!("delete link #{index}"),
            RTM_DELLINK,
            &link_msg(index, None),
            0,
        )
    }

    /// Addresses of one link (or of all links) as (link index, address/prefix).
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        Ok(self
            .addresses_with_flags(index)?
            .into_iter()
            .map(|(link, net, _)| (link, net))
            .collect())
    }

    /// Addresses with their `IFA_F_*` flags (tentative, DAD failed, ...).
    pub fn addresses_with_flags(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet, u32)>> {
        let mut m = Attrs::default();
        m.raw(&[0u8; 8]);
        let v = self.request(
            &|| "list addresses".to_string(),
            RTM_GETADDR,
            NLM_F_REQUEST | NLM_F_DUMP,
            &m,
        )?;
        let mut out = Vec::new();
        for p in v {
            if p.len() < 8 {
                continue;
            }
            let prefix = p[1];
            let mut flags = u32::from(p[2]);
            let Some(link) = ne_u32(&p[4..]) else {
                continue;
            };
            if index.is_some_and(|i| i != link) {
                continue;
            }
            let mut local = None;
            let mut addr = None;
            for (ty, v) in attrs(&p[8..]) {
                match ty {
                    IFA_LOCAL => local = ip_from(v),
                    IFA_ADDRESS => addr = ip_from(v),
                    IFA_FLAGS => flags = ne_u32(v).unwrap_or(flags),
                    _ => {}
                }
            }
            if let Some(n) = local.or(addr).and_then(|ip| IpNet::new(ip, prefix)) {
                out.push((link, n, flags));
            }
        }
        Ok(out)
    }

    /// `struct ifaddrmsg` + attributes for adding or deleting `net` on link `index`.
    fn addr_msg(index: u32, net: IpNet, nodad: bool) -> Attrs {
        let mut m = Attrs::default();
        let mut h = [0u8; 8];
        h[0] = family_of(&net.addr);
        h[1] = net.prefix;
        h[3] = RT_SCOPE_UNIVERSE;
        h[4..8].copy_from_slice(&index.to_ne_bytes());
        let ip = ip_bytes(&net.addr);
        match net.addr {
            IpAddr::V4(_) => {
                m.raw(&h);
                m.put(IFA_LOCAL, &ip);
                m.put(IFA_ADDRESS, &ip);
                if net.prefix < 31 {
                    m.put(IFA_BROADCAST, &ip_bytes(&net.last()));
                }
            }
            IpAddr::V6(_) => {
                if nodad {
                    h[2] = IFA_F_NODAD as u8;
                }
                m.raw(&h);
                m.put(IFA_ADDRESS, &ip);
                if nodad {
                    m.u32(IFA_FLAGS, IFA_F_NODAD);
                }
            }
        }
        m
    }

    pub fn add_address(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.add_address_dad(index, net, false)
    }

    /// Adds an address; IPv6 addresses skip duplicate address detection unless `dad`.
    pub fn add_address_dad(&mut self, index: u32, net: IpNet, dad: bool) -> Result<()> {
        self.ack(
            &|| format!("add address {net} to link #{index}"),
            RTM_NEWADDR,
            &Self::addr_msg(index, net, !dad),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn del_address(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.ack(
            &|| format!("delete address {net} from link #{index}"),
            RTM_DELADDR,
            &Self::addr_msg(index, net, true),
            0,
        )
    }

    /// Routes of one family in every table.
    pub fn routes(&mut self, v6: bool) -> Result<Vec<RouteEntry>> {
        let mut m = Attrs::default();
        let mut h = [0u8; 12];
        h[0] = if v6 {
            libc::AF_INET6 as u8
        } else {
            libc::AF_INET as u8
        };
        m.raw(&h);
        let v = self.request(
            &|| "list routes".to_string(),
            RTM_GETROUTE,
            NLM_F_REQUEST | NLM_F_DUMP,
            &m,
        )?;
        let zero: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let mut out = Vec::new();
        for p in v {
            if p.len() < 12 {
                continue;
            }
            let mut dst = zero;
            let mut gw = None;
            let mut oif = None;
            let mut table = u32::from(p[4]);
            for (ty, v) in attrs(&p[12..]) {
                match ty {
                    RTA_DST => dst = ip_from(v).unwrap_or(dst),
                    RTA_GATEWAY => gw = ip_from(v),
                    RTA_OIF => oif = ne_u32(v),
                    RTA_TABLE => table = ne_u32(v).unwrap_or(table),
                    _ => {}
                }
            }
            if let Some(dst) = IpNet::new(dst, p[1]) {
                out.push(RouteEntry {
                    dst,
                    gw,
                    oif,
                    table,
                });
            }
        }
        Ok(out)
    }

    /// Adds a route through link `oif`, via `gw` when given (else a link-scope route).
    pub fn add_route(
        &mut self,
        dst: IpNet,
        gw: Option<IpAddr>,
        oif: u32,
        opts: RouteOpts,
    ) -> Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut h = [0u8; 12];
        h[0] = family_of(&dst.addr);
        h[1] = dst.prefix;
        h[5] = RTPROT_BOOT;
        h[6] = match opts.scope {
            Some(s) => s,
            None if gw.is_none() => RT_SCOPE_LINK,
            None => RT_SCOPE_UNIVERSE,
        };
        h[7] = RTN_UNICAST;
        let big_table = match opts.table {
            Some(t) if t < 256 => {
                h[4] = t as u8;
                None
            }
            Some(t) => {
                h[4] = RT_TABLE_UNSPEC;
                Some(t)
            }
            None => {
                h[4] = RT_TABLE_MAIN;
                None
            }
        };
        let mut m = Attrs::default();
        m.raw(&h);
        if let Some(t) = big_table {
            m.u32(RTA_TABLE, t);
        }
        if dst.prefix > 0 {
            m.put(RTA_DST, &ip_bytes(&dst.network()));
        }
        if let Some(g) = gw {
            m.put(RTA_GATEWAY, &ip_bytes(&g));
        }
        m.u32(RTA_OIF, oif);
        if let Some(p) = opts.priority {
            m.u32(RTA_PRIORITY, p);
        }
        if opts.mtu.is_some() || opts.advmss.is_some() {
            m.nest(RTA_METRICS, |a| {
                if let Some(v) = opts.mtu {
                    a.u32(RTAX_MTU, v);
                }
                if let Some(v) = opts.advmss {
                    a.u32(RTAX_ADVMSS, v);
                }
            });
        }
        self.ack(
            &|| format!("add route {dst} via {gw:?} dev #{oif}"),
            RTM_NEWROUTE,
            &m,
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}
