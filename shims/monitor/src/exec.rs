//! `exec`: runs the OCI runtime's `exec --tty --detach --console-socket` for the CRI server's
//! streaming Exec and stands in for the detached process: as a child subreaper it inherits the
//! process when the runtime exits, waits for it, and exits with its status (128+N for signal N).
//! The runtime's own failure is passed through: its stderr is ours, its status our status.

use std::path::Path;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::args::ExecArgs;
use crate::sys;

pub fn run(args: ExecArgs) -> Result<u8, String> {
    sys::set_child_subreaper()?;
    let status = Command::new(&args.runtime)
        .arg("--root")
        .arg(&args.runtime_root)
        .arg("exec")
        .arg("--process")
        .arg(&args.process)
        .arg("--tty")
        .arg("--detach")
        .arg("--console-socket")
        .arg(&args.console_socket)
        .arg("--pid-file")
        .arg(&args.pid_file)
        .arg(&args.id)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", args.runtime.display()))?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        return Ok(code.clamp(1, 255) as u8);
    }
    let pid = read_pid(&args.pid_file)?;
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(code as u8),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(128 + sig as u8),
            Ok(_) | Err(Errno::EINTR) => {}
            // The process was not ours to wait for (reparented elsewhere): report unknown.
            Err(Errno::ECHILD) => return Ok(255),
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    }
}

fn read_pid(path: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("runtime exec wrote no pid file {}: {e}", path.display()))?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| format!("pid file {} holds {text:?}", path.display()))
}
