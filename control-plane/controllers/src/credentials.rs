//! Each controller's own identity, as upstream's kube-controller-manager gives them with
//! `--use-service-account-credentials`: the controller manager's identity
//! (`system:kube-controller-manager`) only runs the shared informers, holds the leader lease and
//! makes sure a service account `kube-system/<controller>` exists; every controller talks to the
//! API server with a token of its own service account (TokenRequest, renewed before it expires),
//! so RBAC grants it no more than upstream's `system:controller:<controller>` role.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderValue;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{ObjectMeta, PostParams};
use kube::client::Body;
use kube::{Api, Client};

use crate::transport::Connection;
use crate::ControllerError;

/// Where the controllers' service accounts live, as upstream.
pub const NAMESPACE: &str = "kube-system";

/// What a token is asked for; it is renewed at 80% of the lifetime it was given.
const TOKEN_SECONDS: i64 = 3600;

/// Builds clients that authenticate as a controller's service account.
#[derive(Clone)]
pub struct Credentials {
    /// The controller manager's own client (creates service accounts, asks for tokens).
    root: Client,
    /// The configuration `root` was built from, without its credentials: the server's address
    /// and CA.
    config: kube::Config,
    /// The connection every controller's requests share (no client certificate: each request
    /// carries its controller's token).
    conn: Connection,
}

impl Credentials {
    pub fn new(root: Client, mut config: kube::Config) -> Result<Credentials, ControllerError> {
        // The bearer token is the only credential: no client certificate, no other auth.
        config.auth_info = Default::default();
        let conn = Connection::new(&config)?;
        Ok(Credentials { root, config, conn })
    }

    /// A client authenticated as `kube-system/<sa>`. Its token is renewed in the background until
    /// `stop` turns true.
    pub async fn client_for(
        &self,
        sa: &'static str,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Client, ControllerError> {
        let (header, lifetime) = self.token(sa).await?;
        let current = Arc::new(RwLock::new(header));
        let shared = current.clone();
        let stamp = tower::util::MapRequestLayer::new(move |mut req: http::Request<Body>| {
            let value = shared.read().unwrap_or_else(|e| e.into_inner()).clone();
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
            req
        });
        let refused = Arc::new(tokio::sync::Notify::new());
        let client = self
            .conn
            .builder(&self.config)?
            .with_layer(&stamp)
            .with_layer(&OnUnauthorized(refused.clone()))
            .build();
        let me = self.clone();
        tokio::spawn(async move { me.renew(sa, current, lifetime, refused, stop).await });
        Ok(client)
    }

    /// Renews `current` before its token expires, and at once when the API server refuses it
    /// (401: e.g. its service account was deleted and made again); after a failure, tries again
    /// every few seconds (the old token stays in use while it is valid).
    async fn renew(
        &self,
        sa: &'static str,
        current: Arc<RwLock<HeaderValue>>,
        mut lifetime: Duration,
        refused: Arc<tokio::sync::Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut wait = lifetime.mul_f64(0.8);
        loop {
            let was_refused = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => false,
                _ = refused.notified() => true,
            };
            if was_refused {
                tracing::info!(
                    service_account = sa,
                    "the controller's token was refused; asking for a new one"
                );
                // At most one renewal a second, however many requests were refused.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match self.token(sa).await {
                Ok((header, l)) => {
                    *current.write().unwrap_or_else(|e| e.into_inner()) = header;
                    lifetime = l;
                    wait = lifetime.mul_f64(0.8);
                    tracing::debug!(service_account = sa, "controller token renewed");
                }
                Err(e) => {
                    tracing::warn!(service_account = sa, error = %e, "renewing the controller's token failed; trying again");
                    wait = Duration::from_secs(5);
                }
            }
        }
    }

    /// Makes sure the service account exists and asks for a token for it.
    async fn token(&self, sa: &str) -> Result<(HeaderValue, Duration), ControllerError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.root.clone(), NAMESPACE);
        if api.get_opt(sa).await?.is_none() {
            let obj = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(sa.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => tracing::info!(
                    service_account = sa,
                    "created the controller's service account"
                ),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let got = api
            .create_token_request(sa, &PostParams::default(), &req)
            .await?;
        let status = got.status.ok_or_else(|| ControllerError::Stopped {
            name: "credentials",
            reason: format!("the TokenRequest for {NAMESPACE}/{sa} came back without a token"),
        })?;
        let mut header =
            HeaderValue::from_str(&format!("Bearer {}", status.token)).map_err(|_| {
                ControllerError::Stopped {
                    name: "credentials",
                    reason: format!("the token for {NAMESPACE}/{sa} is not a valid header value"),
                }
            })?;
        header.set_sensitive(true);
        let left = status.expiration_timestamp.0.as_second()
            - k8s_openapi::jiff::Timestamp::now().as_second();
        let lifetime = Duration::from_secs(left.clamp(60, TOKEN_SECONDS * 24) as u64);
        Ok((header, lifetime))
    }
}

/// A layer that signals when the API server answers 401 (the token is no longer valid).
#[derive(Clone)]
struct OnUnauthorized(Arc<tokio::sync::Notify>);

impl<S> tower::Layer<S> for OnUnauthorized {
    type Service = OnUnauthorizedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OnUnauthorizedService {
            inner,
            refused: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct OnUnauthorizedService<S> {
    inner: S,
    refused: Arc<tokio::sync::Notify>,
}

impl<S, B> tower::Service<http::Request<Body>> for OnUnauthorizedService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let fut = self.inner.call(req);
        let refused = self.refused.clone();
        Box::pin(async move {
            let res = fut.await?;
            if res.status() == http::StatusCode::UNAUTHORIZED {
                refused.notify_one();
            }
            Ok(res)
        })
    }
}
