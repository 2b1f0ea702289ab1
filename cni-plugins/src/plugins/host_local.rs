//! `host-local`: allocates addresses from ranges and records them on disk.

use crate::error::Result;
use crate::ipam::allocator::allocate;
use crate::ipam::config::{parse_resolv_conf, IpamConfig};
use crate::ipam::store::Store;
use crate::ipam::IpamError;
use crate::skel::{valid_attachments, CmdArgs, Plugin};
use crate::types::CniResult;

pub struct HostLocal;

impl Plugin for HostLocal {
    fn add(&self, a: &CmdArgs) -> Result<String> {
        let cfg = IpamConfig::load(&a.config, &a.args)?;
        let mut result = CniResult::default();
        if let Some(p) = &cfg.resolv_conf {
            result.dns = parse_resolv_conf(p)?;
        }
        // Each requested address must fall into one of the range sets.
        let mut per_set = vec![None; cfg.range_sets.len()];
        for ip in &cfg.requested {
            let i = cfg
                .range_sets
                .iter()
                .position(|s| s.contains(*ip))
                .ok_or_else(|| {
                    IpamError::Config(format!("requested IP address {ip} is not in any range"))
                })?;
            per_set[i] = Some(*ip);
        }
        let store = Store::open(&cfg.data_dir, &cfg.network)?;
        for (i, set) in cfg.range_sets.iter().enumerate() {
            match allocate(&store, set, i, &a.container_id, &a.ifname, per_set[i]) {
                Ok(c) => result.ips.push(c),
                Err(e) => {
                    if let Err(e2) = store.release_by_id(&a.container_id, &a.ifname) {
                        tracing::warn!(error = %e2, "releasing partial allocation failed");
                    }
                    return Err(e.into());
                }
            }
        }
        drop(store);
        result.routes = cfg.routes;
        tracing::info!(ips = ?result.ips.iter().map(|i| i.address.to_string()).collect::<Vec<_>>(), "allocated");
        Ok(result.render(&a.version))
    }

    fn del(&self, a: &CmdArgs) -> Result<()> {
        let cfg = IpamConfig::load(&a.config, &a.args)?;
        let store = Store::open(&cfg.data_dir, &cfg.network)?;
        let n = store.release_by_id(&a.container_id, &a.ifname)?;
        tracing::info!(released = n, "released");
        Ok(())
    }

    /// Spec 1.1 GC: frees every address whose attachment is not in `cni.dev/valid-attachments`.
    fn gc(&self, a: &CmdArgs) -> Result<()> {
        let cfg = IpamConfig::load(&a.config, &a.args)?;
        let valid = valid_attachments(&a.config);
        let store = Store::open(&cfg.data_dir, &cfg.network)?;
        let n = store.retain(|id, ifname| valid.iter().any(|(i, f)| i == id && f == ifname))?;
        tracing::info!(released = n, "gc");
        Ok(())
    }

    /// Spec 1.1 STATUS: ready when the store can be opened and locked.
    fn status(&self, a: &CmdArgs) -> Result<()> {
        let cfg = IpamConfig::load(&a.config, &a.args)?;
        Store::open(&cfg.data_dir, &cfg.network).map_err(|e| {
            crate::error::CniError::new(
                crate::error::code::NOT_AVAILABLE,
                "host-local cannot use its store",
                e.to_string(),
            )
        })?;
        Ok(())
    }

    fn check(&self, a: &CmdArgs) -> Result<()> {
        let cfg = IpamConfig::load(&a.config, &a.args)?;
        let store = Store::open(&cfg.data_dir, &cfg.network)?;
        if store.get_by_id(&a.container_id, &a.ifname)?.is_empty() {
            return Err(IpamError::NotFound {
                id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            }
            .into());
        }
        Ok(())
    }
}
