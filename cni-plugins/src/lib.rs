//! Skiff's CNI plugins: `bridge`, `host-local`, `loopback` and `portmap` in one multi-call binary,
//! drop-in replacements for the reference plugins (same config keys, same on-disk IPAM store,
//! the CNI spec protocol).
//!
//! The binary picks the plugin from the file name it was run as (`argv[0]`), or from its first
//! argument when run as `skiff-cni <plugin>`.

pub mod arena;
pub mod detach;
pub mod error;
pub mod invoke;
pub mod ipam;
pub mod log;
#[cfg(all(feature = "musl-link", target_arch = "x86_64"))]
pub mod musl_link;
pub mod nat;
pub mod netlink;
pub mod netns;
pub mod plugins;
pub mod skel;
pub mod sysctl;
pub mod types;

/// The netlink, nf_tables and conntrack code, shared with the service proxy.
pub use skiff_netfilter::{conntrack, nft, nlsock};

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use error::{CniError, Error};
pub use skel::Plugin;

/// The plugin names this binary answers to.
pub const PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

/// The plugin called `name`.
pub fn plugin_for(name: &str) -> Option<Box<dyn Plugin>> {
    Some(match name {
        "bridge" => Box::new(plugins::bridge::Bridge),
        "host-local" => Box::new(plugins::host_local::HostLocal),
        "loopback" => Box::new(plugins::loopback::Loopback),
        "portmap" => Box::new(plugins::portmap::Portmap),
        _ => return None,
    })
}

/// Creates `<dir>/<plugin>` symlinks to `exe` for every plugin, replacing what is there.
pub fn install(dir: &Path, exe: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut made = Vec::new();
    for p in PLUGINS {
        let link = dir.join(p);
        match std::fs::symlink_metadata(&link) {
            Ok(_) => std::fs::remove_file(&link)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(exe, &link)?;
        made.push(link);
    }
    Ok(made)
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Plugin(String),
    Install(PathBuf),
    Usage(String),
}

/// Decides from argv: `argv[0]`'s file name, else `skiff-cni <plugin>` / `skiff-cni install DIR`.
pub fn parse_argv(argv: &[OsString]) -> Invocation {
    let name = argv
        .first()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if PLUGINS.contains(&name.as_str()) {
        return Invocation::Plugin(name);
    }
    let first = argv.get(1).map(|s| s.to_string_lossy().into_owned());
    match first.as_deref() {
        Some(p) if PLUGINS.contains(&p) => Invocation::Plugin(p.to_string()),
        Some("install") => match argv.get(2) {
            Some(d) => Invocation::Install(PathBuf::from(d)),
            None => Invocation::Usage("install needs the CNI bin dir".into()),
        },
        Some(other) => Invocation::Usage(format!("unknown plugin {other:?}")),
        None => Invocation::Usage(format!(
            "run as one of {PLUGINS:?} (symlink) or pass the plugin name"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn argv_dispatch() {
        assert_eq!(
            parse_argv(&v(&["/opt/cni/bin/host-local"])),
            Invocation::Plugin("host-local".into())
        );
        assert_eq!(
            parse_argv(&v(&["skiff-cni", "bridge"])),
            Invocation::Plugin("bridge".into())
        );
        assert_eq!(
            parse_argv(&v(&["skiff-cni", "install", "/x"])),
            Invocation::Install("/x".into())
        );
        assert!(matches!(
            parse_argv(&v(&["skiff-cni"])),
            Invocation::Usage(_)
        ));
    }
}
