//! Container records. The live state (created/running/exited, exit code) is read from the
//! monitor's files (`created`, `exit`) in the container's `monitor/` directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use skiff_proto::cri;

use super::{Record, RECORD_VERSION};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Container {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    pub config: cri::ContainerConfig,
    /// Image id (config digest) and the repo digest it was created from.
    pub image_id: String,
    pub image_ref: String,
    /// Snapshot keys (chain ids, hex) the rootfs is layered from, bottom first.
    pub snapshots: Vec<String>,
    pub created_at: i64,
    pub started_at: i64,
    /// Set when a StartContainer failed: the container is then reported exited with this message.
    pub start_error: Option<String>,
    pub pid: i32,
    /// Start time of `pid` (to tell it from a reused PID).
    #[serde(default)]
    pub pid_start_time: u64,
    pub log_path: PathBuf,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub monitor_dir: PathBuf,
    /// The sandbox's RuntimeClass handler (`""`: the default runtime).
    #[serde(default)]
    pub runtime_handler: String,
    /// The process's identity from its spec (ContainerStatus `user`).
    #[serde(default)]
    pub user: Option<UserRecord>,
}

/// uid, gid and every supplemental group of the container's process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserRecord {
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
}

/// The monitor's `exit` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExitInfo {
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub finished_at: String,
    /// The kernel OOM-killed a process of the container (its memory cgroup's `oom_kill` count
    /// rose while it ran).
    #[serde(default)]
    pub oom_killed: bool,
}

/// The monitor's `created` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CreatedInfo {
    pub pid: i32,
}

impl Container {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        sandbox_id: String,
        config: cri::ContainerConfig,
        image_id: String,
        image_ref: String,
        snapshots: Vec<String>,
        log_path: PathBuf,
        dir: &std::path::Path,
    ) -> Container {
        Container {
            version: RECORD_VERSION,
            id,
            sandbox_id,
            config,
            image_id,
            image_ref,
            snapshots,
            created_at: crate::util::now_nanos(),
            started_at: 0,
            start_error: None,
            pid: 0,
            pid_start_time: 0,
            log_path,
            bundle: dir.join("bundle"),
            rootfs: dir.join("bundle").join("rootfs"),
            monitor_dir: dir.join("monitor"),
            runtime_handler: String::new(),
            user: None,
        }
    }

    pub(crate) fn metadata(&self) -> cri::ContainerMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    pub(crate) fn exit_info(&self) -> Option<ExitInfo> {
        let data = std::fs::read(self.monitor_dir.join("exit")).ok()?;
        serde_json::from_slice(&data).ok()
    }

    pub(crate) fn cri_state(&self) -> cri::ContainerState {
        if self.start_error.is_some() || self.exit_info().is_some() {
            cri::ContainerState::ContainerExited
        } else if self.started_at > 0 {
            cri::ContainerState::ContainerRunning
        } else if self.pid > 0 {
            cri::ContainerState::ContainerCreated
        } else {
            cri::ContainerState::ContainerUnknown
        }
    }
}

impl Record for Container {
    const KIND: &'static str = "container";
    const FILE: &'static str = "container.json";
    fn key(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
}
