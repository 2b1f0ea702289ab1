//! Entering a network namespace: the work runs on a dedicated, short-lived OS thread that calls
//! `setns(CLONE_NEWNET)` and is joined afterwards, so no shared thread ever changes namespace.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist (is the sandbox gone?)")]
    NotFound { path: PathBuf },
    #[error("failed to open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to enter network namespace {path}: {source} (is it a netns file?)")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// An opened network namespace file (`/var/run/netns/x`, `/proc/PID/ns/net`, a bind mount).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        match File::open(path) {
            Ok(file) => Ok(NetNs {
                file,
                path: path.to_path_buf(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(NetnsError::NotFound {
                path: path.to_path_buf(),
            }),
            Err(source) => Err(NetnsError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a new thread that has joined this namespace; sockets `f` opens live there.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Setns {
                        path: self.path.clone(),
                        source,
                    }
                })?;
                Ok(f())
            });
            h.join().unwrap_or_else(|_| {
                Err(NetnsError::Panicked {
                    path: self.path.clone(),
                })
            })
        })
    }
}
