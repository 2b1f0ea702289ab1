//! The CertificateSigningRequest controllers (upstream's `pkg/controller/certificates`), both
//! under upstream's `certificate-controller` role:
//!
//! - **csrapproving** approves kubelet client requests (`kubernetes.io/kube-apiserver-client-kubelet`,
//!   subject `system:node:<name>` in `system:nodes`, no SANs, client auth usages) when a
//!   SubjectAccessReview says the requester may `create certificatesigningrequests/selfnodeclient`
//!   (a node renewing its own name) or `.../nodeclient` (a bootstrapper asking for any node), with
//!   the `Approved` condition, reason `AutoApproved` and upstream's messages. Skiff binds
//!   `selfnodeclient` to `system:nodes` and `nodeclient` to `system:bootstrappers` (kubeadm's
//!   bindings); other requests wait for `kubectl certificate approve|deny`.
//! - **csrsigning** signs approved requests for `kubernetes.io/kube-apiserver-client`,
//!   `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kubelet-serving` with the
//!   cluster CA (`<data dir>/tls/ca.{crt,key}`): subject and SANs from the request, key usages and
//!   extended key usages from `spec.usages`, valid from 5 minutes ago for one year or
//!   `spec.expirationSeconds` (at least 600 s), never past the CA's own expiry. A request the
//!   signer's rules refuse gets the `Failed` condition, reason `SignerValidationFailure`, with
//!   upstream's message.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;

use crate::informer::{Change, Informer};
use crate::queue::WorkQueue;
use crate::{Context, ControllerError};

pub const APPROVER: &str = "csrapproving";
pub const SIGNER: &str = "csrsigning";
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// kube-controller-manager's `--cluster-signing-duration` default.
const DEFAULT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest certificate the signer issues (twice its backdating).
const MIN_TTL: Duration = Duration::from_secs(600);
const BACKDATE: Duration = Duration::from_secs(300);
/// Below this lifetime the end is not moved back with the start.
const SHORT: Duration = Duration::from_secs(8 * 3600);

/// The signing CA's certificate and key files (PEM).
static SIGNING_FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// Where the cluster CA lives (`<data dir>/tls`, holding `ca.crt` and `ca.key`); set once by
/// `skiff server`.
pub fn set_ca_dir(dir: PathBuf) {
    set_signing_files(dir.join("ca.crt"), dir.join("ca.key"));
}

/// The CA certificate and key the signer issues certificates with (kube-controller-manager's
/// `--cluster-signing-cert-file` and `--cluster-signing-key-file`); set once per process.
pub fn set_signing_files(cert: PathBuf, key: PathBuf) {
    let _ = SIGNING_FILES.set((cert, key));
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("unable to parse csr {name:?}: {why}")]
    Parse { name: String, why: String },
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("the cluster CA is not available: {0}")]
    Ca(String),
    #[error("error auto signing csr: {0}")]
    Sign(String),
    #[error("recognized csr {name:?} as {tried:?} but subject access review was not approved")]
    NotApproved { name: String, tried: Vec<String> },
}

pub fn run_approver(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run_inner(ctx, stop, APPROVER))
}

pub fn run_signer(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(run_inner(ctx, stop, SIGNER))
}

async fn run_inner(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
    name: &'static str,
) -> Result<(), ControllerError> {
    let (_own_tx, own_rx) = tokio::sync::watch::channel(false);
    let csrs: Arc<Informer<CertificateSigningRequest>> =
        Informer::start(Api::all(ctx.reader.clone()), own_rx);
    let queue = WorkQueue::new();
    let mut rx = csrs.subscribe();
    csrs.ready().await;
    tracing::info!(controller = name, "caches synced");
    let enqueue_all = |q: &WorkQueue| {
        for c in csrs.store().state() {
            q.add(c.name_any());
        }
    };
    enqueue_all(&queue);
    let handlers = async {
        loop {
            match rx.recv().await {
                Ok(Change::Added(c)) | Ok(Change::Updated { new: c, .. }) => {
                    queue.add(c.name_any())
                }
                Ok(Change::Deleted(_)) => {}
                Ok(Change::Resynced) | Err(RecvError::Lagged(_)) => enqueue_all(&queue),
                Err(RecvError::Closed) => return,
            }
        }
    };
    let client = ctx.client.clone();
    let store = csrs.store().clone();
    let workers = queue.clone().run(2, name, move |key: String| {
        let client = client.clone();
        let csr = store.get(&ObjectRef::new(&key));
        async move {
            let Some(csr) = csr else { return Ok(None) };
            match name {
                APPROVER => approve(&client, &csr).await,
                _ => sign(&client, &csr).await,
            }
            .map(|()| None)
        }
    });
    crate::util::until_stopped(name, stop, handlers, workers).await
}

