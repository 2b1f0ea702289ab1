//! `update`: change the cgroup limits of a running (or created, or paused) container.
//!
//! Resources come from `-r FILE` (`-` for stdin; an OCI `LinuxResources` object, what
//! containerd's shim sends) and/or runc's single-value flags, which win over the file.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use libcgroups::common::{CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;

use super::{cgroup_manager, load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSON file with an OCI LinuxResources object (`-` reads stdin).
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Block IO weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota in microseconds.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_share: Option<u64>,
    /// CPU realtime period in microseconds.
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds.
    #[arg(long)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs to allow (0-3, 0,1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to allow (0-3, 0,1).
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Memory limit (bytes, or with k/m/g suffix; -1 for none).
    #[arg(short, long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory soft limit.
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1 for unlimited swap).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Maximum number of pids (-1 for unlimited).
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Accepted for runc compatibility (kernel memory accounting is deprecated).
    #[arg(long)]
    pub kernel_memory: Option<String>,
    /// Accepted for runc compatibility (kernel memory accounting is deprecated).
    #[arg(long)]
    pub kernel_memory_tcp: Option<String>,
    /// Container id.
    pub id: String,
}

pub fn update(args: Args, globals: &Globals) -> Result<()> {
    let container = load_container(globals, &args.id)?;
    let mut res = match &args.resources {
        Some(path) => {
            let mut text = Vec::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut text)
                    .context("cannot read resources from stdin")?;
            } else {
                text = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
            }
            serde_json::from_slice::<LinuxResources>(&text)
                .context("cannot parse the resources: pass an OCI LinuxResources JSON object")?
        }
        None => LinuxResources::default(),
    };
    apply_flags(&args, &mut res)?;
    let manager = cgroup_manager(&container)?;
    manager
        .apply(&ControllerOpt {
            resources: &res,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .with_context(|| format!("cannot update the cgroups of container {}", args.id))
}

fn apply_flags(args: &Args, res: &mut LinuxResources) -> Result<()> {
    let mut cpu = res.cpu().clone().unwrap_or_default();
    let mut cpu_set = false;
    macro_rules! set {
        ($target:ident, $flag:expr, $setter:ident, $touched:ident) => {
            if let Some(v) = $flag.clone() {
                $target.$setter(Some(v));
                $touched = true;
            }
        };
    }
    set!(cpu, args.cpu_period, set_period, cpu_set);
    set!(cpu, args.cpu_quota, set_quota, cpu_set);
    set!(cpu, args.cpu_share, set_shares, cpu_set);
    set!(cpu, args.cpu_rt_period, set_realtime_period, cpu_set);
    set!(cpu, args.cpu_rt_runtime, set_realtime_runtime, cpu_set);
    set!(cpu, args.cpuset_cpus, set_cpus, cpu_set);
    set!(cpu, args.cpuset_mems, set_mems, cpu_set);
    if cpu_set {
        res.set_cpu(Some(cpu));
    }
    let mut mem = res.memory().unwrap_or_default();
    let mut mem_set = false;
    let memory = args.memory.as_deref().map(parse_bytes).transpose()?;
    let reservation = args
        .memory_reservation
        .as_deref()
        .map(parse_bytes)
        .transpose()?;
    let swap = args.memory_swap.as_deref().map(parse_bytes).transpose()?;
    set!(mem, memory, set_limit, mem_set);
    set!(mem, reservation, set_reservation, mem_set);
    set!(mem, swap, set_swap, mem_set);
    if mem_set {
        res.set_memory(Some(mem));
    }
    if let Some(limit) = args.pids_limit {
        let mut pids = res.pids().unwrap_or_default();
        pids.set_limit(limit);
        res.set_pids(Some(pids));
    }
    if let Some(weight) = args.blkio_weight {
        let mut blkio = res.block_io().clone().unwrap_or_default();
        blkio.set_weight(Some(weight));
        res.set_block_io(Some(blkio));
    }
    Ok(())
}

/// runc's `units.RAMInBytes`: a number with an optional b/k/m/g/t suffix (powers of 1024);
/// `-1` means unlimited.
pub fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("invalid size {s:?}: use bytes or a k/m/g suffix"))?;
    if n < 0.0 {
        bail!("invalid size {s:?}: must not be negative (use -1 for unlimited)");
    }
    Ok((n * mult as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_like_runc() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("4m").unwrap(), 4 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("2kb").unwrap(), 2048);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("x").is_err());
    }
}
