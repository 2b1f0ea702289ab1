//! Helpers for the privileged CNI tests: scratch network namespaces (a "host" one holding the
//! bridge and a container one), plugin runs, `ip -j` queries. Every resource starts with `sk` and
//! is removed on drop.

#![allow(dead_code)]

pub mod traffic;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the test (with a note) when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            panic!("missing prerequisite: needs root (netns, netlink)");
        }
    };
}

pub fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A named netns from `ip netns add`, deleted on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(name: &str) -> Ns {
        let _ = sh(&["ip", "netns", "del", name]);
        let (ok, out) = sh(&["ip", "netns", "add", name]);
        assert!(ok, "ip netns add {name}: {out}");
        Ns(name.to_string())
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
    /// `ip -n NS -j <args>` parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["ip", "-n", &self.0, "-j"];
        a.extend_from_slice(args);
        let (ok, out) = sh(&a);
        assert!(ok, "{a:?}: {out}");
        serde_json::from_str(out.trim()).unwrap_or(Value::Array(vec![]))
    }
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["ip", "netns", "exec", &self.0];
        a.extend_from_slice(args);
        sh(&a)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A temp dir of plugin symlinks to our binary (what `skiff-cni install DIR` makes): the one
/// cargo built for the test, or `SKIFF_TEST_CNI_BIN` (scripts/test.sh runs the suites again on
/// the shipped build, scripts/build-cni.sh).
pub fn our_plugins() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    let bin = std::env::var_os("SKIFF_TEST_CNI_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_skiff-cni").into());
    skiff_cni::install(d.path(), &bin).expect("install");
    d
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs plugin `bin` inside the "host" netns `host` with the CNI environment.
#[allow(clippy::too_many_arguments)]
pub fn run_plugin(
    host: Option<&Ns>,
    bin: &Path,
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    cni_path: &Path,
    conf: &Value,
) -> Run {
    run_plugin_env(host, bin, cmd, id, netns, ifname, cni_path, conf, &[])
}

/// [`run_plugin`] with extra environment variables (e.g. `CNI_ARGS`).
#[allow(clippy::too_many_arguments)]
pub fn run_plugin_env(
    host: Option<&Ns>,
    bin: &Path,
    cmd: &str,
    id: &str,
    netns: &str,
    ifname: &str,
    cni_path: &Path,
    conf: &Value,
    extra: &[(&str, &str)],
) -> Run {
    let mut c = match host {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.0]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", cni_path)
        .env_remove("CNI_ARGS")
        .envs(extra.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn reference_dir() -> Option<PathBuf> {
    let d = PathBuf::from("/usr/lib/cni");
    (d.join("bridge").is_file() && d.join("host-local").is_file()).then_some(d)
}
