//! PullImage: manifest + config, layer blobs (digest-verified), unpack once per chain id.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::image::{ImageConfig, ImageRecord};
use crate::util::write_atomic;

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn map_err(image: &str, e: OciDistributionError) -> CriError {
    let not_found = match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    };
    if not_found {
        CriError::ImageNotFound(image.to_string())
    } else {
        CriError::Pull {
            image: image.to_string(),
            message: e.to_string(),
        }
    }
}

/// Chain ids per the OCI image spec: `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

fn hex_of(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => Ok(h),
        _ => Err(CriError::Pull {
            image: String::new(),
            message: format!("unsupported digest {digest:?}: only sha256 is supported"),
        }),
    }
}

/// Blob file names (hex) an image record references: config + layers (from its manifest file).
pub(crate) fn blobs_of(st: &State, img: &ImageRecord) -> Vec<String> {
    let mut out = vec![img.hex().to_string()];
    let path = st.images.record_dir(img.hex()).join("manifest.json");
    if let Ok(m) = crate::util::read_json::<oci_client::manifest::OciImageManifest>(&path) {
        out.extend(
            m.layers
                .iter()
                .filter_map(|l| hex_of(&l.digest).ok().map(str::to_string)),
        );
    }
    out
}

/// What one endpoint delivered: everything is stored and unpacked, only the record is left.
#[derive(Serialize, Deserialize)]
pub(crate) struct Fetched {
    manifest: oci_client::manifest::OciImageManifest,
    manifest_digest: String,
    config_digest: String,
    config: ImageConfig,
    chains: Vec<String>,
}

/// Credentials of a PullImage, as the fetch helper receives them on stdin.
#[derive(Default, Clone, Serialize, Deserialize)]
pub(crate) struct Credentials {
    username: String,
    password: String,
    auth: String,
    registry_token: String,
}

impl From<cri::AuthConfig> for Credentials {
    fn from(a: cri::AuthConfig) -> Credentials {
        Credentials {
            username: a.username,
            password: a.password,
            auth: a.auth,
            registry_token: a.registry_token,
        }
    }
}

/// Where and how to fetch: all a fetch needs of the server's config.
#[derive(Serialize, Deserialize)]
pub(crate) struct FetchRequest {
    name: String,
    auth: Option<Credentials>,
    images_dir: std::path::PathBuf,
    registry_config_dir: std::path::PathBuf,
    insecure_registries: Vec<String>,
}

/// The helper's answer on stdout.
#[derive(Serialize, Deserialize)]
pub(crate) enum FetchReply {
    Fetched(Box<Fetched>),
    ImageNotFound,
    InvalidArgument(String),
    Failed(String),
}

fn registry_auth(auth: Option<Credentials>) -> RegistryAuth {
    use base64::Engine;
    match auth {
        Some(a) if !a.username.is_empty() => RegistryAuth::Basic(a.username, a.password),
        Some(a) if !a.auth.is_empty() => {
            // `auth` is base64("user:password"), as in a docker config.json.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            match decoded.as_deref().and_then(|d| d.split_once(':')) {
                Some((u, p)) => RegistryAuth::Basic(u.to_string(), p.to_string()),
                None => RegistryAuth::Anonymous,
            }
        }
        Some(a) if !a.registry_token.is_empty() => RegistryAuth::Bearer(a.registry_token),
        _ => RegistryAuth::Anonymous,
    }
}

fn parse_name(name: &str) -> Result<Reference> {
    if name.is_empty() {
        return Err(CriError::InvalidArgument(
            "PullImage needs an image name".into(),
        ));
    }
    super::reference::parse(name)
        .map_err(|e| CriError::InvalidArgument(format!("invalid image reference {name:?}: {e}")))
}

pub(crate) async fn pull(st: &State, name: &str, auth: Option<cri::AuthConfig>) -> Result<String> {
    let reference = parse_name(name)?;
    let started = std::time::Instant::now();
    let req = FetchRequest {
        name: name.to_string(),
        auth: auth.map(Credentials::from),
        images_dir: st.cfg.images_dir(),
        registry_config_dir: st.cfg.registry_config_dir.clone(),
        insecure_registries: st.cfg.insecure_registries.clone(),
    };
    let fetched = match &st.cfg.fetch_helper {
        Some(cmd) => fetch_in_child(cmd, &req).await?,
        None => fetch(&req).await?,
    };
    record(st, &reference, fetched, started).await
}

