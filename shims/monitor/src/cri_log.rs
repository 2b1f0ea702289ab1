//! The CRI container log format: `<RFC3339Nano> <stdout|stderr> <F|P> <content>\n`.
//!
//! A full line (ended by `\n`) gets tag `F`; a piece of a line gets `P` and the reader joins it
//! with what follows up to the next `F`. A piece is written when a line grows past
//! [`MAX_LINE`], when it has waited [`PARTIAL_FLUSH`] without its newline, and at EOF (then
//! the line really has no end, and `P` says so).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest content of one log line before it is split (containerd uses 16 KiB too).
pub const MAX_LINE: usize = 16 * 1024;
/// How long a line without its newline is held back before it is written as `P`.
pub const PARTIAL_FLUSH: Duration = Duration::from_millis(500);

/// Per-stream line assembly.
pub struct LineBuffer {
    stream: &'static str,
    pending: Vec<u8>,
    pending_since: Option<Instant>,
}

impl LineBuffer {
    pub fn new(stream: &'static str) -> Self {
        Self {
            stream,
            pending: Vec::new(),
            pending_since: None,
        }
    }

    /// Add bytes read from the stream; complete records are appended to `out`.
    /// A full line read in one piece is encoded straight from `data` (not copied into the
    /// pending buffer first).
    pub fn push(&mut self, data: &[u8], ts: &[u8], now: Instant, out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                self.emit(ts, b'F', &rest[..i], out);
            } else {
                self.pending.extend_from_slice(&rest[..i]);
                self.emit_pending(ts, b'F', out);
            }
            rest = &rest[i + 1..];
        }
        self.pending.extend_from_slice(rest);
        while self.pending.len() >= MAX_LINE {
            let tail = self.pending.split_off(MAX_LINE);
            self.emit_pending(ts, b'P', out);
            self.pending = tail;
        }
        if self.pending.is_empty() {
            self.pending_since = None;
        } else if self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
    }

    /// When the held-back piece is due to be written, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + PARTIAL_FLUSH)
    }

    /// Write the held-back piece as `P` (on timeout or EOF).
    pub fn flush_partial(&mut self, ts: &[u8], out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.emit_pending(ts, b'P', out);
        }
        self.pending_since = None;
    }

    fn emit_pending(&mut self, ts: &[u8], tag: u8, out: &mut Vec<u8>) {
        self.emit(ts, tag, &self.pending, out);
        self.pending.clear();
    }

    fn emit(&self, ts: &[u8], tag: u8, content: &[u8], out: &mut Vec<u8>) {
        out.reserve(ts.len() + self.stream.len() + content.len() + 5);
        out.extend_from_slice(ts);
        out.push(b' ');
        out.extend_from_slice(self.stream.as_bytes());
        out.extend_from_slice(&[b' ', tag, b' ']);
        out.extend_from_slice(content);
        out.push(b'\n');
    }
}

/// The log file, reopened on request (after the kubelet rotates it).
pub struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_path_buf(),
            file: open_append(path)?,
        })
    }

    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_append(&self.path)?;
        Ok(())
    }

    /// Append records. Errors (disk full...) are returned but the monitor keeps going: losing
    /// log lines must not lose the exit code.
    pub fn write(&mut self, records: &[u8]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.file.write_all(records)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2026-11-25T01:02:03.123456789Z";
    const T: &[u8] = TS.as_bytes();

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn full_lines_get_f_and_pieces_wait() {
        let mut b = LineBuffer::new("stdout");
        let mut out = Vec::new();
        let now = Instant::now();
        b.push(b"hello\nwor", T, now, &mut out);
        assert_eq!(lines(&out), vec![format!("{TS} stdout F hello")]);
        assert_eq!(b.deadline(), Some(now + PARTIAL_FLUSH));
        b.push(b"ld\n\n", T, now, &mut out);
        assert_eq!(
            lines(&out)[1..],
            [format!("{TS} stdout F world"), format!("{TS} stdout F ")]
        );
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn unterminated_and_long_lines_get_p() {
        let mut b = LineBuffer::new("stderr");
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE + 3];
        b.push(&long, T, Instant::now(), &mut out);
        assert_eq!(out.len(), TS.len() + " stderr P ".len() + MAX_LINE + 1);
        b.flush_partial(T, &mut out);
        assert_eq!(lines(&out)[1], format!("{TS} stderr P xxx"));
        b.flush_partial(T, &mut out);
        assert_eq!(lines(&out).len(), 2);
    }

    #[test]
    fn a_piece_is_joined_with_the_rest_of_its_line() {
        let mut b = LineBuffer::new("stdout");
        let mut out = Vec::new();
        b.push(b"ab", T, Instant::now(), &mut out);
        assert!(out.is_empty());
        b.push(b"c\nd\ne", T, Instant::now(), &mut out);
        assert_eq!(
            lines(&out),
            [format!("{TS} stdout F abc"), format!("{TS} stdout F d")]
        );
        b.flush_partial(T, &mut out);
        assert_eq!(lines(&out)[2], format!("{TS} stdout P e"));
    }
}
