//! `bridge`: a Linux bridge on the host, a veth pair per container, addresses from the IPAM plugin.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::prev_result;
use crate::error::{code, CniError, Error, Result};
use crate::invoke;
use crate::netlink::{Link, Netlink, RouteOpts};
use crate::netns::{NetNs, NetnsError};
use crate::skel::{validate_ifname, CmdArgs, Plugin};
use crate::sysctl;
use crate::types::{CniResult, Interface, IpConfig, IpNet, Route};

pub const DEFAULT_BRIDGE: &str = "cni0";

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

/// The bridge plugin's keys (those of the reference plugin).
#[derive(Debug, Deserialize)]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default, rename = "isGateway")]
    pub is_gateway: bool,
    #[serde(default, rename = "isDefaultGateway")]
    pub is_default_gateway: bool,
    #[serde(default, rename = "forceAddress")]
    pub force_address: bool,
    #[serde(default, rename = "ipMasq")]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default, rename = "hairpinMode")]
    pub hairpin_mode: bool,
    #[serde(default, rename = "promiscMode")]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: u32,
    #[serde(default)]
    pub ipam: Value,
}

impl BridgeConf {
    pub fn load(config: &Value) -> Result<Self> {
        let mut c: BridgeConf = serde_json::from_value(config.clone())
            .map_err(|e| Error::Config(format!("bridge: {e}")))?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if c.hairpin_mode && c.promisc_mode {
            return Err(Error::Config(
                "cannot set hairpin mode and promiscuous mode at the same time".into(),
            ));
        }
        if c.vlan != 0 {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "bridge: \"vlan\" is not supported yet; remove it from the config",
                "",
            )
            .into());
        }
        validate_ifname(&c.bridge)
            .map_err(|_| Error::Config(format!("invalid bridge name {:?}", c.bridge)))?;
        Ok(c)
    }

    /// The IPAM plugin's type; empty when the network is layer 2 only.
    pub fn ipam_type(&self) -> &str {
        self.ipam.get("type").and_then(Value::as_str).unwrap_or("")
    }

    fn mtu(&self) -> Option<u32> {
        (self.mtu > 0).then_some(self.mtu)
    }
}

fn netns_path(a: &CmdArgs) -> Result<&std::path::Path> {
    a.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            "required env variables [CNI_NETNS] missing",
            "",
        )
        .into()
    })
}

/// A random, locally administered unicast MAC.
fn random_mac() -> [u8; 6] {
    let a = sysctl::random_u32().to_ne_bytes();
    let b = sysctl::random_u32().to_ne_bytes();
    [(a[0] & 0xfe) | 0x02, a[1], a[2], a[3], b[0], b[1]]
}

