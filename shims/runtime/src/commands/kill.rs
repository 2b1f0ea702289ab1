//! `kill`: signal the init (or with `--all` every process of the container's cgroup).

use anyhow::{bail, Context, Result};
use libcontainer::container::ContainerStatus;
use libcontainer::signal::Signal;

use super::{load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Signal every process in the container, not only its init.
    #[arg(short, long)]
    pub all: bool,
    /// Container id.
    pub id: String,
    /// Signal name (TERM, SIGTERM) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

pub fn kill(args: Args, globals: &Globals) -> Result<()> {
    let signal = Signal::try_from(args.signal.as_str()).map_err(|_| {
        anyhow::anyhow!(
            "invalid signal {:?}: use a name like TERM/SIGKILL or a number 1-31",
            args.signal
        )
    })?;
    let mut container = load_container(globals, &args.id)?;
    if container.status() == ContainerStatus::Stopped && !args.all {
        bail!("container {} is not running", args.id);
    }
    container
        .kill(signal, args.all)
        .with_context(|| format!("cannot signal container {}", args.id))
}
