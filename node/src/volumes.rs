//! The volume manager's API-data volumes: configMap, secret, downwardAPI and projected
//! (configMap, secret, downwardAPI, serviceAccountToken) written under
//! `<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<volume>` with upstream's atomic writer: the
//! files live in a timestamped `..<time>` folder, `..data` links to it, and each top-level name
//! links into `..data`; an update writes a new folder and renames a fresh `..data` link over the
//! old one, so a reader sees the old or the new content, never a mix. Service-account tokens come
//! from TokenRequest and are renewed after 80% of their life (or 24 h), like upstream.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, ResourceFieldSelector, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::objects::{ObjectSource, Token};

/// The files of one volume: relative path -> (content, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Why a volume cannot be set up (the text of upstream's FailedMount event after the prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeError {
    pub volume: String,
    pub message: String,
}

impl VolumeError {
    /// `MountVolume.SetUp failed for volume "v" : <message>`, upstream's FailedMount text.
    pub fn event_message(&self) -> String {
        format!(
            "MountVolume.SetUp failed for volume \"{}\" : {}",
            self.volume, self.message
        )
    }
}

/// The plugin folder of an API-data volume, `None` for other volume types.
pub fn plugin_dir(v: &Volume) -> Option<&'static str> {
    if v.config_map.is_some() {
        Some("kubernetes.io~configmap")
    } else if v.secret.is_some() {
        Some("kubernetes.io~secret")
    } else if v.downward_api.is_some() {
        Some("kubernetes.io~downward-api")
    } else if v.projected.is_some() {
        Some("kubernetes.io~projected")
    } else {
        None
    }
}

/// Where volume `v` of the pod in `pod_dir` lives, for API-data volumes.
pub fn volume_dir(pod_dir: &Path, v: &Volume) -> Option<PathBuf> {
    plugin_dir(v).map(|p| pod_dir.join("volumes").join(p).join(&v.name))
}

/// Cached service-account tokens of a pod: (volume, path) -> token and when it was fetched.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: HashMap<(String, String), (Token, i64)>,
}

impl TokenCache {
    /// Whether a token fetched at `issued` expiring at `expires` should be renewed at `now`
    /// (after 80% of its life, or when older than 24 h).
    pub fn needs_renewal(issued: i64, expires: i64, now: i64) -> bool {
        let life = (expires - issued).max(0);
        now >= issued + life * 8 / 10 || now - issued > 24 * 3600
    }

