//! TLS for the kubelet server: the serving certificate from PEM files, or a self-signed one kept in
//! `<root_dir>/pki/` so it survives restarts; optional client-certificate verification.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tracing::info;

use crate::error::NodeError;

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    let pem = std::fs::read(path).map_err(|e| NodeError::io(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| NodeError::Tls(format!("{}: bad PEM certificate: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NodeError::Tls(format!(
            "{}: no CERTIFICATE block found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, NodeError> {
    let pem = std::fs::read(path).map_err(|e| NodeError::io(path, e))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| NodeError::Tls(format!("{}: bad PEM key: {e}", path.display())))?
        .ok_or_else(|| NodeError::Tls(format!("{}: no private key found", path.display())))
}

/// Makes (or reuses) a self-signed serving certificate for the node under `dir`.
/// Returns the cert and key paths.
pub fn ensure_self_signed(
    dir: &Path,
    node_name: &str,
    node_ip: IpAddr,
) -> Result<(PathBuf, PathBuf), NodeError> {
    let cert = dir.join("kubelet.crt");
    let key = dir.join("kubelet.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    let sans = vec![
        node_name.to_string(),
        "localhost".to_string(),
        node_ip.to_string(),
        "127.0.0.1".to_string(),
    ];
    let ck = rcgen::generate_simple_self_signed(sans)
        .map_err(|e| NodeError::Tls(format!("cannot generate a self-signed certificate: {e}")))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(|e| NodeError::io(&cert, e))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    info!(cert = %cert.display(), "generated a self-signed kubelet serving certificate");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| NodeError::io(path, e))?;
    f.write_all(data).map_err(|e| NodeError::io(path, e))
}

/// The rustls server config: `cert`/`key` PEM files; if `client_ca` is set, a client certificate,
/// when presented, must be signed by it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, NodeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| NodeError::Tls(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| NodeError::Tls(format!("{}: {e}", ca.display())))?;
            }
            // A certificate is verified when given (upstream's VerifyClientCertIfGiven): clients
            // without one go on to token or anonymous authentication.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| NodeError::Tls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(read_certs(cert)?, read_key(key)?)
        .map_err(|e| NodeError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts any server certificate: HTTPS probes do not verify, as upstream's
/// (`InsecureSkipVerify`).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client config of HTTPS probes (no verification, HTTP/1.1).
pub fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    static CFG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth();
        Arc::new(cfg)
    })
    .clone()
}
