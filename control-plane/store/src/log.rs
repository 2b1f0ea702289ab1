//! The on-disk format of [`crate::EmbeddedStore`]: one append-only file, `store.log`.
//!
//! ```text
//! file   := MAGIC record*
//! record := len:u32le crc32(payload):u32le payload          (len = payload length)
//! payload:= revision:i64le nops:u32le op*
//! op     := 1 key put | 2 key | 3 key zput | 4 key lput    (put | delete | compressed put)
//! key    := klen:u32le bytes
//! put    := create_revision:i64le mod_revision:i64le vlen:u32le bytes
//! zput   := create_revision:i64le mod_revision:i64le vlen:u32le zlen:u32le deflate(bytes)
//! lput   := create_revision:i64le mod_revision:i64le vlen:u32le zlen:u32le lz4_block(bytes)
//! ```
//!
//! Values of [`COMPRESS_MIN`] bytes or more are stored LZ4-compressed when that saves at least
//! an eighth: a node status heartbeat then dirties one page instead of two. LZ4 rather than
//! deflate because every write pays it before its fsync: an LZ4 block of a 1 KiB object costs a
//! few microseconds, while setting up a deflate stream (its tables) costs tens to hundreds.
//! Logs written before (op 3, deflate) are still read; a snapshot rewrite turns them into op 4.
//!
//! A record is one transaction (all its ops at `revision`) or one chunk of a snapshot (the live
//! keys with their own revisions; every chunk carries the snapshot's revision). Replaying the
//! records in order rebuilds the index; revisions never decrease. A record that is cut short or
//! fails its CRC at the end of the file is a torn write (the process died before its fsync
//! returned, so nobody was told it was durable): it is cut off. A bad record followed by a good
//! one is corruption, and opening fails rather than dropping acknowledged data.

use crate::KeyValue;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 8] = b"SKFLOG01";
pub(crate) const LOG: &str = "store.log";
const TMP: &str = "store.log.tmp";
const HEADER: usize = 8;
/// A sanity bound on one record: larger lengths are garbage, not data.
const MAX_RECORD: usize = 1 << 30;
/// Values at least this long are compressed in the log.
pub(crate) const COMPRESS_MIN: usize = 512;
/// Snapshot chunk size.
const CHUNK: usize = 1 << 20;

/// A stored value without its key (the index's key is the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub value: Vec<u8>,
}

impl Entry {
    pub(crate) fn to_kv(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
    /// Bytes this entry takes in a snapshot.
    pub(crate) fn encoded_len(key: &str, value_len: usize) -> u64 {
        (1 + 4 + key.len() + 8 + 8 + 4 + value_len) as u64
    }
}

pub(crate) type Index = BTreeMap<String, Entry>;

/// One op to encode: the key and, for a put, (create revision, mod revision, value).
pub(crate) type LogOp<'a> = (&'a str, Option<(i64, i64, &'a [u8])>);

/// Appends one record holding `writes` at `revision` to `buf`.
pub(crate) fn encode_record<'a>(
    buf: &mut Vec<u8>,
    revision: i64,
    writes: impl ExactSizeIterator<Item = LogOp<'a>>,
) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    buf.extend_from_slice(&revision.to_le_bytes());
    buf.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for (key, put) in writes {
        let tag_at = buf.len();
        buf.push(if put.is_some() { 1 } else { 2 });
        buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
        buf.extend_from_slice(key.as_bytes());
        if let Some((create, modr, value)) = put {
            buf.extend_from_slice(&create.to_le_bytes());
            buf.extend_from_slice(&modr.to_le_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            if value.len() >= COMPRESS_MIN && compress_into(buf, value) {
                buf[tag_at] = 4;
            } else {
                buf.extend_from_slice(value);
            }
        }
    }
    let payload = &buf[start + 8..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&crc);
}

thread_local! {
    static SMALL_TABLE: std::cell::RefCell<lz4_flex::block::CompressTable> =
        std::cell::RefCell::new(lz4_flex::block::CompressTable::small());
}

/// Appends `zlen lz4_block(value)` to `buf` when that is at least an eighth smaller than
/// `value`; otherwise leaves `buf` as it was and returns false.
fn compress_into(buf: &mut Vec<u8>, value: &[u8]) -> bool {
    let at = buf.len();
    let room = lz4_flex::block::get_maximum_output_size(value.len());
    buf.resize(at + 4 + room, 0);
    let out = &mut buf[at + 4..];
    let zlen = match if value.len() < usize::from(u16::MAX) {
        // The compressor's 8 KiB hash table is kept per thread: allocating a zeroed one per
        // value was most of the record encoding's CPU (3% of the server's in sequential creates).
        SMALL_TABLE.with_borrow_mut(|t| lz4_flex::block::compress_into_with_table(value, out, t))
    } else {
        lz4_flex::block::compress_into(value, out)
    } {
        Ok(n) if n <= value.len() - value.len() / 8 => n,
        _ => {
            buf.truncate(at);
            return false;
        }
    };
    buf.truncate(at + 4 + zlen);
    buf[at..at + 4].copy_from_slice(&(zlen as u32).to_le_bytes());
    true
}

fn decompress(z: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0; len];
    match lz4_flex::block::decompress_into(z, &mut out) {
        Ok(n) if n == len => Some(out),
        _ => None,
    }
}

