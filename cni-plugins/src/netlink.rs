//! A small synchronous rtnetlink client: one socket, one request at a time, in whichever network
//! namespace the calling thread is in when [`Netlink::open`] runs.

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort,
    InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

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
    #[error("netlink: {op}: cannot decode the kernel's answer: {msg}")]
    Decode { op: String, msg: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } | NetlinkError::Socket(source) => {
                source.raw_os_error()
            }
            NetlinkError::Decode { .. } => None,
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

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Dummy => "dummy".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(mac) => l.mac = Some(mac.clone()),
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Mtu(v) => l.mtu = Some(*v),
            LinkAttribute::LinkNetNsId(v) => l.link_netnsid = Some(*v),
            LinkAttribute::Link(v) => l.peer_index = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr_to_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

/// One rtnetlink socket bound in the current thread's network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink { sock, seq: 0 })
    }

    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let err = |source: io::Error| NetlinkError::Request {
            op: op.to_string(),
            source,
        };
        let mut nl = NetlinkMessage::from(msg);
        self.seq = self.seq.wrapping_add(1);
        nl.header.flags = flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(err)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(err)?;
            let mut off = 0usize;
            while off < data.len() {
                let b =
                    NetlinkBuffer::new_checked(&data[off..]).map_err(|e| NetlinkError::Decode {
                        op: op.to_string(),
                        msg: e.to_string(),
                    })?;
                let len = b.length() as usize;
                let seq = b.sequence_number();
                let bytes = &data[off..off + len];
                off += (len + 3) & !3;
                if seq != self.seq {
                    continue;
                }
                let parsed = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                    Ok(p) => p,
                    Err(e) if dump => {
                        tracing::debug!(op, error = %e, "skipping an undecodable netlink message");
                        continue;
                    }
                    Err(e) => {
                        return Err(NetlinkError::Decode {
                            op: op.to_string(),
                            msg: e.to_string(),
                        })
                    }
                };
                match parsed.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(c) => return Err(err(io::Error::from_raw_os_error(-c.get()))),
                        None => return Ok(out),
                    },
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, extra: u16) -> Result<()> {
        self.request(op, msg, NLM_F_REQUEST | NLM_F_ACK | extra)
            .map(|_| ())
    }

    fn get_link(&mut self, op: &str, m: LinkMessage) -> Result<Option<Link>> {
        match self.request(
            op,
            RouteNetlinkMessage::GetLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
        ) {
            Ok(v) => Ok(v.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(&format!("get link {name}"), m)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(&format!("get link #{index}"), m)
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
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        self.ack(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair: `host` here (up, attached to `master`), `peer` directly in the
    /// namespace `peer_ns_fd` refers to (down).
    pub fn add_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns_fd: RawFd,
        mtu: Option<u32>,
        master: u32,
        peer_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        // The peer cannot be created up: the kernel configures it before the pair is linked
        // (veth_open would fail with ENOTCONN). It is brought up inside the namespace.
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = peer_mac {
            p.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        p.attributes.push(LinkAttribute::NetNsFd(peer_ns_fd));

        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::Controller(master));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.ack(
            &format!("create veth {host} (peer {peer})"),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.ack(
            &format!("set link #{index} up"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Turns promiscuous mode on.
    pub fn set_promisc(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Promisc;
        m.header.change_mask = LinkFlags::Promisc;
        self.ack(
            &format!("set link #{index} promiscuous"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
        add: bool,
    ) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.header.index = index;
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        m.attributes.push(LinkAttribute::AfSpecBridge(vec![
            AfSpecBridge::Flags(BridgeFlag::Controller),
            AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }),
        ]));
        let (op, msg) = if add {
            (
                format!("add vlan {vid} to bridge port #{index}"),
                RouteNetlinkMessage::SetLink(m),
            )
        } else {
            (
                format!("remove vlan {vid} from bridge port #{index}"),
                RouteNetlinkMessage::DelLink(m),
            )
        };
        self.ack(&op, msg, 0)
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
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.ack(
            &format!("set mac on link #{index}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(
            &format!("set mtu {mtu} on link #{index}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    }

    /// Sets hairpin mode on a bridge port (the link must already be enslaved).
    pub fn set_hairpin(&mut self, index: u32, on: bool) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                on,
            )])),
        ]));
        self.ack(
            &format!("set hairpin mode on link #{index}"),
            RouteNetlinkMessage::NewLink(m),
            0,
        )
    }

    pub fn del_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.ack(
            &format!("delete link #{index}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
    }

    /// Addresses of one link (or of all links) as (link index, address/prefix).
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let m = AddressMessage::default();
        let v = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for msg in v {
            let RouteNetlinkMessage::NewAddress(a) = msg else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let mut local = None;
            let mut addr = None;
            for at in &a.attributes {
                match at {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(addr) {
                if let Some(n) = IpNet::new(ip, a.header.prefix_len) {
                    out.push((a.header.index, n));
                }
            }
        }
        Ok(out)
    }

    fn addr_msg(index: u32, net: IpNet, nodad: bool) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&net.addr);
        m.header.prefix_len = net.prefix;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        match net.addr {
            IpAddr::V4(_) => {
                m.attributes.push(AddressAttribute::Local(net.addr));
                m.attributes.push(AddressAttribute::Address(net.addr));
                if net.prefix < 31 {
                    if let IpAddr::V4(b) = net.last() {
                        m.attributes.push(AddressAttribute::Broadcast(b));
                    }
                }
            }
            IpAddr::V6(_) => {
                m.attributes.push(AddressAttribute::Address(net.addr));
                if nodad {
                    m.attributes
                        .push(AddressAttribute::Flags(AddressFlags::Nodad));
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
            &format!("add address {net} to link #{index}"),
            RouteNetlinkMessage::NewAddress(Self::addr_msg(index, net, !dad)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn del_address(&mut self, index: u32, net: IpNet) -> Result<()> {
        self.ack(
            &format!("delete address {net} from link #{index}"),
            RouteNetlinkMessage::DelAddress(Self::addr_msg(index, net, true)),
            0,
        )
    }

    /// Routes of one family in every table.
    pub fn routes(&mut self, v6: bool) -> Result<Vec<RouteEntry>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let v = self.request(
            "list routes",
            RouteNetlinkMessage::GetRoute(m),
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        let zero: IpAddr = if v6 {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        };
        let mut out = Vec::new();
        for msg in v {
            let RouteNetlinkMessage::NewRoute(r) = msg else {
                continue;
            };
            let mut dst = zero;
            let mut gw = None;
            let mut oif = None;
            let mut table = u32::from(r.header.table);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => {
                        if let Some(ip) = route_addr_to_ip(d) {
                            dst = ip;
                        }
                    }
                    RouteAttribute::Gateway(g) => gw = route_addr_to_ip(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if let Some(dst) = IpNet::new(dst, r.header.destination_prefix_length) {
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
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(&dst.addr);
        m.header.destination_prefix_length = dst.prefix;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = match opts.scope {
            Some(s) => RouteScope::from(s),
            None if gw.is_none() => RouteScope::Link,
            None => RouteScope::Universe,
        };
        match opts.table {
            Some(t) if t < 256 => m.header.table = t as u8,
            Some(t) => {
                m.header.table = RouteHeader::RT_TABLE_UNSPEC;
                m.attributes.push(RouteAttribute::Table(t));
            }
            None => m.header.table = RouteHeader::RT_TABLE_MAIN,
        }
        if dst.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(dst.network().into()));
        }
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(p) = opts.priority {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        let mut metrics = Vec::new();
        if let Some(v) = opts.mtu {
            metrics.push(RouteMetric::Mtu(v));
        }
        if let Some(v) = opts.advmss {
            metrics.push(RouteMetric::Advmss(v));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        self.ack(
            &format!("add route {dst} via {gw:?} dev #{oif}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}