    /// When the first held token is due for renewal (unix seconds).
    pub fn next_renewal(&self) -> Option<i64> {
        self.tokens
            .values()
            .map(|(tok, issued)| {
                let life = (tok.expires_unix - issued).max(0);
                (issued + life * 8 / 10).min(issued + 24 * 3600 + 1)
            })
            .min()
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Everything `prepare` needs besides the pod.
pub struct Env<'a> {
    pub objects: &'a dyn ObjectSource,
    pub pod_dir: PathBuf,
    /// Node capacity for resourceFieldRef without a limit: (cpu cores, memory bytes).
    pub node_capacity: (f64, f64),
}

/// Writes every API-data volume of `pod`. Returns the first volume that failed, or the number
/// of volumes whose content changed.
pub async fn prepare(
    env: &Env<'_>,
    pod: &Pod,
    tokens: &mut TokenCache,
    claims: &mut HashMap<String, PathBuf>,
) -> Result<usize, VolumeError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut changed = 0;
    let fs_group = crate::fsgroup::of_pod(pod);
    for v in spec.volumes.iter().flatten() {
        if let Some(ed) = &v.empty_dir {
            // Made here (before any container) so that fsGroup ownership is in place.
            let memory = (ed.medium.as_deref() == Some("Memory")).then(|| {
                ed.size_limit
                    .as_ref()
                    .and_then(|q| parse_quantity(&q.0))
                    .map(|b| b as u64)
            });
            let p = env
                .pod_dir
                .join("volumes/kubernetes.io~empty-dir")
                .join(&v.name);
            let g = fs_group.map(|(g, _)| g);
            tokio::task::spawn_blocking(move || crate::fsgroup::setup_empty_dir(&p, memory, g))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|message| VolumeError {
                    volume: v.name.clone(),
                    message,
                })?;
            continue;
        }
        if let Some(pvc) = &v.persistent_volume_claim {
            // The bound PV's path on this node (hostPath and local volumes).
            let cv = env
                .objects
                .claim_volume(ns.clone(), pvc.claim_name.clone())
                .await
                .map_err(|message| VolumeError {
                    volume: v.name.clone(),
                    message,
                })?;
            let path = PathBuf::from(&cv.path);
            let t = if cv.host_path_type.is_empty() {
                "Directory".to_string()
            } else {
                cv.host_path_type.clone()
            };
            let p2 = path.clone();
            let r = tokio::task::spawn_blocking(move || check_host_path(&p2, &t))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            if let Err(message) = r {
                return Err(VolumeError {
                    volume: v.name.clone(),
                    message,
                });
            }
            if let (Some((g, on_mismatch)), false) = (fs_group, claims.contains_key(&v.name)) {
                // Once per pod worker, as upstream's SetUp (local volumes honour the policy).
                let p2 = path.clone();
                tokio::task::spawn_blocking(move || {
                    crate::fsgroup::set_volume_ownership(&p2, g, false, on_mismatch)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map_err(|e| VolumeError {
                    volume: v.name.clone(),
                    message: format!("applying fsGroup ownership: {e}"),
                })?;
            }
            claims.insert(v.name.clone(), path);
            continue;
        }
        if let Some(hp) = &v.host_path {
            let (path, t) = (hp.path.clone(), hp.type_.clone().unwrap_or_default());
            let r = tokio::task::spawn_blocking(move || check_host_path(Path::new(&path), &t))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            if let Err(message) = r {
                return Err(VolumeError {
                    volume: v.name.clone(),
                    message,
                });
            }
            continue;
        }
        let Some(dir) = volume_dir(&env.pod_dir, v) else {
            continue;
        };
        let err = |message: String| VolumeError {
            volume: v.name.clone(),
            message,
        };
        let mut files = Files::new();
        if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.unwrap_or(0o644) as u32;
            let name = cm.name.clone();
            let data = env
                .objects
                .config_map(ns.clone(), name.clone())
                .await
                .map_err(&err)?;
            add_keyed(
                &mut files,
                data,
                cm.items.as_deref(),
                mode,
                cm.optional.unwrap_or(false),
                ("configmap", &name),
            )
            .map_err(&err)?;
        } else if let Some(s) = &v.secret {
            let mode = s.default_mode.unwrap_or(0o644) as u32;
            let name = s.secret_name.clone().unwrap_or_default();
            let data = env
                .objects
                .secret(ns.clone(), name.clone())
                .await
                .map_err(&err)?;
            add_keyed(
                &mut files,
                data,
                s.items.as_deref(),
                mode,
                s.optional.unwrap_or(false),
                ("secret", &name),
            )
            .map_err(&err)?;
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.unwrap_or(0o644) as u32;
            add_downward(
                &mut files,
                env,
                pod,
                d.items.as_deref().unwrap_or_default(),
                mode,
            )
            .map_err(&err)?;
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.unwrap_or(0o644) as u32;
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    let data = env
                        .objects
                        .config_map(ns.clone(), cm.name.clone())
                        .await
                        .map_err(&err)?;
                    add_keyed(
                        &mut files,
                        data,
                        cm.items.as_deref(),
                        mode,
                        cm.optional.unwrap_or(false),
                        ("configmap", &cm.name),
                    )
                    .map_err(&err)?;
                }
                if let Some(s) = &src.secret {
                    let data = env
                        .objects
                        .secret(ns.clone(), s.name.clone())
                        .await
                        .map_err(&err)?;
                    add_keyed(
                        &mut files,
                        data,
                        s.items.as_deref(),
                        mode,
                        s.optional.unwrap_or(false),
                        ("secret", &s.name),
                    )
                    .map_err(&err)?;
                }
                if let Some(d) = &src.downward_api {
                    add_downward(
                        &mut files,
                        env,
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        mode,
                    )
                    .map_err(&err)?;
                }
                if let Some(t) = &src.service_account_token {
                    let key = (v.name.clone(), t.path.clone());
                    let now = now_unix();
                    let fresh = tokens.tokens.get(&key).filter(|(tok, issued)| {
                        !TokenCache::needs_renewal(*issued, tok.expires_unix, now)
                    });
                    let token = match fresh {
                        Some((tok, _)) => tok.clone(),
                        None => {
                            let sa = spec
                                .service_account_name
                                .clone()
                                .filter(|s| !s.is_empty())
                                .unwrap_or_else(|| "default".into());
                            let tok = env
                                .objects
                                .token(
                                    ns.clone(),
                                    sa.clone(),
                                    t.audience
                                        .clone()
                                        .into_iter()
                                        .filter(|a| !a.is_empty())
                                        .collect(),
                                    t.expiration_seconds.unwrap_or(3600),
                                    (
                                        pod.metadata.name.clone().unwrap_or_default(),
                                        pod.metadata.uid.clone().unwrap_or_default(),
                                    ),
                                )
                                .await
                                .map_err(|e| err(format!("failed to fetch token: {e}")))?;
                            tokens.tokens.insert(key, (tok.clone(), now));
                            tok
                        }
                    };
                    files.insert(t.path.clone(), (token.token.into_bytes(), mode));
                }
                if let Some(ctb) = &src.cluster_trust_bundle {
                    if !ctb.optional.unwrap_or(false) {
                        return Err(err(
                            "clusterTrustBundle projections are not supported by this kubelet"
                                .into(),
                        ));
                    }
                }
            }
        }
        let d = dir.clone();
        // Secret contents never touch the disk: their volume is a tmpfs, as upstream.
        let tmpfs = v.secret.is_some()
            || v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.secret.is_some() || s.service_account_token.is_some())
            });
        let g = fs_group.map(|(g, _)| g);
        let wrote = tokio::task::spawn_blocking(move || {
            if tmpfs {
                crate::mounts::ensure_tmpfs(&d, None)?;
            }
            let wrote = write_atomic(&d, &files)?;
            if let Some(g) = g.filter(|_| wrote) {
                // Read-only volume: group read, whatever the change policy (as upstream).
                crate::fsgroup::set_volume_ownership(&d, g, true, false)?;
            }
            Ok::<_, io::Error>(wrote)
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(format!("writing {}: {e}", dir.display())))?;
        if wrote {
            changed += 1;
        }
    }
    Ok(changed)
}

