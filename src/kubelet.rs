//! `skiff kubelet`: the kubelet alone, with upstream's flag names and a KubeletConfiguration file
//! (`--config`). Flags win over the file, as upstream.

use anyhow::{bail, Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::Taint;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct KubeletArgs {
    /// kubeconfig of the API server (the node's identity, e.g. `system:node:<name>`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// KubeletConfiguration file (kubelet.config.k8s.io/v1beta1, YAML or JSON).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// CRI endpoint: `unix:///path` or a socket path.
    #[arg(long)]
    pub container_runtime_endpoint: Option<String>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The node's InternalIP (default: the address of the interface with the default route);
    /// an IPv4,IPv6 pair for a dual-stack node (both are listed as InternalIP).
    #[arg(long)]
    pub node_ip: Option<String>,
    /// Labels to register the node with: `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with: `key=value:Effect,key:Effect`.
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Maximum number of pods (capacity `pods`, default 110).
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// Cgroup driver: `cgroupfs` (default) or `systemd` (QoS slices through systemd's D-Bus
    /// API); a runtime reporting another driver (RuntimeConfig) is refused.
    #[arg(long)]
    pub cgroup_driver: Option<String>,
    /// Root cgroup of pods: they go under `<cgroup-root>/kubepods` (default `/`).
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// Cluster DNS server(s), comma separated.
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// Cluster domain (default `cluster.local`).
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// State folder (default `/var/lib/skiff/kubelet`).
    #[arg(long)]
    pub root_dir: Option<PathBuf>,
    /// Address the :10250 server binds (default all).
    #[arg(long)]
    pub address: Option<IpAddr>,
    /// Port of the kubelet's HTTPS server (default 10250).
    #[arg(long)]
    pub port: Option<u16>,
    /// Serving certificate (PEM); unset with the key: self-signed under the root dir.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA that client certificates must chain to.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// This node's pod CIDR (default `10.42.0.0/24`).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Requests to :10250 without credentials are `system:anonymous` (true) or get 401.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub anonymous_auth: Option<bool>,
    /// Check bearer tokens with TokenReviews against the API server.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub authentication_token_webhook: Option<bool>,
    /// `AlwaysAllow` or `Webhook` (SubjectAccessReviews).
    #[arg(long)]
    pub authorization_mode: Option<skiff_node::auth::AuthzMode>,
    /// Folder of static pod manifests (YAML or JSON).
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// Port of the plain-HTTP `/healthz` (default 10248; 0 disables).
    #[arg(long)]
    pub healthz_port: Option<u16>,
    /// Address of the healthz endpoint (default 127.0.0.1).
    #[arg(long)]
    pub healthz_bind_address: Option<IpAddr>,
    #[command(flatten)]
    pub resources: NodeResourceArgs,
    #[command(flatten)]
    pub gc: crate::gc_flags::GcArgs,
}

/// QoS cgroups, node allocatable and eviction flags (upstream's names), shared by
/// `skiff kubelet` and `skiff server`.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeResourceArgs {
    /// QoS-class cgroups `kubepods/{burstable,besteffort}/pod<uid>` (default true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cgroups_per_qos: Option<bool>,
    /// Node allocatable enforcement: `pods` (default) limits the kubepods cgroup to
    /// allocatable; `none` does not.
    #[arg(long, value_delimiter = ',')]
    pub enforce_node_allocatable: Vec<String>,
    /// Resources reserved for Kubernetes daemons: `cpu=100m,memory=100Mi,ephemeral-storage=1Gi,pid=100`.
    #[arg(long)]
    pub kube_reserved: Option<String>,
    /// Resources reserved for the OS: same form as --kube-reserved.
    #[arg(long)]
    pub system_reserved: Option<String>,
    /// Hard eviction thresholds, e.g. `memory.available<100Mi,nodefs.available<10%` (default:
    /// memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%
    /// for `skiff kubelet`, as upstream; k3s's imagefs.available<5%,nodefs.available<5% for
    /// `skiff server`).
    #[arg(long)]
    pub eviction_hard: Option<String>,
    /// Soft eviction thresholds, e.g. `memory.available<1.5Gi`; each needs a grace period.
    #[arg(long)]
    pub eviction_soft: Option<String>,
    /// Grace periods of the soft thresholds, e.g. `memory.available=1m30s`.
    #[arg(long)]
    pub eviction_soft_grace_period: Option<String>,
    /// Minimum reclaim once a threshold is met, e.g. `memory.available=0Mi,nodefs.available=500Mi`.
    #[arg(long)]
    pub eviction_minimum_reclaim: Option<String>,
    /// How long a pressure condition stays after its threshold was last met (default 5m0s).
    #[arg(long)]
    pub eviction_pressure_transition_period: Option<String>,
    /// Grace period (seconds) of pods evicted for a soft threshold (default 0).
    #[arg(long)]
    pub eviction_max_pod_grace_period: Option<i64>,
}