/// Reads a value written by an older version of the log (op 3).
fn inflate(z: &[u8], len: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(len);
    flate2::read::DeflateDecoder::new(z)
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() == len).then_some(out)
}

/// What replaying a log found.
pub(crate) struct Replayed {
    pub index: Index,
    pub revision: i64,
    /// Length of the valid prefix of the file.
    pub good_len: u64,
    /// Bytes after it that are not preallocated zeros (a torn tail that must be cut off).
    pub torn: u64,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn key(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Checks the record at `pos`: its payload when whole and its CRC matches.
fn record_at(data: &[u8], pos: usize) -> Option<&[u8]> {
    let mut r = Reader { buf: data, pos };
    let len = r.u32()? as usize;
    let crc = r.u32()?;
    // The smallest payload is a revision and an op count.
    if !(12..=MAX_RECORD).contains(&len) {
        return None;
    }
    let payload = r.take(len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Applies one record's payload; `None` when it does not parse (a CRC'd payload that does not
/// parse is a bug or corruption).
fn apply(payload: &[u8], index: &mut Index, revision: &mut i64) -> Option<()> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let rev = r.i64()?;
    if rev < *revision {
        return None;
    }
    let n = r.u32()?;
    for _ in 0..n {
        let tag = r.take(1)?[0];
        let key = r.key()?;
        match tag {
            1 | 3 | 4 => {
                let create_revision = r.i64()?;
                let mod_revision = r.i64()?;
                let vlen = r.u32()? as usize;
                let value = match tag {
                    1 => r.take(vlen)?.to_vec(),
                    3 => {
                        let zlen = r.u32()? as usize;
                        inflate(r.take(zlen)?, vlen)?
                    }
                    _ => {
                        let zlen = r.u32()? as usize;
                        decompress(r.take(zlen)?, vlen)?
                    }
                };
                index.insert(
                    key,
                    Entry {
                        create_revision,
                        mod_revision,
                        value,
                    },
                );
            }
            2 => {
                index.remove(&key);
            }
            _ => return None,
        }
    }
    (r.pos == payload.len()).then_some(())?;
    *revision = rev;
    Some(())
}

/// Replays the log in `data` (the whole file).
pub(crate) fn replay(data: &[u8], path: &Path) -> Result<Replayed, String> {
    if data.len() < HEADER || &data[..HEADER] != MAGIC {
        return Err(format!("{} is not a skiff store log", path.display()));
    }
    let mut index = Index::new();
    let mut revision = 1;
    let mut pos = HEADER;
    while pos < data.len() {
        if data[pos..].iter().all(|&b| b == 0) {
            // Preallocated space: the end of the records.
            break;
        }
        let Some(payload) = record_at(data, pos) else {
            // Torn tail, or corruption if a good record follows the bad one.
            let len = Reader { buf: data, pos }.u32().unwrap_or(0) as usize;
            let next = pos + 8 + len;
            if len <= MAX_RECORD && next < data.len() && record_at(data, next).is_some() {
                return Err(format!(
                    "{}: corrupt record at offset {pos} followed by valid records",
                    path.display()
                ));
            }
            break;
        };
        if apply(payload, &mut index, &mut revision).is_none() {
            return Err(format!(
                "{}: record at offset {pos} does not parse",
                path.display()
            ));
        }
        pos += 8 + payload.len();
    }
    let torn = if data[pos..].iter().all(|&b| b == 0) {
        0
    } else {
        (data.len() - pos) as u64
    };
    Ok(Replayed {
        index,
        revision,
        good_len: pos as u64,
        torn,
    })
}

/// Fsyncs a directory so that a rename or create in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a snapshot of `index` at `revision` as the new `store.log` of `dir` (through a
/// temporary file, fsync and rename, so a crash leaves the old or the new log). Returns its
/// length.
pub(crate) fn write_snapshot<'a>(
    dir: &Path,
    revision: i64,
    entries: impl Iterator<Item = (&'a String, &'a Entry)>,
) -> io::Result<u64> {
    let tmp = dir.join(TMP);
    let mut out = BufWriter::with_capacity(CHUNK, File::create(&tmp)?);
    out.write_all(MAGIC)?;
    let mut len = HEADER as u64;
    let mut chunk: Vec<LogOp> = Vec::new();
    let mut chunk_bytes = 0;
    let mut buf = Vec::new();
    let mut flush = |chunk: &mut Vec<LogOp>, out: &mut BufWriter<File>| -> io::Result<u64> {
        buf.clear();
        encode_record(&mut buf, revision, chunk.drain(..));
        out.write_all(&buf)?;
        Ok(buf.len() as u64)
    };
    for (k, e) in entries {
        chunk_bytes += Entry::encoded_len(k, e.value.len()) as usize;
        chunk.push((
            k.as_str(),
            Some((e.create_revision, e.mod_revision, e.value.as_slice())),
        ));
        if chunk_bytes >= CHUNK {
            len += flush(&mut chunk, &mut out)?;
            chunk_bytes = 0;
        }
    }
    // Always one record, even empty: it carries the revision.
    len += flush(&mut chunk, &mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(LOG))?;
    sync_dir(dir)?;
    Ok(len)
}

/// The log grows in steps of this much preallocated space, so that an append's fdatasync does
/// not also have to commit a new file size each time.
const PREALLOC: u64 = 1 << 20;

/// Under load, preallocated space is written with zeros this far ahead of the records.
/// `fallocate` leaves it *unwritten*: the first append into each new 4 KiB block turns that
/// block into a written one, a change of the extent tree that its fdatasync then has to write as
/// well (on ext4 without a journal a second synchronous write; with one, a journal commit).
/// Zeroing 64 KiB at a time leaves that cost to one append in sixteen blocks' worth: on this
/// VM's ext4, fdatasync p90 176-301 -> 135 us, mean 128-174 -> 121-130 us for 1.3 KB appends,
/// and 4.8% more sequential API creates (docs/control-plane.md). An idle log (appends seconds
/// apart, e.g. lease renewals) is not zeroed: the zeros would add to its disk writes, which the
/// flash budget counts, and save nothing noticeable there.
const ZERO_AHEAD: u64 = 64 << 10;
/// Appends closer together than this count as load (see [`ZERO_AHEAD`]).
const BUSY: std::time::Duration = std::time::Duration::from_secs(1);
static ZEROS: [u8; ZERO_AHEAD as usize] = [0; ZERO_AHEAD as usize];

/// Direct appends are written in whole blocks of this size, from buffers aligned to it (4 KiB
/// covers 512-byte and 4 KiB logical blocks).
const BLOCK: u64 = 4096;
/// The direct appends' scratch buffer is kept while no larger than this.
const SCRATCH_KEEP: usize = 256 << 10;

/// Appends that bypass the page cache (`O_DIRECT`): each writes the log's last, partial block
/// again with the new records after it, padded with zeros to a whole block. The fdatasync that
/// follows then has no dirty pages to find and write back (ext4's writeback path was a tenth of
/// the server's CPU in sequential creates), only the device cache to flush. Rewriting the last
/// block is what a buffered append's writeback did too (it writes whole pages).
struct Direct {
    file: File,
    /// The log's bytes from the start of its last block to the end of the records.
    tail: Vec<u8>,
    /// Reused for the writes; the block-aligned part is used.
    scratch: Vec<u8>,
    /// Writes are made durable by `RWF_DSYNC` (until the kernel refuses the flag).
    dsync: bool,
}

impl Direct {
    /// Opens `path` for direct appends after the records that end at `len`; `None` where the
    /// filesystem has no `O_DIRECT` (tmpfs), and appends stay buffered.
    fn open(path: &Path, buffered: &File, len: u64) -> io::Result<Option<Self>> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let file = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let start = len / BLOCK * BLOCK;
        let mut tail = vec![0; (len - start) as usize];
        buffered.read_exact_at(&mut tail, start)?;
        Ok(Some(Self {
            file,
            tail,
            scratch: Vec::new(),
            dsync: true,
        }))
    }

    /// Writes `buf` at `len` (the end of the records), and zeros after it up to `zero_to` and
    /// to the end of its last block. Returns where the written bytes end and whether they are
    /// durable already.
    fn write(&mut self, len: u64, buf: &[u8], zero_to: u64) -> io::Result<(u64, bool)> {
        let start = len / BLOCK * BLOCK;
        let end = len + buf.len() as u64;
        let stop = zero_to.max(end).next_multiple_of(BLOCK);
        let n = (stop - start) as usize;
        if self.scratch.len() < n + BLOCK as usize {
            self.scratch.resize(n + BLOCK as usize, 0);
        }
        let off = self.scratch.as_ptr().align_offset(BLOCK as usize);
        let out = &mut self.scratch[off..off + n];
        let t = self.tail.len();
        out[..t].copy_from_slice(&self.tail);
        out[t..t + buf.len()].copy_from_slice(buf);
        out[t + buf.len()..].fill(0);
        let synced = write_dsync(&self.file, &mut self.dsync, out, start)?;
        let new_start = end / BLOCK * BLOCK;
        self.tail.clear();
        self.tail
            .extend_from_slice(&out[(new_start - start) as usize..(end - start) as usize]);
        if self.scratch.len() > SCRATCH_KEEP {
            // A large batch's buffer is not held on to; the usual append needs 4-72 KiB.
            self.scratch = Vec::new();
        }
        Ok((stop, synced))
    }
}

/// Writes `out` at `offset` of a direct-IO file, durably while `*dsync`: one
/// `pwritev2(RWF_DSYNC)` (the write and the device cache flush in one call, as `O_DSYNC` would).
/// A kernel that refuses the flag clears `*dsync`. Returns whether the bytes are durable; if
/// not, the caller fdatasyncs.
fn write_dsync(file: &File, dsync: &mut bool, out: &[u8], offset: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    while *dsync {
        let iov = libc::iovec {
            iov_base: out.as_ptr() as *mut libc::c_void,
            iov_len: out.len(),
        };
        // SAFETY: one iovec over `out`, which outlives the call.
        let n = unsafe {
            libc::pwritev2(
                file.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                libc::RWF_DSYNC,
            )
        };
        if n >= 0 {
            let n = n as usize;
            if n == out.len() {
                return Ok(true);
            }
            file.write_all_at(&out[n..], offset + n as u64)?;
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            // A kernel without the flag (EOPNOTSUPP, ENOSYS), or one that refuses it here
            // (EINVAL: if the plain write below fails too, the error is the write's own).
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                file.write_all_at(out, offset)?;
                tracing::debug!(error = %e, "pwritev2(RWF_DSYNC) refused; store log appends fdatasync");
                *dsync = false;
                return Ok(false);
            }
            _ => return Err(e),
        }
    }
    file.write_all_at(out, offset)?;
    Ok(false)
}

