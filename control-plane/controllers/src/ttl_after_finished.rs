//! The TTL-after-finished controller (upstream's `pkg/controller/ttlafterfinished`): deletes a
//! finished Job `ttlSecondsAfterFinished` seconds after its `Complete` or `Failed` condition,
//! with foreground propagation (its pods go first) and a uid precondition.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::{Context, ControllerError};

pub fn run(
    ctx: Context,
    stop: BoxFuture<'static, ()>,
) -> BoxFuture<'static, Result<(), ControllerError>> {
    Box::pin(async move {
        let client = ctx.client.clone();
        let reader = ctx.reader.clone();
        let ctl = Controller::new(Api::<Job>::all(reader.clone()), watcher::Config::default())
            .run(reconcile, error_policy, Arc::new(client))
            .for_each(|_| async {});
        crate::workload::until(stop, ctl).await;
        Ok(())
    })
}

fn error_policy(_job: Arc<Job>, err: &kube::Error, _c: Arc<Client>) -> Action {
    warn!(error = %err, "ttl-after-finished: delete failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// When the job finished: its `Complete` or `Failed` condition's transition time.
pub fn finish_time(job: &Job) -> Option<i64> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0.as_second())
}

async fn reconcile(job: Arc<Job>, client: Arc<Client>) -> Result<Action, kube::Error> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(finished) = finish_time(&job) else {
        return Ok(Action::await_change());
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let expire = finished + i64::from(ttl);
    if now < expire {
        return Ok(Action::requeue(Duration::from_secs((expire - now) as u64)));
    }
    let api: Api<Job> = Api::namespaced((*client).clone(), &job.namespace().unwrap_or_default());
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    info!(job = %job.name_any(), ttl, "deleting finished job after its TTL");
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}