/// Checks (and for the `...OrCreate` types makes) a hostPath of type `t`, with upstream's
/// messages.
pub fn check_host_path(path: &Path, t: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = path.display();
    let md = std::fs::metadata(path);
    let fail = |what: &str| Err(format!("hostPath type check failed: {p} is not {what}"));
    match t {
        "" => Ok(()),
        "DirectoryOrCreate" => match md {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fail("a directory"),
            Err(_) => std::fs::create_dir_all(path)
                .map_err(|e| format!("hostPath type check failed: {p}: {e}")),
        },
        "FileOrCreate" => match md {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => fail("a file"),
            Err(_) => {
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
                    .map(|_| ())
                    .map_err(|e| format!("hostPath type check failed: {p}: {e}"))
            }
        },
        "Directory" => match md {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => fail("a directory"),
            Err(_) => fail("a directory"),
        },
        "File" => match md {
            Ok(m) if m.is_file() => Ok(()),
            _ => fail("a file"),
        },
        "Socket" => match md {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => fail("a socket file"),
        },
        "CharDevice" => match md {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => fail("a character device"),
        },
        "BlockDevice" => match md {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => fail("a block device"),
        },
        other => Err(format!("invalid hostPath type {other:?}")),
    }
}

/// Adds the keys of a ConfigMap or Secret (`items` or all), checking `optional`.
fn add_keyed(
    files: &mut Files,
    data: Option<crate::objects::Data>,
    items: Option<&[KeyToPath]>,
    mode: u32,
    optional: bool,
    (kind, name): (&str, &str),
) -> Result<(), String> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(format!("{kind} \"{name}\" not found"));
    };
    match items {
        None | Some([]) => {
            for (k, v) in data {
                files.insert(k, (v, mode));
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        files.insert(
                            it.path.clone(),
                            (v.clone(), it.mode.map(|m| m as u32).unwrap_or(mode)),
                        );
                    }
                    None if optional => {}
                    None if kind == "configmap" => {
                        return Err(format!(
                            "configmap references non-existent config key: {}",
                            it.key
                        ))
                    }
                    None => return Err(format!("references non-existent secret key: {}", it.key)),
                }
            }
        }
    }
    Ok(())
}

