//! The reference host-local disk store: `<dataDir>/<network>/` holds one file per allocated IP,
//! named by the IP and holding `<containerID>\r\n<ifname>`, plus `last_reserved_ip.<set index>`
//! and a `lock` file that is flock'ed while the store is used.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::IpamError;

pub const LINE_BREAK: &str = "\r\n";
pub const LAST_IP_PREFIX: &str = "last_reserved_ip.";
const LOCK_FILE: &str = "lock";
/// Allocation files being written (hidden from the reference plugin's listing logic by the dot).
const TMP_PREFIX: &str = ".skiff-tmp.";

/// An open, exclusively locked store; the lock is released on drop.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn owner_key(id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", id.trim())
}

/// Overwrites `path` with `data` without truncating it to zero first: on ext4, truncating a file
/// to zero and rewriting it makes `close` start writeback at once (auto_da_alloc), which costs
/// more than the rest of an allocation. Only a longer old content is cut to size.
fn write_in_place(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)?;
    f.write_all_at(data, 0)?;
    if f.metadata()?.len() > data.len() as u64 {
        f.set_len(data.len() as u64)?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store of `network` under `data_dir` and takes its lock.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, IpamError> {
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| IpamError::io(format!("create {}", dir.display()), e))?;
        let lock_path = dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| IpamError::io(format!("open {}", lock_path.display()), e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| IpamError::io(format!("flock {}", lock_path.display()), e.into()))?;
        // Anything half-written belongs to a process that died holding the lock we now hold.
        if let Ok(rd) = fs::read_dir(&dir) {
            for ent in rd.flatten() {
                if ent.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(ent.path());
                }
            }
        }
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Claims `ip` for the container; false when it is taken already.
    pub fn reserve(
        &self,
        id: &str,
        ifname: &str,
        ip: IpAddr,
        range_id: usize,
    ) -> Result<bool, IpamError> {
        // Written aside and linked into place, so a crash never leaves an allocation file
        // without its owner (which DEL could not match).
        let path = self.dir.join(ip.to_string());
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{ip}.{}", std::process::id()));
        let write_tmp = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(owner_key(id, ifname).as_bytes())
        };
        if let Err(e) = write_tmp() {
            let _ = fs::remove_file(&tmp);
            return Err(IpamError::io(format!("write {}", tmp.display()), e));
        }
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(IpamError::io(format!("create {}", path.display()), e)),
        }
        let last = self.dir.join(format!("{LAST_IP_PREFIX}{range_id}"));
        write_in_place(&last, ip.to_string().as_bytes())
            .map_err(|e| IpamError::io(format!("write {}", last.display()), e))?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_id: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_IP_PREFIX}{range_id}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// (file path, owner text) of each allocation file.
    fn entries(&self) -> Result<Vec<(PathBuf, String)>, IpamError> {
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| IpamError::io(format!("read {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name == LOCK_FILE || name.starts_with(LAST_IP_PREFIX) || name.starts_with('.') {
                continue;
            }
            if ent.file_type().map(|t| !t.is_file()).unwrap_or(true) {
                continue;
            }
            if let Ok(text) = fs::read_to_string(ent.path()) {
                out.push((ent.path(), text.trim().to_string()));
            }
        }
        Ok(out)
    }

    /// Addresses held by the container's interface.
    pub fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let key = owner_key(id, ifname);
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, t)| *t == key)
            .filter_map(|(p, _)| p.file_name()?.to_str()?.parse().ok())
            .collect())
    }

    /// Frees every address of the container's interface (also files written by old versions that
    /// hold only the container id). Freeing nothing is not an error.
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<usize, IpamError> {
        let key = owner_key(id, ifname);
        let entries = self.entries()?;
        let mut matched: Vec<_> = entries.iter().filter(|(_, t)| *t == key).collect();
        if matched.is_empty() {
            matched = entries.iter().filter(|(_, t)| t == id.trim()).collect();
        }
        for (p, _) in &matched {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(IpamError::io(format!("remove {}", p.display()), e)),
            }
        }
        Ok(matched.len())
    }
}

impl Store {
    /// Frees every allocation whose owner `keep` rejects (spec 1.1 GC); returns the count.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) -> Result<usize, IpamError> {
        let mut n = 0;
        for (p, text) in self.entries()? {
            let (id, ifname) = text.split_once(LINE_BREAK).unwrap_or((text.as_str(), ""));
            if keep(id.trim(), ifname.trim()) {
                continue;
            }
            match fs::remove_file(&p) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(IpamError::io(format!("remove {}", p.display()), e)),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_reserved_is_rewritten_in_place() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), "net").unwrap();
        for ip in ["10.244.9.100", "10.244.9.99", "10.244.9.101"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(s.reserve("c", &ip.to_string(), ip, 0).unwrap());
            assert_eq!(s.last_reserved(0), Some(ip));
            let raw = fs::read_to_string(d.path().join("net/last_reserved_ip.0")).unwrap();
            assert_eq!(raw, ip.to_string(), "no stale tail after a shorter address");
        }
    }

    #[test]
    fn reserve_and_release() {
        let d = tempfile::tempdir().unwrap();
        let ip: IpAddr = "10.244.9.2".parse().unwrap();
        {
            let s = Store::open(d.path(), "net").unwrap();
            assert!(s.reserve("c1", "eth0", ip, 0).unwrap());
            assert!(!s.reserve("c2", "eth0", ip, 0).unwrap());
            assert_eq!(s.last_reserved(0), Some(ip));
            assert_eq!(s.get_by_id("c1", "eth0").unwrap(), vec![ip]);
        }
        let text = fs::read_to_string(d.path().join("net/10.244.9.2")).unwrap();
        assert_eq!(text, "c1\r\neth0");
        let s = Store::open(d.path(), "net").unwrap();
        assert_eq!(s.release_by_id("c1", "eth1").unwrap(), 0);
        assert_eq!(s.release_by_id("c1", "eth0").unwrap(), 1);
        assert!(!d.path().join("net/10.244.9.2").exists());
        assert!(d.path().join("net/lock").exists());
        let ip2: IpAddr = "10.244.9.3".parse().unwrap();
        assert!(s.reserve("c2", "eth0", ip2, 0).unwrap());
        assert!(s.reserve("c3", "eth0", ip, 0).unwrap());
        assert_eq!(
            s.retain(|id, ifname| id == "c2" && ifname == "eth0")
                .unwrap(),
            1
        );
        assert_eq!(s.get_by_id("c2", "eth0").unwrap(), vec![ip2]);
    }
}
