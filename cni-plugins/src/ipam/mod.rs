//! The host-local IPAM: configuration, the on-disk store and the allocator.

pub mod allocator;
pub mod config;
pub mod store;

use crate::error::code;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM configuration: {0}")]
    Config(String),
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    #[error("{ip} has been allocated to {id}, duplicate allocation is not allowed")]
    Duplicate { ip: std::net::IpAddr, id: String },
    #[error("requested IP address {ip} is not available in range set {set}")]
    Unavailable { ip: std::net::IpAddr, set: String },
    #[error("host-local: failed to find an address added by container {id} on {ifname}")]
    NotFound { id: String, ifname: String },
    #[error("host-local store: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl IpamError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        IpamError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> u32 {
        match self {
            IpamError::Config(_) => code::INVALID_NETWORK_CONFIG,
            IpamError::Io { .. } => code::IO_FAILURE,
            _ => code::INTERNAL,
        }
    }
}
