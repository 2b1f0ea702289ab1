//! Server configuration; every path is a flag of `skiff cri`.

use std::path::PathBuf;

/// Configuration of the CRI server. `Default` gives the paths of docs/node-contracts.md.
#[derive(Debug, Clone)]
pub struct CriConfig {
    /// Unix socket the gRPC server listens on.
    pub socket: PathBuf,
    /// Root of the server's own state: `sandboxes/`, `containers/`, `images/`.
    pub state_dir: PathBuf,
    /// The runc-compatible OCI runtime binary.
    pub runtime_bin: PathBuf,
    /// `--root` passed to the OCI runtime.
    pub runtime_root: PathBuf,
    /// The `skiff-monitor` binary (pause + per-container monitor).
    pub monitor_bin: PathBuf,
    /// CNI configuration dir: the first `*.conflist` in lexical order is the pod network.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin binaries (also `CNI_PATH`).
    pub cni_bin_dir: PathBuf,
    /// Where sandbox network namespaces are bind-mounted (`<netns_dir>/<sandbox-id>`).
    pub netns_dir: PathBuf,
    /// Registries (`host[:port]`) reached over plain HTTP instead of HTTPS (loopback
    /// registries always are, unless a hosts.toml says otherwise).
    pub insecure_registries: Vec<String>,
    /// containerd-style registry host configs: `<dir>/<registry>/hosts.toml` (mirrors, server).
    pub registry_config_dir: PathBuf,
    /// Default cgroup parent when a sandbox gives none (cgroupfs path, relative to each controller).
    pub default_cgroup_parent: String,
    /// Seconds to wait for a container's monitor to report `created`/`create-error`.
    pub create_timeout_secs: u64,
    /// Seconds a CNI plugin may run before it is killed.
    pub cni_timeout_secs: u64,
    /// Address of the Exec/Attach/PortForward streaming server (`127.0.0.1:0`: a free port on
    /// loopback, where only the kubelet on this node reaches it).
    pub stream_address: String,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            socket: PathBuf::from("/run/skiff/cri.sock"),
            state_dir: PathBuf::from("/var/lib/skiff/cri"),
            runtime_bin: PathBuf::from("skiff-runtime"),
            runtime_root: PathBuf::from("/run/skiff/runtime"),
            monitor_bin: PathBuf::from("skiff-monitor"),
            cni_conf_dir: PathBuf::from("/var/lib/skiff/cni/net.d"),
            cni_bin_dir: PathBuf::from("/var/lib/skiff/cni/bin"),
            netns_dir: PathBuf::from("/run/skiff/netns"),
            insecure_registries: Vec::new(),
            registry_config_dir: PathBuf::from("/etc/skiff/certs.d"),
            default_cgroup_parent: "/skiff".to_string(),
            create_timeout_secs: 60,
            cni_timeout_secs: 60,
            stream_address: "127.0.0.1:0".to_string(),
        }
    }
}

impl CriConfig {
    pub(crate) fn sandboxes_dir(&self) -> PathBuf {
        self.state_dir.join("sandboxes")
    }
    pub(crate) fn containers_dir(&self) -> PathBuf {
        self.state_dir.join("containers")
    }
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
}
