//! The kubelet's garbage-collection flags, shared by `skiff kubelet` and `skiff server`:
//! upstream's names and defaults, plus the KubeletConfiguration fields (flags win).

use anyhow::{bail, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

/// The KubeletConfiguration fields [`apply`] reads.
pub const FILE_FIELDS: &[&str] = &[
    "imageGCHighThresholdPercent",
    "imageGCLowThresholdPercent",
    "imageMinimumGCAge",
];

#[derive(Args, Debug, Clone, Default)]
pub struct GcArgs {
    /// Image GC starts when the image filesystem is this full (percent, default 85; 100 turns
    /// image GC off).
    #[arg(long)]
    pub image_gc_high_threshold: Option<u32>,
    /// Image GC frees space down to this usage (percent, default 80).
    #[arg(long)]
    pub image_gc_low_threshold: Option<u32>,
    /// Minimum age of an unused image before GC may remove it (default 2m).
    #[arg(long, value_parser = parse_duration)]
    pub minimum_image_ttl_duration: Option<Duration>,
    /// Dead containers kept per container of a pod (default 1; negative: no limit).
    #[arg(long, allow_negative_numbers = true)]
    pub maximum_dead_containers_per_container: Option<i32>,
    /// Dead containers kept on the node (default -1: no limit).
    #[arg(long, allow_negative_numbers = true)]
    pub maximum_dead_containers: Option<i32>,
    /// Minimum age of a dead container before GC may remove it (default 0).
    #[arg(long, value_parser = parse_duration)]
    pub minimum_container_ttl_duration: Option<Duration>,
    /// How often image GC runs (Skiff's; upstream's fixed 5m).
    #[arg(long, value_parser = parse_duration)]
    pub image_gc_period: Option<Duration>,
    /// How often dead-container GC runs (Skiff's; upstream's fixed 1m).
    #[arg(long, value_parser = parse_duration)]
    pub container_gc_period: Option<Duration>,
}

/// A Go duration: `90s`, `2m`, `1h30m`, `500ms`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {s:?}"))?;
        let v: f64 = rest[..n]
            .parse()
            .map_err(|_| format!("time: invalid duration {s:?}"))?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        total += v * mult;
        rest = &rest[u..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Applies the KubeletConfiguration fields (`file`: its unparsed fields) and then the flags.
pub fn apply(
    args: &GcArgs,
    file: &BTreeMap<String, serde_json::Value>,
    cfg: &mut skiff_node::gc::GcConfig,
) -> Result<()> {
    let num = |k: &str| file.get(k).and_then(|v| v.as_i64());
    let dur = |k: &str| -> Result<Option<Duration>> {
        match file.get(k).and_then(|v| v.as_str()) {
            Some(s) => parse_duration(s).map(Some).map_err(anyhow::Error::msg),
            None => Ok(None),
        }
    };
    if let Some(v) = num("imageGCHighThresholdPercent") {
        cfg.image_gc_high_threshold = v.clamp(0, 1000) as u32;
    }
    if let Some(v) = num("imageGCLowThresholdPercent") {
        cfg.image_gc_low_threshold = v.clamp(0, 1000) as u32;
    }
    if let Some(d) = dur("imageMinimumGCAge")? {
        cfg.minimum_image_ttl = d;
    }
    if let Some(v) = args.image_gc_high_threshold {
        cfg.image_gc_high_threshold = v;
    }
    if let Some(v) = args.image_gc_low_threshold {
        cfg.image_gc_low_threshold = v;
    }
    if let Some(v) = args.minimum_image_ttl_duration {
        cfg.minimum_image_ttl = v;
    }
    if let Some(v) = args.maximum_dead_containers_per_container {
        cfg.max_per_pod_container = v;
    }
    if let Some(v) = args.maximum_dead_containers {
        cfg.max_containers = v;
    }
    if let Some(v) = args.minimum_container_ttl_duration {
        cfg.minimum_container_ttl = v;
    }
    if let Some(v) = args.image_gc_period.filter(|d| !d.is_zero()) {
        cfg.image_gc_period = v;
    }
    if let Some(v) = args.container_gc_period.filter(|d| !d.is_zero()) {
        cfg.container_gc_period = v;
    }
    if let Err(e) = cfg.validate() {
        bail!("{e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_precedence() {
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5").is_err());
        let mut file = BTreeMap::new();
        file.insert("imageGCHighThresholdPercent".into(), serde_json::json!(70));
        file.insert("imageGCLowThresholdPercent".into(), serde_json::json!(60));
        file.insert("imageMinimumGCAge".into(), serde_json::json!("30s"));
        let mut cfg = skiff_node::gc::GcConfig::default();
        let args = GcArgs {
            image_gc_low_threshold: Some(50),
            ..Default::default()
        };
        apply(&args, &file, &mut cfg).unwrap();
        assert_eq!(cfg.image_gc_high_threshold, 70);
        assert_eq!(cfg.image_gc_low_threshold, 50);
        assert_eq!(cfg.minimum_image_ttl, Duration::from_secs(30));
        let bad = GcArgs {
            image_gc_low_threshold: Some(90),
            ..Default::default()
        };
        assert!(apply(&bad, &BTreeMap::new(), &mut Default::default()).is_err());
    }
}
