//! What the pod sync reads from the API besides pods: ConfigMaps, Secrets and service-account
//! tokens (TokenRequest), behind a small trait so the sync stays testable without an API server.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A token and when it expires (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub expires_unix: i64,
}

/// Key/value data of a ConfigMap (`data` and `binaryData`) or a Secret.
pub type Data = BTreeMap<String, Vec<u8>>;

/// Where a bound claim's volume is on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimVolume {
    /// The PV's `hostPath.path` or `local.path`.
    pub path: String,
    /// The hostPath type (`DirectoryOrCreate`, ...), empty for `local` volumes.
    pub host_path_type: String,
}

/// Reads the objects pods refer to. `Ok(None)`: the object does not exist.
pub trait ObjectSource: Send + Sync + 'static {
    fn config_map(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>>;
    fn secret(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>>;
    /// A token of service account `sa` bound to the pod.
    fn token(
        &self,
        ns: String,
        sa: String,
        audiences: Vec<String>,
        expiration_secs: i64,
        pod: (String, String),
    ) -> BoxFut<'_, Result<Token, String>>;
    /// The volume bound to claim `ns/name` (an error saying why it cannot be used yet).
    fn claim_volume(&self, ns: String, name: String) -> BoxFut<'_, Result<ClaimVolume, String>> {
        let _ = (ns, name);
        Box::pin(async { Err("no API server".to_string()) })
    }
    /// A counter that moves whenever a ConfigMap or Secret read through this source changes,
    /// for sources that learn of changes (a watch); `None`: poll.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// No API: every object is missing (unit tests that use no such objects).
pub struct NoObjects;

impl ObjectSource for NoObjects {
    fn config_map(&self, _: String, _: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        Box::pin(async { Ok(None) })
    }
    fn secret(&self, _: String, _: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        Box::pin(async { Ok(None) })
    }
    fn token(
        &self,
        _: String,
        _: String,
        _: Vec<String>,
        _: i64,
        _: (String, String),
    ) -> BoxFut<'_, Result<Token, String>> {
        Box::pin(async { Err("no API server".to_string()) })
    }
}

/// Through the API server.
pub struct KubeObjects(pub Client);

/// A ConfigMap's `data` and `binaryData`.
pub(crate) fn config_map_data(cm: ConfigMap) -> Data {
    let mut out: Data = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

/// A Secret's `data` (and `stringData`, which a server never returns but a test may set).
pub(crate) fn secret_data(s: Secret) -> Data {
    let mut out: Data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

pub(crate) fn missing(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl ObjectSource for KubeObjects {
    fn claim_volume(&self, ns: String, name: String) -> BoxFut<'_, Result<ClaimVolume, String>> {
        Box::pin(async move {
            use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.0.clone(), &ns);
            let claim = match claims.get(&name).await {
                Ok(c) => c,
                Err(e) if missing(&e) => {
                    return Err(format!(
                        "persistentvolumeclaim \"{name}\" not found in namespace \"{ns}\""
                    ))
                }
                Err(e) => return Err(e.to_string()),
            };
            let phase = claim
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            let pv_name = claim
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .unwrap_or_default();
            if phase != "Bound" || pv_name.is_empty() {
                // Upstream's desired-state populator's words.
                return Err(format!(
                    "PVC {ns}/{name} has non-bound phase (\"{phase}\") or empty pvc.Spec.VolumeName (\"{pv_name}\")"
                ));
            }
            let pvs: Api<PersistentVolume> = Api::all(self.0.clone());
            let pv = pvs.get(&pv_name).await.map_err(|e| e.to_string())?;
            let spec = pv.spec.unwrap_or_default();
            if let Some(hp) = spec.host_path {
                return Ok(ClaimVolume {
                    path: hp.path,
                    host_path_type: hp.type_.unwrap_or_default(),
                });
            }
            if let Some(l) = spec.local {
                return Ok(ClaimVolume {
                    path: l.path,
                    host_path_type: String::new(),
                });
            }
            Err(format!(
                "persistentvolume \"{pv_name}\" is of a type this node cannot mount (hostPath and local are supported)"
            ))
        })
    }
    fn config_map(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        Box::pin(async move {
            let api: Api<ConfigMap> = Api::namespaced(self.0.clone(), &ns);
            match api.get(&name).await {
                Ok(cm) => Ok(Some(config_map_data(cm))),
                Err(e) if missing(&e) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn secret(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.0.clone(), &ns);
            match api.get(&name).await {
                Ok(s) => Ok(Some(secret_data(s))),
                Err(e) if missing(&e) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn token(
        &self,
        ns: String,
        sa: String,
        audiences: Vec<String>,
        expiration_secs: i64,
        pod: (String, String),
    ) -> BoxFut<'_, Result<Token, String>> {
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.0.clone(), &ns);
            let req = TokenRequest {
                spec: TokenRequestSpec {
                    audiences,
                    expiration_seconds: Some(expiration_secs),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: Some(pod.0),
                        uid: Some(pod.1),
                    }),
                },
                ..Default::default()
            };
            let r = api
                .create_token_request(&sa, &PostParams::default(), &req)
                .await
                .map_err(|e| e.to_string())?;
            let st = r
                .status
                .ok_or_else(|| "the TokenRequest answer has no status".to_string())?;
            Ok(Token {
                token: st.token,
                expires_unix: st.expiration_timestamp.0.as_second(),
            })
        })
    }
}

/// Objects held in memory (tests): ConfigMaps and Secrets by `ns/name`; tokens are
/// `token-<n>` valid for the asked time.
#[derive(Default)]
pub struct StaticObjects {
    pub config_maps: std::sync::Mutex<BTreeMap<String, Data>>,
    pub secrets: std::sync::Mutex<BTreeMap<String, Data>>,
    issued: std::sync::atomic::AtomicU64,
}

impl StaticObjects {
    pub fn put_config_map(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        self.config_maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                format!("{ns}/{name}"),
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            );
    }
    pub fn put_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) {
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                format!("{ns}/{name}"),
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            );
    }
}

impl ObjectSource for StaticObjects {
    fn config_map(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        let v = self
            .config_maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{ns}/{name}"))
            .cloned();
        Box::pin(async move { Ok(v) })
    }
    fn secret(&self, ns: String, name: String) -> BoxFut<'_, Result<Option<Data>, String>> {
        let v = self
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{ns}/{name}"))
            .cloned();
        Box::pin(async move { Ok(v) })
    }
    fn token(
        &self,
        _: String,
        _: String,
        _: Vec<String>,
        expiration_secs: i64,
        _: (String, String),
    ) -> BoxFut<'_, Result<Token, String>> {
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            Ok(Token {
                token: format!("token-{n}"),
                expires_unix: now + expiration_secs,
            })
        })
    }
}
