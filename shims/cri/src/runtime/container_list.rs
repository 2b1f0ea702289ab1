//! ListContainers with id / state / sandbox / label filters.

use skiff_proto::cri;

use crate::server::State;
use crate::util::labels_match;

pub(crate) fn list(st: &State, req: cri::ListContainersRequest) -> cri::ListContainersResponse {
    let f = req.filter.unwrap_or_default();
    let containers = st
        .containers
        .list()
        .into_iter()
        .filter(|c| f.id.is_empty() || c.id.starts_with(&f.id))
        .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
        .filter(|c| labels_match(&f.label_selector, &c.config.labels))
        .filter_map(|c| {
            let state = c.cri_state() as i32;
            if f.state.as_ref().map(|s| s.state != state).unwrap_or(false) {
                return None;
            }
            Some(cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: Some(super::container_status::image_spec(st, &c)),
                image_ref: c.image_ref.clone(),
                image_id: c.image_id.clone(),
                state,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
            })
        })
        .collect();
    cri::ListContainersResponse { containers }
}
