//! `skiff-monitor`: one tiny process per pod (the job of conmon / containerd-shim and of the
//! pause process together). No async runtime, no allocator-heavy dependencies: it lives as long
//! as the pod and must stay around 300 KiB RSS whatever the number of containers.
//!
//! Roles (see `docs/node-contracts.md`):
//! - `pause --hostname NAME [--pid-ns yes|no] [--sandbox ID] [--socket-dir DIR]`: `pause.rs`;
//!   with `--socket-dir` it is the pod monitor, which runs and monitors every container of the
//!   pod in this one process (`pod.rs`).
//! - `exec --runtime BIN --runtime-root DIR --id ID --process FILE --console-socket SOCK
//!   --pid-file FILE`: a tty exec for the CRI streaming server, `exec.rs`.
//! - `container --runtime BIN --runtime-root DIR --bundle DIR --id ID --log-path FILE
//!   --state-dir DIR`: `container.rs`.
//!
//! Syscalls live in `sys.rs`; the CRI log format and time stamps in `cri_log.rs` / `timefmt.rs`.

mod args;
mod atomic;
mod attach;
mod container;
mod cri_log;
mod exec;
mod pause;
mod pod;
mod sys;
mod timefmt;
#[cfg(target_arch = "x86_64")]
mod tiny_pause;

use std::process::ExitCode;

const USAGE: &str = "usage: skiff-monitor pause --hostname NAME [--pid-ns yes|no] [--sandbox ID] [--socket-dir DIR]\n       \
skiff-monitor container --runtime BIN --runtime-root DIR --bundle DIR --id ID --log-path FILE --state-dir DIR\n       \
skiff-monitor exec --runtime BIN --runtime-root DIR --id ID --process FILE --console-socket SOCK --pid-file FILE";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("pause") => args::PauseArgs::parse(&argv[1..]).and_then(pause::run),
        Some("container") => args::ContainerArgs::parse(&argv[1..]).and_then(container::run),
        Some("exec") => match args::ExecArgs::parse(&argv[1..]).and_then(exec::run) {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!(
            "expected a role, `pause`, `container` or `exec`\n{USAGE}"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skiff-monitor: {err}");
            ExitCode::FAILURE
        }
    }
}
