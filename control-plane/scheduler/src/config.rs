//! Scheduler configuration: a `KubeSchedulerConfiguration` (kubescheduler.config.k8s.io/v1)
//! file's profiles (scheduler names, plugins enabled/disabled, score weights) and back-off.

use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Score plugins and their default weights (upstream's defaults).
pub const DEFAULT_WEIGHTS: &[(&str, i64)] = &[
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodeResourcesFit", 1),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("InterPodAffinity", 2),
    ("PodTopologySpread", 2),
];

/// Filter plugins this scheduler runs.
pub const FILTERS: &[&str] = &[
    "NodeUnschedulable",
    "NodeName",
    "TaintToleration",
    "NodeAffinity",
    "NodePorts",
    "NodeResourcesFit",
    "PodTopologySpread",
    "InterPodAffinity",
];

#[derive(Clone, Debug)]
pub struct Profile {
    pub scheduler_name: String,
    weights: HashMap<String, i64>,
    disabled_filters: HashSet<String>,
    pub preemption: bool,
}

impl Profile {
    pub fn default_profile(name: &str) -> Profile {
        Profile {
            scheduler_name: name.to_string(),
            weights: DEFAULT_WEIGHTS
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            disabled_filters: HashSet::new(),
            preemption: true,
        }
    }

    pub fn filter_enabled(&self, name: &str) -> bool {
        !self.disabled_filters.contains(name)
    }

    pub fn score_weight(&self, name: &str) -> i64 {
        self.weights.get(name).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub profiles: Vec<Profile>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Bindings in flight at once.
    pub parallel_bindings: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            profiles: vec![Profile::default_profile(DEFAULT_SCHEDULER)],
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            parallel_bindings: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading scheduler config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scheduler config {path}: {msg}")]
    Invalid { path: String, msg: String },
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct File {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    profiles: Vec<FileProfile>,
    pod_initial_backoff_seconds: Option<u64>,
    pod_max_backoff_seconds: Option<u64>,
    parallelism: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct FileProfile {
    scheduler_name: Option<String>,
    plugins: Option<Plugins>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Plugins {
    filter: Option<PluginSet>,
    score: Option<PluginSet>,
    post_filter: Option<PluginSet>,
    multi_point: Option<PluginSet>,
}

#[derive(Deserialize, Default)]
struct PluginSet {
    #[serde(default)]
    enabled: Vec<Plugin>,
    #[serde(default)]
    disabled: Vec<Plugin>,
}

#[derive(Deserialize)]
struct Plugin {
    name: String,
    weight: Option<i64>,
}

impl SchedulerConfig {
    /// Reads a KubeSchedulerConfiguration file (YAML or JSON).
    pub fn from_file(path: &std::path::Path) -> Result<SchedulerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|msg| ConfigError::Invalid {
            path: path.display().to_string(),
            msg,
        })
    }

    pub fn parse(text: &str) -> Result<SchedulerConfig, String> {
        let f: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(k) = f.kind.as_deref() {
            if k != "KubeSchedulerConfiguration" {
                return Err(format!("kind is {k}, expected KubeSchedulerConfiguration"));
            }
        }
        if let Some(v) = f.api_version.as_deref() {
            if !v.starts_with("kubescheduler.config.k8s.io/") {
                return Err(format!(
                    "apiVersion {v} is not kubescheduler.config.k8s.io/v1"
                ));
            }
        }
        let mut cfg = SchedulerConfig::default();
        if let Some(s) = f.pod_initial_backoff_seconds {
            cfg.initial_backoff = Duration::from_secs(s.max(1));
        }
        if let Some(s) = f.pod_max_backoff_seconds {
            cfg.max_backoff = Duration::from_secs(s.max(1));
        }
        if cfg.max_backoff < cfg.initial_backoff {
            return Err("podMaxBackoffSeconds is less than podInitialBackoffSeconds".into());
        }
        if let Some(p) = f.parallelism {
            cfg.parallel_bindings = p.max(1);
        }
        if !f.profiles.is_empty() {
            cfg.profiles.clear();
        }
        let mut names = HashSet::new();
        for fp in f.profiles {
            let name = fp
                .scheduler_name
                .unwrap_or_else(|| DEFAULT_SCHEDULER.into());
            if !names.insert(name.clone()) {
                return Err(format!("duplicate profile with schedulerName {name}"));
            }
            let mut p = Profile::default_profile(&name);
            if let Some(pl) = fp.plugins {
                for set in [pl.score.as_ref(), pl.multi_point.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    for d in &set.disabled {
                        if d.name == "*" {
                            p.weights.clear();
                        } else {
                            p.weights.remove(&d.name);
                        }
                    }
                    for e in &set.enabled {
                        if !DEFAULT_WEIGHTS.iter().any(|(n, _)| *n == e.name)
                            && !FILTERS.contains(&e.name.as_str())
                        {
                            return Err(format!("unknown score plugin {:?}", e.name));
                        }
                        p.weights.insert(e.name.clone(), e.weight.unwrap_or(1));
                    }
                }
                for set in [pl.filter.as_ref(), pl.multi_point.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    for d in &set.disabled {
                        if d.name == "*" {
                            p.disabled_filters
                                .extend(FILTERS.iter().map(|s| s.to_string()));
                        } else {
                            p.disabled_filters.insert(d.name.clone());
                        }
                    }
                    for e in &set.enabled {
                        p.disabled_filters.remove(&e.name);
                    }
                }
                if let Some(pf) = pl.post_filter.as_ref() {
                    if pf
                        .disabled
                        .iter()
                        .any(|d| d.name == "*" || d.name == "DefaultPreemption")
                    {
                        p.preemption = false;
                    }
                }
            }
            cfg.profiles.push(p);
        }
        Ok(cfg)
    }

    pub fn profile(&self, scheduler_name: &str) -> Option<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.scheduler_name == scheduler_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_profiles_and_weights() {
        let c = SchedulerConfig::parse(
            r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
podMaxBackoffSeconds: 20
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    score:
      disabled: [{name: NodeResourcesBalancedAllocation}]
      enabled: [{name: ImageLocality, weight: 5}]
    filter:
      disabled: [{name: NodePorts}]
    postFilter:
      disabled: [{name: DefaultPreemption}]
"#,
        )
        .unwrap();
        assert_eq!(c.max_backoff, Duration::from_secs(20));
        let p = c.profile("packer").unwrap();
        assert_eq!(p.score_weight("ImageLocality"), 5);
        assert_eq!(p.score_weight("NodeResourcesBalancedAllocation"), 0);
        assert!(!p.filter_enabled("NodePorts"));
        assert!(!p.preemption);
        assert_eq!(
            c.profile("default-scheduler")
                .unwrap()
                .score_weight("TaintToleration"),
            3
        );
        assert!(SchedulerConfig::parse("kind: Pod").is_err());
    }
}
