//! `portmap`: chained after `bridge`. For now it passes `prevResult` through unchanged; the NAT
//! rules for `portMappings` come with the nftables work.

use serde_json::Value;

use super::prev_result;
use crate::error::{Error, Result};
use crate::skel::{CmdArgs, Plugin};

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, a: &CmdArgs) -> Result<String> {
        let prev = prev_result(&a.config)?
            .ok_or_else(|| Error::Config("portmap must be called as a chained plugin".into()))?;
        let has_mappings = a
            .config
            .pointer("/runtimeConfig/portMappings")
            .and_then(Value::as_array)
            .is_some_and(|m| !m.is_empty());
        if has_mappings {
            tracing::warn!(
                "portmap: port mappings are not implemented yet; passing the result through"
            );
        }
        Ok(prev.render(&a.version))
    }

    fn del(&self, _a: &CmdArgs) -> Result<()> {
        Ok(())
    }

    fn check(&self, _a: &CmdArgs) -> Result<()> {
        Ok(())
    }
}
