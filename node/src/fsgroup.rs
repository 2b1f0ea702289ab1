//! Volume ownership for a pod's `fsGroup`, as upstream's `SetVolumeOwnership`
//! (`pkg/volume/volume_linux.go`): every file and directory of the volume gets group = fsGroup,
//! group read (and write unless the volume is read-only: the atomic-writer volumes configMap,
//! secret, downwardAPI and projected), directories also group execute and the setgid bit, so
//! files created later inherit the group. Symlinks get the group only (no chmod through them).
//! `fsGroupChangePolicy: OnRootMismatch` skips the walk when the volume's root already has the
//! group and the permission bits. Blocking (a directory walk): callers use the blocking pool.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// The pod's `fsGroup` and whether its change policy is `OnRootMismatch`.
pub fn of_pod(pod: &Pod) -> Option<(u32, bool)> {
    let sc = pod.spec.as_ref()?.security_context.as_ref()?;
    let g = u32::try_from(sc.fs_group?).ok()?;
    Some((
        g,
        sc.fs_group_change_policy.as_deref() == Some("OnRootMismatch"),
    ))
}

fn mask(is_dir: bool, read_only: bool) -> u32 {
    let m = if read_only { RO_MASK } else { RW_MASK };
    if is_dir {
        m | EXEC_MASK | SETGID
    } else {
        m
    }
}

/// Whether `dir` already has group `gid` and the bits `SetVolumeOwnership` would add
/// (upstream's `skipPermissionChange` for OnRootMismatch).
pub fn root_matches(dir: &Path, gid: u32, read_only: bool) -> bool {
    match std::fs::metadata(dir) {
        Ok(md) => {
            let m = mask(md.is_dir(), read_only);
            md.gid() == gid && md.mode() & m == m
        }
        Err(_) => false,
    }
}

fn change(path: &Path, md: &std::fs::Metadata, gid: u32, read_only: bool) -> io::Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    if md.file_type().is_symlink() {
        return Ok(());
    }
    let mode = md.mode() & 0o7777;
    let want = mode | mask(md.is_dir(), read_only);
    if want != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    }
    Ok(())
}

fn walk(path: &Path, gid: u32, read_only: bool) -> io::Result<()> {
    let md = std::fs::symlink_metadata(path)?;
    change(path, &md, gid, read_only)?;
    if md.is_dir() {
        for e in std::fs::read_dir(path)? {
            walk(&e?.path(), gid, read_only)?;
        }
    }
    Ok(())
}

/// Gives the volume at `dir` to group `gid` (recursively). `on_root_mismatch`: skip when the
/// root already matches. Returns whether the tree was walked.
pub fn set_volume_ownership(
    dir: &Path,
    gid: u32,
    read_only: bool,
    on_root_mismatch: bool,
) -> io::Result<bool> {
    if on_root_mismatch && root_matches(dir, gid, read_only) {
        return Ok(false);
    }
    walk(dir, gid, read_only)?;
    Ok(true)
}

/// Makes an emptyDir folder as upstream (mode 0777, a tmpfs for `medium: Memory` of at most
/// `size` bytes) and, with an fsGroup, gives it to that group: emptyDirs are walked once, when
/// their root does not carry the group yet.
pub fn setup_empty_dir(
    dir: &Path,
    memory: Option<Option<u64>>,
    fs_group: Option<u32>,
) -> io::Result<()> {
    match memory {
        Some(size) => crate::mounts::ensure_tmpfs(dir, size)?,
        None => std::fs::create_dir_all(dir)?,
    }
    let md = std::fs::metadata(dir)?;
    if md.mode() & 0o777 != 0o777 {
        let mode = (md.mode() & 0o7000) | 0o777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    if let Some(g) = fs_group {
        set_volume_ownership(dir, g, false, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_upstream_masks() {
        assert_eq!(mask(true, false), 0o2770);
        assert_eq!(mask(true, true), 0o2550);
        assert_eq!(mask(false, false), 0o660);
        assert_eq!(mask(false, true), 0o440);
    }

    #[test]
    fn walk_sets_bits_and_root_mismatch_skips() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("v");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), b"x").unwrap();
        std::fs::set_permissions(root.join("sub/f"), std::fs::Permissions::from_mode(0o400))
            .unwrap();
        // Our own group: chown to it needs no privilege.
        let gid = nix::unistd::getegid().as_raw();
        assert!(set_volume_ownership(&root, gid, false, false).unwrap());
        let f = std::fs::metadata(root.join("sub/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o660);
        let s = std::fs::metadata(root.join("sub")).unwrap();
        assert_eq!(s.mode() & 0o2000, 0o2000);
        assert!(root_matches(&root, gid, false));
        assert!(!set_volume_ownership(&root, gid, false, true).unwrap());
    }
}