fn has_true(csr: &CertificateSigningRequest, type_: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

fn has_certificate(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

/// What the signer and the approver read from a PKCS#10 request.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub der: Vec<u8>,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<String>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
}

/// Parses `spec.request` (PEM, `CERTIFICATE REQUEST`), checking its signature.
pub fn parse_request(pem: &[u8]) -> Result<Request, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
            .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "x509: invalid signature on the certificate request".to_string())?;
    let info = &csr.certification_request_info;
    let mut r = Request {
        der: block.contents.clone(),
        common_name: info
            .subject
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or_default()
            .to_string(),
        organizations: info
            .subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect(),
        ..Request::default()
    };
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(d) => r.dns.push(d.to_string()),
                    GeneralName::RFC822Name(e) => r.emails.push(e.to_string()),
                    GeneralName::URI(u) => r.uris.push(u.to_string()),
                    GeneralName::IPAddress(ip) => r.ips.push(format!("{ip:?}")),
                    _ => {}
                }
            }
        }
    }
    Ok(r)
}

fn usage_set(csr: &CertificateSigningRequest) -> BTreeSet<String> {
    csr.spec.usages.iter().flatten().cloned().collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Upstream's `ValidateKubeletClientCSR`.
pub fn validate_kubelet_client(r: &Request, usages: &BTreeSet<String>) -> Result<(), String> {
    if r.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if !r.dns.is_empty() {
        return Err("DNS subjectAltNames are not allowed".into());
    }
    if !r.emails.is_empty() {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !r.ips.is_empty() {
        return Err("IP subjectAltNames are not allowed".into());
    }
    if !r.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    if !r.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    let full = set_of(&["client auth", "digital signature", "key encipherment"]);
    if *usages != full && *usages != set_of(&["client auth", "digital signature"]) {
        return Err(format!(
            "usages did not match [{}]",
            full.into_iter().collect::<Vec<_>>().join(" ")
        ));
    }
    Ok(())
}

/// Upstream's `ValidateKubeletServingCSR`.
pub fn validate_kubelet_serving(r: &Request, usages: &BTreeSet<String>) -> Result<(), String> {
    if r.organizations != ["system:nodes"] {
        return Err("subject organization is not system:nodes".into());
    }
    if r.dns.is_empty() && r.ips.is_empty() {
        return Err("DNS or IP subjectAltName is required".into());
    }
    if !r.emails.is_empty() {
        return Err("Email subjectAltNames are not allowed".into());
    }
    if !r.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".into());
    }
    let full = set_of(&["digital signature", "key encipherment", "server auth"]);
    if *usages != full && *usages != set_of(&["digital signature", "server auth"]) {
        return Err(format!(
            "usages did not match [{}]",
            full.into_iter().collect::<Vec<_>>().join(" ")
        ));
    }
    if !r.common_name.starts_with("system:node:") {
        return Err("subject common name does not begin with system:node:".into());
    }
    Ok(())
}

/// Upstream's checks for `kubernetes.io/kube-apiserver-client`: client auth, and nothing but
/// the optional digital signature and key encipherment beside it.
pub fn validate_apiserver_client(usages: &[String]) -> Result<(), String> {
    let mut client_auth = false;
    for u in usages {
        match u.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return Err(format!("invalid usage for client certificate: {other}")),
        }
    }
    if !client_auth {
        return Err("missing required usage for client certificate: client auth".into());
    }
    Ok(())
}

// --- signer ---

