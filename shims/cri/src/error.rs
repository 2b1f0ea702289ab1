//! Typed errors of the CRI server; mapped to `tonic::Status` only at the gRPC edge.

use std::path::PathBuf;

/// Every failure of the CRI server.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("image {0:?} not found: check the name and tag, and that the registry has it")]
    ImageNotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{context}: {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{op} {target}: {source}")]
    Sys {
        op: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("CNI: {0}")]
    Cni(String),
    #[error("pulling image {image:?}: {message}")]
    Pull { image: String, message: String },
    #[error("runtime {verb} {id}: {message}")]
    Runtime {
        verb: &'static str,
        id: String,
        message: String,
    },
    #[error("monitor: {0}")]
    Monitor(String),
    #[error("OCI spec: {0}")]
    Spec(String),
    #[error("serving CRI: {0}")]
    Serve(String),
}

impl CriError {
    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> CriError {
        let path = path.into();
        move |source| CriError::Io {
            context,
            path,
            source,
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> CriError {
        CriError::NotFound {
            what,
            id: id.into(),
        }
    }
}

impl From<CriError> for tonic::Status {
    fn from(e: CriError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            CriError::NotFound { .. } | CriError::ImageNotFound(_) => tonic::Status::not_found(msg),
            CriError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            CriError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            CriError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            CriError::Unimplemented(_) => tonic::Status::unimplemented(msg),
            CriError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(msg),
            _ => tonic::Status::unknown(msg),
        }
    }
}

pub(crate) type Result<T, E = CriError> = std::result::Result<T, E>;
