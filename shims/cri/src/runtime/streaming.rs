//! Exec, Attach and PortForward: validate, then hand out a streaming-server URL (the session
//! itself runs in `crate::stream` when the client connects).

use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::stream::{Pending, StreamServer};

fn check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if !(stdin || stdout || stderr) {
        return Err(CriError::InvalidArgument(
            "one of stdin, stdout or stderr must be set".into(),
        ));
    }
    if tty && stderr {
        return Err(CriError::InvalidArgument(
            "tty and stderr cannot both be set: a terminal has one output stream".into(),
        ));
    }
    Ok(())
}

fn running(st: &State, id: &str, verb: &str) -> Result<()> {
    let ct = st.containers.get(id)?;
    if ct.cri_state() != cri::ContainerState::ContainerRunning {
        return Err(CriError::FailedPrecondition(format!(
            "container {id} is not running: {verb} needs a running container"
        )));
    }
    Ok(())
}

pub(crate) fn exec(
    st: &State,
    srv: &StreamServer,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse> {
    if req.cmd.is_empty() {
        return Err(CriError::InvalidArgument("Exec needs a command".into()));
    }
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    running(st, &req.container_id, "exec")?;
    Ok(cri::ExecResponse {
        url: srv.url(Pending::Exec(req)),
    })
}

pub(crate) fn attach(
    st: &State,
    srv: &StreamServer,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse> {
    check_streams(req.stdin, req.stdout, req.stderr, req.tty)?;
    running(st, &req.container_id, "attach")?;
    Ok(cri::AttachResponse {
        url: srv.url(Pending::Attach(req)),
    })
}

pub(crate) fn port_forward(
    st: &State,
    srv: &StreamServer,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse> {
    let sb = st.sandboxes.get(&req.pod_sandbox_id)?;
    if sb.cri_state() != cri::PodSandboxState::SandboxReady {
        return Err(CriError::FailedPrecondition(format!(
            "sandbox {} is not ready: port-forward needs a running pod",
            sb.id
        )));
    }
    if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(CriError::InvalidArgument(format!("invalid port {p}")));
    }
    Ok(cri::PortForwardResponse {
        url: srv.url(Pending::PortForward(req)),
    })
}
