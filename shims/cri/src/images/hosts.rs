//! Registry hosts configured like containerd's `hosts.toml` (`<config dir>/<registry>/hosts.toml`,
//! else `<config dir>/_default/hosts.toml`):
//!
//! ```toml
//! server = "https://registry.example.com"      # the upstream (default: https://<registry>)
//! [host."http://127.0.0.1:5001"]                 # tried first, in file order
//!   capabilities = ["pull", "resolve"]          # resolve = may answer tag -> digest
//! ```
//!
//! A host URL's scheme decides plain HTTP or HTTPS. Loopback registries (127.0.0.1, localhost,
//! ::1) and the configured insecure registries are plain HTTP when no scheme says otherwise.

use std::path::Path;

use serde::Deserialize;

use crate::error::{CriError, Result};

/// One place to pull from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` as the reference's registry part.
    pub host: String,
    pub plain_http: bool,
    /// May resolve tags (a mirror without `resolve` only serves pulls by digest).
    pub resolve: bool,
    pub mirror: bool,
}

#[derive(Deserialize, Default)]
struct HostsFile {
    server: Option<String>,
    #[serde(default)]
    host: toml::map::Map<String, toml::Value>,
}

#[derive(Deserialize, Default)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

/// `https://h:1/path` -> (Some(plain_http), "h:1").
fn split_url(url: &str) -> (Option<bool>, String) {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s.eq_ignore_ascii_case("http")), r),
        None => (None, url),
    };
    (scheme, rest.split('/').next().unwrap_or(rest).to_string())
}

/// Where to pull `registry`'s images from, in order (mirrors first, then the server).
pub(crate) fn endpoints(dir: &Path, registry: &str, insecure: &[String]) -> Result<Vec<Endpoint>> {
    let plain_default = |host: &str| is_loopback(host) || insecure.iter().any(|i| i == host);
    let mut file = dir.join(registry).join("hosts.toml");
    if !file.exists() {
        file = dir.join("_default").join("hosts.toml");
    }
    let parsed: HostsFile = match std::fs::read_to_string(&file) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            CriError::InvalidArgument(format!(
                "registry config {}: {e}: fix the file (containerd hosts.toml format)",
                file.display()
            ))
        })?,
        Err(_) => HostsFile::default(),
    };
    let mut out = Vec::new();
    for (url, v) in &parsed.host {
        let entry: HostEntry = v.clone().try_into().map_err(|e| {
            CriError::InvalidArgument(format!(
                "registry config {}: host {url:?}: {e}",
                file.display()
            ))
        })?;
        let caps = entry
            .capabilities
            .unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
        if !caps.iter().any(|c| c == "pull") {
            continue;
        }
        let (plain, host) = split_url(url);
        out.push(Endpoint {
            plain_http: plain.unwrap_or_else(|| plain_default(&host)),
            resolve: caps.iter().any(|c| c == "resolve"),
            host,
            mirror: true,
        });
    }
    let (plain, host) = match &parsed.server {
        Some(s) => split_url(s),
        None => (None, registry.to_string()),
    };
    out.push(Endpoint {
        plain_http: plain.unwrap_or_else(|| plain_default(&host)),
        resolve: true,
        host,
        mirror: false,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_in_file_order_and_schemes_decide_http() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("example.com");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"server = "https://upstream.example.com"
[host."http://10.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
[host."https://b.example.com/v2"]
  capabilities = ["pull"]
[host."https://push-only.example.com"]
  capabilities = ["push"]
"#,
        )
        .unwrap();
        let e = endpoints(dir.path(), "example.com", &[]).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].host.as_str(), e[0].plain_http, e[0].resolve),
            ("10.0.0.1:5000", true, true)
        );
        assert_eq!(
            (e[1].host.as_str(), e[1].plain_http, e[1].resolve),
            ("b.example.com", false, false)
        );
        assert_eq!(
            (e[2].host.as_str(), e[2].mirror),
            ("upstream.example.com", false)
        );
    }

    #[test]
    fn loopback_and_insecure_default_to_http() {
        let dir = tempfile::tempdir().unwrap();
        let e = endpoints(dir.path(), "127.0.0.1:5000", &[]).unwrap();
        assert!(e[0].plain_http && !e[0].mirror);
        assert!(endpoints(dir.path(), "localhost:5000", &[]).unwrap()[0].plain_http);
        assert!(endpoints(dir.path(), "[::1]:5000", &[]).unwrap()[0].plain_http);
        assert!(!endpoints(dir.path(), "example.com", &[]).unwrap()[0].plain_http);
        assert!(endpoints(dir.path(), "r.lan:80", &["r.lan:80".into()]).unwrap()[0].plain_http);
    }
}
