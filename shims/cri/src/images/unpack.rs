//! Layer unpacking into an overlayfs lower dir: gzip or plain tar, OCI whiteouts turned into
//! overlay whiteouts (0/0 char devices, `trusted.overlay.opaque`), diff id verified. Regular
//! files, dirs, symlinks and hard links are the tar crate's; device nodes and fifos (which it
//! would turn into empty files) and extended attributes (PAX `SCHILY.xattr.*`, e.g. file
//! capabilities) are made here.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{CriError, Result};

struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn unpack_err(msg: String) -> CriError {
    CriError::Pull {
        image: String::new(),
        message: msg,
    }
}

/// Unpacks `blob` into `<snaps>/<chain_hex>` (through a temp dir and a rename, so a snapshot dir
/// is either complete or absent).
pub(crate) fn unpack_layer(
    blob: &Path,
    diff_id: &str,
    snaps: &Path,
    chain_hex: &str,
) -> Result<()> {
    let target = snaps.join(chain_hex);
    let tmp = snaps.join(format!(".tmp-{chain_hex}-{}", crate::util::new_id()));
    std::fs::create_dir_all(&tmp).map_err(CriError::io("creating snapshot dir", &tmp))?;
    let res = unpack_into(blob, diff_id, &tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &target) {
        Ok(()) => Ok(()),
        // Someone else unpacked the same layer meanwhile.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(CriError::io("storing snapshot", &target)(e)),
    }
}

