//! RemovePodSandbox: stop if needed, remove the sandbox's containers, then its state.

use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::util::remove_dir_all_quiet;

pub(crate) async fn remove(st: &State, id: &str) -> Result<cri::RemovePodSandboxResponse> {
    let sb = match st.sandboxes.get(id) {
        Ok(sb) => sb,
        Err(CriError::NotFound { .. }) => return Ok(cri::RemovePodSandboxResponse {}),
        Err(e) => return Err(e),
    };
    let _guard = st.lock(&sb.id).await;
    super::sandbox_stop::teardown(st, &sb).await?;
    for ct in st
        .containers
        .list()
        .into_iter()
        .filter(|c| c.sandbox_id == sb.id)
    {
        super::container_remove::remove(st, &ct).await?;
    }
    st.sandboxes.delete(&sb.id)?;
    remove_dir_all_quiet(&st.sandboxes.record_dir(&sb.id))?;
    st.forget_lock(&sb.id);
    st.cpu_samples
        .lock()
        .expect("cpu sample map poisoned")
        .remove(&sb.id);
    tracing::info!("sandbox removed");
    Ok(cri::RemovePodSandboxResponse {})
}
