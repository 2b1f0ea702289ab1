//! Server configuration; every path is a flag of `skiff cri`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// RuntimeClass handlers besides the default (`""`, which is `runtime_bin`/`runtime_root`):
    /// name -> runc-compatible binary and its `--root`. See [`CriConfig::with_default_handlers`]
    /// and [`CriConfig::load_file`].
    pub runtime_handlers: BTreeMap<String, RuntimeHandler>,
    /// Command (program, then leading arguments) that runs image fetches in a child process
    /// (`skiff cri-fetch`): the registry client, TLS and decompression then never live in the
    /// daemon. `None` fetches in-process.
    pub fetch_helper: Option<Vec<std::ffi::OsString>>,
    /// Drop clean code pages and freed heap after 2 s without a CRI call. For a standalone
    /// daemon; the code pages are shared with everything else in the process.
    pub trim_when_idle: bool,
    /// Run the default runtime from a sealed memfd copy bind-mounted at
    /// `<state_dir>/bin/<name>` (runc's `memfd-bind`; see `seal.rs`), so skiff-runtime needs
    /// no sealing re-exec of itself per call. `skiff server` and `skiff cri` set it.
    pub seal_runtime: bool,
    /// The systemd cgroup driver (`skiff cri --systemd-cgroup`, `systemd_cgroup = true` in the
    /// config file; containerd's `SystemdCgroup = true`): a sandbox's `.slice` cgroup parent is a
    /// systemd slice, the pause process and the containers go into `cri-skiff-<id>.scope`
    /// cgroups below it, and RuntimeConfig reports the `systemd` driver. See
    /// [`crate::cgroups::systemd`].
    pub systemd_cgroup: bool,
}

/// One RuntimeClass handler: a runc-compatible OCI runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The runtime binary (a name is looked up on PATH when the server starts).
    pub binary: PathBuf,
    /// Its `--root` state folder.
    #[serde(default)]
    pub root: Option<PathBuf>,
}

/// The CRI config file (TOML), e.g. `/etc/skiff/cri.toml`:
///
/// ```toml
/// [runtimes.runc]
/// binary = "/usr/sbin/runc"
/// root = "/run/skiff/runc"
///
/// [runtimes.crun]
/// binary = "crun"
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    /// The systemd cgroup driver ([`CriConfig::systemd_cgroup`]).
    #[serde(default)]
    pub systemd_cgroup: Option<bool>,
}

/// Errors of the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: runtime handler {name:?}: {msg}")]
    Handler {
        path: PathBuf,
        name: String,
        msg: String,
    },
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
            runtime_handlers: BTreeMap::new(),
            fetch_helper: None,
            trim_when_idle: false,
            seal_runtime: false,
            systemd_cgroup: false,
        }
    }
}

/// The handler name that means "the default runtime" besides `""`.
pub const DEFAULT_HANDLER_ALIAS: &str = "skiff";

impl CriConfig {
    /// Adds `runc` and `crun` handlers for those binaries found on PATH (roots next to
    /// `runtime_root`: `<runtime_root>-runc`, `<runtime_root>-crun`), unless already configured.
    pub fn with_default_handlers(mut self) -> CriConfig {
        for name in ["runc", "crun"] {
            if self.runtime_handlers.contains_key(name) {
                continue;
            }
            if let Some(bin) = find_on_path(name) {
                self.runtime_handlers.insert(
                    name.to_string(),
                    RuntimeHandler {
                        binary: bin,
                        root: None,
                    },
                );
            }
        }
        self
    }

