//! `pause` / `resume`: freeze and thaw every process of a container (freezer cgroup).

use anyhow::{bail, Context, Result};
use libcontainer::container::ContainerStatus;

use super::{load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Container id.
    pub id: String,
}

pub fn pause(args: Args, globals: &Globals) -> Result<()> {
    let mut container = load_container(globals, &args.id)?;
    if !container.can_pause() {
        bail!(
            "container {} is not running (status {}): only a running container can be paused",
            args.id,
            status_name(container.status())
        );
    }
    container
        .pause()
        .with_context(|| format!("cannot pause container {}", args.id))
}

pub fn resume(args: Args, globals: &Globals) -> Result<()> {
    let mut container = load_container(globals, &args.id)?;
    if !container.can_resume() {
        bail!(
            "container {} is not paused (status {})",
            args.id,
            status_name(container.status())
        );
    }
    container
        .resume()
        .with_context(|| format!("cannot resume container {}", args.id))
}

pub fn status_name(status: ContainerStatus) -> String {
    status.to_string().to_lowercase()
}