/// KubeletConfiguration fields of node resources and eviction.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct ResourceFields {
    #[serde(rename = "cgroupsPerQOS")]
    cgroups_per_qos: Option<bool>,
    enforce_node_allocatable: Option<Vec<String>>,
    kube_reserved: Option<BTreeMap<String, String>>,
    system_reserved: Option<BTreeMap<String, String>>,
    eviction_hard: Option<BTreeMap<String, String>>,
    eviction_soft: Option<BTreeMap<String, String>>,
    eviction_soft_grace_period: Option<BTreeMap<String, String>>,
    eviction_minimum_reclaim: Option<BTreeMap<String, String>>,
    eviction_pressure_transition_period: Option<String>,
    eviction_max_pod_grace_period: Option<i64>,
}

fn pairs(s: &str, sep: char) -> Result<Vec<(String, String)>> {
    skiff_node::eviction::split_map(s, sep).map_err(anyhow::Error::msg)
}

fn map_pairs(m: BTreeMap<String, String>) -> Vec<(String, String)> {
    m.into_iter().collect()
}

/// Applies the flags (winning) and the file's fields to `c`.
fn apply_resources(
    c: &mut skiff_node::KubeletConfig,
    args: &NodeResourceArgs,
    file: ResourceFields,
) -> Result<()> {
    use skiff_node::eviction;
    if let Some(q) = args.cgroups_per_qos.or(file.cgroups_per_qos) {
        c.cgroups_per_qos = q;
    }
    let enforce = if args.enforce_node_allocatable.is_empty() {
        file.enforce_node_allocatable
    } else {
        Some(args.enforce_node_allocatable.clone())
    };
    if let Some(e) = enforce {
        for v in &e {
            if !["pods", "none", "system-reserved", "kube-reserved"].contains(&v.as_str()) {
                bail!("--enforce-node-allocatable: invalid option {v:?}");
            }
        }
        c.enforce_node_allocatable = e.into_iter().filter(|v| v != "none").collect();
    }
    if !c.cgroups_per_qos && c.enforce_node_allocatable.iter().any(|v| v == "pods") {
        bail!("invalid configuration: enforceNodeAllocatable (--enforce-node-allocatable) must be [none] when cgroupsPerQOS (--cgroups-per-qos) is false");
    }
    let reserved = |flag: &Option<String>,
                    f: Option<BTreeMap<String, String>>,
                    name: &str|
     -> Result<BTreeMap<String, i64>> {
        let p = match flag {
            Some(s) => pairs(s, '=')?,
            None => f.map(map_pairs).unwrap_or_default(),
        };
        eviction::parse_reserved(&p).map_err(|e| anyhow::anyhow!("--{name}: {e}"))
    };
    c.kube_reserved = reserved(&args.kube_reserved, file.kube_reserved, "kube-reserved")?;
    c.system_reserved = reserved(
        &args.system_reserved,
        file.system_reserved,
        "system-reserved",
    )?;
    let hard = match &args.eviction_hard {
        Some(s) => Some(pairs(s, '<')?),
        None => file.eviction_hard.map(map_pairs),
    };
    let soft = match &args.eviction_soft {
        Some(s) => pairs(s, '<')?,
        None => file.eviction_soft.map(map_pairs).unwrap_or_default(),
    };
    let grace = match &args.eviction_soft_grace_period {
        Some(s) => pairs(s, '=')?,
        None => file
            .eviction_soft_grace_period
            .map(map_pairs)
            .unwrap_or_default(),
    };
    let reclaim = match &args.eviction_minimum_reclaim {
        Some(s) => pairs(s, '=')?,
        None => file
            .eviction_minimum_reclaim
            .map(map_pairs)
            .unwrap_or_default(),
    };
    let mut ev = eviction::build_config(hard.as_deref(), &soft, &grace, &reclaim)
        .map_err(|e| anyhow::anyhow!("eviction settings: {e}"))?;
    if let Some(p) = args
        .eviction_pressure_transition_period
        .clone()
        .or(file.eviction_pressure_transition_period)
    {
        ev.pressure_transition_period = go_duration(&p)?;
    }
    if let Some(g) = args
        .eviction_max_pod_grace_period
        .or(file.eviction_max_pod_grace_period)
    {
        ev.max_pod_grace_period = g.max(0);
    }
    c.eviction = ev;
    Ok(())
}