fn add_downward(
    files: &mut Files,
    env: &Env<'_>,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<(), String> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_value(pod, &f.field_path)?
        } else if let Some(r) = &it.resource_field_ref {
            resource_value(pod, r, env.node_capacity)?
        } else {
            continue;
        };
        files.insert(
            it.path.clone(),
            (
                value.into_bytes(),
                it.mode.map(|m| m as u32).unwrap_or(mode),
            ),
        );
    }
    Ok(())
}

fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a downward-API volume's `fieldRef` (upstream's `ExtractFieldPathAsString`:
/// `metadata.*` only; env variables read `spec.*` and `status.*` in reconcile.rs).
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let md = &pod.metadata;
    let sub = |p: &str, prefix: &str| -> Option<String> {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(md.labels.as_ref()),
        "metadata.annotations" => format_map(md.annotations.as_ref()),
        // `spec.*` and `status.*` are env-only fields upstream: its API server refuses them in a
        // volume and its kubelet's volume plugin answers "unsupported fieldPath" (below), so
        // a volume never holds a value that differs from the env's.
        p => {
            if let Some(k) = sub(p, "metadata.labels['") {
                md.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = sub(p, "metadata.annotations['") {
                md.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath: {p}"));
            }
        }
    })
}

/// A quantity in base units (cores, bytes).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

/// The value of a `resourceFieldRef` of `container` (the pod's only container if unnamed):
/// the limit (node capacity when unset) or request, divided by `divisor`, rounded up.
pub fn container_resource(
    c: &Container,
    resource: &str,
    divisor: Option<&Quantity>,
    node_capacity: (f64, f64),
) -> Result<String, String> {
    let res = c.resources.clone().unwrap_or_default();
    let (map, key) = match resource.split_once('.') {
        Some(("limits", k)) => (res.limits.clone(), k),
        Some(("requests", k)) => (res.requests.clone(), k),
        _ => return Err(format!("unsupported container resource : {resource:?}")),
    };
    let value = map
        .as_ref()
        .and_then(|m| m.get(key))
        .and_then(|q| parse_quantity(&q.0));
    let value = match (value, resource) {
        (Some(v), _) => v,
        (None, "limits.cpu") => node_capacity.0,
        (None, "limits.memory") => node_capacity.1,
        (None, "requests.cpu") => res
            .limits
            .as_ref()
            .and_then(|m| m.get("cpu"))
            .and_then(|q| parse_quantity(&q.0))
            .unwrap_or(0.0),
        (None, "requests.memory") => res
            .limits
            .as_ref()
            .and_then(|m| m.get("memory"))
            .and_then(|q| parse_quantity(&q.0))
            .unwrap_or(0.0),
        (None, _) => 0.0,
    };
    let div = divisor
        .and_then(|d| parse_quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / div).ceil() as i64))
}

fn resource_value(
    pod: &Pod,
    r: &ResourceFieldSelector,
    node_capacity: (f64, f64),
) -> Result<String, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = r.container_name.clone().unwrap_or_default();
    let c = spec
        .containers
        .iter()
        .find(|c| c.name == name)
        .or_else(|| (spec.containers.len() == 1).then(|| &spec.containers[0]))
        .ok_or_else(|| format!("container {name} not found"))?;
    container_resource(c, &r.resource, r.divisor.as_ref(), node_capacity)
}

fn read_tree(root: &Path, rel: &Path, out: &mut Files) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(root.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        let md = e.metadata()?;
        if md.is_dir() {
            read_tree(root, &r, out)?;
        } else {
            out.insert(
                r.to_string_lossy().into_owned(),
                (std::fs::read(e.path())?, md.permissions().mode() & 0o7777),
            );
        }
    }
    Ok(())
}

