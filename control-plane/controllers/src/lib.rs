//! Skiff's controllers. Each one is a client of the API server and nothing else (it could run in
//! a process of its own): it watches the kinds it owns through `kube`'s reflectors, reconciles one
//! object key at a time from a work queue with per-key retries (`kube::runtime::Controller`), and
//! writes back through the API. One module per controller; [`run`] starts them all.

pub mod endpoints;
pub mod endpointslice;
mod queue;

use std::future::Future;

use futures::future::BoxFuture;
use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("controller {name} stopped: {reason}")]
    Stopped { name: &'static str, reason: String },
}

/// What every controller gets: an API client (its identity) and where to report.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
}

/// A controller: a name (for logs and its identity) and a future that runs it until `stop`.
type Runner =
    fn(Context, BoxFuture<'static, ()>) -> BoxFuture<'static, Result<(), ControllerError>>;

/// Every controller `skiff server` runs, in start order.
fn controllers() -> Vec<(&'static str, Runner)> {
    vec![
        (endpointslice::NAME, endpointslice::run),
        (endpoints::NAME, endpoints::run),
    ]
}

/// Runs every controller until `stop` completes. A controller that fails is logged and restarted
/// after a pause; the others go on.
pub async fn run(
    client: Client,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ctx = Context { client };
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
