//! Small helpers: atomic JSON files, ids, clocks.

use std::io::Write;
use std::path::Path;

use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CriError, Result};

/// Writes `value` as JSON to `path` through a temp file, fsync and rename, so a crash leaves
/// either the old or the new file.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(|source| CriError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &data)
}

/// Like [`write_json_atomic`] without the fsyncs: for records that describe live processes and
/// mounts (sandboxes, containers, scratch files), which a reboot makes moot anyway. The rename
/// keeps them whole across a crash of the server.
pub(crate) fn write_json_fast<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(|source| CriError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic_with(path, &data, false)
}

/// [`write_atomic`] without the fsyncs (see [`write_json_fast`]).
pub(crate) fn write_fast(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, data, false)
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, data, true)
}

fn write_atomic_with(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(CriError::io("creating dir", dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(CriError::io("creating", &tmp))?;
    f.write_all(data).map_err(CriError::io("writing", &tmp))?;
    if durable {
        f.sync_all().map_err(CriError::io("syncing", &tmp))?;
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(CriError::io("renaming into", path))?;
    if durable {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).map_err(CriError::io("reading", path))?;
    serde_json::from_slice(&data).map_err(|source| CriError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A new 64-hex-digit id, like containerd's.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn now_nanos() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Parses an RFC 3339 timestamp into nanoseconds since the epoch (0 when unparsable).
pub(crate) fn rfc3339_nanos(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0)
}

/// Removes a directory tree, ignoring "not found".
pub(crate) fn remove_dir_all_quiet(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CriError::io("removing", path)(e)),
    }
}

/// Matches CRI label selectors: every key/value of `selector` must be in `labels`.
pub(crate) fn labels_match(
    selector: &std::collections::HashMap<String, String>,
    labels: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Bytes and inodes used under `dir` (not following symlinks).
pub(crate) fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            bytes += md.blocks() * 512;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}
