//! StartContainer: `runtime start`.

use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;

pub(crate) async fn start(st: &State, id: &str) -> Result<cri::StartContainerResponse> {
    let ct = st.containers.get(id)?;
    let _guard = st.lock(&ct.id).await;
    let ct = st.containers.get(&ct.id)?;
    if ct.cri_state() != cri::ContainerState::ContainerCreated {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is {:?}, not CREATED: only a created container can be started",
            ct.id,
            ct.cri_state()
        )));
    }
    // Taken before `start`: a process that exits at once must not look finished before started.
    let started_at = crate::util::now_nanos();
    match super::oci::start(st, &ct).await {
        Ok(()) => {
            st.containers
                .update(&ct.id, |c| c.started_at = started_at)?;
            tracing::info!("container started");
            Ok(cri::StartContainerResponse {})
        }
        Err(e) => {
            let msg = e.to_string();
            st.containers
                .update(&ct.id, |c| c.start_error = Some(msg))?;
            Err(e)
        }
    }
}
