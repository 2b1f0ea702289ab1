//! Sandbox records.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use skiff_proto::cri;

use super::{Record, RECORD_VERSION};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SandboxState {
    /// Being set up by RunPodSandbox (not yet visible as ready).
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Sandbox {
    pub version: u32,
    pub id: String,
    pub config: cri::PodSandboxConfig,
    pub runtime_handler: String,
    pub state: SandboxState,
    pub created_at: i64,
    /// The `skiff-monitor pause` process and its start time (to detect PID reuse).
    pub pause_pid: i32,
    pub pause_start_time: u64,
    /// `<netns_dir>/<id>` bind mount, None for host-network pods.
    pub netns_path: Option<PathBuf>,
    pub host_network: bool,
    pub ip: String,
    pub additional_ips: Vec<String>,
    /// cgroupfs path containers go under (sandbox's cgroup_parent; with the systemd driver
    /// the slice's path below systemd's root, `/kubepods.slice/.../<pod>.slice`).
    pub cgroup_parent: String,
    /// The parent is a systemd slice: the pause and the containers go into
    /// `cri-skiff-<id>.scope` below it.
    #[serde(default)]
    pub systemd_cgroup: bool,
    /// The pod's user namespace mappings (`userns_options` mode POD); the pause holds it.
    #[serde(default)]
    pub userns: Option<crate::runtime::PodUserns>,
}

impl Sandbox {
    pub(crate) fn new(
        id: String,
        config: cri::PodSandboxConfig,
        runtime_handler: String,
    ) -> Sandbox {
        Sandbox {
            version: RECORD_VERSION,
            id,
            config,
            runtime_handler,
            state: SandboxState::Creating,
            created_at: crate::util::now_nanos(),
            pause_pid: 0,
            pause_start_time: 0,
            netns_path: None,
            host_network: false,
            ip: String::new(),
            additional_ips: Vec::new(),
            cgroup_parent: String::new(),
            systemd_cgroup: false,
            userns: None,
        }
    }

    pub(crate) fn metadata(&self) -> cri::PodSandboxMetadata {
        self.config.metadata.clone().unwrap_or_default()
    }

    /// The unique name the kubelet gives a sandbox: `<name>_<namespace>_<uid>_<attempt>`.
    pub(crate) fn name(&self) -> String {
        let m = self.metadata();
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }

    pub(crate) fn cri_state(&self) -> cri::PodSandboxState {
        match self.state {
            // A sandbox whose pause process died (e.g. after a reboot) is not ready any more.
            SandboxState::Ready if crate::sys::alive(self.pause_pid, self.pause_start_time) => {
                cri::PodSandboxState::SandboxReady
            }
            _ => cri::PodSandboxState::SandboxNotready,
        }
    }

    /// `/proc/<pause>/ns/<kind>` while the pause process is ours and alive.
    pub(crate) fn ns_path(&self, kind: &str) -> Option<PathBuf> {
        if self.pause_pid > 0 && crate::sys::alive(self.pause_pid, self.pause_start_time) {
            Some(PathBuf::from(format!("/proc/{}/ns/{kind}", self.pause_pid)))
        } else {
            None
        }
    }
}

impl Record for Sandbox {
    const KIND: &'static str = "sandbox";
    const FILE: &'static str = "sandbox.json";
    fn key(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
}