/// The open log, appended to by the committer thread only.
pub(crate) struct LogFile {
    pub dir: PathBuf,
    file: File,
    /// Direct appends (see [`Direct`]); `None`: through the page cache.
    direct: Option<Direct>,
    /// End of the records.
    pub len: u64,
    /// End of the file (preallocated space reads as zeros).
    alloc: u64,
    /// The file grew since the last fdatasync.
    grown: bool,
    /// fdatasyncs made by appends (the others were synchronous writes).
    syncs: u64,
    /// End of the space written with records or zeros (see [`ZERO_AHEAD`]).
    zeroed: u64,
    /// When the previous append was made.
    last: Option<std::time::Instant>,
}

impl LogFile {
    /// Opens `dir/store.log` for appending after the records that end at `len`. A torn tail is
    /// cut off; preallocated zeros after `len` are kept.
    pub(crate) fn open(dir: &Path, len: u64, torn: bool) -> io::Result<Self> {
        let path = dir.join(LOG);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut alloc = file.metadata()?.len();
        if torn {
            file.set_len(len)?;
            file.sync_all()?;
            alloc = len;
        }
        let direct = Direct::open(&path, &file, len)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            direct,
            len,
            alloc,
            grown: false,
            syncs: 0,
            // Whatever follows the records may be unwritten preallocation.
            zeroed: len,
            last: None,
        })
    }

    /// Whether appends bypass the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends `buf` and makes it durable (a synchronous direct write, or a write and fdatasync).
    pub(crate) fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = self.len + buf.len() as u64;
        if end > self.alloc {
            let new = end.next_multiple_of(PREALLOC);
            preallocate(&self.file, self.alloc, new - self.alloc)?;
            self.alloc = new;
            self.grown = true;
        }
        let now = std::time::Instant::now();
        let busy = self.last.is_some_and(|t| now.duration_since(t) < BUSY);
        self.last = Some(now);
        // Under load: zeros from the end of this append to the next ZERO_AHEAD boundary,
        // within the preallocation (never growing the file); the same fdatasync makes them
        // durable.
        let zero_to = if end > self.zeroed && busy {
            end.next_multiple_of(ZERO_AHEAD).min(self.alloc).max(end)
        } else {
            end
        };
        let (written, synced) = match self
            .direct
            .as_mut()
            .map(|d| d.write(self.len, buf, zero_to))
        {
            Some(Ok(w)) => w,
            other => {
                if let Some(Err(e)) = other {
                    // E.g. a filesystem that takes O_DIRECT but wants other alignment: the
                    // same bytes go through the page cache, from now on.
                    tracing::warn!(error = %e, "direct append to the store log failed; appending through the page cache");
                    self.direct = None;
                }
                if zero_to > end {
                    self.file
                        .write_all_at(&ZEROS[..(zero_to - end) as usize], end)?;
                }
                self.file.write_all_at(buf, self.len)?;
                (zero_to, false)
            }
        };
        self.zeroed = self.zeroed.max(written);
        // A grown file (preallocation) needs the fdatasync for its new size even after a
        // synchronous write.
        if !synced || self.grown {
            self.file.sync_data()?;
            self.grown = false;
            self.syncs += 1;
        }
        self.len = end;
        Ok(())
    }

    /// Replaces the log by a snapshot of `index` and continues appending to it.
    pub(crate) fn rewrite(&mut self, revision: i64, index: &Index) -> io::Result<()> {
        let len = write_snapshot(&self.dir, revision, index.iter())?;
        *self = Self::open(&self.dir, len, false)?;
        Ok(())
    }
}

