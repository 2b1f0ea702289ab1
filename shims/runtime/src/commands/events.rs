//! `events`: cgroup statistics of a running container as runc's event JSON,
//! `{"type":"stats","id":ID,"data":{...}}`, once with `--stats`, else every `--interval`, and
//! `{"type":"oom","id":ID}` when the kernel OOM-kills a process of the container (the
//! `oom_kill` counter of its memory cgroup, checked every 100 ms, rises).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libcgroups::common::CgroupManager;
use libcgroups::stats::{BlkioDeviceStat, MemoryData, Stats};
use libcontainer::container::ContainerStatus;
use serde_json::{json, Value};

use super::{cgroup_manager, load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds between two stats events.
    #[arg(long, default_value = "5s")]
    pub interval: String,
    /// Print one stats event and exit.
    #[arg(long)]
    pub stats: bool,
    /// Container id.
    pub id: String,
}

pub fn events(args: Args, globals: &Globals) -> Result<()> {
    let interval = parse_interval(&args.interval)?;
    let tick = OOM_TICK.min(interval);
    let mut oom: Option<(PathBuf, u64)> = None;
    let mut next_stats = Instant::now();
    loop {
        let container = load_container(globals, &args.id)?;
        if oom.is_none() && !args.stats {
            if let Some(file) = container
                .pid()
                .and_then(|p| skiff_oom::counter_file(p.as_raw()))
            {
                let n = skiff_oom::kills(&file);
                oom = Some((file, n));
            }
        }
        // Before the status check: an OOM kill of the init stops the container.
        if let Some((file, seen)) = &mut oom {
            let now = skiff_oom::kills(file);
            if now > *seen {
                *seen = now;
                emit(&json!({"type": "oom", "id": args.id}))?;
            }
        }
        if !matches!(
            container.status(),
            ContainerStatus::Running | ContainerStatus::Paused | ContainerStatus::Created
        ) {
            bail!("container {} is not running", args.id);
        }
        if Instant::now() >= next_stats {
            let stats = cgroup_manager(&container)?.stats().with_context(|| {
                format!("cannot read the cgroup stats of container {}", args.id)
            })?;
            emit(&json!({"type": "stats", "id": args.id, "data": runc_stats(&stats)}))?;
            if args.stats {
                return Ok(());
            }
            next_stats = Instant::now() + interval;
        }
        std::thread::sleep(tick);
    }
}

const OOM_TICK: Duration = Duration::from_millis(100);

fn emit(event: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{event}")?;
    out.flush()?;
    Ok(())
}

/// Go-style durations as runc takes them: `5s`, `500ms`, `1m`, or plain seconds.
fn parse_interval(s: &str) -> Result<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid --interval {s:?}: use e.g. 5s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("invalid --interval {s:?}: use ms, s or m"),
    };
    if secs <= 0.0 {
        bail!("--interval must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn mem(d: &MemoryData) -> Value {
    json!({"limit": d.limit, "usage": d.usage, "max": d.max_usage, "failcnt": d.fail_count})
}

fn blkio(entries: &[BlkioDeviceStat]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({"major": e.major, "minor": e.minor,
                       "op": e.op_type.clone().unwrap_or_default(), "value": e.value})
            })
            .collect(),
    )
}

/// libcgroups' statistics in the shape of runc's `types.Stats`.
fn runc_stats(s: &Stats) -> Value {
    let raw: BTreeMap<&String, &u64> = s.memory.stats.iter().collect();
    let hugetlb: BTreeMap<&String, Value> = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            (
                size,
                json!({"usage": h.usage, "max": h.max_usage, "failcnt": h.fail_count}),
            )
        })
        .collect();
    json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage.usage_total,
                "percpu": s.cpu.usage.per_core_usage_total,
                "percpu_kernel": s.cpu.usage.per_core_usage_kernel,
                "percpu_user": s.cpu.usage.per_core_usage_user,
                "kernel": s.cpu.usage.usage_kernel,
                "user": s.cpu.usage.usage_user,
            },
            "throttling": {
                "periods": s.cpu.throttling.periods,
                "throttledPeriods": s.cpu.throttling.throttled_periods,
                "throttledTime": s.cpu.throttling.throttled_time,
            },
        },
        "memory": {
            "cache": s.memory.cache,
            "usage": mem(&s.memory.memory),
            "swap": mem(&s.memory.memswap),
            "kernel": mem(&s.memory.kernel),
            "kernelTCP": mem(&s.memory.kernel_tcp),
            "raw": raw,
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit},
        "blkio": {
            "ioServiceBytesRecursive": blkio(&s.blkio.service_bytes),
            "ioServicedRecursive": blkio(&s.blkio.serviced),
            "ioQueueRecursive": blkio(&s.blkio.queued),
            "ioServiceTimeRecursive": blkio(&s.blkio.service_time),
            "ioWaitTimeRecursive": blkio(&s.blkio.wait_time),
            "ioMergedRecursive": blkio(&s.blkio.merged),
            "ioTimeRecursive": blkio(&s.blkio.time),
            "sectorsRecursive": blkio(&s.blkio.sectors),
        },
        "hugetlb": hugetlb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5h").is_err());
    }

    #[test]
    fn stats_have_runc_keys() {
        let v = runc_stats(&Stats::default());
        assert!(v["cpu"]["usage"]["total"].is_u64());
        assert!(v["memory"]["usage"]["limit"].is_u64());
        assert!(v["pids"]["current"].is_u64());
    }
}
