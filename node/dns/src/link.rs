//! The host side of the cluster DNS address: a dummy interface holding it as a /32 (/128), so
//! that packets to it from pods (through their default route) and from the host are delivered
//! locally; on a kernel without dummy links, the loopback interface holds it instead.
//! Privileged (CAP_NET_ADMIN), over rtnetlink; the netlink code is the CNI plugins'.

use std::net::IpAddr;

use skiff_cni::netlink::Netlink;
use skiff_cni::types::IpNet;

fn ensure_blocking(ifname: &str, addr: IpAddr) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    let link = match nl.link_by_name(ifname).map_err(|e| e.to_string())? {
        Some(l) => l,
        None => match nl.add_simple_link(ifname, "dummy") {
            Ok(()) => nl
                .link_by_name(ifname)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("dummy interface {ifname} vanished"))?,
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {
                tracing::info!(%addr, "no dummy links in this kernel: the cluster DNS address goes on lo");
                nl.link_by_name("lo")
                    .map_err(|e| e.to_string())?
                    .ok_or("no loopback interface")?
            }
            Err(e) => return Err(format!("creating dummy interface {ifname}: {e}")),
        },
    };
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    let net = IpNet::new(addr, prefix).ok_or("bad address")?;
    let have = nl.addresses(Some(link.index)).map_err(|e| e.to_string())?;
    if !have.iter().any(|(_, n)| n.addr == addr) {
        nl.add_address(link.index, net)
            .map_err(|e| format!("adding {addr} to {ifname}: {e}"))?;
    }
    nl.set_up(link.index).map_err(|e| e.to_string())?;
    Ok(())
}

/// Creates `ifname` (type dummy) unless it exists, puts `addr` on it and sets it up.
pub async fn ensure_address(ifname: &str, addr: IpAddr) -> Result<(), String> {
    let ifname = ifname.to_string();
    tokio::task::spawn_blocking(move || ensure_blocking(&ifname, addr))
        .await
        .map_err(|e| e.to_string())?
}

/// Deletes the interface (and so the address), or the address from lo; nothing if neither
/// exists.
pub fn remove(ifname: &str, addr: IpAddr) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    if let Some(l) = nl.link_by_name(ifname).map_err(|e| e.to_string())? {
        nl.del_link(l.index).map_err(|e| e.to_string())?;
    }
    if let Some(lo) = nl.link_by_name("lo").map_err(|e| e.to_string())? {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        if let Some(net) = IpNet::new(addr, prefix) {
            let _ = nl.del_address(lo.index, net);
        }
    }
    Ok(())
}