/// Allocates `[offset, offset + len)` (fallocate: reads as zeros, no data written).
fn preallocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor we own; no memory is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // Filesystems without fallocate: grow the file and let appends fill it.
        return file.set_len(offset + len);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_compressed_and_read_back() {
        let text: Vec<u8> =
            br#"{"type":"Ready","status":"True","lastHeartbeatTime":"2026-01-01T00:00:00Z"},"#
                .repeat(20);
        let noise: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut buf = MAGIC.to_vec();
        encode_record(
            &mut buf,
            7,
            [
                ("/text", Some((5, 7, text.as_slice()))),
                ("/noise", Some((6, 7, noise.as_slice()))),
                ("/small", Some((7, 7, &b"s"[..]))),
            ]
            .into_iter(),
        );
        assert!(
            buf.len() < text.len() / 2 + noise.len() + 200,
            "{}",
            buf.len()
        );
        let rep = replay(&buf, Path::new("test")).unwrap();
        assert_eq!(rep.revision, 7);
        assert_eq!(rep.index["/text"].value, text);
        assert_eq!(rep.index["/noise"].value, noise);
        assert_eq!(rep.index["/small"].value, b"s");
        assert_eq!(rep.index["/text"].create_revision, 5);
    }

    /// Flags of the extents of `file` (FIEMAP, after a sync) that overlap `[from, to)`.
    fn extent_flags(file: &File, from: u64, to: u64) -> Vec<(u64, u64, u32)> {
        use std::os::fd::AsRawFd;
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Extent {
            logical: u64,
            physical: u64,
            length: u64,
            reserved64: [u64; 2],
            flags: u32,
            reserved: [u32; 3],
        }
        #[repr(C)]
        struct Fiemap {
            start: u64,
            length: u64,
            flags: u32,
            mapped: u32,
            count: u32,
            reserved: u32,
            extents: [Extent; 32],
        }
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
        const FIEMAP_FLAG_SYNC: u32 = 1;
        let mut m = Fiemap {
            start: from,
            length: to - from,
            flags: FIEMAP_FLAG_SYNC,
            mapped: 0,
            count: 32,
            reserved: 0,
            extents: [Extent::default(); 32],
        };
        // SAFETY: FS_IOC_FIEMAP fills `m`, whose extent array holds `count` entries.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut m as *mut Fiemap) };
        assert_eq!(
            r,
            0,
            "FIEMAP failed ({}): this test needs /var/tmp on a filesystem with extents (ext4, xfs)",
            io::Error::last_os_error()
        );
        m.extents[..m.mapped as usize]
            .iter()
            .map(|e| (e.logical, e.length, e.flags))
            .collect()
    }

    #[test]
    fn appends_under_load_write_zeros_ahead_so_their_fdatasync_changes_no_extents() {
        const UNWRITTEN: u32 = 0x800;
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        std::fs::write(dir.path().join(LOG), MAGIC).unwrap();
        let mut log = LogFile::open(dir.path(), HEADER as u64, false).unwrap();
        // Incompressible (xorshift), so each record is ~1.3 KB as written.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let value: Vec<u8> = (0..1300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut buf = Vec::new();
        for rev in 2..62i64 {
            buf.clear();
            let key = format!("/k{rev}");
            encode_record(
                &mut buf,
                rev,
                [(key.as_str(), Some((rev, rev, &value[..])))].into_iter(),
            );
            log.append(&buf).unwrap();
            assert_eq!(log.alloc, PREALLOC, "revision {rev}");
            // The first append is not under load: no zeros; every later one (milliseconds
            // apart) keeps the space up to the next 64 KiB boundary written.
            let expect = match rev {
                // Direct appends write whole blocks.
                2 if log.is_direct() => log.len.next_multiple_of(BLOCK),
                2 => log.len,
                // Until the records leave the block that first append wrote.
                _ if log.is_direct() && log.len <= BLOCK => BLOCK,
                _ => log.len.next_multiple_of(ZERO_AHEAD),
            };
            assert_eq!(log.zeroed, expect, "revision {rev}");
        }
        assert!(
            log.len > ZERO_AHEAD,
            "the appends crossed a 64 KiB boundary"
        );
        let file = File::open(dir.path().join(LOG)).unwrap();
        for (at, len, flags) in extent_flags(&file, 0, log.zeroed) {
            assert_eq!(flags & UNWRITTEN, 0, "extent at {at} (+{len}) is unwritten");
        }
        let data = std::fs::read(dir.path().join(LOG)).unwrap();
        assert_eq!(data.len() as u64, PREALLOC);
        let rep = replay(&data, Path::new("test")).unwrap();
        assert_eq!((rep.revision, rep.index.len()), (61, 60));
        assert_eq!((rep.good_len, rep.torn), (log.len, 0));
        assert_eq!(rep.index["/k61"].value, value);
    }

    /// Appends `n` records of about `size` bytes each (revisions after `rev`), noting them in
    /// `expect`.
    fn put_records(log: &mut LogFile, rev: &mut i64, expect: &mut Index, n: usize, size: usize) {
        let mut buf = Vec::new();
        for _ in 0..n {
            *rev += 1;
            // Sizes that end records anywhere in a block.
            let value: Vec<u8> = (0..size + (*rev as usize * 37) % 700)
                .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
                .collect();
            let key = format!("/k{rev}");
            buf.clear();
            encode_record(
                &mut buf,
                *rev,
                [(key.as_str(), Some((*rev, *rev, &value[..])))].into_iter(),
            );
            log.append(&buf).unwrap();
            let e = Entry {
                create_revision: *rev,
                mod_revision: *rev,
                value,
            };
            expect.insert(key, e);
        }
    }

    /// Replays the file and checks it holds exactly `expect`, ending at `len`.
    fn check_records(dir: &Path, len: u64, rev: i64, expect: &Index) {
        let data = std::fs::read(dir.join(LOG)).unwrap();
        let rep = replay(&data, Path::new("test")).unwrap();
        assert_eq!((rep.revision, rep.good_len, rep.torn), (rev, len, 0));
        assert_eq!(rep.index.len(), expect.len());
        for (k, e) in expect {
            assert_eq!(rep.index[k].value, e.value, "{k}");
        }
    }

    #[test]
    fn direct_appends_keep_every_record_across_blocks_and_reopens() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let d = dir.path();
        std::fs::write(d.join(LOG), MAGIC).unwrap();
        let mut log = LogFile::open(d, HEADER as u64, false).unwrap();
        assert!(
            log.is_direct(),
            "/var/tmp should take O_DIRECT (ext4, xfs): the direct path is what this tests"
        );
        let (mut rev, mut expect) = (1i64, Index::new());
        put_records(&mut log, &mut rev, &mut expect, 40, 100);
        // Made durable by the writes themselves (RWF_DSYNC), but for the first append, which
        // grew the file and needed an fdatasync for its size.
        assert!(log.direct.as_ref().is_some_and(|d| d.dsync));
        assert_eq!(log.syncs, 1, "fdatasyncs after 40 appends");
        // One record larger than two blocks.
        put_records(&mut log, &mut rev, &mut expect, 1, 9000);
        check_records(d, log.len, rev, &expect);
        // Reopened mid-block: the next append writes that block again with what it held.
        let len = log.len;
        drop(log);
        let mut log = LogFile::open(d, len, false).unwrap();
        assert!(
            !log.len.is_multiple_of(BLOCK),
            "the records end inside a block"
        );
        put_records(&mut log, &mut rev, &mut expect, 30, 300);
        check_records(d, log.len, rev, &expect);
        // Reopened as after a torn tail: the file is cut at the records' end, then grows again.
        let len = log.len;
        drop(log);
        let mut log = LogFile::open(d, len, true).unwrap();
        assert_eq!(std::fs::metadata(d.join(LOG)).unwrap().len(), len);
        put_records(&mut log, &mut rev, &mut expect, 5, 2000);
        check_records(d, log.len, rev, &expect);
    }

    #[test]
    fn deflated_values_of_older_logs_are_still_read() {
        use std::io::Write;
        let value = br#"{"kind":"ConfigMap","data":{"a":"b"}},"#.repeat(30);
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&value).unwrap();
        let z = z.finish().unwrap();
        // One record at revision 3 with one op 3 (deflated put), as the log wrote before LZ4.
        let mut payload = Vec::new();
        payload.extend_from_slice(&3i64.to_le_bytes());
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.push(3);
        payload.extend_from_slice(&2u32.to_le_bytes());
        payload.extend_from_slice(b"/k");
        payload.extend_from_slice(&2i64.to_le_bytes());
        payload.extend_from_slice(&3i64.to_le_bytes());
        payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
        payload.extend_from_slice(&(z.len() as u32).to_le_bytes());
        payload.extend_from_slice(&z);
        let mut buf = MAGIC.to_vec();
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        buf.extend_from_slice(&payload);
        let rep = replay(&buf, Path::new("test")).unwrap();
        assert_eq!(rep.revision, 3);
        assert_eq!(rep.index["/k"].value, value);
        assert_eq!(rep.index["/k"].create_revision, 2);
    }
}
