//! skiff-cri: a CRI `runtime.v1` server (RuntimeService + ImageService) on a unix socket.
//!
//! Layout follows containerd's CRI plugin: `runtime/` holds one module per RuntimeService verb,
//! `images/` the ImageService, `store/` the in-memory + on-disk state (versioned JSON written
//! temp+fsync+rename so that a restart reloads every sandbox, container and image). Errors are the
//! typed [`CriError`] everywhere and become `tonic::Status` only at the gRPC edge.
//!
//! Processes: each sandbox has a `skiff-monitor pause` process holding its net/ipc/uts namespaces;
//! each container has a `skiff-monitor container` process that runs the OCI runtime's `create`,
//! writes the CRI log and records the exit status (see docs/node-contracts.md).

mod cgroups;
pub mod client;
mod cni;
mod config;
mod error;
mod images;
mod runtime;
mod seal;
mod server;
mod store;
mod stream;
mod sys;
mod userns;
mod util;

pub use cni::{default_bridge_conflist, DEFAULT_CONFLIST_NAME};
pub use config::{ConfigError, ConfigFile, CriConfig, RuntimeHandler};
pub use error::CriError;
pub use images::serve_fetch;
pub use server::serve;

/// Installs rustls's `ring` provider as the process default unless one is installed already.
/// Registry pulls (oci-client, built without a provider of its own) need it; [`serve`] calls
/// it, and so may a process that pulls or pushes before the server runs (tests).
pub fn ensure_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
