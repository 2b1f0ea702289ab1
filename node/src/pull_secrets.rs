//! Registry credentials from a pod's `imagePullSecrets`, as upstream's credential keyring
//! (`pkg/credentialprovider/keyring.go`): `kubernetes.io/dockerconfigjson` secrets
//! (`.dockerconfigjson`, `{"auths": {...}}`) and legacy `kubernetes.io/dockercfg` ones
//! (`.dockercfg`, the entries at the top level). An entry's key is a registry URL (scheme
//! optional): it matches an image when the hosts have as many dot-separated parts and each part
//! matches as a glob (`*.example.com`), the ports are equal, and the key's path is a prefix of
//! the image's repository path. Matching entries are tried longest key first; an image no entry
//! matches is pulled without credentials. (The ServiceAccount's imagePullSecrets reach the pod
//! through the API server's ServiceAccount admission, as upstream.)

use base64::Engine;
use serde_json::Value;
use skiff_proto::cri;

use crate::objects::ObjectSource;

/// One registry entry of a docker config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub auth: cri::AuthConfig,
}

/// The entries of a pull secret's data (`.dockerconfigjson` or `.dockercfg`).
pub fn parse_secret(data: &crate::objects::Data) -> Vec<Entry> {
    let (auths, server_from_key) = if let Some(j) = data.get(".dockerconfigjson") {
        let v: Value = serde_json::from_slice(j).unwrap_or(Value::Null);
        (v["auths"].clone(), true)
    } else if let Some(j) = data.get(".dockercfg") {
        (serde_json::from_slice(j).unwrap_or(Value::Null), true)
    } else {
        (Value::Null, false)
    };
    let Some(map) = auths.as_object() else {
        return vec![];
    };
    let mut out = vec![];
    for (key, e) in map {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let (mut username, mut password) = (s("username"), s("password"));
        let auth = s("auth");
        if username.is_empty() && !auth.is_empty() {
            // `auth` is base64("user:password").
            if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(auth.trim()) {
                let t = String::from_utf8_lossy(&b).into_owned();
                if let Some((u, p)) = t.split_once(':') {
                    username = u.to_string();
                    password = p.to_string();
                }
            }
        }
        out.push(Entry {
            key: key.clone(),
            auth: cri::AuthConfig {
                username,
                password,
                auth,
                server_address: if server_from_key {
                    key.clone()
                } else {
                    String::new()
                },
                identity_token: s("identitytoken"),
                registry_token: s("registrytoken"),
            },
        });
    }
    out
}

/// (host, port, path) of a registry key or an image's repository, without scheme.
fn split(s: &str) -> (String, String, String) {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let (hostport, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, p),
        _ => (hostport, ""),
    };
    (host.to_lowercase(), port.to_string(), path.to_string())
}

/// The registry and repository of an image reference (`docker.io/library/x` for `x`), without
/// tag or digest.
pub fn repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let no_tag = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let first = no_tag.split('/').next().unwrap_or("");
    let has_registry = no_tag.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        no_tag.to_string()
    } else if no_tag.contains('/') {
        format!("docker.io/{no_tag}")
    } else {
        format!("docker.io/library/{no_tag}")
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    // `*` matches any run of characters inside one host part (parts have no dots).
    fn m(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|i| m(&p[1..], &s[i..])),
            Some(c) => s.first() == Some(c) && m(&p[1..], &s[1..]),
        }
    }
    m(pattern.as_bytes(), s.as_bytes())
}

/// Docker Hub's aliases, as the keyring normalizes them.
fn normalize_host(h: &str) -> String {
    match h {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => h.to_string(),
    }
}