fn unpack_into(blob: &Path, diff_id: &str, dst: &Path) -> Result<()> {
    let f = std::fs::File::open(blob).map_err(CriError::io("opening layer blob", blob))?;
    let mut br = BufReader::with_capacity(256 << 10, f);
    let head = br
        .fill_buf()
        .map_err(CriError::io("reading layer blob", blob))?;
    let gz = head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else {
        Box::new(br)
    };
    let hr = HashReader {
        inner: reader,
        hasher: Sha256::new(),
    };
    let mut ar = tar::Archive::new(hr);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    ar.set_unpack_xattrs(false);
    for entry in ar
        .entries()
        .map_err(CriError::io("reading layer tar", blob))?
    {
        let mut entry = entry.map_err(CriError::io("reading layer tar", blob))?;
        let path = entry
            .path()
            .map_err(CriError::io("reading layer tar", blob))?
            .into_owned();
        let Some(rel) = clean(&path) else {
            tracing::warn!(path = %path.display(), "skipping layer entry outside the root");
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        if name == b".wh..wh..opq" {
            let dir = dst.join(rel.parent().unwrap_or(Path::new("")));
            std::fs::create_dir_all(&dir).map_err(CriError::io("creating dir", &dir))?;
            sys_setxattr(&dir, "trusted.overlay.opaque", b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let parent = dst.join(rel.parent().unwrap_or(Path::new("")));
            std::fs::create_dir_all(&parent).map_err(CriError::io("creating dir", &parent))?;
            let victim = parent.join(std::ffi::OsStr::from_bytes(hidden));
            let _ = std::fs::remove_file(&victim);
            let _ = std::fs::remove_dir_all(&victim);
            nix::sys::stat::mknod(
                &victim,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .map_err(|source| CriError::Sys {
                op: "creating whiteout",
                target: victim.display().to_string(),
                source,
            })?;
            continue;
        }
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .filter_map(|e| {
                    let key = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?.to_vec();
                    Some((key, e.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let kind = entry.header().entry_type();
        let target = dst.join(&rel);
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            make_node(&target, entry.header())?;
        } else {
            entry
                .unpack_in(dst)
                .map_err(|e| unpack_err(format!("unpacking {}: {}", path.display(), chain(&e))))?;
        }
        for (name, value) in xattrs {
            set_layer_xattr(&target, &name, &value)?;
        }
    }
    let mut hr = ar.into_inner();
    std::io::copy(&mut hr, &mut std::io::sink()).map_err(CriError::io("reading layer", blob))?;
    let got = format!("sha256:{}", hex::encode(hr.hasher.finalize()));
    if got != diff_id {
        return Err(unpack_err(format!(
            "layer {} uncompressed digest {got} does not match diff_id {diff_id}",
            blob.display()
        )));
    }
    Ok(())
}

/// An error with its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A relative path with `.` removed; None if it climbs out with `..`.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

/// A device node or fifo from a tar header, with its owner, mode and mtime.
fn make_node(path: &Path, h: &tar::Header) -> Result<()> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let bad = |what: &str| unpack_err(format!("{}: bad {what} in the tar header", path.display()));
    let kind = h.entry_type();
    let flag = if kind.is_character_special() {
        SFlag::S_IFCHR
    } else if kind.is_block_special() {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFIFO
    };
    let (major, minor) = if flag == SFlag::S_IFIFO {
        (0, 0) // a fifo's device fields may be empty
    } else {
        (
            h.device_major().map_err(|_| bad("major"))?.unwrap_or(0),
            h.device_minor().map_err(|_| bad("minor"))?.unwrap_or(0),
        )
    };
    let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(CriError::io("creating dir", parent))?;
    }
    let _ = std::fs::remove_file(path);
    let sys = |op: &'static str| {
        move |source| CriError::Sys {
            op,
            target: path.display().to_string(),
            source,
        }
    };
    mknod(
        path,
        flag,
        Mode::from_bits_truncate(mode as libc::mode_t),
        makedev(major as u64, minor as u64),
    )
    .map_err(sys("creating device node"))?;
    let uid = h.uid().map_err(|_| bad("uid"))? as u32;
    let gid = h.gid().map_err(|_| bad("gid"))? as u32;
    nix::unistd::fchownat(
        None,
        path,
        Some(uid.into()),
        Some(gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(sys("chown"))?;
    // mknod applies the umask; chmod after chown also keeps set-id bits.
    nix::sys::stat::fchmodat(
        None,
        path,
        Mode::from_bits_truncate(mode as libc::mode_t),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(sys("chmod"))?;
    let mtime = nix::sys::time::TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(sys("setting mtime"))?;
    Ok(())
}

/// An xattr from the layer (not following symlinks). A file system without that namespace
/// (ENOTSUP) only costs a warning, as with containerd; anything else fails the unpack.
fn set_layer_xattr(path: &Path, name: &[u8], value: &[u8]) -> Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| unpack_err("path with NUL".into()))?;
    let cname = CString::new(name).map_err(|_| unpack_err("xattr name with NUL".into()))?;
    // SAFETY: both pointers are valid NUL-terminated strings owned for the call; value points to
    // `value.len()` readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    if rc != 0 {
        let err = nix::Error::last();
        if err == nix::Error::ENOTSUP {
            tracing::warn!(path = %path.display(), xattr = %String::from_utf8_lossy(name), "file system does not support this xattr; skipped");
            return Ok(());
        }
        return Err(CriError::Sys {
            op: "setting xattr on",
            target: format!("{} ({})", path.display(), String::from_utf8_lossy(name)),
            source: err,
        });
    }
    Ok(())
}

fn sys_setxattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| unpack_err("path with NUL".into()))?;
    let cname = CString::new(name).expect("static name");
    // SAFETY: both pointers are valid NUL-terminated strings owned for the call; value points to
    // `value.len()` readable bytes.
    let rc = unsafe {
        libc::setxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(CriError::Sys {
            op: "setting xattr on",
            target: path.display().to_string(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn digest(d: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(d)))
    }

    #[test]
    fn unpacks_gzip_with_whiteouts_and_verifies_diff_id() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            ("etc/", None),
            ("etc/motd", Some(b"hi")),
            ("etc/.wh.old", Some(b"")),
            ("var/", None),
            ("var/.wh..wh..opq", Some(b"")),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, gz.finish().unwrap()).unwrap();
        let snaps = tmp.path().join("snaps");
        std::fs::create_dir_all(&snaps).unwrap();

        unpack_layer(&blob, &digest(&tar), &snaps, "abc").unwrap();
        let root = snaps.join("abc");
        assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"hi");
        let wh = std::fs::symlink_metadata(root.join("etc/old")).unwrap();
        assert!(
            wh.file_type().is_char_device(),
            "whiteout is a 0/0 char device"
        );
        let mut buf = [0u8; 4];
        let name = CString::new("trusted.overlay.opaque").unwrap();
        let path = CString::new(root.join("var").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings and a 4-byte buffer for the value.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        assert_eq!((n, buf[0]), (1, b'y'));

        // A wrong diff id is refused and leaves nothing behind.
        std::fs::write(&blob, &tar).unwrap();
        let err = unpack_layer(&blob, &digest(b"other"), &snaps, "def").unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(!snaps.join("def").exists());
        assert_eq!(std::fs::read_dir(&snaps).unwrap().count(), 1);
    }

    #[test]
    fn unpacks_devices_fifos_hardlinks_and_xattrs() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Char);
        h.set_path("dev/null").unwrap();
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(1_000_000);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_path("run/fifo").unwrap();
        h.set_mode(0o600);
        h.set_uid(7);
        h.set_gid(8);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.append_pax_extensions([("SCHILY.xattr.user.skiff", &b"sk-yes"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(4);
        h.set_cksum();
        b.append_data(&mut h, "bin/ping", &b"ping"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_link(&mut h, "bin/ping6", "bin/ping").unwrap();
        let tar = b.into_inner().unwrap();
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, &tar).unwrap();
        let snaps = tmp.path().join("snaps");
        std::fs::create_dir_all(&snaps).unwrap();
        unpack_layer(&blob, &digest(&tar), &snaps, "dev").unwrap();
        let root = snaps.join("dev");

        use std::os::unix::fs::MetadataExt;
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        assert_eq!(null.mtime(), 1_000_000);
        let fifo = std::fs::symlink_metadata(root.join("run/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!((fifo.uid(), fifo.gid(), fifo.mode() & 0o777), (7, 8, 0o600));
        let (a, b) = (
            std::fs::metadata(root.join("bin/ping")).unwrap(),
            std::fs::metadata(root.join("bin/ping6")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "a hard link");
        let mut buf = [0u8; 16];
        let name = CString::new("user.skiff").unwrap();
        let path = CString::new(root.join("bin/ping").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings and a 16-byte buffer for the value.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        assert_eq!(&buf[..n.max(0) as usize], b"sk-yes");
    }

    #[test]
    fn clean_rejects_escapes() {
        assert_eq!(clean(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(clean(Path::new("a/../../b")), None);
    }
}
