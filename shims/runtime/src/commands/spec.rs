//! `spec`: write a default `config.json` (runc's template) into a bundle.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bundle directory to write config.json into.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write a spec for a rootless container (user namespace mapping our uid/gid).
    #[arg(long)]
    pub rootless: bool,
}

pub fn spec(args: Args) -> Result<()> {
    let path = args.bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let spec = if args.rootless {
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Spec::rootless(uid, gid)
    } else {
        Spec::default()
    };
    let text = serde_json::to_string_pretty(&spec)?;
    std::fs::write(&path, text + "\n").with_context(|| {
        format!(
            "cannot write {}: check the bundle directory",
            path.display()
        )
    })
}
