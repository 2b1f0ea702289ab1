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
    /// The node's InternalIP (default: the address of the interface with the default route).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Labels to register the node with: `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with: `key=value:Effect,key:Effect`.
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Maximum number of pods (capacity `pods`, default 110).
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// Cgroup driver: only `cgroupfs` is supported.
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
    pub gc: crate::gc_flags::GcArgs,
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
    let driver = args
        .cgroup_driver
        .clone()
        .or(file.cgroup_driver)
        .unwrap_or_else(|| "cgroupfs".into());
    if driver != "cgroupfs" {
        bail!("--cgroup-driver={driver}: only cgroupfs is supported");
    }
    let Some(kubeconfig) = args.kubeconfig.clone() else {
        bail!("--kubeconfig is required (the node's credentials for the API server)");
    };
    let node_name = match &args.hostname_override {
        Some(n) => n.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .context("reading the host name (or give --hostname-override)")?,
    };
    let node_ip = args.node_ip.unwrap_or_else(default_node_ip);
    let mut c = skiff_node::KubeletConfig::new(
        node_name,
        skiff_node::KubeSource::Kubeconfig(kubeconfig),
        node_ip,
    );
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
    c.cgroup_root = format!("{}/kubepods", root.trim_end_matches('/'));
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
    tokio::select! {
        r = kubelet => { r?.context("kubelet")?; }
        _ = crate::server::shutdown_signal() => {
            tracing::info!("shutting down (pods keep running)");
            let _ = tx.send(());
        }
    }
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
        assert!(config(&t.k).is_err());
    }
}
