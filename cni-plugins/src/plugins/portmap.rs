//! `portmap`: chained after `bridge`; forwards host ports to the container with nftables DNAT
//! rules in `inet skiff-cni` (see [`crate::nat`]). Keys of the reference plugin:
//! `runtimeConfig.portMappings` (`hostPort`, `containerPort`, `protocol`, `hostIP`), `snat`
//! (default true: hairpin and localhost connections are masqueraded), `masqAll`, `markMasqBit`
//! (default 13).

use std::net::IpAddr;

use serde::Deserialize;

use super::prev_result;
use crate::error::{Error, Result};
use crate::nat::{self, Dnat, Owner, Proto, SnatPolicy};
use crate::skel::{valid_attachments, CmdArgs, Plugin};
use crate::types::CniResult;

pub const DEFAULT_MARK_BIT: u32 = 13;

#[derive(Debug, Clone, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: i64,
    #[serde(rename = "containerPort")]
    pub container_port: i64,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default, rename = "portMappings")]
    port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default, rename = "masqAll")]
    masq_all: bool,
    #[serde(default, rename = "markMasqBit")]
    mark_masq_bit: Option<i64>,
    #[serde(default, rename = "externalSetMarkChain")]
    external_set_mark_chain: Option<String>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: RuntimeConfig,
}

/// The parsed portmap config.
#[derive(Debug)]
pub struct PortmapConf {
    pub mappings: Vec<PortMapping>,
    pub policy: SnatPolicy,
}

impl PortmapConf {
    pub fn load(config: &serde_json::Value) -> Result<Self> {
        let mut config = config.clone();
        if let Some(m) = config.pointer_mut("/runtimeConfig/portMappings") {
            *m = crate::types::fold_keys(m, &["hostPort", "containerPort", "protocol", "hostIP"]);
        }
        let raw: Raw =
            serde_json::from_value(config).map_err(|e| Error::Config(format!("portmap: {e}")))?;
        if raw.mark_masq_bit.is_some() && raw.external_set_mark_chain.is_some() {
            return Err(Error::Config(
                "portmap: cannot specify externalSetMarkChain and markMasqBit".into(),
            ));
        }
        if raw.external_set_mark_chain.is_some() {
            tracing::warn!("portmap: externalSetMarkChain is an iptables chain; ignored (nftables uses markMasqBit)");
        }
        let bit = raw.mark_masq_bit.unwrap_or(i64::from(DEFAULT_MARK_BIT));
        if !(0..=31).contains(&bit) {
            return Err(Error::Config(format!(
                "portmap: MasqMarkBit must be between 0 and 31 (got {bit})"
            )));
        }
        for m in &raw.runtime_config.port_mappings {
            if !(1..=65535).contains(&m.host_port) {
                return Err(Error::Config(format!(
                    "portmap: invalid host port number: {}",
                    m.host_port
                )));
            }
            if !(1..=65535).contains(&m.container_port) {
                return Err(Error::Config(format!(
                    "portmap: invalid container port number: {}",
                    m.container_port
                )));
            }
            if Proto::parse(&m.protocol).is_none() {
                return Err(Error::Config(format!(
                    "portmap: unknown protocol {:?} (tcp, udp or sctp)",
                    m.protocol
                )));
            }
            if !m.host_ip.is_empty() && m.host_ip.parse::<IpAddr>().is_err() {
                return Err(Error::Config(format!(
                    "portmap: invalid hostIP {:?}",
                    m.host_ip
                )));
            }
        }
        Ok(PortmapConf {
            mappings: raw.runtime_config.port_mappings,
            policy: SnatPolicy {
                snat: raw.snat.unwrap_or(true),
                masq_all: raw.masq_all,
                mark_bit: bit as u32,
            },
        })
    }
}

/// The first IPv4 and first IPv6 address of the container's interfaces in `prev`.
pub fn container_ips(prev: &CniResult) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in &prev.ips {
        let in_sandbox = match ip.interface {
            Some(i) => prev
                .interfaces
                .get(i)
                .is_none_or(|itf| itf.sandbox.is_some()),
            None => true,
        };
        let a = ip.address.addr;
        if in_sandbox && !out.iter().any(|o| o.is_ipv4() == a.is_ipv4()) {
            out.push(a);
        }
    }
    out
}

