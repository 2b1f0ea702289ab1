//! `bridge`: a Linux bridge on the host, a veth pair per container, addresses from the IPAM plugin.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use super::prev_result;
use crate::error::{code, CniError, Error, Result};
use crate::invoke;
use crate::nat;
use crate::netlink::{Link, Netlink, RouteOpts};
use crate::netns::{NetNs, NetnsError};
use crate::skel::{valid_attachments, validate_ifname, CmdArgs, Plugin};
use crate::sysctl;
use crate::types::{CniResult, Dns, Interface, IpConfig, IpNet, Route};

pub const DEFAULT_BRIDGE: &str = "cni0";

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

/// One `vlanTrunk` entry: a single `id` or a `minID`..=`maxID` range.
#[derive(Debug, Clone, Deserialize)]
pub struct VlanTrunk {
    #[serde(default, rename = "minID")]
    pub min_id: Option<i64>,
    #[serde(default, rename = "maxID")]
    pub max_id: Option<i64>,
    #[serde(default)]
    pub id: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct MacArg {
    #[serde(default)]
    mac: String,
}

#[derive(Debug, Default, Deserialize)]
struct BridgeArgs {
    #[serde(default)]
    cni: MacArg,
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
    pub vlan: i64,
    #[serde(default, rename = "vlanTrunk")]
    pub vlan_trunk: Option<Vec<VlanTrunk>>,
    #[serde(default, rename = "preserveDefaultVlan")]
    pub preserve_default_vlan: bool,
    #[serde(default)]
    pub macspoofchk: bool,
    #[serde(default)]
    pub enabledad: bool,
    #[serde(default, rename = "disableContainerInterface")]
    pub disable_container_interface: bool,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub ipam: Value,
    #[serde(default)]
    args: BridgeArgs,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: MacArg,
    /// The trunk VLANs, sorted and deduplicated.
    #[serde(skip)]
    pub vlans: Vec<u16>,
    /// The container MAC asked for (CNI_ARGS `MAC=`, `args.cni.mac`, `runtimeConfig.mac`).
    #[serde(skip)]
    pub mac: Option<[u8; 6]>,
}

fn collect_vlan_trunk(trunk: &[VlanTrunk]) -> Result<Vec<u16>> {
    let bad = |m: &str| Error::Config(m.to_string());
    let ok = |v: i64| (1..=4094).contains(&v);
    let mut set = std::collections::BTreeSet::new();
    for t in trunk {
        match (t.min_id, t.max_id) {
            (Some(a), Some(b)) => {
                if !ok(a) {
                    return Err(bad("incorrect trunk minID parameter"));
                }
                if !ok(b) {
                    return Err(bad("incorrect trunk maxID parameter"));
                }
                if b < a {
                    return Err(bad("minID is greater than maxID in trunk parameter"));
                }
                set.extend(a..=b);
            }
            (None, Some(_)) => {
                return Err(bad(
                    "minID and maxID should be configured simultaneously, minID is missing",
                ))
            }
            (Some(_), None) => {
                return Err(bad(
                    "minID and maxID should be configured simultaneously, maxID is missing",
                ))
            }
            (None, None) => {}
        }
        if let Some(id) = t.id {
            if !ok(id) {
                return Err(bad("incorrect trunk id parameter"));
            }
            set.insert(id);
        }
    }
    Ok(set.into_iter().map(|v| v as u16).collect())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for (i, p) in s.split([':', '-']).enumerate() {
        if i >= 6 || p.len() != 2 {
            return None;
        }
        out[i] = u8::from_str_radix(p, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

impl BridgeConf {
    pub fn load(config: &Value) -> Result<Self> {
        Self::load_with_args(config, "")
    }

    /// Loads the config; `cni_args` is `CNI_ARGS` (for `MAC=`).
    pub fn load_with_args(config: &Value, cni_args: &str) -> Result<Self> {
        let mut c: BridgeConf = serde_json::from_value(config.clone())
            .map_err(|e| Error::Config(format!("failed to load netconf: {e}")))?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        if c.hairpin_mode && c.promisc_mode {
            return Err(Error::Config(
                "cannot set hairpin mode and promiscuous mode at the same time".into(),
            ));
        }
        if !(0..=4094).contains(&c.vlan) {
            return Err(Error::Config(format!(
                "invalid VLAN ID {} (must be between 0 and 4094)",
                c.vlan
            )));
        }
        if let Some(t) = &c.vlan_trunk {
            c.vlans = collect_vlan_trunk(t)?;
        }
        let mut mac = String::new();
        for (k, v) in crate::types::parse_cni_args(cni_args).unwrap_or_default() {
            if k == "MAC" && !v.is_empty() {
                mac = v;
            }
        }
        if !c.args.cni.mac.is_empty() {
            mac.clone_from(&c.args.cni.mac);
        }
        if !c.runtime_config.mac.is_empty() {
            mac.clone_from(&c.runtime_config.mac);
        }
        if !mac.is_empty() {
            c.mac = Some(
                parse_mac(&mac)
                    .ok_or_else(|| Error::Config(format!("invalid MAC address {mac:?}")))?,
            );
        }
        validate_ifname(&c.bridge)
            .map_err(|_| Error::Config(format!("invalid bridge name {:?}", c.bridge)))?;
        Ok(c)
    }

    /// VLAN filtering is on when a VLAN or a trunk is configured.
    pub fn vlan_filtering(&self) -> bool {
        self.vlan != 0 || self.vlan_trunk.is_some()
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
    let mut m = [0u8; 6];
    sysctl::random_fill(&mut m);
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

/// Finds or creates the bridge and brings it up.
fn ensure_bridge(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link> {
    let name = &conf.bridge;
    let existing = nl.link_by_name(name)?;
    let br = match existing {
        Some(l) => l,
        None => {
            match nl.add_bridge(name, conf.mtu(), Some(random_mac()), conf.vlan_filtering()) {
                Ok(()) => tracing::info!(bridge = %name, "created bridge"),
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) if e.errno() == Some(libc::EOPNOTSUPP) && conf.vlan_filtering() => {
                    return Err(Error::Other(format!(
                        "could not create bridge {name} with VLAN filtering: this kernel lacks \
                         CONFIG_BRIDGE_VLAN_FILTERING; remove \"vlan\"/\"vlanTrunk\" ({e})"
                    )))
                }
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
    if conf.promisc_mode && !br.promisc {
        nl.set_promisc(br.index)?;
    }
    // We own the routes of this interface (reference behaviour); IPv6 may be off: ignore errors.
    let _ = sysctl::set(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
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

/// The container side of a new veth pair: its MAC (chosen here, like the kernel would: random,
/// locally administered) and, when the kernel echoed the host side, its index in the container.
struct Peer {
    mac: [u8; 6],
    index: Option<u32>,
}

/// Creates a veth pair: the host end (`veth%08x`, up, attached to `br`) in the current namespace
/// and the peer `ifname` in the namespace `peer_ns` refers to.
fn create_veth(
    nl: &mut Netlink,
    peer_ns: &std::fs::File,
    ifname: &str,
    mtu: Option<u32>,
    br: &Link,
    mac: Option<[u8; 6]>,
) -> Result<(Link, Peer)> {
    use std::os::fd::AsRawFd;
    let peer_mac = mac.unwrap_or_else(random_mac);
    for _ in 0..10 {
        let host = format!("veth{:08x}", sysctl::random_u32());
        let link = match nl.add_veth(
            &host,
            ifname,
            peer_ns.as_raw_fd(),
            mtu,
            br.index,
            Some(peer_mac),
        ) {
            Ok(Some(echoed)) => echoed,
            Ok(None) => nl.link_by_name(&host)?.ok_or_else(|| {
                Error::Other(format!("veth {host} vanished right after it was created"))
            })?,
            // EEXIST is ambiguous (host name or peer name): retry only if the host name is taken.
            Err(e) if e.errno() == Some(libc::EEXIST) && nl.link_by_name(&host)?.is_some() => {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        // IFLA_LINK is the peer's index in its namespace (only an echoed link names it).
        let index = link.peer_index.filter(|_| link.link_netnsid.is_some());
        return Ok((
            link,
            Peer {
                mac: peer_mac,
                index,
            },
        ));
    }
    Err(Error::Other(
        "could not find a free host veth name after 10 tries".into(),
    ))
}

/// Puts a bridge port into its VLANs like the reference plugin: the default VLAN goes away
/// (unless `preserveDefaultVlan`), `vlan` becomes the untagged PVID, trunk VLANs are tagged.
fn configure_port_vlans(
    nl: &mut Netlink,
    port: u32,
    vlan: u16,
    trunk: &[u16],
    preserve: bool,
) -> Result<()> {
    if (vlan != 0 || !trunk.is_empty()) && !preserve {
        match nl.bridge_vlan_del(port, 1) {
            Ok(()) => {}
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if vlan != 0 {
        nl.bridge_vlan_add(port, vlan, true, true)?;
    }
    for v in trunk {
        nl.bridge_vlan_add(port, *v, false, false)?;
    }
    if vlan == 0 && !trunk.is_empty() {
        nl.bridge_vlan_add(port, 1, true, true)?;
    }
    Ok(())
}

/// The gateway interface of a VLAN network: a veth pair whose far end `<bridge>.<vlan>` stays in
/// the host namespace and whose near end is an untagged port of that VLAN.
fn ensure_vlan_interface(nl: &mut Netlink, br: &Link, vlan: u16, preserve: bool) -> Result<Link> {
    let name = format!("{}.{vlan}", br.name);
    if let Some(l) = nl.link_by_name(&name)? {
        return Ok(l);
    }
    validate_ifname(&name).map_err(|_| {
        Error::Config(format!(
            "VLAN gateway interface name {name:?} is too long: use a shorter bridge name"
        ))
    })?;
    let here = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::io("open the host network namespace", e))?;
    let port = match create_veth(nl, &here, &name, br.mtu, br, None) {
        Ok((p, _)) => p,
        // A concurrent ADD created it first.
        Err(e) => match nl.link_by_name(&name)? {
            Some(l) => return Ok(l),
            None => return Err(e),
        },
    };
    configure_port_vlans(nl, port.index, vlan, &[], preserve)?;
    let l = nl
        .link_by_name(&name)?
        .ok_or_else(|| Error::Other(format!("{name} vanished right after it was created")))?;
    nl.set_up(l.index)?;
    Ok(l)
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

/// With duplicate address detection on, waits until no address of the link is tentative any
/// more, as the reference does: routes via an address still in DAD would fail, and so would the
/// container's first packets. An address that failed DAD is an error.
fn settle_addresses(
    nl: &mut Netlink,
    index: u32,
    ifname: &str,
    timeout: std::time::Duration,
) -> Result<()> {
    use crate::netlink::{IFA_F_DADFAILED, IFA_F_TENTATIVE};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let addrs = nl.addresses_with_flags(Some(index))?;
        if let Some((_, a, _)) = addrs.iter().find(|(_, _, f)| f & IFA_F_DADFAILED != 0) {
            return Err(Error::Other(format!(
                "{ifname}: address {a} failed duplicate address detection (another host has it)"
            )));
        }
        if !addrs.iter().any(|(_, _, f)| f & IFA_F_TENTATIVE != 0) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Other(format!(
                "{ifname} still has tentative addresses after {} s of duplicate address detection",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sets addresses and routes on the container interface (run inside the netns).
fn configure_container(
    ifname: &str,
    peer: &Peer,
    result: &CniResult,
    if_index: usize,
    dad: bool,
) -> Result<Option<String>> {
    // Per-interface sysctls of this (the container's) new interface, as the reference sets them.
    if dad {
        let _ = sysctl::write(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
        let _ = sysctl::write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
    } else {
        let _ = sysctl::write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
    }
    let _ = sysctl::write(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
    let mut nl = Netlink::open()?;
    let link = match peer.index {
        // Just created, down, with the MAC we gave it.
        Some(index) => Link {
            index,
            name: ifname.to_string(),
            mac: Some(peer.mac.to_vec()),
            ..Default::default()
        },
        None => nl.link_by_name(ifname)?.ok_or_else(|| {
            Error::Other(format!("{ifname} is missing in the container namespace"))
        })?,
    };
    let mine: Vec<&IpConfig> = result
        .ips
        .iter()
        .filter(|i| i.interface == Some(if_index))
        .collect();
    for ip in &mine {
        match nl.add_address_dad(link.index, ip.address, dad) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !link.up {
        nl.set_up(link.index)?;
    }
    if dad && mine.iter().any(|i| !i.address.addr.is_ipv4()) {
        settle_addresses(
            &mut nl,
            link.index,
            ifname,
            std::time::Duration::from_secs(10),
        )?;
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

/// The owner tag of this attachment's masquerade rules.
fn masq_owner(a: &CmdArgs) -> nat::Owner {
    nat::Owner::new("bridge", a.network_name(), &a.container_id, &a.ifname)
}

pub struct Bridge;

impl Bridge {
    /// Everything of ADD but IPAM and the masquerade rules: bridge, veth pair, container
    /// addresses and routes, gateway, spoof check. `host_veth` records the veth for cleanup.
    fn add_links(
        &self,
        a: &CmdArgs,
        conf: &BridgeConf,
        ns: &NetNs,
        ipam_res: Option<CniResult>,
        host_veth: &mut Option<u32>,
    ) -> Result<CniResult> {
        let mut nl = Netlink::open()?;
        let nl = &mut nl;
        let br = ensure_bridge(nl, conf)?;
        let (host, peer) = create_veth(nl, ns.file(), &a.ifname, conf.mtu(), &br, conf.mac)?;
        *host_veth = Some(host.index);
        tracing::info!(host = %host.name, bridge = %br.name, "created veth pair");
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
        configure_port_vlans(
            nl,
            host.index,
            conf.vlan as u16,
            &conf.vlans,
            conf.preserve_default_vlan,
        )?;
        if let Some(ipam_res) = ipam_res {
            result.ips = ipam_res.ips;
            result.routes = ipam_res.routes;
            result.dns = ipam_res.dns;
            for ip in result.ips.iter_mut() {
                ip.interface = Some(2);
            }
            let gws = calc_gateways(&mut result, conf);
            let dad = conf.enabledad;
            let mac = ns.run(|| configure_container(&a.ifname, &peer, &result, 2, dad))??;
            result.interfaces[2].mac = mac;
            if conf.is_gateway {
                // With a VLAN the gateway lives on `<bridge>.<vlan>`, else on the bridge.
                let gw_link = if conf.vlan != 0 && !gws.is_empty() {
                    let l = ensure_vlan_interface(
                        nl,
                        &br,
                        conf.vlan as u16,
                        conf.preserve_default_vlan,
                    )?;
                    result.interfaces.push(Interface {
                        name: l.name.clone(),
                        mac: l.mac_string(),
                        ..Default::default()
                    });
                    l
                } else {
                    br.clone()
                };
                for gw in &gws {
                    ensure_bridge_addr(nl, &gw_link, *gw, conf.force_address)?;
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
        } else {
            let up = !conf.disable_container_interface;
            result.interfaces[2].mac = ns.run(|| -> Result<Option<String>> {
                let mut cnl = Netlink::open()?;
                let l = cnl.link_by_name(&a.ifname)?.ok_or_else(|| {
                    Error::Other(format!(
                        "{} is missing in the container namespace",
                        a.ifname
                    ))
                })?;
                if up {
                    cnl.set_up(l.index)?;
                }
                Ok(l.mac_string())
            })??;
        }
        if conf.macspoofchk {
            let mac = result.interfaces[2]
                .mac
                .as_deref()
                .and_then(parse_mac)
                .ok_or_else(|| Error::Other("container interface has no MAC to pin".into()))?;
            nat::replace_in(
                crate::nft::NFPROTO_BRIDGE,
                &masq_owner(a),
                &[(nat::CHAIN_SPOOF, nat::spoofchk_rule(&host.name, mac))],
            )?;
        }
        if dns_set(&conf.dns) {
            result.dns = conf.dns.clone();
        }
        // Re-read the bridge: its MAC may have changed with its first port.
        let br_now = nl.link_by_name(&br.name)?.unwrap_or_else(|| br.clone());
        result.interfaces[0].mac = br_now.mac_string();
        Ok(result)
    }

    /// Deletes the container's interface (if the netns and the link still exist).
    fn del_link(&self, a: &CmdArgs) -> Result<()> {
        let Some(path) = a.netns.as_deref() else {
            return Ok(());
        };
        let ns = match NetNs::open(path) {
            Ok(ns) => ns,
            Err(NetnsError::NotFound { .. }) => {
                tracing::info!("netns is gone; releasing the addresses only");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        // The container end and, for a veth, the index of its peer on this side.
        let found = ns.run(|| -> Result<Option<(u32, Option<u32>)>> {
            let mut nl = Netlink::open()?;
            Ok(nl.link_by_name(&a.ifname)?.map(|l| {
                let peer = (l.kind.as_deref() == Some("veth") && l.link_netnsid.is_some())
                    .then_some(l.peer_index)
                    .flatten();
                (l.index, peer)
            }))
        })??;
        let Some((index, peer)) = found else {
            return Ok(());
        };
        // Deleting the host end removes the pair; done from a detached child we only wait until
        // the pair is gone from the namespaces, not for the kernel's whole veth teardown.
        if let Some(peer) = peer {
            let mut nl = Netlink::open()?;
            let ours = nl.link_by_index(peer)?.is_some_and(|h| {
                h.kind.as_deref() == Some("veth")
                    && h.link_netnsid.is_some()
                    && h.peer_index == Some(index)
            });
            if ours {
                crate::detach::delete_link(peer)?;
                let gone = ns.run(|| -> Result<bool> {
                    Ok(Netlink::open()?.link_by_name(&a.ifname)?.is_none())
                })??;
                if gone {
                    return Ok(());
                }
            }
        }
        ns.run(|| -> Result<()> {
            let mut nl = Netlink::open()?;
            match nl.del_link(index) {
                Ok(()) => Ok(()),
                Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })?
    }
}

fn dns_set(d: &Dns) -> bool {
    !d.nameservers.is_empty() || !d.search.is_empty() || !d.options.is_empty() || d.domain.is_some()
}

/// The masquerade rules for the addresses of an IPAM result.
fn masq_rules(ips: &[IpConfig]) -> Vec<(&'static str, Vec<crate::nft::Expr>)> {
    ips.iter()
        .map(|ip| {
            (
                nat::CHAIN_POSTROUTING,
                nat::masq_rule(ip.address.addr, ip.address),
            )
        })
        .collect()
}

impl Plugin for Bridge {
    /// ADD. IPAM runs first (the masquerade rules need the addresses), then the rules (in a
    /// detached worker) and the links at the same time. On failure everything done so far is
    /// undone.
    fn add(&self, a: &CmdArgs) -> Result<String> {
        let conf = BridgeConf::load_with_args(&a.config, &a.args)?;
        if !conf.ipam_type().is_empty() && conf.disable_container_interface {
            return Err(Error::Config(
                "cannot use IPAM when DisableContainerInterface flag is set".into(),
            ));
        }
        let ns = NetNs::open(netns_path(a)?)?;
        // Before IPAM: a failed ADD releases the container's addresses, which must not hit
        // those of the interface that already has this name.
        let ifname = a.ifname.clone();
        let exists = ns.run(move || -> Result<bool> {
            let mut cnl = Netlink::open()?;
            Ok(cnl.link_by_name(&ifname)?.is_some())
        })??;
        if exists {
            return Err(Error::Other(format!(
                "container veth name provided ({}) already exists",
                a.ifname
            )));
        }
        let ipam = conf.ipam_type();
        let ipam_res = if ipam.is_empty() {
            None
        } else {
            let out = invoke::delegate(ipam, "ADD", &a.path, &a.stdin)?;
            let parsed = serde_json::from_slice::<Value>(&out)
                .map_err(Error::from)
                .and_then(|v| {
                    CniResult::from_value(v)
                        .map_err(|e| Error::Other(format!("cannot parse the IPAM result: {e}")))
                })
                .and_then(|r| {
                    if r.ips.is_empty() {
                        Err(Error::Other(
                            "IPAM plugin returned missing IP config".into(),
                        ))
                    } else {
                        Ok(r)
                    }
                });
            match parsed {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = invoke::delegate(ipam, "DEL", &a.path, &a.stdin);
                    return Err(e);
                }
            }
        };
        let rules = match (&ipam_res, conf.ip_masq) {
            (Some(r), true) => masq_rules(&r.ips),
            _ => Vec::new(),
        };
        let mut host_veth = None;
        // The rules commit in a detached worker (see `detach`) while the links are built; it
        // is forked now, while this process is single-threaded.
        let pending = (!rules.is_empty())
            .then(|| nat::replace_start(crate::nft::NFPROTO_INET, &masq_owner(a), &rules));
        let links = self.add_links(a, &conf, &ns, ipam_res, &mut host_veth);
        let rules_done = pending.map_or(Ok(0), |p| p.wait()).map_err(Error::from);
        let outcome = links.and_then(|r| rules_done.map(|_| r));
        match outcome {
            Ok(r) => Ok(r.render(&a.version)),
            Err(e) => {
                if !ipam.is_empty() {
                    if let Err(e2) = invoke::delegate(ipam, "DEL", &a.path, &a.stdin) {
                        tracing::warn!(error = %e2, "IPAM DEL after a failed ADD failed");
                    }
                }
                if let Some(idx) = host_veth {
                    let gone = Netlink::open().and_then(|mut nl| nl.del_link(idx));
                    if let Err(e2) = gone {
                        tracing::warn!(error = %e2, "deleting the veth after a failed ADD failed");
                    }
                }
                if conf.ip_masq || conf.macspoofchk {
                    if let Err(e2) = nat::delete_owner(&masq_owner(a)) {
                        tracing::warn!(error = %e2, "removing NAT/spoof-check rules after a failed ADD failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// DEL: the interface, then the rules, then the addresses (the interface before the addresses,
    /// as the reference does). Idempotent: every step tolerates what is already gone.
    fn del(&self, a: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::load(&a.config)?;
        self.del_link(a)?;
        if conf.ip_masq || conf.macspoofchk {
            let n = nat::delete_owner(&masq_owner(a))?;
            tracing::debug!(rules = n, "deleted masquerade/spoof-check rules");
        }
        if !conf.ipam_type().is_empty() {
            invoke::delegate(conf.ipam_type(), "DEL", &a.path, &a.stdin)?;
        }
        Ok(())
    }

    /// Spec 1.1 GC: drops masquerade rules of attachments that are no longer valid (whatever
    /// `ipMasq` says now), then the IPAM plugin frees stale addresses.
    fn gc(&self, a: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::load(&a.config)?;
        let n = nat::gc("bridge", a.network_name(), &valid_attachments(&a.config))?;
        tracing::info!(rules = n, "gc: removed stale masquerade rules");
        if !conf.ipam_type().is_empty() {
            invoke::delegate(conf.ipam_type(), "GC", &a.path, &a.stdin)?;
        }
        Ok(())
    }

    /// Spec 1.1 STATUS: nf_tables must answer when rules are needed; then the IPAM plugin's.
    fn status(&self, a: &CmdArgs) -> Result<()> {
        let conf = BridgeConf::load(&a.config)?;
        if conf.ip_masq || conf.macspoofchk {
            crate::nft::Nft::open().map_err(|e| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    "nf_tables is not usable",
                    e.to_string(),
                )
            })?;
        }
        if !conf.ipam_type().is_empty() {
            invoke::delegate(conf.ipam_type(), "STATUS", &a.path, &a.stdin)?;
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
        if conf.ip_masq && !prev.ips.is_empty() && nat::count_owner(&masq_owner(a))? == 0 {
            return Err(Error::Other(format!(
                "the masquerade rules of {} are missing from table inet {}",
                a.container_id,
                nat::TABLE
            )));
        }
        if conf.macspoofchk && nat::count_owner_in(crate::nft::NFPROTO_BRIDGE, &masq_owner(a))? == 0
        {
            return Err(Error::Other(format!(
                "the MAC spoof-check rule of {} is missing from table bridge {}",
                a.container_id,
                nat::TABLE
            )));
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
