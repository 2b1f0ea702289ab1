//! Network namespaces, links and mounts for tests, with guards that clean up on Drop.
//! Names start with `sk` (the project's convention for test resources).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, HarnessError, Result};

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(io_err("running ip (apt-get install iproute2)"))?;
    if !out.status.success() {
        return Err(HarnessError::Other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`/run/netns/<name>`), deleted on Drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates netns `name` (must start with `sk`).
    pub fn create(name: &str) -> Result<Netns> {
        assert!(name.starts_with("sk"), "test netns names start with sk");
        let _ = ip(&["netns", "delete", name]);
        ip(&["netns", "add", name])?;
        Ok(Netns { name: name.into() })
    }

    /// A fresh `skXXXXXX` name.
    pub fn unique_name() -> String {
        format!("sk{:06x}", rand_u32() & 0xffffff)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u32::from_ne_bytes(b) ^ std::process::id()
}

/// Deletes link `name` on Drop (e.g. a bridge a test's CNI config created).
pub struct LinkGuard(pub String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        delete_link(&self.0);
    }
}

/// Deletes a host link if it exists.
pub fn delete_link(name: &str) {
    let _ = ip(&["link", "delete", name]);
}

/// True when a host link `name` exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Names of the host links enslaved to `bridge` (the pods' veth ends).
pub fn links_on_bridge(bridge: &str) -> Vec<String> {
    std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True when `path` is a mount point in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&p))
}

/// Unmounts (lazily, repeatedly) and removes `path` on Drop.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        let _ = std::fs::remove_file(&self.0).or_else(|_| std::fs::remove_dir_all(&self.0));
    }
}
