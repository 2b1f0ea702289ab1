//! skiff-bench: helpers shared by the benchmarks under `bench/` (see bench/README.md): result
//! lines, percentiles, `/proc` readings, and an etcd of the bench's own (Debian's
//! `/usr/bin/etcd` on free loopback ports in a temp dir, stopped by PID).

pub mod fake_cluster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Debian's etcd (package `etcd-server`, 3.4).
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// Median of `xs` (sorted in place); `None` when empty.
pub fn median(xs: &mut [f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// One result line: `<name> skiff=<a> <peer>=<b> ratio=<a/b>`.
pub fn line(name: &str, skiff: f64, peer_name: &str, peer: f64) -> String {
    let ratio = if peer > 0.0 { skiff / peer } else { f64::NAN };
    format!("{name} skiff={skiff:.2} {peer_name}={peer:.2} ratio={ratio:.2}")
}

/// One result line with several peers: `<name> skiff=<a> <p1>=<b1> ratio=<a/b1> <p2>=<b2>
/// ratio_<p2>=<a/b2> ...`; the first peer keeps the plain `ratio=` of [`line`]. NaN values (a
/// peer not measured) print as `nan`.
pub fn line_multi(name: &str, skiff: f64, peers: &[(&str, f64)]) -> String {
    let mut out = format!("{name} skiff={skiff:.2}");
    for (i, (peer_name, peer)) in peers.iter().enumerate() {
        let ratio = if *peer > 0.0 { skiff / peer } else { f64::NAN };
        let key = if i == 0 {
            "ratio".to_string()
        } else {
            format!("ratio_{peer_name}")
        };
        out.push_str(&format!(" {peer_name}={peer:.2} {key}={ratio:.2}"));
    }
    out
}

/// Value at fraction `p` (0..=1) of an ascending slice; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `write_bytes` of `/proc/<pid>/io`: bytes the process caused to be written to disk.
pub fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `VmRSS` of `/proc/<pid>/status` in KiB (0 when the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `VmHWM` of `/proc/<pid>/status` in KiB: the process's peak RSS so far (0 when it is gone).
pub fn hwm_kib(pid: u32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) the process has used so far, in seconds (0 when it is gone).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime and stime
    // are fields 14 and 15 of the line, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A keep-alive HTTP/1.1 connection to etcd's JSON gateway (`/v3/kv/...`).
pub struct Gateway {
    r: BufReader<TcpStream>,
    w: TcpStream,
    host: String,
}

impl Gateway {
    pub fn connect(addr: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s.try_clone()?),
            w: s,
            host: addr.to_string(),
        })
    }

    /// POSTs a JSON body; returns the status code and the body.
    pub fn post(&mut self, path: &str, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        write!(
            self.w,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut len, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else {
            out.resize(len, 0);
            self.r.read_exact(&mut out)?;
        }
        Ok((code, out))
    }

    /// `/v3/kv/put`; panics on an error status (a benchmark with failed puts means nothing).
    pub fn put(&mut self, key: &str, value: &[u8]) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            b64.encode(key),
            b64.encode(value)
        );
        let (code, resp) = self.post("/v3/kv/put", &body).expect("etcd put");
        assert_eq!(code, 200, "etcd put: {}", String::from_utf8_lossy(&resp));
    }
}

/// An etcd started for the run: one member on free loopback ports, data in a temp dir; killed
/// by its PID and its data removed on drop.
pub struct Etcd {
    child: Child,
    /// `127.0.0.1:<client port>` (plain HTTP: gRPC and the JSON gateway).
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `/usr/bin/etcd` with its data in a new temp dir under `parent` (use a real disk,
    /// not tmpfs, when write figures matter) and waits until its gateway answers. `None`, with
    /// the reason on stderr, when etcd is not installed or does not come up.
    pub fn start(parent: &Path) -> Option<Etcd> {
        if !Path::new(ETCD_BIN).exists() {
            eprintln!("{ETCD_BIN} not found (Debian package etcd-server)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("sk-etcd")
            .tempdir_in(parent)
            .ok()?;
        let (client, peer) = (free_port().ok()?, free_port().ok()?);
        let addr = format!("127.0.0.1:{client}");
        let child = Command::new(ETCD_BIN)
            .args([
                "--name",
                "bench",
                "--data-dir",
                &dir.path().join("data").display().to_string(),
                "--listen-client-urls",
                &format!("http://{addr}"),
                "--advertise-client-urls",
                &format!("http://{addr}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &format!("bench=http://127.0.0.1:{peer}"),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let etcd = Etcd {
            child,
            addr,
            _dir: dir,
        };
        for _ in 0..100 {
            if let Ok(mut c) = Gateway::connect(&etcd.addr) {
                if matches!(c.post("/v3/kv/range", "{\"key\":\"AA==\"}"), Ok((200, _))) {
                    return Some(etcd);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("etcd did not come up; skipping it");
        None
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_line() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(
            line("x_ms", 1.0, "runc", 4.0),
            "x_ms skiff=1.00 runc=4.00 ratio=0.25"
        );
        assert_eq!(
            line_multi("y", 2.0, &[("etcd", 1.0), ("upstream_ref", 4.0)]),
            "y skiff=2.00 etcd=1.00 ratio=2.00 upstream_ref=4.00 ratio_upstream_ref=0.50"
        );
        assert_eq!(line_multi("z", 2.0, &[]), "z skiff=2.00");
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert!(cpu_secs(std::process::id()) >= 0.0);
        assert!(rss_kib(std::process::id()) > 0);
    }
}