/// k3s's hard eviction thresholds for its embedded kubelet, the defaults of `skiff server`:
/// upstream's 10%/15% disk thresholds put many small or heavily reserved root filesystems under
/// DiskPressure at once (k3s sets these for the same reason). No memory threshold, as k3s.
pub const SERVER_EVICTION_HARD: &str = "imagefs.available<5%,nodefs.available<5%";
/// k3s's `--eviction-minimum-reclaim`, with [`SERVER_EVICTION_HARD`].
pub const SERVER_EVICTION_MINIMUM_RECLAIM: &str = "imagefs.available=10%,nodefs.available=10%";

/// The node-resource settings of `skiff server` (no KubeletConfiguration file there). Without
/// `--eviction-hard` the thresholds are k3s's ([`SERVER_EVICTION_HARD`]); `skiff kubelet` keeps
/// upstream's.
pub fn apply_resource_flags(
    c: &mut skiff_node::KubeletConfig,
    args: &NodeResourceArgs,
) -> Result<()> {
    let mut args = args.clone();
    if args.eviction_hard.is_none() {
        args.eviction_hard = Some(SERVER_EVICTION_HARD.into());
        if args.eviction_minimum_reclaim.is_none() {
            args.eviction_minimum_reclaim = Some(SERVER_EVICTION_MINIMUM_RECLAIM.into());
        }
    }
    apply_resources(c, &args, ResourceFields::default())
}

