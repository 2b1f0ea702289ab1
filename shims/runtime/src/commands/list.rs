//! `list`: a table of the containers under `--root` (or JSON with `--format json`).

use std::io::Write;

use anyhow::Result;
use libcontainer::container::Container;

use super::state::RuncState;
use super::Globals;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `table` or `json`.
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Print only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn list(args: Args, globals: &Globals) -> Result<()> {
    let root = globals.root_dir()?;
    let mut states = Vec::new();
    for entry in std::fs::read_dir(&root)? {
        let dir = entry?.path();
        if !dir.join("state.json").exists() {
            continue;
        }
        // A container deleted while we list is simply skipped.
        if let Ok(container) = Container::load(dir) {
            states.push(RuncState::from_container(&container));
        }
    }
    states.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for s in &states {
            writeln!(out, "{}", s.id)?;
        }
    } else if args.format == "json" {
        writeln!(out, "{}", serde_json::to_string(&states)?)?;
    } else {
        writeln!(out, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")?;
        for s in &states {
            let status = serde_json::to_value(s.status)?;
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{}\t{}",
                s.id,
                s.pid,
                status.as_str().unwrap_or_default(),
                s.bundle.display(),
                s.created,
                s.owner
            )?;
        }
    }
    Ok(())
}