/// The DNAT entries: every mapping for each container address of a matching family.
pub fn dnat_entries(conf: &PortmapConf, ips: &[IpAddr]) -> Vec<Dnat> {
    let mut out = Vec::new();
    for m in &conf.mappings {
        let host_ip: Option<IpAddr> = m.host_ip.parse().ok();
        for ip in ips {
            if host_ip.is_some_and(|h| !h.is_unspecified() && h.is_ipv4() != ip.is_ipv4()) {
                continue;
            }
            out.push(Dnat {
                proto: Proto::parse(&m.protocol).unwrap_or(Proto::Tcp),
                host_port: m.host_port as u16,
                host_ip,
                container_ip: *ip,
                container_port: m.container_port as u16,
            });
        }
    }
    out
}

fn owner(a: &CmdArgs) -> Owner {
    Owner::new("portmap", a.network_name(), &a.container_id, &a.ifname)
}

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, a: &CmdArgs) -> Result<String> {
        let prev = prev_result(&a.config)?
            .ok_or_else(|| Error::Config("portmap must be called as a chained plugin".into()))?;
        let conf = PortmapConf::load(&a.config)?;
        if conf.mappings.is_empty() {
            return Ok(prev.render(&a.version));
        }
        let ips = container_ips(&prev);
        if ips.is_empty() {
            return Err(Error::Config(
                "portmap: prevResult has no container IP to map ports to".into(),
            ));
        }
        let entries = dnat_entries(&conf, &ips);
        let mut rules = Vec::new();
        for d in &entries {
            for r in nat::portmap_rules(d, conf.policy) {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        if conf.policy.snat && ips.iter().any(IpAddr::is_ipv4) {
            // Connections to 127.0.0.1:hostPort are DNATed out of the loopback net: the kernel
            // only routes them when route_localnet is on for the host side of the container.
            if let Some(itf) = prev.interfaces.iter().find(|i| i.sandbox.is_none()) {
                let key = format!("net/ipv4/conf/{}/route_localnet", itf.name);
                if let Err(e) = crate::sysctl::set(&key, "1") {
                    tracing::warn!(error = %e, key, "portmap: could not enable route_localnet");
                }
            }
        }
        nat::replace(&owner(a), &rules)?;
        tracing::info!(rules = rules.len(), "portmap: programmed port mappings");
        // UDP flows tracked before the DNAT rule existed would keep bypassing it. (Detached like
        // the rule changes: a netfilter socket's release may wait for an RCU grace period.)
        let udp: Vec<(u8, u16)> = entries
            .iter()
            .filter(|d| d.proto == Proto::Udp)
            .map(|d| {
                let family = if d.container_ip.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                (family as u8, d.host_port)
            })
            .collect();
        if !udp.is_empty() {
            let flushed = crate::detach::run(|nl| {
                let mut n = 0;
                for (family, port) in &udp {
                    n += crate::conntrack::delete_by_dst_port(nl, *family, 17, *port)?;
                }
                Ok(n)
            });
            match flushed {
                Ok(n) => tracing::debug!(entries = n, "flushed UDP conntrack entries"),
                Err(e) => tracing::warn!(error = %e, "portmap: flushing UDP conntrack failed"),
            }
        }
        Ok(prev.render(&a.version))
    }

    fn del(&self, a: &CmdArgs) -> Result<()> {
        let n = nat::delete_owner(&owner(a))?;
        tracing::info!(rules = n, "portmap: deleted port mapping rules");
        Ok(())
    }

    fn check(&self, a: &CmdArgs) -> Result<()> {
        let conf = PortmapConf::load(&a.config)?;
        if conf.mappings.is_empty() {
            return Ok(());
        }
        if nat::count_owner(&owner(a))? == 0 {
            return Err(Error::Other(format!(
                "portmap: the port mapping rules of {} are missing",
                a.container_id
            )));
        }
        Ok(())
    }

    /// Spec 1.1 STATUS: nf_tables must answer.
    fn status(&self, _a: &CmdArgs) -> Result<()> {
        crate::nft::Nft::open().map_err(|e| {
            crate::error::CniError::new(
                crate::error::code::NOT_AVAILABLE,
                "nf_tables is not usable",
                e.to_string(),
            )
        })?;
        Ok(())
    }

    fn gc(&self, a: &CmdArgs) -> Result<()> {
        let n = nat::gc("portmap", a.network_name(), &valid_attachments(&a.config))?;
        tracing::info!(rules = n, "portmap: gc removed stale rules");
        Ok(())
    }
}
