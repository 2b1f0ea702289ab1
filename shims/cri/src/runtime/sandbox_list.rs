//! ListPodSandbox with id / state / label filters.

use skiff_proto::cri;

use crate::server::State;
use crate::store::sandbox::SandboxState;
use crate::util::labels_match;

pub(crate) fn list(st: &State, req: cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse {
    let f = req.filter.unwrap_or_default();
    let items = st
        .sandboxes
        .list()
        .into_iter()
        .filter(|sb| sb.state != SandboxState::Creating)
        .filter(|sb| f.id.is_empty() || sb.id.starts_with(&f.id))
        .filter(|sb| {
            f.state
                .as_ref()
                .map(|s| s.state == sb.cri_state() as i32)
                .unwrap_or(true)
        })
        .filter(|sb| labels_match(&f.label_selector, &sb.config.labels))
        .map(|sb| cri::PodSandbox {
            id: sb.id.clone(),
            metadata: sb.config.metadata.clone(),
            state: sb.cri_state() as i32,
            created_at: sb.created_at,
            labels: sb.config.labels.clone(),
            annotations: sb.config.annotations.clone(),
            runtime_handler: sb.runtime_handler.clone(),
        })
        .collect();
    cri::ListPodSandboxResponse { items }
}
