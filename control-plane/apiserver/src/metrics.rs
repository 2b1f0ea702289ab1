//! `/metrics` in the Prometheus text format, with upstream's metric names where they apply:
//! `apiserver_request_total`, `apiserver_request_duration_seconds`,
//! `apiserver_registered_watchers`, `apiserver_longrunning_requests`,
//! `apiserver_storage_objects`, `etcd_request_duration_seconds` (the embedded store's calls),
//! `process_resident_memory_bytes`.

use crate::registry::Resource;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0,
    8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<String, u64>,
    durations: BTreeMap<String, Histogram>,
    watchers: BTreeMap<String, i64>,
}

/// Shared counters; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

/// The labels of one request.
pub struct RequestLabels<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub scope: &'a str,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, l: &RequestLabels<'_>, code: u16, took: Duration) {
        let base = format!(
            "component=\"apiserver\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
            esc(l.group),
            esc(l.resource),
            l.scope,
            esc(l.subresource),
            l.verb,
            esc(l.version)
        );
        let mut i = self.lock();
        *i.requests
            .entry(format!("code=\"{code}\",{base}"))
            .or_default() += 1;
        if l.verb != "WATCH" {
            i.durations
                .entry(base)
                .or_default()
                .observe(took.as_secs_f64());
        }
    }

    fn watch_key(res: &Resource) -> String {
        format!(
            "group=\"{}\",kind=\"{}\",version=\"{}\"",
            esc(&res.group),
            esc(&res.kind),
            esc(&res.version)
        )
    }

    /// Counts a watcher for as long as the guard lives.
    pub fn watcher_guard(&self, res: &Resource) -> WatcherGuard {
        let key = Self::watch_key(res);
        *self.lock().watchers.entry(key.clone()).or_default() += 1;
        WatcherGuard {
            metrics: self.clone(),
            key,
        }
    }

    /// The exposition text; `objects` are (resource, count) pairs measured by the caller.
    pub fn render(&self, objects: &[(String, usize)]) -> String {
        let i = self.lock();
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for (k, v) in &i.requests {
            let _ = writeln!(out, "apiserver_request_total{{{k}}} {v}");
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (k, h) in &i.durations {
            for (b, c) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{k},le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_bucket{{{k},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_sum{{{k}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "apiserver_request_duration_seconds_count{{{k}}} {}",
                h.count
            );
        }
        out.push_str("# HELP apiserver_registered_watchers Number of currently registered watchers for a given resources\n# TYPE apiserver_registered_watchers gauge\n");
        let mut total_watch = 0;
        for (k, v) in &i.watchers {
            total_watch += v;
            let _ = writeln!(out, "apiserver_registered_watchers{{{k}}} {v}");
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.\n# TYPE apiserver_longrunning_requests gauge\n");
        let _ = writeln!(
            out,
            "apiserver_longrunning_requests{{component=\"apiserver\",verb=\"WATCH\"}} {total_watch}"
        );
        out.push_str("# HELP apiserver_storage_objects Number of stored objects at the time of last check split by kind.\n# TYPE apiserver_storage_objects gauge\n");
        for (r, n) in objects {
            let _ = writeln!(
                out,
                "apiserver_storage_objects{{resource=\"{}\"}} {n}",
                esc(r)
            );
        }
        if let Some(rss) = rss_bytes() {
            out.push_str("# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\n");
            let _ = writeln!(out, "process_resident_memory_bytes {rss}");
        }
        out
    }
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

pub struct WatcherGuard {
    metrics: Metrics,
    key: String,
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        if let Some(v) = self.metrics.lock().watchers.get_mut(&self.key) {
            *v -= 1;
        }
    }
}
