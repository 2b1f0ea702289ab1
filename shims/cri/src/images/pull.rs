//! PullImage: manifest + config, layer blobs (digest-verified), unpack once per chain id.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::image::{ImageConfig, ImageRecord};
use crate::util::write_atomic;

use super::{blobs_dir, snapshots_dir};

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

pub(crate) async fn pull(st: &State, name: &str, auth: Option<cri::AuthConfig>) -> Result<String> {
    if name.is_empty() {
        return Err(CriError::InvalidArgument(
            "PullImage needs an image name".into(),
        ));
    }
    let reference: Reference = name
        .parse()
        .map_err(|e| CriError::InvalidArgument(format!("invalid image reference {name:?}: {e}")))?;
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(st.cfg.insecure_registries.clone()),
        ..Default::default()
    });
    let auth = match auth {
        Some(a) if !a.username.is_empty() => RegistryAuth::Basic(a.username, a.password),
        Some(a) if !a.registry_token.is_empty() => RegistryAuth::Bearer(a.registry_token),
        _ => RegistryAuth::Anonymous,
    };
    let (manifest, manifest_digest, config) = client
        .pull_manifest_and_config(&reference, &auth)
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
    let blobs = blobs_dir(st);
    let snaps = snapshots_dir(st);
    for d in [&blobs, &snaps] {
        std::fs::create_dir_all(d).map_err(CriError::io("creating image dir", d.as_path()))?;
    }
    write_atomic(&blobs.join(&config_hex), config.as_bytes())?;

    let chains = chain_ids(&cf.rootfs.diff_ids);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain_hex = hex_of(&chains[i])?.to_string();
        let target = snaps.join(&chain_hex);
        if target.is_dir() {
            tracing::debug!(layer = %layer.digest, "snapshot present");
            continue;
        }
        let blob_hex = hex_of(&layer.digest)?.to_string();
        let blob = blobs.join(&blob_hex);
        if !blob.exists() {
            let tmp = blobs.join(format!(".{blob_hex}.{}", crate::util::new_id()));
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(CriError::io("creating blob", &tmp))?;
            let res = client.pull_blob(&reference, layer, file).await;
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                return Err(map_err(name, e));
            }
            std::fs::rename(&tmp, &blob).map_err(CriError::io("storing blob", &blob))?;
        }
        let diff_id = cf.rootfs.diff_ids[i].clone();
        let (snaps2, blob2) = (snaps.clone(), blob.clone());
        tokio::task::spawn_blocking(move || {
            super::unpack::unpack_layer(&blob2, &diff_id, &snaps2, &chain_hex)
        })
        .await
        .map_err(|e| CriError::Serve(format!("unpack task: {e}")))??;
        tracing::debug!(layer = %layer.digest, "layer unpacked");
    }

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
    rec.config = cf.config.unwrap_or_default();
    rec.chain_ids = chains;
    rec.manifest_digest = manifest_digest;
    crate::util::write_json_atomic(
        &st.images.record_dir(&config_hex).join("manifest.json"),
        &manifest,
    )?;
    st.images.put(rec)?;
    tracing::info!(id = %config_digest, "image pulled");
    Ok(config_digest)
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
