//! Skiff's controllers. Each one is a client of the API server and nothing else (it could run in
//! a process of its own): it watches the kinds it owns through `kube`'s reflectors, reconciles one
//! object key at a time from a work queue with per-key retries (`kube::runtime::Controller`), and
//! writes back through the API. One module per controller; [`run`] starts them all.

pub mod endpoints;
pub mod endpointslice;
mod keyqueue;

use std::future::Future;

use std::sync::Arc;

use futures::future::BoxFuture;
use kube::Client;

pub mod cached_pod;
pub mod certificates;
pub mod credentials;
pub mod deployment;
pub mod disruption;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod hpa;
pub mod hpa_behavior;
mod hpa_metrics;
pub mod informer;
pub mod leader;
pub mod namespace;
pub mod nodelifecycle;
pub mod podgc;
pub mod queue;
pub mod replicaset;
pub mod util;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("controller {name} stopped: {reason}")]
    Stopped { name: &'static str, reason: String },
}

pub mod cronjob;
pub mod daemonset;
pub mod job;
mod revision;
pub mod statefulset;
pub mod storage;
pub mod transport;
pub mod ttl_after_finished;
mod workload;

/// What every controller gets: an API client (its identity) and the shared informers.
#[derive(Clone)]
pub struct Context {
    /// The controller's own identity (its service account's token, see [`credentials`]).
    pub client: Client,
    /// The controller manager's identity, for the caches (lists and watches) a controller keeps:
    /// as upstream, controllers read through informers of the manager and write as themselves.
    pub reader: Client,
    /// Shared informers, run with the controller manager's identity.
    pub informers: Arc<informer::Informers>,
}

/// A controller: a name (for logs and its identity) and a future that runs it until `stop`.
type Runner =
    fn(Context, BoxFuture<'static, ()>) -> BoxFuture<'static, Result<(), ControllerError>>;

/// Every controller `skiff server` runs, in start order, with the service account it runs as.
fn controllers() -> Vec<(&'static str, &'static str, Runner)> {
    vec![
        (
            "replicaset",
            "replicaset-controller",
            replicaset::run_replicasets,
        ),
        (
            "replicationcontroller",
            "replication-controller",
            replicaset::run_replication_controllers,
        ),
        ("deployment", "deployment-controller", deployment::run),
        ("garbagecollector", "generic-garbage-collector", gc::run),
        ("nodelifecycle", "node-controller", nodelifecycle::run),
        ("podgc", "pod-garbage-collector", podgc::run),
        ("job", "job-controller", job::run),
        (
            "ttl-after-finished",
            "ttl-after-finished-controller",
            ttl_after_finished::run,
        ),
        ("cronjob", "cronjob-controller", cronjob::run),
        ("daemonset", "daemon-set-controller", daemonset::run),
        ("statefulset", "statefulset-controller", statefulset::run),
        (
            "persistentvolume-binder",
            "persistent-volume-binder",
            storage::run,
        ),
        (
            endpointslice::NAME,
            "endpointslice-controller",
            endpointslice::run,
        ),
        (endpoints::NAME, "endpoint-controller", endpoints::run),
        ("namespace", "namespace-controller", namespace::run),
        (
            disruption::COMPONENT,
            "disruption-controller",
            disruption::run,
        ),
        (
            certificates::APPROVER,
            "certificate-controller",
            certificates::run_approver,
        ),
        (
            certificates::SIGNER,
            "certificate-controller",
            certificates::run_signer,
        ),
        (hpa::COMPONENT, "horizontal-pod-autoscaler", hpa::run),
    ]
}

/// Every service account (in `kube-system`) a controller runs as: upstream's names, each bound
/// to its `system:controller:<name>` ClusterRole by the default policy.
pub fn service_accounts() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = controllers().into_iter().map(|(_, sa, _)| sa).collect();
    v.dedup();
    v
}

/// Runs the controllers until `stop` completes, while this process holds the controller lease
/// (see [`leader`]); when it loses the lease it stops them and campaigns again.
pub async fn run(
    config: kube::Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    // Two HTTP/2 connections for all: the manager's (its certificate) and the controllers'
    // (their tokens); see [`transport`].
    let client = transport::Connection::new(&config)?.client(&config)?;
    let credentials = credentials::Credentials::new(client.clone(), config)?;
    let elector = leader::Elector::new(client.clone(), leader::host_identity().await);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = elector.acquire() => {}
        }
        let (term_tx, term_rx) = tokio::sync::watch::channel(false);
        let term = run_all(client.clone(), credentials.clone(), async move {
            let mut r = term_rx;
            let _ = r.wait_for(|s| *s).await;
        });
        tokio::pin!(term);
        let mut finished = false;
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = elector.hold() => false,
            r = &mut term => { finished = true; r?; false }
        };
        let _ = term_tx.send(true);
        if !finished {
            let _ = term.await;
        }
        if stopping {
            elector.release().await;
            return Ok(());
        }
        tracing::warn!("leader election lost; controllers stopped");
    }
}

/// Runs every controller until `stop` completes. A controller that fails is logged and restarted
/// after a pause; the others go on.
async fn run_all(
    client: Client,
    credentials: credentials::Credentials,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ctx = Context {
        informers: Arc::new(informer::Informers::new(client.clone(), rx.clone())),
        reader: client.clone(),
        client,
    };
    let mut tasks = Vec::new();
    for (name, sa, runner) in controllers() {
        let mut ctx = ctx.clone();
        let rx = rx.clone();
        let credentials = credentials.clone();
        tasks.push(tokio::spawn(async move {
            // The controller's own identity; the shared informers keep the manager's.
            loop {
                match credentials.client_for(sa, rx.clone()).await {
                    Ok(c) => {
                        ctx.client = c;
                        break;
                    }
                    Err(e) => tracing::warn!(controller = name, service_account = sa, error = %e, "no token for the controller yet; trying again"),
                }
                let mut rx2 = rx.clone();
                tokio::select! {
                    _ = rx2.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
            loop {
                let mut stop_rx = rx.clone();
                let stop: BoxFuture<'static, ()> = Box::pin(async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                });
                match runner(ctx.clone(), stop).await {
                    Ok(()) if *rx.borrow() => return,
                    Ok(()) => tracing::warn!(controller = name, "controller returned; restarting"),
                    Err(e) => tracing::warn!(controller = name, error = %e, "controller failed; restarting"),
                }
                let mut rx2 = rx.clone();
                tokio::select! {
                    _ = rx2.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        }));
    }
    tracing::info!(count = tasks.len(), "controllers running");
    stop.await;
    let _ = tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
