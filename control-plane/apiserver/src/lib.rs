//! Skiff's kubectl-compatible API server.
//!
//! Start with [`serve`]: HTTPS (HTTP/1.1 and HTTP/2 over rustls) with x509 client-certificate
//! authentication against the cluster CA ([`pki::Pki`]), JSON on top of a [`skiff_store::Store`]
//! whose revision is the `resourceVersion`. What is served comes from the table in
//! [`registry`]: discovery, get/list/watch/create/update/patch/delete, status and binding
//! subresources, Table output for `kubectl get`, and the `pods/log` proxy to the kubelet.
//! Per-kind defaulting, validation and printing live in [`strategy`].

pub mod kinds;
pub mod pki;
pub mod registry;
pub mod selectors;
pub mod status;
pub mod strategy;
pub mod wire;

mod admission;
pub mod audit;
mod authn;
mod bootstrap;
mod crd;
mod discovery;
mod eviction;
mod handlers;
mod lifecycle;
mod managed;
mod metrics;
mod metrics_api;
mod nodeauthz;
mod owners;
mod patch;
mod podsecurity;
mod policy;
mod proxy;
mod quota;
pub mod rbac;
mod rebuilt;
mod reviews;
mod server;
mod service_repair;
mod subresources;
mod tokens;
mod validation;
mod watchcache;
mod webhook;

pub use server::{serve, ApiServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("PKI: {0}")]
    Pki(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("store: {0}")]
    Store(#[from] skiff_store::StoreError),
}
