//! Executing a delegated plugin (the IPAM plugin) the way libcni does: found in `CNI_PATH`, our
//! environment with `CNI_COMMAND` replaced, the same config on stdin, the result on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{code, CniError, Error, Result};

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find_in_path(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::Config(format!("invalid plugin type {plugin:?}")));
    }
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Other(format!(
                "failed to find plugin {plugin:?} in path {path:?}: put it in a CNI_PATH directory"
            ))
        })
}

/// Runs `bin` with `command`; returns its stdout when it succeeded.
pub fn exec(bin: &Path, command: &str, stdin: &[u8]) -> Result<Vec<u8>> {
    let mut cmd = Command::new(bin);
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl
    // syscall, which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            // If we are killed mid-ADD, the delegate dies with us instead of finishing an
            // allocation after the runtime's cleanup DEL already ran.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("failed to start {}", bin.display()), e))?;
    if let Some(mut si) = child.stdin.take() {
        // A plugin that exits without reading its stdin is judged by its exit status below.
        let _ = si.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("failed to wait for {}", bin.display()), e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
        if let Some(c) = v.get("code").and_then(Value::as_u64) {
            return Err(CniError::new(
                c as u32,
                v.get("msg").and_then(Value::as_str).unwrap_or_default(),
                v.get("details").and_then(Value::as_str).unwrap_or_default(),
            )
            .into());
        }
    }
    Err(CniError::new(
        code::INTERNAL,
        format!(
            "netplugin {} failed ({}): {:?}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ),
        "",
    )
    .into())
}

/// Delegates `command` to plugin `plugin` found in `path`. When that file is this very binary
/// (our `host-local` next to our `bridge`), the plugin runs in-process with the same environment
/// and stdin — the same code an exec would run, without a fork+exec.
pub fn delegate(plugin: &str, command: &str, path: &[PathBuf], stdin: &[u8]) -> Result<Vec<u8>> {
    let bin = find_in_path(plugin, path)?;
    if let Some(p) = in_process(plugin, &bin) {
        tracing::debug!(plugin, command, "delegating in-process");
        return run_here(p.as_ref(), command, stdin);
    }
    tracing::debug!(plugin = %bin.display(), command, "delegating");
    exec(&bin, command, stdin)
}

/// Our own plugin `plugin`, if `bin` is this executable.
fn in_process(plugin: &str, bin: &Path) -> Option<Box<dyn crate::skel::Plugin>> {
    if std::env::var_os("SKIFF_CNI_EXEC_DELEGATES").is_some() {
        return None;
    }
    let me = std::env::current_exe().ok()?.canonicalize().ok()?;
    let it = bin.canonicalize().ok()?;
    (me == it).then(|| crate::plugin_for(plugin)).flatten()
}

fn run_here(plugin: &dyn crate::skel::Plugin, command: &str, stdin: &[u8]) -> Result<Vec<u8>> {
    let env = |k: &str| {
        if k == "CNI_COMMAND" {
            Some(command.to_string())
        } else {
            std::env::var(k).ok()
        }
    };
    let mut out = Vec::new();
    if crate::skel::run(plugin, &env, stdin.to_vec(), &mut out) == 0 {
        return Ok(out);
    }
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    Err(CniError::new(
        v.get("code")
            .and_then(Value::as_u64)
            .map_or(code::INTERNAL, |c| c as u32),
        v.get("msg").and_then(Value::as_str).unwrap_or_default(),
        v.get("details").and_then(Value::as_str).unwrap_or_default(),
    )
    .into())
}
