//! Error types of the kubelet.

use std::path::PathBuf;

/// An error talking to the CRI runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The unix socket could not be reached.
    #[error(
        "cannot connect to the CRI runtime at {endpoint}: {message} (is `skiff cri` running?)"
    )]
    Connect { endpoint: PathBuf, message: String },
    /// A CRI call returned an error status.
    #[error("CRI {op}: {message}")]
    Call {
        op: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl CriError {
    /// The gRPC code of a failed call (`Unavailable` for connection errors).
    pub fn code(&self) -> tonic::Code {
        match self {
            CriError::Connect { .. } => tonic::Code::Unavailable,
            CriError::Call { code, .. } => *code,
        }
    }

    /// The runtime's own message, without the operation prefix (what kubectl shows).
    pub fn message(&self) -> String {
        match self {
            CriError::Connect { message, .. } => message.clone(),
            CriError::Call { message, .. } => message.clone(),
        }
    }

    pub(crate) fn call(op: &'static str, status: tonic::Status) -> Self {
        CriError::Call {
            op,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub(crate) fn not_found(op: &'static str, what: impl std::fmt::Display) -> Self {
        CriError::Call {
            op,
            code: tonic::Code::NotFound,
            message: format!("{what} not found"),
        }
    }
}

/// Errors of the kubelet as a whole.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot load the kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("cannot build the API client: {0}")]
    Client(String),
    #[error("API {op}: {source}")]
    Api {
        op: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("TLS setup for the kubelet server: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source} (is another kubelet running?)")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kubelet configuration: {0}")]
    Config(String),
}

impl NodeError {
    pub(crate) fn api(op: impl Into<String>, source: kube::Error) -> Self {
        NodeError::Api {
            op: op.into(),
            source,
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}
