//! Small privileged-syscall helpers, one module per concern.

#[cfg(all(feature = "musl-link", target_arch = "x86_64"))]
pub mod musl_link;
pub mod propagation;
pub mod pty;
pub mod sealed_exe;
