//! The pod lifecycle event generator: tells pod workers when their containers or sandboxes
//! changed, so a worker syncs on change instead of polling. Fed by the CRI's
//! `GetContainerEvents` stream; a relist (every container and sandbox, one call each, compared
//! with the previous relist) is the safety net: every [`RELIST_EVENTED`] while the stream is up
//! (upstream's Evented PLEG), every [`RELIST_GENERIC`] when the runtime has no event stream
//! (upstream's generic PLEG).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use skiff_proto::cri;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::cri::{labels, CriRuntime};

/// Relist period while container events arrive.
pub const RELIST_EVENTED: Duration = Duration::from_secs(300);
/// Relist period without an event stream.
pub const RELIST_GENERIC: Duration = Duration::from_secs(1);

/// The pod uid an event is about.
pub fn event_pod_uid(ev: &cri::ContainerEventResponse) -> Option<String> {
    ev.pod_sandbox_status
        .as_ref()
        .and_then(|s| s.metadata.as_ref())
        .map(|m| m.uid.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| {
            ev.containers_statuses
                .iter()
                .find_map(|c| c.labels.get(labels::POD_UID).cloned())
        })
}

/// One relist: (id -> (state, pod uid)) of every container and sandbox.
async fn relist<R: CriRuntime>(cri: &R) -> Option<HashMap<String, (i32, String)>> {
    let containers = cri.list_containers("", HashMap::new()).await.ok()?;
    let sandboxes = cri.list_pod_sandbox(HashMap::new()).await.ok()?;
    let mut out = HashMap::new();
    for c in containers {
        let uid = c.labels.get(labels::POD_UID).cloned().unwrap_or_default();
        out.insert(c.id, (c.state, uid));
    }
    for s in sandboxes {
        let uid = s.labels.get(labels::POD_UID).cloned().unwrap_or_default();
        out.insert(format!("sandbox/{}", s.id), (s.state + 100, uid));
    }
    Some(out)
}

/// The pod uids whose entries differ between two relists.
pub fn changed_pods(
    old: &HashMap<String, (i32, String)>,
    new: &HashMap<String, (i32, String)>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (id, (state, uid)) in new {
        if old.get(id).map(|(s, _)| s) != Some(state) && !uid.is_empty() {
            out.push(uid.clone());
        }
    }
    for (id, (_, uid)) in old {
        if !new.contains_key(id) && !uid.is_empty() {
            out.push(uid.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Runs until `shutdown`: sends the uid of every pod that changed on `tx`.
pub async fn run<R: CriRuntime>(
    cri: Arc<R>,
    tx: mpsc::UnboundedSender<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<HashMap<String, (i32, String)>> = None;
    let mut events = None;
    let mut warned = false;
    loop {
        if events.is_none() {
            match cri.container_events().await {
                Ok(s) => {
                    info!(
                        "following the CRI's container events (relist every {}s)",
                        RELIST_EVENTED.as_secs()
                    );
                    events = Some(s);
                    warned = false;
                }
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "no CRI container events; relisting every {}s", RELIST_GENERIC.as_secs());
                        warned = true;
                    }
                }
            }
        }
        let period = if events.is_some() {
            RELIST_EVENTED
        } else {
            RELIST_GENERIC
        };
        let next_event = async {
            match events.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            ev = next_event => match ev {
                Some(Ok(ev)) => {
                    if let Some(uid) = event_pod_uid(&ev) {
                        debug!(%uid, container = %ev.container_id, kind = ev.container_event_type, "container event");
                        if tx.send(uid).is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "the CRI container event stream failed; resubscribing");
                    events = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => {
                    warn!("the CRI container event stream ended; resubscribing");
                    events = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
            _ = tokio::time::sleep(period) => {
                let t0 = std::time::Instant::now();
                let listed = relist(&*cri).await;
                crate::monitor::METRICS.pleg_relist.observe(t0.elapsed());
                if let Some(now) = listed {
                    if let Some(old) = &last {
                        for uid in changed_pods(old, &now) {
                            if tx.send(uid).is_err() {
                                return;
                            }
                        }
                    }
                    last = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relist_diff_names_changed_pods() {
        let old: HashMap<String, (i32, String)> = [
            ("a".to_string(), (1, "p1".to_string())),
            ("b".to_string(), (1, "p2".to_string())),
            ("c".to_string(), (1, "p3".to_string())),
        ]
        .into();
        let new: HashMap<String, (i32, String)> = [
            ("a".to_string(), (1, "p1".to_string())),
            ("b".to_string(), (2, "p2".to_string())),
            ("d".to_string(), (0, "p4".to_string())),
        ]
        .into();
        assert_eq!(changed_pods(&old, &new), vec!["p2", "p3", "p4"]);
    }
}