async fn sign(client: &Client, csr: &CertificateSigningRequest) -> Result<(), CsrError> {
    if !has_true(csr, "Approved") || has_true(csr, "Failed") || has_certificate(csr) {
        return Ok(());
    }
    let signer = csr.spec.signer_name.as_str();
    if ![KUBE_APISERVER_CLIENT, KUBELET_CLIENT, KUBELET_SERVING].contains(&signer) {
        return Ok(());
    }
    let name = csr.name_any();
    let req = parse_request(&csr.spec.request.0).map_err(|why| CsrError::Parse {
        name: name.clone(),
        why,
    })?;
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let verdict = match signer {
        KUBELET_SERVING => validate_kubelet_serving(&req, &usage_set(csr)),
        KUBELET_CLIENT => validate_kubelet_client(&req, &usage_set(csr)),
        _ => validate_apiserver_client(&usages),
    };
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut n = csr.clone();
    n.metadata.managed_fields = None;
    let st = n.status.get_or_insert_with(Default::default);
    match verdict {
        Err(message) => {
            st.conditions
                .get_or_insert_with(Vec::new)
                .push(CertificateSigningRequestCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("SignerValidationFailure".into()),
                    message: Some(message),
                    last_update_time: Some(crate::workload::now()),
                    last_transition_time: Some(crate::workload::now()),
                });
        }
        Ok(()) => {
            // Reads the CA from disk and signs: off the async workers.
            let (r, u, exp) = (req.clone(), usages.clone(), csr.spec.expiration_seconds);
            let pem = tokio::task::spawn_blocking(move || issue(&r, &u, exp))
                .await
                .map_err(|e| CsrError::Ca(format!("signing task: {e}")))??;
            st.certificate = Some(ByteString(pem.into_bytes()));
        }
    }
    api.replace_status(&name, &PostParams::default(), &n)
        .await?;
    Ok(())
}

/// The lifetime asked for, bounded as upstream's signer bounds it.
pub fn duration(expiration_seconds: Option<i32>) -> Duration {
    match expiration_seconds {
        None => DEFAULT_TTL,
        Some(s) => Duration::from_secs(s.max(0) as u64).clamp(MIN_TTL, DEFAULT_TTL),
    }
}

fn key_usages(
    usages: &[String],
) -> (
    Vec<rcgen::KeyUsagePurpose>,
    Vec<rcgen::ExtendedKeyUsagePurpose>,
) {
    use rcgen::{ExtendedKeyUsagePurpose as E, KeyUsagePurpose as K};
    let mut ku = Vec::new();
    let mut eku = Vec::new();
    for u in usages {
        match u.as_str() {
            "signing" | "digital signature" => ku.push(K::DigitalSignature),
            "content commitment" => ku.push(K::ContentCommitment),
            "key encipherment" => ku.push(K::KeyEncipherment),
            "key agreement" => ku.push(K::KeyAgreement),
            "data encipherment" => ku.push(K::DataEncipherment),
            "cert sign" => ku.push(K::KeyCertSign),
            "crl sign" => ku.push(K::CrlSign),
            "encipher only" => ku.push(K::EncipherOnly),
            "decipher only" => ku.push(K::DecipherOnly),
            "any" => eku.push(E::Any),
            "server auth" => eku.push(E::ServerAuth),
            "client auth" => eku.push(E::ClientAuth),
            "code signing" => eku.push(E::CodeSigning),
            "email protection" | "s/mime" => eku.push(E::EmailProtection),
            "timestamping" => eku.push(E::TimeStamping),
            "ocsp signing" => eku.push(E::OcspSigning),
            _ => {}
        }
    }
    ku.dedup();
    eku.dedup();
    (ku, eku)
}

/// Signs the request with the cluster CA; returns the certificate as PEM.
fn issue(req: &Request, usages: &[String], expiration: Option<i32>) -> Result<String, CsrError> {
    let (cert_file, key_file) = SIGNING_FILES.get().ok_or_else(|| {
        CsrError::Ca("no signing certificate and key configured (--cluster-signing-cert-file, --cluster-signing-key-file)".into())
    })?;
    let read = |f: &PathBuf| {
        std::fs::read_to_string(f).map_err(|e| CsrError::Ca(format!("read {}: {e}", f.display())))
    };
    let (ca_pem, key_pem) = (read(cert_file)?, read(key_file)?);
    let ca_not_after = {
        let (_, block) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| CsrError::Ca(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| CsrError::Ca(e.to_string()))?;
        time::OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| CsrError::Ca(e.to_string()))?
    };
    let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| CsrError::Ca(e.to_string()))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| CsrError::Ca(e.to_string()))?;
    let mut p = rcgen::CertificateSigningRequestParams::from_der(&req.der.as_slice().into())
        .map_err(|e| CsrError::Sign(e.to_string()))?;
    let now = time::OffsetDateTime::now_utc();
    let ttl = duration(expiration);
    let to_time = |d: Duration| time::Duration::seconds(d.as_secs() as i64);
    let not_before = now - to_time(BACKDATE);
    let mut not_after = if ttl < SHORT {
        now + to_time(ttl)
    } else {
        not_before + to_time(ttl)
    };
    if not_after >= ca_not_after {
        not_after = ca_not_after;
    }
    if now >= ca_not_after {
        return Err(CsrError::Sign(format!(
            "refusing to sign a certificate that expired in the past: NotAfter={ca_not_after}"
        )));
    }
    let (ku, eku) = key_usages(usages);
    p.params.key_usages = ku;
    p.params.extended_key_usages = eku;
    p.params.is_ca = rcgen::IsCa::ExplicitNoCa;
    p.params.not_before = not_before;
    p.params.not_after = not_after;
    p.params.use_authority_key_identifier_extension = true;
    let mut serial = now.unix_timestamp_nanos().to_be_bytes().to_vec();
    serial.extend_from_slice(&std::process::id().to_be_bytes());
    serial[0] &= 0x7f;
    p.params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let cert = p
        .signed_by(&issuer)
        .map_err(|e| CsrError::Sign(e.to_string()))?;
    Ok(cert.pem())
}

