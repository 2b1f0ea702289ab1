//! The cluster's PKI: a self-generated CA and the certificates signed by it, written once to a
//! directory and reused on restart.
//!
//! | file | who uses it |
//! | --- | --- |
//! | `ca.crt`/`ca.key` | the cluster CA |
//! | `serving-apiserver.crt/.key` | the API server's TLS |
//! | `client-admin.crt/.key` | `system:admin` in group `system:masters` (the admin kubeconfig) |
//! | `client-kubelet.crt/.key` | the node's kubelet talking to the API (`system:node:<name>`) |
//! | `client-kube-apiserver.crt/.key` | the API server talking to kubelets (logs, exec) |
//! | `client-scheduler.crt/.key` | the scheduler (`system:kube-scheduler`) |
//! | `client-controller.crt/.key` | the controllers (`system:kube-controller-manager`) |
//! | `client-kube-proxy.crt/.key` | the service proxy (`system:kube-proxy`) |
//! | `serving-kubelet.crt/.key` | the kubelet's :10250 |

use crate::ApiError;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Paths of one certificate and its key.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPair {
    fn new(dir: &Path, name: &str) -> Self {
        Self {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        }
    }
    fn exists(&self) -> bool {
        self.cert.exists() && self.key.exists()
    }
    pub fn cert_pem(&self) -> Result<String, ApiError> {
        read(&self.cert)
    }
    pub fn key_pem(&self) -> Result<String, ApiError> {
        read(&self.key)
    }
}

/// A leaf to issue: where it goes, CN, O, SANs, usage.
type Leaf<'a> = (
    &'a CertPair,
    &'a str,
    Option<&'a str>,
    &'a [String],
    ExtendedKeyUsagePurpose,
);

/// Every certificate the cluster uses.
/// The user the built-in cluster DNS server authenticates as (bound to `skiff:dns`).
pub const DNS_USER: &str = "system:skiff-dns";

#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertPair,
    pub apiserver: CertPair,
    pub admin: CertPair,
    pub kubelet_client: CertPair,
    pub apiserver_kubelet_client: CertPair,
    pub kubelet_serving: CertPair,
    pub scheduler: CertPair,
    pub controller_manager: CertPair,
    pub kube_proxy: CertPair,
    /// The cluster DNS server inside `skiff server`.
    pub dns: CertPair,
}

fn read(p: &Path) -> Result<String, ApiError> {
    std::fs::read_to_string(p).map_err(|e| ApiError::Pki(format!("read {}: {e}", p.display())))
}

fn write_private(p: &Path, data: &str) -> Result<(), ApiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| ApiError::Pki(format!("write {}: {e}", tmp.display())))?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| ApiError::Pki(format!("write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, p).map_err(|e| ApiError::Pki(format!("rename {}: {e}", p.display())))
}

fn pki_err(e: rcgen::Error) -> ApiError {
    ApiError::Pki(e.to_string())
}

fn leaf_params(
    cn: &str,
    org: Option<&str>,
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, ApiError> {
    let mut p = CertificateParams::new(sans.to_vec()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![usage];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    Ok(p)
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing. `apiserver_sans` and
    /// `kubelet_sans` are the names and addresses the serving certificates answer for.
    pub fn ensure(
        dir: &Path,
        node_name: &str,
        apiserver_sans: &[String],
        kubelet_sans: &[String],
    ) -> Result<Self, ApiError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ApiError::Pki(format!("create {}: {e}", dir.display())))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca: CertPair::new(dir, "ca"),
            apiserver: CertPair::new(dir, "serving-apiserver"),
            admin: CertPair::new(dir, "client-admin"),
            kubelet_client: CertPair::new(dir, "client-kubelet"),
            apiserver_kubelet_client: CertPair::new(dir, "client-kube-apiserver"),
            kubelet_serving: CertPair::new(dir, "serving-kubelet"),
            scheduler: CertPair::new(dir, "client-scheduler"),
            controller_manager: CertPair::new(dir, "client-controller"),
            kube_proxy: CertPair::new(dir, "client-kube-proxy"),
            dns: CertPair::new(dir, "client-dns"),
        };
        if !pki.ca.exists() {
            let key = KeyPair::generate().map_err(pki_err)?;
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "skiff-ca");
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2099, 1, 1);
            let cert = p.self_signed(&key).map_err(pki_err)?;
            write_private(&pki.ca.key, &key.serialize_pem())?;
            write_private(&pki.ca.cert, &cert.pem())?;
            tracing::info!(dir = %dir.display(), "generated cluster CA");
        }
        let ca_key = KeyPair::from_pem(&pki.ca.key_pem()?).map_err(pki_err)?;
        let issuer = Issuer::from_ca_cert_pem(&pki.ca.cert_pem()?, ca_key).map_err(pki_err)?;
        let node_cn = format!("system:node:{node_name}");
        let leaves: [Leaf<'_>; 9] = [
            (
                &pki.apiserver,
                "kube-apiserver",
                None,
                apiserver_sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                &pki.admin,
                "system:admin",
                Some("system:masters"),
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.kubelet_client,
                &node_cn,
                Some("system:nodes"),
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.apiserver_kubelet_client,
                "system:kube-apiserver",
                Some("system:masters"),
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.scheduler,
                "system:kube-scheduler",
                None,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.controller_manager,
                "system:kube-controller-manager",
                None,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.kube_proxy,
                "system:kube-proxy",
                None,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.dns,
                DNS_USER,
                None,
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            (
                &pki.kubelet_serving,
                node_name,
                None,
                kubelet_sans,
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
        ];
        for (pair, cn, org, sans, usage) in leaves {
            if pair.exists() {
                continue;
            }
            let key = KeyPair::generate().map_err(pki_err)?;
            let cert = leaf_params(cn, org, sans, usage)?
                .signed_by(&key, &issuer)
                .map_err(pki_err)?;
            write_private(&pair.key, &key.serialize_pem())?;
            write_private(&pair.cert, &cert.pem())?;
        }
        Ok(pki)
    }

    /// Writes a kubeconfig for `user` that talks to `server` with this CA.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &CertPair,
    ) -> Result<(), ApiError> {
        use base64::Engine;
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff\ncurrent-context: skiff\npreferences: {{}}\nusers:\n- name: skiff\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
            ca = b64(self.ca.cert_pem()?),
            cert = b64(user.cert_pem()?),
            key = b64(user.key_pem()?),
        );
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| ApiError::Pki(format!("create {}: {e}", d.display())))?;
        }
        write_private(path, &text)
    }
}
