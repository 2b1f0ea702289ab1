//! The plugin skeleton: reads the CNI environment and stdin, checks versions, calls the plugin,
//! and prints the result or the spec error.

use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{code, CniError, Error, Result};
use crate::types::{is_supported, parse_version, render, CURRENT_VERSION, SUPPORTED_VERSIONS};

/// The CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// Everything a plugin invocation receives.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
    /// `cniVersion` of the config.
    pub version: String,
    /// The config, parsed as generic JSON.
    pub config: Value,
}

impl CmdArgs {
    /// The network's `name` (validated non-empty for every command but VERSION).
    pub fn network_name(&self) -> &str {
        self.config
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// `cni.dev/valid-attachments` of a GC config as (containerID, ifname) pairs.
pub fn valid_attachments(config: &Value) -> Vec<(String, String)> {
    config
        .get("cni.dev/valid-attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            Some((
                v.get("containerID")?.as_str()?.to_string(),
                v.get("ifname")?.as_str()?.to_string(),
            ))
        })
        .collect()
}

/// What each plugin implements.
pub trait Plugin {
    /// ADD: returns the rendered result JSON.
    fn add(&self, args: &CmdArgs) -> Result<String>;
    fn del(&self, args: &CmdArgs) -> Result<()>;
    fn check(&self, args: &CmdArgs) -> Result<()>;
    /// STATUS (spec 1.1): ready by default.
    fn status(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
    /// GC (spec 1.1): nothing to collect by default.
    fn gc(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
}

fn invalid_env(msg: impl Into<String>) -> Error {
    CniError::new(code::INVALID_ENV, msg, "").into()
}

/// Validates an interface name the way the reference skeleton does.
pub fn validate_ifname(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid_env("interface name is empty"));
    }
    if name.len() > 15 {
        return Err(invalid_env(format!("interface name {name:?} is too long")));
    }
    if name == "." || name == ".." {
        return Err(invalid_env(format!(
            "interface name {name:?} is not allowed"
        )));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid_env(format!(
            "interface name {name:?} contains / or : or whitespace characters"
        )));
    }
    Ok(())
}

fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(CniError::new(code::INVALID_ENV, "invalid characters in containerID", id).into())
    }
}

/// Reads and validates the invocation. `env` looks up an environment variable.
pub fn parse_invocation(env: &dyn Fn(&str) -> Option<String>, stdin: Vec<u8>) -> Result<CmdArgs> {
    let get = |k: &str| env(k).unwrap_or_default();
    let cmd_s = get("CNI_COMMAND");
    if cmd_s.is_empty() {
        return Err(invalid_env("required env variables [CNI_COMMAND] missing"));
    }
    let command = Command::parse(&cmd_s)
        .ok_or_else(|| invalid_env(format!("unknown CNI_COMMAND: {cmd_s}")))?;

    let mut args = CmdArgs {
        command,
        container_id: get("CNI_CONTAINERID"),
        netns: env("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        ifname: get("CNI_IFNAME"),
        args: get("CNI_ARGS"),
        path: get("CNI_PATH")
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect(),
        stdin,
        version: String::new(),
        config: Value::Null,
    };
    if command == Command::Version {
        return Ok(args);
    }
    let mut missing = Vec::new();
    let need: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        _ => &["CNI_PATH"],
    };
    for k in need {
        if get(k).is_empty() {
            missing.push(*k);
        }
    }
    if !missing.is_empty() {
        return Err(invalid_env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )));
    }
    if matches!(command, Command::Add | Command::Del | Command::Check) {
        validate_container_id(&args.container_id)?;
        validate_ifname(&args.ifname)?;
    }

    let config: Value = serde_json::from_slice(&args.stdin)?;
    if !config.is_object() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "network configuration is not a JSON object",
            "",
        )
        .into());
    }
    let version = config
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0")
        .to_string();
    if !is_supported(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "config is {version:?}, plugin supports {:?}",
                SUPPORTED_VERSIONS
            ),
        )
        .into());
    }
    if command == Command::Check && parse_version(&version) < Some((0, 4, 0)) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "config version does not allow CHECK",
            "",
        )
        .into());
    }
    if matches!(command, Command::Status | Command::Gc) && parse_version(&version) < Some((1, 1, 0))
    {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {cmd_s}"),
            "",
        )
        .into());
    }
    match config.get("name").and_then(Value::as_str) {
        None | Some("") => {
            return Err(
                CniError::new(code::INVALID_NETWORK_CONFIG, "missing network name", "").into(),
            )
        }
        Some(n) if n.contains('/') || n.chars().any(char::is_whitespace) => {
            return Err(CniError::new(
                code::INVALID_NETWORK_CONFIG,
                "invalid characters found in network name",
                n,
            )
            .into())
        }
        _ => {}
    }
    args.version = version;
    args.config = config;
    Ok(args)
}

/// The VERSION answer.
pub fn version_info() -> Value {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[derive(serde::Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

fn print(out: &mut dyn Write, s: &str) {
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Runs one invocation; returns the process exit code.
pub fn run(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
    out: &mut dyn Write,
) -> i32 {
    let mut version = CURRENT_VERSION.to_string();
    let outcome = parse_invocation(env, stdin).and_then(|args| {
        if !args.version.is_empty() {
            version.clone_from(&args.version);
        }
        let span = tracing::info_span!("cni", cmd = ?args.command, id = %args.container_id, ifname = %args.ifname);
        let _g = span.enter();
        match args.command {
            Command::Version => Ok(Some(render(&version_info()))),
            Command::Add => plugin.add(&args).map(Some),
            Command::Del => plugin.del(&args).map(|()| None),
            Command::Check => plugin.check(&args).map(|()| None),
            Command::Status => plugin.status(&args).map(|()| None),
            Command::Gc => plugin.gc(&args).map(|()| None),
        }
    });
    match outcome {
        Ok(Some(v)) => {
            print(out, &v);
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let e = e.into_cni();
            tracing::debug!(code = e.code, msg = %e.msg, "plugin failed");
            let v = ErrorOut {
                cni_version: &version,
                code: e.code,
                msg: &e.msg,
                details: &e.details,
            };
            print(out, &render(&v));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn missing_env_is_code_4() {
        let env = env_of(&[("CNI_COMMAND", "ADD")]);
        let e = parse_invocation(&env, b"{}".to_vec()).unwrap_err();
        assert_eq!(e.code(), 4);
    }

    #[test]
    fn bad_version_is_code_1() {
        let env = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]);
        let e =
            parse_invocation(&env, br#"{"cniVersion":"9.9.9","name":"n"}"#.to_vec()).unwrap_err();
        assert_eq!(e.code(), 1);
        let e = parse_invocation(&env, b"{not json".to_vec()).unwrap_err();
        assert_eq!(e.code(), 6);
        let e = parse_invocation(&env, br#"{"cniVersion":"1.0.0"}"#.to_vec()).unwrap_err();
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("0123456789abcdef").is_err());
    }
}
