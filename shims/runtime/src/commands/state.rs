//! `state`: print runc's state JSON.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use libcontainer::container::{Container, ContainerStatus};
use serde::Serialize;

use super::{load_container, Globals};
use crate::bundle::rootfs_path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container id.
    pub id: String,
}

/// The JSON runc prints (runc's `cState`): the OCI state plus `rootfs`, `created` and `owner`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuncState {
    pub oci_version: String,
    pub id: String,
    /// Host pid of the init; 0 once stopped (as runc).
    pub pid: i32,
    pub status: ContainerStatus,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 with nanoseconds.
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    /// runc leaves this empty for containers run by root.
    pub owner: String,
}

impl RuncState {
    pub fn from_container(container: &Container) -> Self {
        let state = &container.state;
        let pid = match state.status {
            ContainerStatus::Stopped => 0,
            _ => state.pid.unwrap_or(0),
        };
        let created = state
            .created
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned());
        Self {
            oci_version: state.oci_version.clone(),
            id: state.id.clone(),
            pid,
            status: state.status,
            bundle: state.bundle.clone(),
            rootfs: rootfs_of(&state.bundle),
            created,
            annotations: state.annotations.clone().filter(|a| !a.is_empty()),
            owner: String::new(),
        }
    }
}

/// The rootfs as runc reports it: `root.path` of the bundle's config, made absolute.
fn rootfs_of(bundle: &Path) -> PathBuf {
    let root = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| spec.root().as_ref().map(|r| r.path().clone()))
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let path = rootfs_path(bundle, &root);
    std::fs::canonicalize(&path).unwrap_or(path)
}

pub fn state(args: Args, globals: &Globals) -> Result<()> {
    let container = load_container(globals, &args.id)?;
    let state = RuncState::from_container(&container);
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}
