//! `start`: release a created container's init so it execs the user process.

use anyhow::{Context, Result};

use super::{load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container id.
    pub id: String,
}

pub fn start(args: Args, globals: &Globals) -> Result<()> {
    let mut container = load_container(globals, &args.id)?;
    if !container.can_start() {
        anyhow::bail!(
            "cannot start container {} in status {}: only a created container can be started",
            args.id,
            container.status().to_string().to_lowercase()
        );
    }
    container
        .start()
        .with_context(|| format!("cannot start container {}", args.id))
}
