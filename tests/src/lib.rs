//! skiff-tests: the test harness shared by Skiff's end-to-end tests and benchmarks.
//!
//! - [`registry::Registry`]: Debian's `docker-registry` on 127.0.0.1:5000 (reused when one answers).
//! - [`image::build_busybox_image`] + [`image::push`]: an OCI image from `/bin/busybox`, pushed
//!   with the registry HTTP API v2.
//! - [`cri_env::CriEnv`]: an in-process CRI server with its own temp state and bridge network.
//! - [`control_plane::ControlPlane`]: `skiff server --disable-agent` of a test's own, and kubectl.
//! - [`netns`]: network namespaces and links with cleanup guards.
//! - [`standalone`]: `skiff cri` and `skiff kubelet` as processes of their own, beside a control plane.

pub mod auth_registry;
pub mod control_plane;
pub mod cri_env;
pub mod image;
pub mod netns;
pub mod registry;
pub mod standalone;
pub mod systemd_box;

pub use cri_env::CriEnv;
pub use image::{build_busybox_image, push, with_layer, OciImage};
pub use registry::Registry;

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP {0}")]
    Http(String),
    #[error("{0}")]
    Other(String),
}

/// `--eviction-hard` for the test clusters. Shared test hosts run with little free disk:
/// upstream's default disk thresholds (nodefs 10%, imagefs 15%) would taint the node with
/// DiskPressure and admission would reject every pod. Tests of the eviction manager set their own.
pub const TEST_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%";

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// Path of a binary built in this workspace's target dir (`target/debug/<name>`, or the
/// profile named by `SK_PROFILE`, e.g. `release` for benchmarks).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = std::env::var("SK_PROFILE").unwrap_or_else(|_| "debug".into());
    target.join(profile).join(name)
}

/// Stops a child this test started: SIGTERM, up to `grace` to exit, then SIGKILL (by PID only).
pub fn stop_child(child: &mut std::process::Child, grace: std::time::Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback TCP port nothing listens on now (for servers a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