/// Writes `files` into `dir` the way upstream's AtomicWriter does. Returns whether anything
/// changed (identical content is left alone).
pub fn write_atomic(dir: &Path, files: &Files) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let old = std::fs::read_link(&data_link).ok();
    if let Some(old) = &old {
        let mut current = Files::new();
        if read_tree(&dir.join(old), Path::new(""), &mut current).is_ok() && &current == files {
            return Ok(false);
        }
    }
    for p in files.keys() {
        if p.is_empty()
            || p.starts_with('/')
            || p.split('/').any(|c| c == ".." || c.starts_with(".."))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid path {p:?}"),
            ));
        }
    }
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir(&ts_dir)?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
    for (p, (content, mode)) in files {
        let f = ts_dir.join(p);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&f, content)?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    // Top-level names point into ..data; stale ones go.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for t in &tops {
        let l = dir.join(t);
        if std::fs::symlink_metadata(&l).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(t), &l)?;
        }
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("..") {
            continue;
        }
        if !tops.contains(&n) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        if old != Path::new(&stamp) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), 0o644)))
            .collect()
    }

    #[test]
    fn atomic_writer_swaps_data_and_links() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vol");
        assert!(write_atomic(&dir, &files(&[("a", "1"), ("sub/b", "2")])).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        // Same content: nothing written.
        assert!(!write_atomic(&dir, &files(&[("a", "1"), ("sub/b", "2")])).unwrap());
        // New content: a new folder, the old one gone, stale names removed.
        assert!(write_atomic(&dir, &files(&[("a", "3"), ("c", "4")])).unwrap());
        let second = std::fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "3");
        assert_eq!(std::fs::read_to_string(dir.join("c")).unwrap(), "4");
        assert!(std::fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(write_atomic(&dir, &files(&[("../x", "1")])).is_err());
    }

    #[test]
    fn host_path_types() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(check_host_path(d.path(), "Directory").is_ok());
        assert_eq!(
            check_host_path(&f, "Directory").unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a directory",
                f.display()
            )
        );
        assert!(check_host_path(&f, "File").is_ok());
        assert!(check_host_path(&f, "Socket").is_err());
        assert!(check_host_path(Path::new("/dev/null"), "CharDevice").is_ok());
        let made = d.path().join("a/b");
        assert!(check_host_path(&made, "DirectoryOrCreate").is_ok());
        assert!(made.is_dir());
        let file = d.path().join("c/file");
        assert!(check_host_path(&file, "FileOrCreate").is_ok());
        assert!(file.is_file());
        assert!(check_host_path(&d.path().join("missing"), "Directory").is_err());
        assert!(check_host_path(&f, "").is_ok());
    }

    #[test]
    fn quantities_and_resources() {
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("64Mi"), Some(64.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}
        }))
        .unwrap();
        let cap = (2.0, 4e9);
        assert_eq!(
            container_resource(&c, "limits.cpu", None, cap).unwrap(),
            "1"
        );
        assert_eq!(
            container_resource(&c, "limits.cpu", Some(&Quantity("1m".into())), cap).unwrap(),
            "250"
        );
        assert_eq!(
            container_resource(&c, "limits.memory", Some(&Quantity("1Mi".into())), cap).unwrap(),
            "64"
        );
        assert_eq!(
            container_resource(&c, "requests.cpu", Some(&Quantity("1m".into())), cap).unwrap(),
            "250"
        );
        let none = Container::default();
        assert_eq!(
            container_resource(&none, "limits.cpu", None, cap).unwrap(),
            "2"
        );
    }

    #[test]
    fn token_renewal_at_80_percent() {
        assert!(!TokenCache::needs_renewal(1000, 2000, 1700));
        assert!(TokenCache::needs_renewal(1000, 2000, 1800));
        assert!(TokenCache::needs_renewal(0, 10 * 24 * 3600, 24 * 3600 + 1));
        // The next renewal is the earliest held token's 80% point (or its 24 h age).
        let mut c = TokenCache::default();
        assert_eq!(c.next_renewal(), None);
        let tok = |e| Token {
            token: "t".into(),
            expires_unix: e,
        };
        c.tokens.insert(("a".into(), "b".into()), (tok(2000), 1000));
        c.tokens.insert(("c".into(), "d".into()), (tok(1500), 1000));
        assert_eq!(c.next_renewal(), Some(1400));
        assert!(TokenCache::needs_renewal(1000, 1500, 1400));
        c.tokens.clear();
        c.tokens
            .insert(("a".into(), "b".into()), (tok(10 * 24 * 3600), 0));
        assert!(TokenCache::needs_renewal(
            0,
            10 * 24 * 3600,
            c.next_renewal().unwrap()
        ));
    }
}