/// Runs `cmd` (the `skiff cri-fetch` helper) with the request on stdin and reads its reply:
/// the registry client, TLS state and decompression buffers live and die in the child. The
/// child's logs go to our stderr; it dies with us (PDEATHSIG) and when the call is dropped.
async fn fetch_in_child(cmd: &[std::ffi::OsString], req: &FetchRequest) -> Result<Fetched> {
    use tokio::io::AsyncWriteExt;
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| CriError::Serve("empty fetch helper command".into()))?;
    let failed = |message: String| CriError::Pull {
        image: req.name.clone(),
        message,
    };
    let mut c = tokio::process::Command::new(prog);
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    crate::sys::die_with_parent(c.as_std_mut());
    let mut child = c
        .spawn()
        .map_err(|e| failed(format!("cannot start the fetch helper {prog:?}: {e}")))?;
    let body = serde_json::to_vec(req).map_err(|e| CriError::Serve(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&body)
            .await
            .map_err(|e| failed(format!("writing to the fetch helper: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("waiting for the fetch helper: {e}")))?;
    match serde_json::from_slice::<FetchReply>(&out.stdout) {
        Ok(FetchReply::Fetched(f)) => Ok(*f),
        Ok(FetchReply::ImageNotFound) => Err(CriError::ImageNotFound(req.name.clone())),
        Ok(FetchReply::InvalidArgument(m)) => Err(CriError::InvalidArgument(m)),
        Ok(FetchReply::Failed(m)) => Err(failed(m)),
        Err(_) => Err(failed(format!(
            "the fetch helper failed ({}) without a reply; see the log above",
            out.status
        ))),
    }
}

/// The helper's side: one request on `input`, the reply as JSON on `output`.
pub async fn serve_fetch(
    input: impl std::io::Read,
    mut output: impl std::io::Write,
) -> std::io::Result<()> {
    let req: FetchRequest = serde_json::from_reader(input)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let span = tracing::info_span!("PullImage", image = %req.name);
    let reply = match tracing::Instrument::instrument(fetch(&req), span).await {
        Ok(f) => FetchReply::Fetched(Box::new(f)),
        Err(CriError::ImageNotFound(_)) => FetchReply::ImageNotFound,
        Err(CriError::InvalidArgument(m)) => FetchReply::InvalidArgument(m),
        Err(CriError::Pull { message, .. }) => FetchReply::Failed(message),
        Err(e) => FetchReply::Failed(e.to_string()),
    };
    serde_json::to_writer(&mut output, &reply)?;
    output.flush()
}

/// Tries each endpoint (mirrors first, per hosts.toml) until one delivers the image.
async fn fetch(req: &FetchRequest) -> Result<Fetched> {
    let name = req.name.as_str();
    let reference = parse_name(name)?;
    let auth = registry_auth(req.auth.clone());
    let endpoints = super::hosts::endpoints(
        &req.registry_config_dir,
        reference.registry(),
        &req.insecure_registries,
    )?;
    let mut fetched = None;
    let mut mirror_errors = Vec::new();
    for ep in &endpoints {
        if ep.mirror && !ep.resolve && reference.digest().is_none() {
            continue; // this mirror cannot resolve tags
        }
        let at = match reference.digest() {
            Some(d) => {
                Reference::with_digest(ep.host.clone(), reference.repository().into(), d.into())
            }
            None => Reference::with_tag(
                ep.host.clone(),
                reference.repository().into(),
                reference.tag().unwrap_or("latest").into(),
            ),
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol: if ep.plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            ..Default::default()
        });
        tracing::info!(endpoint = %ep.host, plain_http = ep.plain_http, mirror = ep.mirror, "pulling");
        match fetch_from(&req.images_dir, &client, &at, &auth, name).await {
            Ok(f) => {
                fetched = Some(f);
                break;
            }
            Err(e) if ep.mirror => {
                tracing::warn!(endpoint = %ep.host, error = %e, "mirror failed; trying the next host");
                mirror_errors.push(format!("{}: {e}", ep.host));
            }
            Err(e) => return Err(e),
        }
    }
    fetched.ok_or_else(|| CriError::Pull {
        image: name.into(),
        message: format!("every configured host failed: {}", mirror_errors.join("; ")),
    })
}

/// Records a fetched image: the tag moves to it, digests accumulate.
async fn record(
    st: &State,
    reference: &Reference,
    fetched: Fetched,
    started: std::time::Instant,
) -> Result<String> {
    let Fetched {
        manifest,
        manifest_digest,
        config_digest,
        config,
        chains,
    } = fetched;
    let config_hex = hex_of(&config_digest)?.to_string();

    // Record: the tag moves to this image; digests accumulate.
    let _guard = st.image_lock.lock().await;
    let tag = reference.whole();
    let repo_digest = format!(
        "{}/{}@{}",
        reference.registry(),
        reference.repository(),
        manifest_digest
    );
    for mut other in st.images.list() {
        if other.id != config_digest && other.repo_tags.contains(&tag) {
            other.repo_tags.retain(|t| *t != tag);
            st.images.put(other)?;
        }
    }
    let mut rec = st
        .images
        .get(&config_hex)
        .unwrap_or_else(|_| ImageRecord::new(config_digest.clone()));
    if reference.digest().is_none() && !rec.repo_tags.contains(&tag) {
        rec.repo_tags.push(tag);
    }
    if !rec.repo_digests.contains(&repo_digest) {
        rec.repo_digests.push(repo_digest);
    }
    rec.size = manifest
        .layers
        .iter()
        .map(|l| l.size.max(0) as u64)
        .sum::<u64>()
        + manifest.config.size.max(0) as u64;
    rec.config = config;
    rec.chain_ids = chains;
    rec.manifest_digest = manifest_digest;
    crate::util::write_json_atomic(
        &st.images.record_dir(&config_hex).join("manifest.json"),
        &manifest,
    )?;
    st.images.put(rec)?;
    tracing::info!(id = %config_digest, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
    Ok(config_digest)
}

/// Fetches manifest, config and layers of `at` (digests verified), storing blobs and unpacking
/// snapshots. A blob is written to a temp name and renamed into place, a snapshot unpacked into
/// a temp dir and renamed: an interrupted pull leaves only temp files (removed at start).
async fn fetch_from(
    images_dir: &std::path::Path,
    client: &oci_client::Client,
    at: &Reference,
    auth: &RegistryAuth,
    name: &str,
) -> Result<Fetched> {
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(at, auth)
        .await
        .map_err(|e| map_err(name, e))?;
    let config_digest = manifest.config.digest.clone();
    let config_hex = hex_of(&config_digest)?.to_string();
    let actual = hex::encode(Sha256::digest(config.as_bytes()));
    if actual != config_hex {
        return Err(CriError::Pull {
            image: name.into(),
            message: format!(
                "config digest mismatch: manifest says {config_digest}, got sha256:{actual}"
            ),
        });
    }
    let cf: ConfigFile = serde_json::from_str(&config).map_err(|e| CriError::Pull {
        image: name.into(),
        message: format!("invalid image config: {e}"),
    })?;
    if cf.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(CriError::Pull {
            image: name.into(),
            message: format!(
                "the manifest has {} layers but the config lists {} diff_ids",
                manifest.layers.len(),
                cf.rootfs.diff_ids.len()
            ),
        });
    }
    let blobs = images_dir.join("blobs").join("sha256");
    let snaps = images_dir.join("snapshots");
    for d in [&blobs, &snaps] {
        std::fs::create_dir_all(d).map_err(CriError::io("creating image dir", d.as_path()))?;
    }
    write_atomic(&blobs.join(&config_hex), config.as_bytes())?;

    let chains = chain_ids(&cf.rootfs.diff_ids);
    let total = manifest.layers.len();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain_hex = hex_of(&chains[i])?.to_string();
        let target = snaps.join(&chain_hex);
        if target.is_dir() {
            tracing::info!(layer = %layer.digest, "layer {}/{total} already unpacked", i + 1);
            continue;
        }
        let blob_hex = hex_of(&layer.digest)?.to_string();
        let blob = blobs.join(&blob_hex);
        if !blob.exists() {
            let t0 = std::time::Instant::now();
            tracing::info!(layer = %layer.digest, size = layer.size, "downloading layer {}/{total}", i + 1);
            let tmp = blobs.join(format!(".{blob_hex}.{}", crate::util::new_id()));
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(CriError::io("creating blob", &tmp))?;
            let res = client.pull_blob(at, layer, file).await;
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(map_err(name, e));
            }
            std::fs::rename(&tmp, &blob).map_err(CriError::io("storing blob", &blob))?;
            let secs = t0.elapsed().as_secs_f64().max(1e-6);
            tracing::info!(
                layer = %layer.digest,
                mib_per_s = format!("{:.1}", layer.size.max(0) as f64 / secs / 1048576.0),
                "downloaded layer {}/{total}",
                i + 1
            );
        }
        let diff_id = cf.rootfs.diff_ids[i].clone();
        let (snaps2, blob2) = (snaps.clone(), blob.clone());
        tokio::task::spawn_blocking(move || {
            super::unpack::unpack_layer(&blob2, &diff_id, &snaps2, &chain_hex)
        })
        .await
        .map_err(|e| CriError::Serve(format!("unpack task: {e}")))??;
        tracing::info!(layer = %layer.digest, "unpacked layer {}/{total}", i + 1);
    }
    Ok(Fetched {
        manifest,
        manifest_digest,
        config_digest,
        config: cf.config.unwrap_or_default(),
        chains,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_ids_follow_spec() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = super::chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(
            c[1],
            format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sha256:a sha256:b"))
            )
        );
    }
}