/// Finds or creates the bridge and brings it up.
fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link> {
    let name = &conf.bridge;
    let existing = nl.link_by_name(name)?;
    let br = match existing {
        Some(l) => l,
        None => {
            match nl.add_bridge(name, conf.mtu(), Some(random_mac())) {
                Ok(()) => tracing::info!(bridge = %name, "created bridge"),
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            nl.link_by_name(name)?.ok_or_else(|| {
                Error::Other(format!("bridge {name} vanished right after it was created"))
            })?
        }
    };
    if !br.is_bridge() {
        return Err(Error::Other(format!(
            "{name:?} already exists but is not a bridge: pick another \"bridge\" name"
        )));
    }
    if conf.promisc_mode {
        tracing::warn!("bridge: promiscMode is not implemented yet; ignored");
    }
    if !br.up {
        nl.set_up(br.index)?;
    }
    Ok(br)
}

/// Puts `gw` on the bridge unless it is there; another IPv4 address (or an overlapping IPv6 one)
/// is an error unless `forceAddress` is set.
fn ensure_bridge_addr(nl: &mut Netlink, br: &Link, gw: IpNet, force: bool) -> Result<()> {
    for (_, a) in nl.addresses(Some(br.index))? {
        if a.addr.is_ipv4() != gw.addr.is_ipv4() {
            continue;
        }
        if let IpAddr::V6(v6) = a.addr {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                continue;
            }
        }
        if a == gw {
            return Ok(());
        }
        if gw.addr.is_ipv4() || a.contains(gw.addr) || gw.contains(a.addr) {
            if force {
                nl.del_address(br.index, a)?;
            } else {
                return Err(Error::Other(format!(
                    "{:?} already has an IP address different from {gw}: set \"forceAddress\" or use another bridge",
                    br.name
                )));
            }
        }
    }
    match nl.add_address(br.index, gw) {
        Ok(()) => {}
        // A concurrent ADD on the same bridge got there first.
        Err(e) if e.errno() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    // Pin the bridge's current MAC so it does not follow whichever port has the lowest address.
    let now = nl.link_by_name(&br.name)?;
    if let Some(mac) = now.as_ref().and_then(|l| l.mac.as_ref()) {
        let valid = mac.len() == 6 && mac.iter().any(|b| *b != 0) && mac[0] & 1 == 0;
        if valid {
            nl.set_mac(br.index, mac)?;
        }
    }
    Ok(())
}

fn create_veth(
    nl: &mut Netlink,
    ns: &NetNs,
    ifname: &str,
    mtu: Option<u32>,
    br: &Link,
) -> Result<Link> {
    use std::os::fd::AsRawFd;
    let exists = ns.run(|| -> Result<bool> {
        let mut cnl = Netlink::open()?;
        Ok(cnl.link_by_name(ifname)?.is_some())
    })??;
    if exists {
        return Err(Error::Other(format!(
            "container veth name provided ({ifname}) already exists"
        )));
    }
    for _ in 0..10 {
        let host = format!("veth{:08x}", sysctl::random_u32());
        match nl.add_veth(&host, ifname, ns.file().as_raw_fd(), mtu, br.index) {
            Ok(()) => {
                return nl.link_by_name(&host)?.ok_or_else(|| {
                    Error::Other(format!("veth {host} vanished right after it was created"))
                })
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Other(
        "could not find a free host veth name after 10 tries".into(),
    ))
}

/// The gateway to use for routes of each family: the first IP of that family with one.
fn family_gateways(ips: &[IpConfig]) -> (Option<IpAddr>, Option<IpAddr>) {
    let v4 = ips
        .iter()
        .filter(|i| i.address.addr.is_ipv4())
        .find_map(|i| i.gateway);
    let v6 = ips
        .iter()
        .filter(|i| !i.address.addr.is_ipv4())
        .find_map(|i| i.gateway);
    (v4, v6)
}

/// Fills in gateways (network + 1) and the default routes, like the reference plugin.
fn calc_gateways(result: &mut CniResult, conf: &BridgeConf) -> Vec<IpNet> {
    let mut bridge_addrs = Vec::new();
    let mut default_done = [false, false];
    for ip in result.ips.iter_mut() {
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = Some(crate::types::next_ip(ip.address.network()));
        }
        let Some(gw) = ip.gateway else { continue };
        let fam = usize::from(!gw.is_ipv4());
        if conf.is_default_gateway && !default_done[fam] {
            let zero: IpNet = if gw.is_ipv4() {
                "0.0.0.0/0".parse().expect("constant")
            } else {
                "::/0".parse().expect("constant")
            };
            let found = result
                .routes
                .iter()
                .any(|r| r.gw.is_some() && r.dst == zero);
            if !found {
                result.routes.push(Route::new(zero, Some(gw)));
            }
            default_done[fam] = true;
        }
        if let Some(n) = IpNet::new(gw, ip.address.prefix) {
            bridge_addrs.push(n);
        }
    }
    bridge_addrs
}

/// Sets addresses and routes on the container interface (run inside the netns).
fn configure_container(
    ifname: &str,
    result: &CniResult,
    if_index: usize,
) -> Result<Option<String>> {
    let mut nl = Netlink::open()?;
    let link = nl
        .link_by_name(ifname)?
        .ok_or_else(|| Error::Other(format!("{ifname} is missing in the container namespace")))?;
    let mine: Vec<&IpConfig> = result
        .ips
        .iter()
        .filter(|i| i.interface == Some(if_index))
        .collect();
    for ip in &mine {
        match nl.add_address(link.index, ip.address) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !link.up {
        nl.set_up(link.index)?;
    }
    let own: Vec<IpConfig> = mine.into_iter().cloned().collect();
    let (gw4, gw6) = family_gateways(&own);
    for r in &result.routes {
        let gw = r.gw.or(if r.dst.addr.is_ipv4() { gw4 } else { gw6 });
        let opts = RouteOpts {
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope,
        };
        match nl.add_route(r.dst, gw, link.index, opts) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                tracing::warn!(dst = %r.dst, "route already exists in the container; kept")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(link.mac_string())
}

pub struct Bridge;

impl Bridge {
    fn add_inner(
        &self,
        a: &CmdArgs,
        conf: &BridgeConf,
        nl: &mut Netlink,
        ns: &NetNs,
        host: &Link,
        br: &Link,
    ) -> Result<CniResult> {
        let mut result = CniResult {
            interfaces: vec![
                Interface {
                    name: br.name.clone(),
                    ..Default::default()
                },
                Interface {
                    name: host.name.clone(),
                    mac: host.mac_string(),
                    ..Default::default()
                },
                Interface {
                    name: a.ifname.clone(),
                    sandbox: Some(ns.path().display().to_string()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        if conf.hairpin_mode {
            nl.set_hairpin(host.index, true)?;
        }
        let ipam = conf.ipam_type();
        if !ipam.is_empty() {
            let out = invoke::delegate(ipam, "ADD", &a.path, &a.stdin)?;
            let v: Value = serde_json::from_slice(&out)?;
            let ipam_res = CniResult::from_value(v)
                .map_err(|e| Error::Other(format!("cannot parse the IPAM result: {e}")))?;
            if ipam_res.ips.is_empty() {
                return Err(Error::Other(
                    "IPAM plugin returned missing IP config".into(),
                ));
            }
            result.ips = ipam_res.ips;
            result.routes = ipam_res.routes;
            result.dns = ipam_res.dns;
            for ip in result.ips.iter_mut() {
                ip.interface = Some(2);
            }
            let gws = calc_gateways(&mut result, conf);
            let mac = ns.run(|| configure_container(&a.ifname, &result, 2))??;
            result.interfaces[2].mac = mac;
            if conf.is_gateway {
                for gw in &gws {
                    ensure_bridge_addr(nl, br, *gw, conf.force_address)?;
                }
                if gws.iter().any(|g| g.addr.is_ipv4()) {
                    sysctl::set("net/ipv4/ip_forward", "1")
                        .map_err(|e| Error::io("enable net.ipv4.ip_forward", e))?;
                }
                if gws.iter().any(|g| !g.addr.is_ipv4()) {
                    sysctl::set("net/ipv6/conf/all/forwarding", "1")
                        .map_err(|e| Error::io("enable net.ipv6.conf.all.forwarding", e))?;
                }
            }
            if conf.ip_masq {
                tracing::warn!(
                    "bridge: ipMasq is not implemented yet (nftables masquerade comes later); continuing without it"
                );
            }
        } else {
            result.interfaces[2].mac = ns.run(|| -> Result<Option<String>> {
                let mut cnl = Netlink::open()?;
                let l = cnl.link_by_name(&a.ifname)?.ok_or_else(|| {
                    Error::Other(format!(
                        "{} is missing in the container namespace",
                        a.ifname
                    ))
                })?;
                cnl.set_up(l.index)?;
                Ok(l.mac_string())
            })??;
        }
        // Re-read the bridge: its MAC may have changed with its first port.
        let br_now = nl.link_by_name(&br.name)?.unwrap_or_else(|| br.clone());
        result.interfaces[0].mac = br_now.mac_string();
        Ok(result)
    }
}

impl Plugin for Bridge {
    fn add(&self, a: &CmdArgs) -> Result<String> {
        let conf = BridgeConf::load(&a.config)?;
        let ns = NetNs::open(netns_path(a)?)?;
        let mut nl = Netlink::open()?;
        let br = ensure_bridge(&mut nl, &conf)?;
        let host = create_veth(&mut nl, &ns, &a.ifname, conf.mtu(), &br)?;
        tracing::info!(host = %host.name, bridge = %br.name, "created veth pair");
        match self.add_inner(a, &conf, &mut nl, &ns, &host, &br) {
            Ok(r) => Ok(r.render(&a.version)),
            Err(e) => {
                if !conf.ipam_type().is_empty() {
                    if let Err(e2) = invoke::delegate(conf.ipam_type(), "DEL", &a.path, &a.stdin) {
                        tracing::warn!(error = %e2, "IPAM DEL after a failed ADD failed");
                    }
                }
                if let Err(e2) = nl.del_link(host.index) {
                    tracing::warn!(error = %e2, "deleting the veth after a failed ADD failed");
                }
                Err(e)
            }
        }
    }

    fn del(&self, a: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::load(&a.config)?;
        let ipam_del = || -> Result<()> {
            if !conf.ipam_type().is_empty() {
                invoke::delegate(conf.ipam_type(), "DEL", &a.path, &a.stdin)?;
            }
            Ok(())
        };
        let Some(path) = a.netns.as_deref() else {
            return ipam_del();
        };
        let ns = match NetNs::open(path) {
            Ok(ns) => ns,
            Err(NetnsError::NotFound { .. }) => {
                tracing::info!("netns is gone; releasing the addresses only");
                return ipam_del();
            }
            Err(e) => return Err(e.into()),
        };
        let removed = ns.run(|| -> Result<Vec<IpNet>> {
            let mut nl = Netlink::open()?;
            let Some(link) = nl.link_by_name(&a.ifname)? else {
                return Ok(Vec::new());
            };
            let addrs = nl
                .addresses(Some(link.index))?
                .into_iter()
                .map(|(_, n)| n)
                .collect();
            match nl.del_link(link.index) {
                Ok(()) => Ok(addrs),
                Err(e) if e.errno() == Some(libc::ENODEV) => Ok(addrs),
                Err(e) => Err(e.into()),
            }
        })??;
        tracing::info!(addresses = ?removed, "deleted container interface");
        ipam_del()
    }

    /// Spec 1.1 GC: the IPAM plugin frees stale addresses.
    fn gc(&self, a: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::load(&a.config)?;
        if !conf.ipam_type().is_empty() {
            invoke::delegate(conf.ipam_type(), "GC", &a.path, &a.stdin)?;
        }
        Ok(())
    }

    fn check(&self, a: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::load(&a.config)?;
        let prev = prev_result(&a.config)?
            .ok_or_else(|| Error::Config("bridge: required prevResult missing".into()))?;
        if !conf.ipam_type().is_empty() {
            invoke::delegate(conf.ipam_type(), "CHECK", &a.path, &a.stdin)?;
        }
        let ns = NetNs::open(netns_path(a)?)?;
        let mut nl = Netlink::open()?;
        let br = nl
            .link_by_name(&conf.bridge)?
            .filter(Link::is_bridge)
            .ok_or_else(|| Error::Other(format!("bridge {} is missing", conf.bridge)))?;
        let sandbox = ns.path().display().to_string();
        let cont_idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == a.ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
            .ok_or_else(|| {
                Error::Other(format!(
                    "prevResult has no interface {} in {sandbox}",
                    a.ifname
                ))
            })?;
        for itf in prev.interfaces.iter().filter(|i| i.sandbox.is_none()) {
            if itf.name == br.name {
                continue;
            }
            let l = nl
                .link_by_name(&itf.name)?
                .ok_or_else(|| Error::Other(format!("host interface {} is missing", itf.name)))?;
            if l.master != Some(br.index) {
                return Err(Error::Other(format!(
                    "host interface {} is not attached to bridge {}",
                    itf.name, br.name
                )));
            }
        }
        let want = prev.interfaces[cont_idx].mac.clone();
        let ips: Vec<IpNet> = prev
            .ips
            .iter()
            .filter(|i| i.interface == Some(cont_idx))
            .map(|i| i.address)
            .collect();
        let routes = prev.routes.clone();
        let ifname = a.ifname.clone();
        ns.run(move || -> Result<()> {
            let mut nl = Netlink::open()?;
            let link = nl
                .link_by_name(&ifname)?
                .ok_or_else(|| Error::Other(format!("{ifname} is missing in the container")))?;
            if want.is_some() && link.mac_string() != want {
                return Err(Error::Other(format!(
                    "{ifname} has MAC {:?}, expected {want:?}",
                    link.mac_string()
                )));
            }
            let have: Vec<IpNet> = nl
                .addresses(Some(link.index))?
                .into_iter()
                .map(|(_, n)| n)
                .collect();
            for ip in &ips {
                if !have.contains(ip) {
                    return Err(Error::Other(format!("{ifname} lacks address {ip}")));
                }
            }
            for r in &routes {
                let table = nl.routes(!r.dst.addr.is_ipv4())?;
                let found = table.iter().any(|e| {
                    e.dst.canonical() == r.dst.canonical()
                        && e.oif == Some(link.index)
                        && (r.gw.is_none() || e.gw == r.gw)
                });
                if !found {
                    return Err(Error::Other(format!(
                        "route to {} is missing in the container",
                        r.dst
                    )));
                }
            }
            Ok(())
        })??;
        Ok(())
    }
}
