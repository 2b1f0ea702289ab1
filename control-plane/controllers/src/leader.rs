//! Leader election on a coordination Lease, as kube-controller-manager does it
//! (`kube-system/kube-controller-manager`, lease 15 s, renew deadline 10 s, retry 2 s): only the
//! holder runs the controllers; it renews every retry period and steps down when it could not
//! renew within the deadline. Another candidate takes the lease once it expired.
//!
//! The identity is the host name (kube-controller-manager appends a random suffix): a server
//! restarted after a crash finds the lease still its own and leads again at once instead of
//! waiting out the lease, and servers on different hosts still differ.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::events::{Recorder, NORMAL};

pub const NAMESPACE: &str = "kube-system";
pub const LEASE: &str = "kube-controller-manager";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// kube-controller-manager's `--leader-elect` (default true). Off, the controllers run at once
/// and no Lease is read or written: only for a single controller manager.
static LEADER_ELECT: AtomicBool = AtomicBool::new(true);

/// Turns leader election on or off for this process (before [`crate::run`]).
pub fn set_leader_elect(on: bool) {
    LEADER_ELECT.store(on, Ordering::Relaxed);
}

fn leader_elect() -> bool {
    LEADER_ELECT.load(Ordering::Relaxed)
}

pub struct Elector {
    api: Api<Lease>,
    pub identity: String,
    rec: Recorder,
}

impl Elector {
    pub fn new(client: Client, identity: String) -> Self {
        Elector {
            api: Api::namespaced(client.clone(), NAMESPACE),
            identity,
            rec: Recorder::new(client, "kube-controller-manager"),
        }
    }

    /// One attempt to take or renew the lease; true when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(LEASE).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    namespace: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.became_leader(&l);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !holder.is_empty() && !mine {
            let dur = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0);
            if renewed + dur > now.as_second() {
                return Ok(false);
            }
        }
        if !mine {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        match self
            .api
            .replace(LEASE, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                if !mine {
                    self.became_leader(&l);
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn became_leader(&self, l: &Lease) {
        tracing::info!(identity = %self.identity, lease = LEASE, "successfully acquired lease");
        self.rec.event(
            l,
            NORMAL,
            "LeaderElection",
            format!("{} became leader", self.identity),
        );
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) {
        if !leader_elect() {
            return;
        }
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(error = %e, "could not take the controller lease; retrying")
                }
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews every retry period; returns when a renewal did not succeed within the deadline.
    pub async fn hold(&self) {
        if !leader_elect() {
            return std::future::pending().await;
        }
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RETRY_PERIOD).await;
            // A renewal stuck on a dead connection counts as failed (upstream bounds each
            // attempt by the renew deadline too).
            match tokio::time::timeout(RENEW_DEADLINE, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!(identity = %self.identity, "controller lease taken by another holder");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::info!(error = %e, detail = ?e, "could not renew the controller lease")
                }
                Err(_) => tracing::info!("renewing the controller lease timed out"),
            }
            if last.elapsed() > RENEW_DEADLINE {
                tracing::warn!(identity = %self.identity, "failed to renew the controller lease within the deadline");
                return;
            }
        }
    }

    /// Gives the lease up on a clean stop (upstream's ReleaseOnCancel), so a successor need not
    /// wait for it to expire.
    pub async fn release(&self) {
        if !leader_elect() {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(LEASE).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            let _ = self
                .api
                .replace(LEASE, &PostParams::default(), &lease)
                .await;
        }
    }
}

/// This host's name, the candidate identity.
pub async fn host_identity() -> String {
    tokio::fs::read_to_string("/proc/sys/kernel/hostname")
        .await
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".into())
}
