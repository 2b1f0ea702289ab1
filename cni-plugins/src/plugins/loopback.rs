//! `loopback`: brings `lo` up in the container's namespace.

use super::prev_result;
use crate::error::{Error, Result};
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::skel::{CmdArgs, Plugin};
use crate::types::{CniResult, Interface, IpConfig};

pub struct Loopback;

fn netns_of(a: &CmdArgs) -> Result<NetNs> {
    let p = a
        .netns
        .as_ref()
        .ok_or_else(|| Error::Config("CNI_NETNS is required".into()))?;
    Ok(NetNs::open(p)?)
}

impl Plugin for Loopback {
    fn add(&self, a: &CmdArgs) -> Result<String> {
        let ns = netns_of(a)?;
        let (mac, addrs) = ns.run(|| -> Result<_> {
            let mut nl = Netlink::open()?;
            let lo = nl
                .link_by_name("lo")?
                .ok_or_else(|| Error::Other("no lo link in the network namespace".into()))?;
            nl.set_up(lo.index)?;
            let addrs = nl.addresses(Some(lo.index))?;
            Ok((lo.mac_string(), addrs))
        })??;
        if let Some(prev) = prev_result(&a.config)? {
            return Ok(prev.render(&a.version));
        }
        let result = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac,
                sandbox: Some(ns.path().display().to_string()),
                ..Default::default()
            }],
            ips: addrs
                .into_iter()
                .map(|(_, n)| IpConfig {
                    interface: Some(0),
                    address: n,
                    gateway: None,
                })
                .collect(),
            ..Default::default()
        };
        Ok(result.render(&a.version))
    }

    fn del(&self, _a: &CmdArgs) -> Result<()> {
        Ok(())
    }

    fn check(&self, a: &CmdArgs) -> Result<()> {
        let ns = netns_of(a)?;
        let up = ns.run(|| -> Result<bool> {
            let mut nl = Netlink::open()?;
            Ok(nl.link_by_name("lo")?.is_some_and(|l| l.up))
        })??;
        if up {
            Ok(())
        } else {
            Err(Error::Other("lo is down in the network namespace".into()))
        }
    }
}
