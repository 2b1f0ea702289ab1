//! API clients that share connections. `kube`'s own client speaks HTTP/1 only, and its pool
//! keeps every connection a burst of requests opened (each with its TLS and read buffers):
//! after 1,000 pod creations the controller manager held over 200 sockets. These clients offer
//! HTTP/2 (the API server accepts it through ALPN, as kube-apiserver does), so all requests and
//! watches of one identity share one multiplexed connection; over HTTP/1 (a server without h2)
//! at most a few idle connections are kept, for 30 s.
//!
//! One [`Connection`] serves any number of [`kube::Client`]s: the controllers' clients share
//! one and differ only in the bearer token a layer adds to each request (see `credentials`).

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::{Body, ClientBuilder, ConfigExt};
use kube::Client;
use tower::{BoxError, ServiceBuilder};

use crate::ControllerError;

type Connector = hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>;

/// A pool of connections to one API server for one TLS identity; cheap to clone (clones share
/// the pool).
pub type Connection = hyper_util::client::legacy::Client<Connector, Body>;

/// Idle HTTP/1 connections kept per host, and for how long.
const MAX_IDLE: usize = 4;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings keep an idle connection from the read timeout and find a dead one.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest unread response data buffered per stream and per connection (hyper's defaults
/// are 2 and 5 MiB): watch events and list pages are read as they come.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// A connection pool with `config`'s server, CA and client certificate (if any).
pub fn connection(config: &kube::Config) -> Result<Connection, ControllerError> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let mut timed = hyper_timeout::TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    Ok(
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            .http2_keep_alive_interval(PING_INTERVAL)
            .http2_keep_alive_timeout(PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            .build(timed),
    )
}

/// A client for `config` (its server, CA, client certificate or token) on a connection of its
/// own, as `kube::Client::try_from` builds but over HTTP/2.
pub fn client(config: &kube::Config) -> Result<Client, ControllerError> {
    if config.tls_server_name.is_some() || config.proxy_url.is_some() {
        // Not needed in-process; kube's own client handles both.
        return Ok(Client::try_from(config.clone())?);
    }
    let conn = connection(config)?;
    let svc = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(conn);
    Ok(ClientBuilder::new(svc, config.default_namespace.clone()).build())
}
