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

pub mod certificates;
pub mod deployment;
pub mod disruption;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod hpa;
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
pub mod ttl_after_finished;
mod workload;

/// What every controller gets: an API client (its identity) and the shared informers.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub informers: Arc<informer::Informers>,
    /// The process's one pod cache (a shared informer) for the controllers that read pods.
    pub pods: workload::SharedPods,
}

/// A controller: a name (for logs and its identity) and a future that runs it until `stop`.
type Runner =
    fn(Context, BoxFuture<'static, ()>) -> BoxFuture<'static, Result<(), ControllerError>>;

/// Every controller `skiff server` runs, in start order.
fn controllers() -> Vec<(&'static str, Runner)> {
    vec![
        ("replicaset", replicaset::run_replicasets),
        (
            "replicationcontroller",
            replicaset::run_replication_controllers,
        ),
        ("deployment", deployment::run),
        ("garbagecollector", gc::run),
        ("nodelifecycle", nodelifecycle::run),
        ("podgc", podgc::run),
        ("job", job::run),
        ("ttl-after-finished", ttl_after_finished::run),
        ("cronjob", cronjob::run),
        ("daemonset", daemonset::run),
        ("statefulset", statefulset::run),
        ("persistentvolume-binder", storage::run),
        (endpointslice::NAME, endpointslice::run),
        (endpoints::NAME, endpoints::run),
        ("namespace", namespace::run),
        (disruption::COMPONENT, disruption::run),
        (certificates::APPROVER, certificates::run_approver),
        (certificates::SIGNER, certificates::run_signer),
        (hpa::COMPONENT, hpa::run),
    ]
}

/// Runs the controllers until `stop` completes, while this process holds the controller lease
/// (see [`leader`]); when it loses the lease it stops them and campaigns again.
pub async fn run(
    config: kube::Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let client = Client::try_from(config)?;
    let elector = leader::Elector::new(client.clone(), leader::host_identity().await);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = elector.acquire() => {}
        }
        let (term_tx, term_rx) = tokio::sync::watch::channel(false);
        let term = run_all(client.clone(), async move {
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
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ctx = Context {
        informers: Arc::new(informer::Informers::new(client.clone(), rx.clone())),
        pods: workload::SharedPods::new(client.clone()),
        client,
    };
    let mut tasks = Vec::new();
    for (name, runner) in controllers() {
        let ctx = ctx.clone();
        let rx = rx.clone();
        tasks.push(tokio::spawn(async move {
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
