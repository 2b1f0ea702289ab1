//! Layer unpacking into an overlayfs lower dir: gzip or plain tar, OCI whiteouts turned into
//! overlay whiteouts (0/0 char devices, `trusted.overlay.opaque`), diff id verified.

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
        entry
            .unpack_in(dst)
            .map_err(|e| unpack_err(format!("unpacking {}: {}", path.display(), chain(&e))))?;
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
    fn clean_rejects_escapes() {
        assert_eq!(clean(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(clean(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(clean(Path::new("a/../../b")), None);
    }
}
