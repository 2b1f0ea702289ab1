//! RemoveContainer: stop, runtime delete, unmount the rootfs, remove the container's dirs.

use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::container::Container;
use crate::util::remove_dir_all_quiet;

pub(crate) async fn remove_by_id(st: &State, id: &str) -> Result<cri::RemoveContainerResponse> {
    let ct = match st.containers.get(id) {
        Ok(c) => c,
        Err(CriError::NotFound { .. }) => return Ok(cri::RemoveContainerResponse {}),
        Err(e) => return Err(e),
    };
    let _guard = st.lock(&ct.id).await;
    remove(st, &ct).await?;
    st.forget_lock(&ct.id);
    Ok(cri::RemoveContainerResponse {})
}

pub(crate) async fn remove(st: &State, ct: &Container) -> Result<()> {
    super::container_stop::stop(st, ct, 0).await?;
    cleanup(st, ct).await?;
    st.containers.delete(&ct.id)?;
    st.cpu_samples
        .lock()
        .expect("cpu sample map poisoned")
        .remove(&ct.id);
    remove_dir_all_quiet(&st.containers.record_dir(&ct.id))?;
    tracing::info!(container = %ct.id, "container removed");
    Ok(())
}

/// Runtime delete + rootfs unmount; used by remove and by a failed create.
pub(crate) async fn cleanup(st: &State, ct: &Container) -> Result<()> {
    if let Err(e) = super::oci::delete(st, ct).await {
        // "does not exist" is the common case for a container whose create failed.
        tracing::debug!(error = %e, "runtime delete");
    }
    crate::sys::unmount(&ct.rootfs)?;
    // Idmapped clones of CRI mounts (and the layers', if a create died between attaching and
    // detaching them).
    if let Ok(rd) = std::fs::read_dir(super::spec::idmap_dir(ct)) {
        for e in rd.flatten() {
            crate::sys::unmount(&e.path())?;
        }
    }
    Ok(())
}
