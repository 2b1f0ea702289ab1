//! One HTTP/2 connection to the API server, shared by every `kube::Client` of a process that
//! authenticates the same way at the TLS layer.
//!
//! `kube`'s default client speaks HTTP/1.1 and keeps a pool per client: every request a burst
//! runs at once opens a connection of its own (TLS buffers and all), kept until it has been idle
//! for a while, and one connection is held by each watch. With the controllers each on a client
//! of their own (their own tokens, see [`crate::credentials`]) a 1,000-pod scale-up left
//! the controller manager with over 200 sockets. Here the clients of a process share one hyper
//! client that speaks HTTP/2 only (every request and watch is a stream of one connection, as
//! client-go does against an API server that offers `h2`); each `kube::Client` adds its own
//! credentials per request on top. Only the API server's transport is shared, never a
//! credential: a client certificate belongs to the TLS connection, so clients that authenticate
//! with a bearer token must not share a connection that presents one (the API server, as
//! upstream's, prefers the certificate). [`Connection::new`] therefore takes the configuration
//! whose certificate (if any) it presents.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};

/// The service under every client of a [`Connection`]: `kube`'s own `GenericService`.
pub type Service = BoxService<http::Request<Body>, http::Response<Box<DynBody>>, BoxError>;

/// Like client-go's HTTP/2 health check (`ReadIdleTimeout` 30 s, `PingTimeout` 15 s): a ping
/// when nothing was read for 30 s, and the connection is closed (its requests and watches
/// fail, and are made again on a new one) when the answer takes over 15 s.
const PING_AFTER: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A shared HTTP/2 connection (hyper's client: opened on first use and again after it closes).
/// Cloning shares it.
#[derive(Clone)]
pub struct Connection {
    client: hyper_util::client::legacy::Client<H2Tls, Body>,
}

impl Connection {
    /// A connection to `config`'s server that trusts its CA and presents its client
    /// certificate, if it has one.
    pub fn new(config: &kube::Config) -> Result<Connection, kube::Error> {
        let mut tls = config.rustls_client_config()?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = match config.tls_server_name.as_ref() {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
            })?),
            None => None,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(config.connect_timeout);
        let connector = H2Tls {
            http,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            server_name,
        };
        let client = hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(PING_AFTER)
            .http2_keep_alive_timeout(PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(connector);
        Ok(Connection { client })
    }

    /// A `kube` client builder over this connection with `config`'s server address, default
    /// namespace, header-borne credentials (bearer token, basic auth, exec plugin: `kube`'s own
    /// auth layer), extra headers and retries of throttled requests, like
    /// `ClientBuilder::try_from(config)` without its per-client connection pool.
    pub fn builder(&self, config: &kube::Config) -> Result<ClientBuilder<Service>, kube::Error> {
        let retry = config.default_retry.then(|| {
            tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())
        });
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(retry)
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(BoxError::from)
            .service(self.client.clone())
            .map_response(|res: http::Response<hyper::body::Incoming>| {
                res.map(|body| {
                    Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
                })
            })
            .boxed();
        Ok(ClientBuilder::new(
            service,
            config.default_namespace.clone(),
        ))
    }

    /// [`Connection::builder`], built.
    pub fn client(&self, config: &kube::Config) -> Result<kube::Client, kube::Error> {
        Ok(self.builder(config)?.build())
    }
}

/// Connects TCP, then TLS offering only `h2` (ALPN, as HTTP/2 over TLS requires).
#[derive(Clone)]
pub struct H2Tls {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    /// The name the server's certificate is checked against, if not the address's host.
    server_name: Option<ServerName<'static>>,
}

impl tower::Service<http::Uri> for H2Tls {
    type Response = TlsConnection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConnection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<http::Uri>::poll_ready(&mut self.http, cx).map_err(BoxError::from)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let name = match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => {
                let host = uri
                    .host()
                    .unwrap_or("")
                    .trim_matches(|c| c == '[' || c == ']');
                ServerName::try_from(host.to_string()).map_err(BoxError::from)
            }
        };
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let tcp = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            if !https {
                return Err("the API server's address must be https:// (HTTP/2 over TLS)".into());
            }
            let tcp: TcpStream = tcp.await?.into_inner();
            let stream = tls.connect(name?, tcp).await?;
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

/// A TLS connection to the API server, for hyper.
pub struct TlsConnection(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl hyper_util::client::legacy::connect::Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let tcp: &TcpStream = self.0.inner().get_ref().0;
        hyper_util::client::legacy::connect::Connection::connected(tcp).negotiated_h2()
    }
}

impl hyper::rt::Read for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