/// Whether registry key `key` applies to the image repository `repo` (upstream's `URLsMatch`).
pub fn matches(key: &str, repo: &str) -> bool {
    let (kh, kp, kpath) = split(key);
    let (rh, rp, rpath) = split(repo);
    let (kh, rh) = (normalize_host(&kh), normalize_host(&rh));
    if kp != rp {
        return false;
    }
    let kparts: Vec<&str> = kh.split('.').collect();
    let rparts: Vec<&str> = rh.split('.').collect();
    if kparts.len() != rparts.len() || !kparts.iter().zip(&rparts).all(|(k, r)| glob(k, r)) {
        return false;
    }
    // Docker Hub's legacy key `https://index.docker.io/v1/` names the registry, not a path.
    let kpath = if kh == "docker.io" && kpath.trim_end_matches('/') == "/v1" {
        ""
    } else {
        kpath.trim_end_matches('/')
    };
    rpath.starts_with(kpath)
}

/// The credentials to try for `image`, most specific key first.
pub fn lookup(entries: &[Entry], image: &str) -> Vec<cri::AuthConfig> {
    let repo = repository(image);
    let mut found: Vec<&Entry> = entries.iter().filter(|e| matches(&e.key, &repo)).collect();
    found.sort_by_key(|e| std::cmp::Reverse(split(&e.key).0.len() + split(&e.key).2.len()));
    found.into_iter().map(|e| e.auth.clone()).collect()
}

/// Reads the pod's pull secrets. Returns the entries and the names of the secrets that could
/// not be read (for upstream's `FailedToRetrieveImagePullSecret` event).
pub async fn entries_of(
    objects: &dyn ObjectSource,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> (Vec<Entry>, Vec<String>) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = vec![];
    let mut missing = vec![];
    let refs = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default();
    for r in refs {
        if r.name.is_empty() {
            continue;
        }
        match objects.secret(ns.clone(), r.name.clone()).await {
            Ok(Some(d)) => out.extend(parse_secret(&d)),
            _ => missing.push(r.name.clone()),
        }
    }
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        assert_eq!(repository("busybox"), "docker.io/library/busybox");
        assert_eq!(repository("me/app:1"), "docker.io/me/app");
        assert_eq!(
            repository("127.0.0.1:5000/sk/busybox:latest"),
            "127.0.0.1:5000/sk/busybox"
        );
        assert_eq!(
            repository("reg.example.com/a/b@sha256:abc"),
            "reg.example.com/a/b"
        );
    }

    #[test]
    fn keyring_matching_as_upstream() {
        let r = "127.0.0.1:5000/sk/busybox";
        assert!(matches("127.0.0.1:5000", r));
        assert!(matches("https://127.0.0.1:5000/v1/", "127.0.0.1:5000/v1/x"));
        assert!(matches("http://127.0.0.1:5000/sk", r));
        assert!(!matches("127.0.0.1:5001", r));
        assert!(!matches("127.0.0.1", r));
        assert!(!matches("127.0.0.1:5000/other", r));
        assert!(matches("*.example.com", "reg.example.com/x"));
        assert!(!matches("*.example.com", "a.reg.example.com/x"));
        assert!(matches("*.*.example.com", "a.reg.example.com/x"));
        assert!(matches("index.docker.io", "docker.io/library/busybox"));
        assert!(matches(
            "https://index.docker.io/v1/",
            "docker.io/library/busybox"
        ));
    }

    #[test]
    fn secrets_parse_and_most_specific_first() {
        let mut d = crate::objects::Data::new();
        d.insert(
            ".dockerconfigjson".into(),
            br#"{"auths":{"127.0.0.1:5000":{"auth":"dTpw"},"127.0.0.1:5000/sk":{"username":"a","password":"b"}}}"#.to_vec(),
        );
        let e = parse_secret(&d);
        assert_eq!(e.len(), 2);
        let found = lookup(&e, "127.0.0.1:5000/sk/busybox:latest");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].username, "a");
        assert_eq!(found[1].username, "u");
        assert_eq!(found[1].password, "p");
        let mut old = crate::objects::Data::new();
        old.insert(
            ".dockercfg".into(),
            br#"{"reg.example.com":{"username":"x","password":"y"}}"#.to_vec(),
        );
        assert_eq!(
            lookup(&parse_secret(&old), "reg.example.com/a:1")[0].password,
            "y"
        );
    }
}