/// The KubeletConfiguration fields this kubelet reads.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct KubeletConfiguration {
    kind: Option<String>,
    address: Option<IpAddr>,
    port: Option<u16>,
    tls_cert_file: Option<PathBuf>,
    tls_private_key_file: Option<PathBuf>,
    authentication: Option<Authentication>,
    authorization: Option<Authorization>,
    static_pod_path: Option<PathBuf>,
    healthz_port: Option<u16>,
    healthz_bind_address: Option<IpAddr>,
    #[serde(rename = "clusterDNS")]
    cluster_dns: Option<Vec<IpAddr>>,
    cluster_domain: Option<String>,
    cgroup_driver: Option<String>,
    cgroup_root: Option<String>,
    max_pods: Option<u32>,
    container_runtime_endpoint: Option<String>,
    register_with_taints: Option<Vec<Taint>>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    pod_logs_dir: Option<PathBuf>,
    shutdown_grace_period: Option<String>,
    shutdown_grace_period_critical_pods: Option<String>,
    shutdown_grace_period_by_pod_priority: Option<Vec<skiff_node::shutdown::PriorityGrace>>,
    #[serde(flatten)]
    resources: ResourceFields,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Authentication {
    x509: Option<X509>,
    webhook: Option<AuthnWebhook>,
    anonymous: Option<Anonymous>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct AuthnWebhook {
    enabled: Option<bool>,
    #[serde(rename = "cacheTTL")]
    cache_ttl: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
struct Anonymous {
    enabled: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct Authorization {
    mode: Option<String>,
    webhook: Option<AuthzWebhook>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct AuthzWebhook {
    #[serde(rename = "cacheAuthorizedTTL")]
    cache_authorized_ttl: Option<String>,
    #[serde(rename = "cacheUnauthorizedTTL")]
    cache_unauthorized_ttl: Option<String>,
}

/// A Go duration (`2m0s`, `30s`, `1h`, `500ms`).
fn go_duration(s: &str) -> Result<std::time::Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().copied().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(n);
            chars.next();
        }
        let v: f64 = num
            .parse()
            .with_context(|| format!("duration {s:?}: bad number"))?;
        num.clear();
        total += v * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => bail!("duration {s:?}: unknown unit {unit:?}"),
        };
    }
    if !num.is_empty() {
        if num == "0" {
            return Ok(std::time::Duration::ZERO);
        }
        bail!("duration {s:?}: missing unit");
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct X509 {
    #[serde(rename = "clientCAFile")]
    client_ca_file: Option<PathBuf>,
}

/// `key=value:Effect` or `key:Effect`.
fn parse_taint(s: &str) -> Result<Taint> {
    let (kv, effect) = s
        .rsplit_once(':')
        .with_context(|| format!("taint {s:?}: expected key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        bail!("taint {s:?}: invalid effect {effect:?} (NoSchedule, PreferNoSchedule or NoExecute)");
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    Ok(Taint {
        key: key.into(),
        value,
        effect: effect.into(),
        time_added: None,
    })
}

fn endpoint_path(ep: &str) -> PathBuf {
    PathBuf::from(ep.strip_prefix("unix://").unwrap_or(ep))
}

/// `--node-ip`: one address or a dual-stack pair (one per family), as upstream's kubelet
/// checks it; the first is the primary (the pods' hostIP).
pub fn parse_node_ips(s: &str) -> Result<Vec<IpAddr>> {
    let ips = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<IpAddr>()
                .with_context(|| format!("bad --node-ip {s:?}: could not parse {:?}", p.trim()))
        })
        .collect::<Result<Vec<IpAddr>>>()?;
    if ips.len() > 2 || (ips.len() == 2 && ips[0].is_ipv6() == ips[1].is_ipv6()) {
        bail!("bad --node-ip {s:?}; must contain either a single IP or a dual-stack pair of IPs");
    }
    if ips.len() == 2 && ips.iter().any(|ip| ip.is_unspecified()) {
        bail!("dual-stack --node-ip {s:?} cannot include '0.0.0.0' or '::'");
    }
    Ok(ips)
}

/// The source address of the default route (a UDP `connect` sends nothing).
fn default_node_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Builds the kubelet configuration from the flags and the file.
pub fn config(args: &KubeletArgs) -> Result<skiff_node::KubeletConfig> {
    let file: KubeletConfiguration = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let c: KubeletConfiguration = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing the KubeletConfiguration {}", p.display()))?;
            if c.kind
                .as_deref()
                .is_some_and(|k| k != "KubeletConfiguration")
            {
                bail!(
                    "{}: kind is {:?}, expected KubeletConfiguration",
                    p.display(),
                    c.kind
                );
            }
            for k in c.rest.keys().filter(|k| {
                *k != "apiVersion" && !crate::gc_flags::FILE_FIELDS.contains(&k.as_str())
            }) {
                tracing::warn!(field = %k, "KubeletConfiguration field not supported by this kubelet; ignored");
            }
            c
        }
        None => KubeletConfiguration::default(),
    };
    let driver_set = args.cgroup_driver.is_some() || file.cgroup_driver.is_some();
    let driver_name = args
        .cgroup_driver
        .clone()
        .or(file.cgroup_driver)
        .unwrap_or_else(|| "cgroupfs".into());
    let Some(driver) = skiff_node::cgroups::Driver::parse(&driver_name) else {
        bail!("invalid configuration: cgroupDriver (--cgroup-driver) value {driver_name:?}: must be \"cgroupfs\" or \"systemd\"");
    };
    let Some(kubeconfig) = args.kubeconfig.clone() else {
        bail!("--kubeconfig is required (the node's credentials for the API server)");
    };
    let node_name = match &args.hostname_override {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .context("reading the host name (or give --hostname-override)")?,
    };
    let node_ips = match &args.node_ip {
        Some(s) => parse_node_ips(s)?,
        None => vec![default_node_ip()],
    };
    let mut c = skiff_node::KubeletConfig::new(
        node_name,
        skiff_node::KubeSource::Kubeconfig(kubeconfig),
        node_ips[0],
    );
    c.secondary_node_ip = node_ips.get(1).copied();
    if let Some(ep) = args
        .container_runtime_endpoint
        .clone()
        .or(file.container_runtime_endpoint)
    {
        c.cri_endpoint = endpoint_path(&ep);
    }
    for l in &args.node_labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--node-labels {l:?}: expected key=value"))?;
        c.node_labels.insert(k.into(), v.into());
    }
    let mut taints = file.register_with_taints.unwrap_or_default();
    if !args.register_with_taints.is_empty() {
        taints = args
            .register_with_taints
            .iter()
            .map(|t| parse_taint(t))
            .collect::<Result<_>>()?;
    }
    c.register_with_taints = taints;
    if let Some(m) = args.max_pods.or(file.max_pods) {
        c.max_pods = m;
    }
    let root = args
        .cgroup_root
        .clone()
        .or(file.cgroup_root)
        .unwrap_or_else(|| "/".into());
    // The systemd driver takes the root as a slice (`/`, `/sk.slice`): kept by its name.
    let root = match driver {
        skiff_node::cgroups::Driver::Systemd => skiff_node::systemd_cgroups::parse_root(&root),
        skiff_node::cgroups::Driver::Cgroupfs => root,
    };
    c.cgroup_root = format!("{}/kubepods", root.trim_end_matches('/'));
    c.cgroup_driver = driver;
    c.cgroup_driver_set = driver_set;
    let dns = if args.cluster_dns.is_empty() {
        file.cluster_dns.unwrap_or_default()
    } else {
        args.cluster_dns.clone()
    };
    c.cluster_dns = dns;
    if let Some(d) = args.cluster_domain.clone().or(file.cluster_domain) {
        c.cluster_domain = d;
    }
    if let Some(r) = args.root_dir.clone() {
        c.root_dir = r;
    }
    if let Some(a) = args.address.or(file.address) {
        c.bind_address = a;
    }
    if let Some(p) = args.port.or(file.port) {
        c.port = p;
    }
    c.tls_cert = args.tls_cert_file.clone().or(file.tls_cert_file);
    c.tls_key = args
        .tls_private_key_file
        .clone()
        .or(file.tls_private_key_file);
    // Authentication and authorization: a KubeletConfiguration file brings v1beta1's secure
    // defaults (no anonymous, token webhook, Webhook mode); without one, the flags' defaults
    // (anonymous, AlwaysAllow) apply, as upstream. Flags win.
    let mut auth = if args.config.is_some() {
        skiff_node::auth::AuthSettings::secure()
    } else {
        skiff_node::auth::AuthSettings::default()
    };
    let authn = file.authentication.unwrap_or_default();
    if let Some(w) = authn.webhook {
        if let Some(e) = w.enabled {
            auth.webhook_authn = e;
        }
        if let Some(t) = w.cache_ttl {
            auth.token_ttl = go_duration(&t)?;
        }
    }
    if let Some(e) = authn.anonymous.and_then(|a| a.enabled) {
        auth.anonymous = e;
    }
    if let Some(z) = file.authorization {
        if let Some(m) = z.mode {
            auth.mode = m.parse().map_err(anyhow::Error::msg)?;
        }
        if let Some(w) = z.webhook {
            if let Some(t) = w.cache_authorized_ttl {
                auth.authorized_ttl = go_duration(&t)?;
            }
            if let Some(t) = w.cache_unauthorized_ttl {
                auth.unauthorized_ttl = go_duration(&t)?;
            }
        }
    }
    if let Some(a) = args.anonymous_auth {
        auth.anonymous = a;
    }
    if let Some(w) = args.authentication_token_webhook {
        auth.webhook_authn = w;
    }
    if let Some(m) = args.authorization_mode {
        auth.mode = m;
    }
    c.auth = auth;
    c.client_ca = args
        .client_ca_file
        .clone()
        .or(authn.x509.and_then(|x| x.client_ca_file));
    c.pod_manifest_path = args.pod_manifest_path.clone().or(file.static_pod_path);
    let healthz_port = args.healthz_port.or(file.healthz_port).unwrap_or(10248);
    let healthz_addr = args
        .healthz_bind_address
        .or(file.healthz_bind_address)
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    c.healthz = (healthz_port != 0).then(|| std::net::SocketAddr::new(healthz_addr, healthz_port));
    if let Some(p) = args.pod_cidr.clone().or(file.pod_cidr) {
        c.pod_cidr = p;
    }
    if let Some(d) = file.pod_logs_dir {
        c.pod_log_dir = d;
    }
    // Graceful node shutdown: KubeletConfiguration only, as upstream (no flags).
    if let Some(d) = &file.shutdown_grace_period {
        c.shutdown.grace_period = go_duration(d).context("shutdownGracePeriod")?;
    }
    if let Some(d) = &file.shutdown_grace_period_critical_pods {
        c.shutdown.critical_grace_period =
            go_duration(d).context("shutdownGracePeriodCriticalPods")?;
    }
    if let Some(g) = file.shutdown_grace_period_by_pod_priority.clone() {
        if !g.is_empty() && !c.shutdown.grace_period.is_zero() {
            bail!("invalid configuration: Cannot specify both shutdownGracePeriodByPodPriority and shutdownGracePeriod at the same time");
        }
        c.shutdown.by_priority = g;
    }
    if c.shutdown.critical_grace_period > c.shutdown.grace_period {
        bail!("invalid configuration: shutdownGracePeriodCriticalPods ({:?}) must be <= shutdownGracePeriod ({:?})", c.shutdown.critical_grace_period, c.shutdown.grace_period);
    }
    apply_resources(&mut c, &args.resources, file.resources)?;
    crate::gc_flags::apply(&args.gc, &file.rest, &mut c.gc)?;
    Ok(c)
}