// --- approver ---

const SELF_NODE_CLIENT: &str =
    "Auto approving self kubelet client certificate after SubjectAccessReview.";
const NODE_CLIENT: &str = "Auto approving kubelet client certificate after SubjectAccessReview.";

async fn approve(client: &Client, csr: &CertificateSigningRequest) -> Result<(), CsrError> {
    if has_certificate(csr) || has_true(csr, "Approved") || has_true(csr, "Denied") {
        return Ok(());
    }
    if csr.spec.signer_name != KUBELET_CLIENT {
        return Ok(());
    }
    let name = csr.name_any();
    let req = parse_request(&csr.spec.request.0).map_err(|why| CsrError::Parse {
        name: name.clone(),
        why,
    })?;
    if validate_kubelet_client(&req, &usage_set(csr)).is_err() {
        return Ok(());
    }
    let mut tried = Vec::new();
    let own_name = csr.spec.username.as_deref() == Some(req.common_name.as_str());
    for (sub, message, applies) in [
        ("selfnodeclient", SELF_NODE_CLIENT, own_name),
        ("nodeclient", NODE_CLIENT, true),
    ] {
        if !applies {
            continue;
        }
        tried.push(sub.to_string());
        if !allowed(client, csr, sub).await? {
            continue;
        }
        let mut n = csr.clone();
        n.metadata.managed_fields = None;
        n.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("AutoApproved".into()),
                message: Some(message.into()),
                last_update_time: Some(crate::workload::now()),
                last_transition_time: Some(crate::workload::now()),
            });
        let api: Api<CertificateSigningRequest> = Api::all(client.clone());
        api.replace_subresource("approval", &name, &PostParams::default(), &n)
            .await?;
        return Ok(());
    }
    // Recognized but not allowed: leave it for a person (upstream's "ignorable" error).
    tracing::debug!(
        controller = APPROVER,
        "{}",
        CsrError::NotApproved { name, tried }
    );
    Ok(())
}

async fn allowed(
    client: &Client,
    csr: &CertificateSigningRequest,
    subresource: &str,
) -> Result<bool, CsrError> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                verb: Some("create".into()),
                subresource: Some(subresource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let out = api.create(&PostParams::default(), &sar).await?;
    Ok(out.status.is_some_and(|s| s.allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded() {
        assert_eq!(duration(None), DEFAULT_TTL);
        assert_eq!(duration(Some(60)), MIN_TTL);
        assert_eq!(duration(Some(3600)), Duration::from_secs(3600));
        assert_eq!(duration(Some(i32::MAX)), DEFAULT_TTL);
    }

    #[test]
    fn client_usages() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate_apiserver_client(&v(&["client auth", "digital signature"])).is_ok());
        assert_eq!(
            validate_apiserver_client(&v(&["client auth", "server auth"])).unwrap_err(),
            "invalid usage for client certificate: server auth"
        );
        assert_eq!(
            validate_apiserver_client(&v(&["digital signature"])).unwrap_err(),
            "missing required usage for client certificate: client auth"
        );
    }

    #[test]
    fn kubelet_client_rules() {
        let r = Request {
            common_name: "system:node:n1".into(),
            organizations: vec!["system:nodes".into()],
            ..Request::default()
        };
        let u = set_of(&["client auth", "digital signature", "key encipherment"]);
        assert!(validate_kubelet_client(&r, &u).is_ok());
        assert_eq!(
            validate_kubelet_client(&r, &set_of(&["client auth"])).unwrap_err(),
            "usages did not match [client auth digital signature key encipherment]"
        );
        let bad = Request {
            common_name: "n1".into(),
            ..r
        };
        assert_eq!(
            validate_kubelet_client(&bad, &u).unwrap_err(),
            "subject common name does not begin with system:node:"
        );
    }
}
