//! ExecSync: runs a command in a running container through the runtime's runc-compatible
//! `exec --process <json> ID` and returns its output and exit code.

use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::Spec;
use skiff_proto::cri;
use tokio::io::AsyncReadExt;

use crate::error::{CriError, Result};
use crate::server::State;

/// Output beyond this is cut (the kubelet's probes need a few bytes).
const MAX_OUTPUT: u64 = 16 << 20;

/// Writes the runc `exec --process` JSON for `cmd`: the container's own process (user, env, cwd,
/// capabilities) with new args. The caller removes the file.
pub(crate) fn write_process_file(
    ct: &crate::store::container::Container,
    cmd: &[String],
    tty: bool,
) -> Result<std::path::PathBuf> {
    let spec =
        Spec::load(ct.bundle.join("config.json")).map_err(|e| CriError::Spec(e.to_string()))?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(tty));
    process.set_console_size(None);
    let file = ct
        .bundle
        .join(format!("exec-{}.json", &crate::util::new_id()[..12]));
    crate::util::write_json_fast(&file, &process)?;
    Ok(file)
}

pub(crate) async fn exec_sync(
    st: &State,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse> {
    let ct = st.containers.get(&req.container_id)?;
    if ct.cri_state() != cri::ContainerState::ContainerRunning {
        return Err(CriError::FailedPrecondition(format!(
            "container {} is not running: exec needs a running container",
            ct.id
        )));
    }
    if req.cmd.is_empty() {
        return Err(CriError::InvalidArgument("ExecSync needs a command".into()));
    }
    let file = write_process_file(&ct, &req.cmd, false)?;
    let pid_file = file.with_extension("pid");

    let runtime = st.cfg.handler(&ct.runtime_handler)?;
    let mut child = tokio::process::Command::new(&runtime.binary)
        .arg("--root")
        .arg(runtime.root())
        .arg("exec")
        .arg("--process")
        .arg(&file)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&ct.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CriError::Runtime {
            verb: "exec",
            id: ct.id.clone(),
            message: format!("cannot run {}: {e}", runtime.binary.display()),
        })?;
    let mut out = child.stdout.take().expect("piped").take(MAX_OUTPUT);
    let mut err = child.stderr.take().expect("piped").take(MAX_OUTPUT);
    let run = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let (r1, r2) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e));
        r1.and(r2)?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((o, e, status))
    };
    let result = if req.timeout > 0 {
        tokio::time::timeout(Duration::from_secs(req.timeout as u64), run).await
    } else {
        Ok(run.await)
    };
    let _ = std::fs::remove_file(&file);
    if result.is_err() {
        // Timed out: the runtime's `exec` is killed on drop, but the process it started (and
        // what it started) lives in the container; kill them too before answering.
        let (pf, c) = (pid_file.clone(), ct.clone());
        let _ = tokio::task::spawn_blocking(move || kill_exec_tree(&pf, &c)).await;
    }
    let _ = std::fs::remove_file(&pid_file);
    let (stdout, stderr, status) = result
        .map_err(|_| {
            CriError::DeadlineExceeded(format!(
                "exec in container {}: command timed out after {}s",
                ct.id, req.timeout
            ))
        })?
        .map_err(|e| CriError::Runtime {
            verb: "exec",
            id: ct.id.clone(),
            message: e.to_string(),
        })?;
    if !status.success()
        && String::from_utf8_lossy(&stderr).contains("unrecognized subcommand 'exec'")
    {
        return Err(CriError::Runtime {
            verb: "exec",
            id: ct.id.clone(),
            message: format!("{} has no `exec` verb", runtime.binary.display()),
        });
    }
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok(cri::ExecSyncResponse {
        stdout,
        stderr,
        exit_code,
    })
}

/// SIGKILLs the process an `exec --pid-file` recorded, if it still runs in the container (its
/// pid namespace is the container init's), and every process descending from it, then waits
/// (5 s at most) until they are gone: a later ExecSync sees no trace of them.
fn kill_exec_tree(pid_file: &std::path::Path, ct: &crate::store::container::Container) {
    use nix::sys::signal::Signal;
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        return;
    };
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    if ns(pid).is_none() || ns(pid) != ns(ct.pid) {
        return;
    }
    // Stop the tree first so that nothing forks while it is collected.
    let mut tree = vec![pid];
    loop {
        for &p in &tree {
            let _ = crate::sys::signal(p, Signal::SIGSTOP);
        }
        let grown = descendants(&tree);
        if grown.len() == tree.len() {
            break;
        }
        tree = grown;
    }
    tracing::info!(container = %ct.id, pid, processes = tree.len(), "killing the exec process tree after its timeout");
    for &p in &tree {
        let _ = crate::sys::signal(p, Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if tree
            .iter()
            .all(|&p| crate::sys::proc_stat(p).is_none_or(|(_, s)| s == 'Z' || s == 'X'))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::warn!(container = %ct.id, pid, "exec process tree still there 5 s after SIGKILL");
}

/// `roots` and every process whose parent chain reaches one of them (from /proc/*/stat).
fn descendants(roots: &[i32]) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Field 4 (ppid) follows the ")" that ends the command name.
            if let Some(ppid) = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = roots.to_vec();
    loop {
        let before = out.len();
        for &(pid, ppid) in &parent_of {
            if out.contains(&ppid) && !out.contains(&pid) {
                out.push(pid);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}
