//! Errors of the plugins and their mapping to CNI spec error codes.

use crate::{ipam::IpamError, netlink::NetlinkError, netns::NetnsError, nft::NftError};

/// CNI spec error codes (SPEC.md, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    pub const INTERNAL: u32 = 999;
}

/// An error exactly as the CNI spec prints it: a code, a message and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// Every failure a plugin can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error with an explicit spec code (also what a delegated plugin returned).
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("invalid network configuration: {0}")]
    Config(String),
    #[error("failed to decode the network configuration: {0}")]
    Decode(#[from] serde_json::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The spec code this error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            Error::Cni(e) => e.code,
            Error::Config(_) => code::INVALID_NETWORK_CONFIG,
            Error::Decode(_) => code::DECODING_FAILURE,
            Error::Ipam(e) => e.code(),
            Error::Io { .. } => code::IO_FAILURE,
            Error::Netns(NetnsError::NotFound { .. }) => code::INVALID_ENV,
            Error::Netlink(_) | Error::Nft(_) | Error::Netns(_) | Error::Other(_) => code::INTERNAL,
        }
    }

    /// Converts into the printable spec error.
    pub fn into_cni(self) -> CniError {
        match self {
            Error::Cni(e) => e,
            other => CniError::new(other.code(), other.to_string(), ""),
        }
    }
}
