//! Small privileged-syscall helpers, one module per concern.

pub mod propagation;
pub mod pty;
pub mod sealed_exe;
