//! The plugins, one module each.

pub mod bridge;
pub mod host_local;
pub mod loopback;
pub mod portmap;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::CniResult;

/// Parses `prevResult` of the config, if any.
pub fn prev_result(config: &Value) -> Result<Option<CniResult>> {
    match config.get("prevResult") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => CniResult::from_value(v.clone())
            .map(Some)
            .map_err(|e| Error::Config(format!("could not parse prevResult: {e}"))),
    }
}
