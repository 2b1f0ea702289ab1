//! Entering a network namespace: the calling thread joins it with `setns(CLONE_NEWNET)`, runs
//! the work and returns to the namespace it came from (also when the work panics). A network
//! namespace is a per-thread attribute, so other threads never see the switch; sockets and
//! `/proc/sys/net` files opened meanwhile stay bound to the namespace they were opened in.
//! (No helper thread: a thread costs a stack, a malloc arena and a join on every plugin call.)

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
    #[error("failed to open this thread's network namespace: {0}")]
    Current(#[source] std::io::Error),
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

    /// Runs `f` in this namespace on the calling thread; sockets `f` opens live there.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T,
    {
        let home = File::open("/proc/thread-self/ns/net").map_err(NetnsError::Current)?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
            path: self.path.clone(),
            source,
        })?;
        let _back = Return(home);
        Ok(f())
    }
}

/// Takes the thread back to its namespace when dropped.
struct Return(File);

impl Drop for Return {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
            // Going on in the wrong namespace would configure the wrong links: stop here.
            eprintln!("skiff-cni: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}