    /// Merges the runtime handlers of a config file (TOML, [`ConfigFile`]) over the current
    /// ones; binaries given by name are looked up on PATH.
    pub fn load_file(mut self, path: &Path) -> Result<CriConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        if let Some(on) = file.systemd_cgroup {
            self.systemd_cgroup = on;
        }
        for (name, mut h) in file.runtimes {
            let bad = |msg: String| ConfigError::Handler {
                path: path.into(),
                name: name.clone(),
                msg,
            };
            if name.is_empty() || name == DEFAULT_HANDLER_ALIAS {
                return Err(bad(
                    "is the default runtime's name; set the default with --runtime instead".into(),
                ));
            }
            if h.binary.components().count() == 1 {
                h.binary = find_on_path(&h.binary.to_string_lossy())
                    .ok_or_else(|| bad(format!("{} is not on PATH", h.binary.display())))?;
            }
            self.runtime_handlers.insert(name, h);
        }
        Ok(self)
    }

    /// The runtime for a RuntimeClass handler name (`""` and `"skiff"`: the default).
    pub(crate) fn handler(&self, name: &str) -> crate::error::Result<RuntimeHandler> {
        if name.is_empty() || name == DEFAULT_HANDLER_ALIAS {
            return Ok(RuntimeHandler {
                binary: self.runtime_bin.clone(),
                root: Some(self.runtime_root.clone()),
            });
        }
        match self.runtime_handlers.get(name) {
            Some(h) => Ok(RuntimeHandler {
                binary: h.binary.clone(),
                root: Some(h.root.clone().unwrap_or_else(|| {
                    let mut r = self.runtime_root.clone().into_os_string();
                    r.push(format!("-{name}"));
                    PathBuf::from(r)
                })),
            }),
            None => Err(crate::error::CriError::InvalidArgument(format!(
                "no runtime handler {name:?} is configured (known: {}); add it under [runtimes.{name}] in the CRI config file",
                self.handler_names().join(", ")
            ))),
        }
    }

    /// Whether handler `name` makes recursive read-only mounts (`rro`, mount_setattr with
    /// AT_RECURSIVE): skiff-runtime does; runc 1.1 does not, and others are not assumed to.
    /// Pods with a user namespace: the CRI idmaps the rootfs and mounts itself; the runtime
    /// joins the pause's user namespace. Tested with skiff-runtime only.
    pub(crate) fn supports_user_namespaces(&self, name: &str) -> bool {
        self.supports_recursive_ro(name)
    }

    pub(crate) fn supports_recursive_ro(&self, name: &str) -> bool {
        self.handler(name).is_ok_and(|h| {
            h.binary
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("skiff-runtime"))
        })
    }

    /// Every handler name the server accepts, the default (`""`) first.
    pub(crate) fn handler_names(&self) -> Vec<String> {
        let mut v = vec![String::new(), DEFAULT_HANDLER_ALIAS.to_string()];
        v.extend(self.runtime_handlers.keys().cloned());
        v
    }

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

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl RuntimeHandler {
    /// `--root` (always set on handlers returned by [`CriConfig::handler`]).
    pub(crate) fn root(&self) -> &Path {
        self.root
            .as_deref()
            .unwrap_or(Path::new("/run/skiff/runtime"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_adds_handlers_and_rejects_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cri.toml");
        std::fs::write(
            &p,
            "[runtimes.fast]\nbinary = \"/usr/bin/true\"\nroot = \"/run/x\"\n[runtimes.sh]\nbinary = \"sh\"\n",
        )
        .unwrap();
        let cfg = CriConfig::default().load_file(&p).unwrap();
        let h = cfg.handler("fast").unwrap();
        assert_eq!(h.binary, PathBuf::from("/usr/bin/true"));
        assert_eq!(h.root(), Path::new("/run/x"));
        let sh = cfg.handler("sh").unwrap();
        assert!(sh.binary.is_absolute());
        assert_eq!(sh.root(), Path::new("/run/skiff/runtime-sh"));
        assert_eq!(
            cfg.handler("").unwrap().binary,
            PathBuf::from("skiff-runtime")
        );
        assert_eq!(
            cfg.handler("skiff").unwrap().binary,
            PathBuf::from("skiff-runtime")
        );
        let e = cfg.handler("kata").unwrap_err().to_string();
        assert!(
            e.contains("no runtime handler \"kata\"") && e.contains("fast"),
            "{e}"
        );

        for (text, want) in [
            (
                "[runtimes.x]\nbinary = \"no-such-runtime-sk\"\n",
                "not on PATH",
            ),
            (
                "[runtimes.x]\nbinary = \"/bin/true\"\nroots = 1\n",
                "unknown field",
            ),
            (
                "[runtimes.skiff]\nbinary = \"/bin/true\"\n",
                "default runtime",
            ),
            ("runtimes = 3", "invalid type"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = CriConfig::default().load_file(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
