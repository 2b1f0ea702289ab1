//! Image records: the config digest is the image id; layers live as snapshot dirs keyed by chain id.

use serde::{Deserialize, Serialize};

use super::{Record, RECORD_VERSION};

/// Docker writes `null` for empty lists; treat it as the default.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The parts of the OCI/Docker image config the runtime uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default, rename = "User", deserialize_with = "null_default")]
    pub user: String,
    #[serde(default, rename = "Env", deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, rename = "Entrypoint", deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, rename = "Cmd", deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, rename = "WorkingDir", deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(default, rename = "StopSignal", deserialize_with = "null_default")]
    pub stop_signal: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub version: u32,
    /// `sha256:<hex>` of the config blob.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes plus the config.
    pub size: u64,
    pub config: ImageConfig,
    /// Chain ids (`sha256:<hex>`), bottom layer first.
    pub chain_ids: Vec<String>,
    pub manifest_digest: String,
    pub pinned: bool,
}

impl ImageRecord {
    pub(crate) fn new(id: String) -> ImageRecord {
        ImageRecord {
            version: RECORD_VERSION,
            id,
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: 0,
            config: ImageConfig::default(),
            chain_ids: Vec::new(),
            manifest_digest: String::new(),
            pinned: false,
        }
    }

    /// Key of the record dir: the hex part of the id.
    pub(crate) fn hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }
}

impl Record for ImageRecord {
    const KIND: &'static str = "image";
    const FILE: &'static str = "image.json";
    const DURABLE: bool = true;
    fn key(&self) -> &str {
        self.hex()
    }
    fn version(&self) -> u32 {
        self.version
    }
}
