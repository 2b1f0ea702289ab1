//! A busybox OCI image built from Debian's `/bin/busybox` (busybox-static), and a pusher speaking
//! the registry HTTP API v2.

use std::io::Write;
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{io_err, HarnessError, Result};

pub const BUSYBOX: &str = "/bin/busybox";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob and its `sha256:` digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(&data),
            media_type: media_type.into(),
            data,
        }
    }
}

/// An OCI image: config, layers, manifest (all as bytes with digests).
#[derive(Debug, Clone)]
pub struct OciImage {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, path, std::io::empty())
        .map_err(io_err("building layer"))
}

fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, path, data)
        .map_err(io_err("building layer"))
}

/// The busybox root filesystem as an uncompressed tar: `bin/busybox`, a hard link per applet of
/// `busybox --list` in `bin/`, `etc/passwd` + `etc/group` (root, nobody), and the usual dirs.
pub fn busybox_layer_tar() -> Result<Vec<u8>> {
    let busybox = std::fs::read(BUSYBOX).map_err(io_err(format!(
        "reading {BUSYBOX} (apt-get install busybox-static)"
    )))?;
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(io_err("running busybox --list"))?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();

    let mut b = tar::Builder::new(Vec::new());
    for (d, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("var", 0o755),
    ] {
        append_dir(&mut b, d, mode)?;
    }
    append_file(&mut b, "bin/busybox", 0o755, &busybox)?;
    for a in &applets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{a}"), "bin/busybox")
            .map_err(io_err("building layer"))?;
    }
    append_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    append_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    b.into_inner().map_err(io_err("building layer"))
}

/// Builds the busybox image; `gzip` picks a `tar+gzip` layer instead of a plain tar one.
pub fn build_busybox_image_with(gzip: bool) -> Result<OciImage> {
    let tar = busybox_layer_tar()?;
    let diff_id = sha256(&tar);
    let layer = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).map_err(io_err("compressing layer"))?;
        Blob::new(
            MEDIA_LAYER_GZIP,
            enc.finish().map_err(io_err("compressing layer"))?,
        )
    } else {
        Blob::new(MEDIA_LAYER_TAR, tar)
    };
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "skiff-tests: busybox-static"}],
    });
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&config).expect("JSON"));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.data.len()}],
    });
    let manifest = Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).expect("JSON"));
    Ok(OciImage {
        config,
        layers: vec![layer],
        manifest,
    })
}

/// Builds the busybox image with a plain tar layer.
pub fn build_busybox_image() -> Result<OciImage> {
    build_busybox_image_with(false)
}

fn http_err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Http(format!("{what}: {e}"))
}

/// Pushes `image` to `registry` (`host:port`) as `name:tag` (e.g. `busybox:latest`) over plain
/// HTTP: each blob with a POST + monolithic PUT (skipped when the registry has it), then the
/// manifest. Returns the manifest digest.
pub async fn push(registry: &str, reference: &str, image: &OciImage) -> Result<String> {
    push_auth(registry, reference, image, None).await
}

/// [`push`] to a registry that wants HTTP basic authentication (`user`, `password`).
pub async fn push_auth(
    registry: &str,
    reference: &str,
    image: &OciImage,
    auth: Option<(&str, &str)>,
) -> Result<String> {
    // One push at a time per test process: docker-registry fails one of two concurrent uploads
    // of the same blob (DIGEST_INVALID / MANIFEST_BLOB_UNKNOWN), and tests run two at a time.
    static PUSH: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = PUSH.lock().await;
    let (name, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
    let base = format!("http://{registry}/v2/{name}");
    // reqwest is built without a bundled TLS provider: use ring, as every Skiff binary does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest13::Client::new();
    let with = |b: reqwest13::RequestBuilder| match auth {
        Some((u, p)) => b.basic_auth(u, Some(p)),
        None => b,
    };
    for blob in image.layers.iter().chain(std::iter::once(&image.config)) {
        let head = with(http.head(format!("{base}/blobs/{}", blob.digest)))
            .send()
            .await
            .map_err(|e| http_err("HEAD blob", e))?;
        if head.status().is_success() {
            continue;
        }
        let start = with(http.post(format!("{base}/blobs/uploads/")))
            .send()
            .await
            .map_err(|e| http_err("starting upload", e))?;
        if start.status().as_u16() != 202 {
            return Err(HarnessError::Http(format!(
                "starting upload: {}",
                start.status()
            )));
        }
        let loc = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| HarnessError::Http("upload without Location".into()))?
            .to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("http://{registry}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = with(http.put(format!("{loc}{sep}digest={}", blob.digest)))
            .header("content-type", "application/octet-stream")
            .body(blob.data.clone())
            .send()
            .await
            .map_err(|e| http_err("uploading blob", e))?;
        if put.status().as_u16() != 201 {
            let st = put.status();
            let body = put.text().await.unwrap_or_default();
            return Err(HarnessError::Http(format!(
                "uploading blob {}: {st} {body}",
                blob.digest
            )));
        }
    }
    // Tests push the same image under the same tag again and again: leave a tag that already
    // names this manifest alone. Rewriting it while another test pulls it makes docker-registry
    // answer that pull with a 500 (it reads the tag's link file mid-write).
    let have = with(http.head(format!("{base}/manifests/{tag}")))
        .header("accept", MEDIA_MANIFEST)
        .send()
        .await
        .map_err(|e| http_err("HEAD manifest", e))?;
    let same = have.status().is_success()
        && have
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            == Some(image.manifest.digest.as_str());
    if same {
        return Ok(image.manifest.digest.clone());
    }
    let put = with(http.put(format!("{base}/manifests/{tag}")))
        .header("content-type", MEDIA_MANIFEST)
        .body(image.manifest.data.clone())
        .send()
        .await
        .map_err(|e| http_err("pushing manifest", e))?;
    if put.status().as_u16() != 201 {
        let st = put.status();
        let body = put.text().await.unwrap_or_default();
        return Err(HarnessError::Http(format!("pushing manifest: {st} {body}")));
    }
    Ok(image.manifest.digest.clone())
}

/// `image` with one more plain tar layer on top holding `files` (path, mode, owner uid and gid,
/// contents), e.g. an `/etc/group` that lists a user as a member.
pub fn with_layer(image: &OciImage, files: &[(&str, u32, u32, &[u8])]) -> Result<OciImage> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, owner, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid((*owner).into());
        h.set_gid((*owner).into());
        h.set_cksum();
        b.append_data(&mut h, path, *data)
            .map_err(io_err("building layer"))?;
    }
    let tar = b.into_inner().map_err(io_err("building layer"))?;
    let diff_id = sha256(&tar);
    let layer = Blob::new(MEDIA_LAYER_TAR, tar);
    let mut config: serde_json::Value = serde_json::from_slice(&image.config.data)
        .map_err(|e| HarnessError::Other(format!("image config is not JSON: {e}")))?;
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| HarnessError::Other("image config has no diff_ids".into()))?
        .push(json!(diff_id));
    let config = Blob::new(MEDIA_CONFIG, serde_json::to_vec(&config).expect("JSON"));
    let mut layers = image.layers.clone();
    layers.push(layer);
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.data.len()}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config.digest, "size": config.data.len()},
        "layers": descs,
    });
    let manifest = Blob::new(MEDIA_MANIFEST, serde_json::to_vec(&manifest).expect("JSON"));
    Ok(OciImage {
        config,
        layers,
        manifest,
    })
}