pub async fn run(args: KubeletArgs) -> Result<()> {
    let cfg = config(&args)?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let kubelet = tokio::spawn(skiff_node::run(cfg, async {
        let _ = rx.await;
    }));
    crate::notify::ready();
    // The kubelet works in bursts (pods starting, a relist) and idles in between.
    let trim = tokio::spawn(crate::controller_manager::trim_when_idle(
        crate::controller_manager::REGROWTH_KIB,
    ));
    tokio::select! {
        r = kubelet => { r?.context("kubelet")?; }
        _ = crate::server::shutdown_signal() => {
            tracing::info!("shutting down (pods keep running)");
            let _ = tx.send(());
        }
    }
    trim.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        k: KubeletArgs,
    }

    #[test]
    fn node_ip_pairs_as_upstream() {
        let ips = parse_node_ips("10.0.0.5, fd00::5").unwrap();
        assert_eq!(ips.len(), 2);
        assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
        assert_eq!(parse_node_ips("fd00::5").unwrap().len(), 1);
        let e = parse_node_ips("10.0.0.5,10.0.0.6").unwrap_err().to_string();
        assert!(
            e.contains("must contain either a single IP or a dual-stack pair of IPs"),
            "{e}"
        );
        let e = parse_node_ips("0.0.0.0,fd00::5").unwrap_err().to_string();
        assert!(e.contains("cannot include '0.0.0.0' or '::'"), "{e}");
        assert!(parse_node_ips("10.0.0.x").is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS: [10.43.0.10]\nclusterDomain: example.local\nmaxPods: 50\nport: 10251\nregisterWithTaints:\n- {key: a, value: b, effect: NoSchedule}\nauthentication:\n  x509:\n    clientCAFile: /ca.crt\n  webhook:\n    cacheTTL: 30s\nauthorization:\n  webhook:\n    cacheAuthorizedTTL: 1m0s\nstaticPodPath: /etc/sk-manifests\n",
        )
        .unwrap();
        let t = T::parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--config",
            file.to_str().unwrap(),
            "--hostname-override",
            "sk-n",
            "--node-ip",
            "10.0.0.9",
            "--max-pods",
            "30",
            "--node-labels",
            "x=1,y=2",
            "--container-runtime-endpoint",
            "unix:///run/containerd/containerd.sock",
            "--cgroup-root",
            "/sk",
        ]);
        let c = config(&t.k).unwrap();
        assert_eq!(c.node_name, "sk-n");
        assert_eq!(c.max_pods, 30);
        assert_eq!(c.port, 10251);
        assert_eq!(c.cluster_domain, "example.local");
        assert_eq!(c.cluster_dns, vec!["10.43.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            c.cri_endpoint,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(c.cgroup_root, "/sk/kubepods");
        assert_eq!(c.node_labels["y"], "2");
        assert_eq!(c.register_with_taints[0].effect, "NoSchedule");
        assert_eq!(c.client_ca, Some(PathBuf::from("/ca.crt")));
        assert_eq!(c.auth.token_ttl.as_secs(), 30);
        assert_eq!(c.auth.authorized_ttl.as_secs(), 60);
        assert_eq!(
            c.pod_manifest_path,
            Some(PathBuf::from("/etc/sk-manifests"))
        );
        let t = T::parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--anonymous-auth",
            "--authorization-mode=Webhook",
        ]);
        let open = config(&t.k).unwrap();
        assert!(open.auth.anonymous);
        assert!(!open.auth.webhook_authn, "flag default without a file");
        assert_eq!(open.auth.mode, skiff_node::auth::AuthzMode::Webhook);
        // The file brings v1beta1's secure defaults.
        assert!(!c.auth.anonymous);
        assert_eq!(c.auth.mode, skiff_node::auth::AuthzMode::Webhook);
        assert!(parse_taint("k=v:Bad").is_err());
        assert_eq!(go_duration("2m0s").unwrap().as_secs(), 120);
        assert_eq!(go_duration("1h30m").unwrap().as_secs(), 5400);
        assert!(go_duration("5x").is_err());
        assert_eq!(parse_taint("k:NoExecute").unwrap().value, None);
        let t = T::parse_from(["x", "--kubeconfig", "/k", "--cgroup-driver", "systemd"]);
        let sd = config(&t.k).unwrap();
        assert_eq!(sd.cgroup_driver, skiff_node::cgroups::Driver::Systemd);
        assert!(sd.cgroup_driver_set);
        assert_eq!(sd.cgroup_root, "/kubepods");
        let t = T::parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--cgroup-driver=systemd",
            "--cgroup-root=/sk1.slice",
        ]);
        assert_eq!(config(&t.k).unwrap().cgroup_root, "/sk1/kubepods");
        let t = T::parse_from(["x", "--kubeconfig", "/k", "--cgroup-driver", "cgroupsv3"]);
        assert!(config(&t.k).is_err());
        let t = T::parse_from(["x", "--kubeconfig", "/k"]);
        assert!(!config(&t.k).unwrap().cgroup_driver_set);
    }

    #[test]
    fn graceful_shutdown_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        let parse = |text: &str| {
            std::fs::write(&file, text).unwrap();
            let t = T::parse_from([
                "x",
                "--kubeconfig",
                "/k",
                "--config",
                file.to_str().unwrap(),
            ]);
            config(&t.k)
        };
        let c = parse("kind: KubeletConfiguration\nshutdownGracePeriod: 30s\nshutdownGracePeriodCriticalPods: 10s\n").unwrap();
        assert_eq!(c.shutdown.grace_period.as_secs(), 30);
        assert_eq!(c.shutdown.critical_grace_period.as_secs(), 10);
        assert!(c.shutdown.enabled());
        let c = parse("kind: KubeletConfiguration\nshutdownGracePeriodByPodPriority:\n- {priority: 0, shutdownGracePeriodSeconds: 5}\n- {priority: 1000, shutdownGracePeriodSeconds: 7}\n").unwrap();
        assert_eq!(c.shutdown.total().as_secs(), 12);
        let e = parse("kind: KubeletConfiguration\nshutdownGracePeriod: 5s\nshutdownGracePeriodCriticalPods: 10s\n").unwrap_err();
        assert!(
            e.to_string().contains("must be <= shutdownGracePeriod"),
            "{e}"
        );
        let e = parse("kind: KubeletConfiguration\nshutdownGracePeriod: 5s\nshutdownGracePeriodByPodPriority:\n- {priority: 0, shutdownGracePeriodSeconds: 5}\n").unwrap_err();
        assert!(e.to_string().contains("Cannot specify both"), "{e}");
        assert!(!parse("kind: KubeletConfiguration\n")
            .unwrap()
            .shutdown
            .enabled());
    }

    #[test]
    fn reserved_and_eviction_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "kind: KubeletConfiguration\nkubeReserved: {cpu: 100m, memory: 100Mi}\nevictionHard: {memory.available: 200Mi}\nevictionSoft: {nodefs.available: 20%}\nevictionSoftGracePeriod: {nodefs.available: 1m}\nevictionPressureTransitionPeriod: 30s\ncgroupsPerQOS: true\n",
        )
        .unwrap();
        let t = T::parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--config",
            file.to_str().unwrap(),
            "--system-reserved",
            "memory=50Mi",
        ]);
        let c = config(&t.k).unwrap();
        assert_eq!(c.kube_reserved["cpu"], 100);
        assert_eq!(c.kube_reserved["memory"], 100 << 20);
        assert_eq!(c.system_reserved["memory"], 50 << 20);
        assert_eq!(c.eviction.thresholds.len(), 2);
        assert_eq!(c.eviction.pressure_transition_period.as_secs(), 30);
        assert!(c.cgroups_per_qos);
        let t = T::parse_from(["x", "--kubeconfig", "/k"]);
        let c = config(&t.k).unwrap();
        assert_eq!(
            c.eviction.thresholds.len(),
            4,
            "upstream's default hard thresholds"
        );
        assert_eq!(c.enforce_node_allocatable, vec!["pods".to_string()]);
        let t = T::parse_from(["x", "--kubeconfig", "/k", "--cgroups-per-qos=false"]);
        assert!(config(&t.k).is_err(), "pods enforcement needs QoS cgroups");
        let t = T::parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--eviction-soft",
            "memory.available<1Gi",
        ]);
        assert!(
            config(&t.k).is_err(),
            "a soft threshold needs a grace period"
        );
    }
}
