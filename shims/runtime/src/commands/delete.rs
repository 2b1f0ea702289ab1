//! `delete`: remove a stopped (or created; with `--force`, any) container.

use anyhow::{bail, Context, Result};

use super::{load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kill the container first if it is still running; succeed if it does not exist.
    #[arg(short, long)]
    pub force: bool,
    /// Container id.
    pub id: String,
}

pub fn delete(args: Args, globals: &Globals) -> Result<()> {
    let dir = globals.container_dir(&args.id)?;
    if !dir.exists() {
        if args.force {
            return Ok(());
        }
        bail!("container {} does not exist", args.id);
    }
    if !dir.join("state.json").exists() && args.force {
        // A directory without state: an interrupted create. Nothing else can hold it.
        return std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()));
    }
    let mut container = load_container(globals, &args.id)?;
    container.delete(args.force).with_context(|| {
        format!(
            "cannot delete container {} (stop it first or use --force)",
            args.id
        )
    })
}
