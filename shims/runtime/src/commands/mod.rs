//! One module per runc verb. Each holds its clap `Args` and one function that loads the
//! container (or builds it), calls `libcontainer`, and adds context to errors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use libcontainer::container::Container;

pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

/// Flags shared by every verb.
pub struct Globals {
    pub root: PathBuf,
    pub systemd_cgroup: bool,
}

impl Globals {
    /// `<root>/<id>`, the container's state directory. The root is created on first use,
    /// like runc does.
    pub fn container_dir(&self, id: &str) -> Result<PathBuf> {
        check_id(id)?;
        Ok(self.root_dir()?.join(id))
    }

    /// The canonical state root, created (mode 0700) if missing.
    pub fn root_dir(&self) -> Result<PathBuf> {
        if !self.root.exists() {
            create_private_dir(&self.root)?;
        }
        std::fs::canonicalize(&self.root)
            .with_context(|| format!("cannot resolve --root {}", self.root.display()))
    }
}

fn create_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| {
            format!(
                "cannot create state root {}: pass a writable --root",
                path.display()
            )
        })
}

/// Container ids are file names under the root: same rule as libcontainer's `validate_id`.
pub fn check_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if !valid {
        bail!("invalid container id {id:?}: use letters, digits, '_', '+', '-' and '.'");
    }
    Ok(())
}

/// Load an existing container's state (refreshing its status from /proc).
pub fn load_container(globals: &Globals, id: &str) -> Result<Container> {
    let dir = globals.container_dir(id)?;
    if !dir.join("state.json").exists() {
        bail!("container {id} does not exist");
    }
    Container::load(dir).with_context(|| format!("cannot load the state of container {id}"))
}

/// The cgroup manager of a container (its `cgroupsPath`, v1 or v2 as the host has it).
pub fn cgroup_manager(container: &Container) -> Result<libcgroups::common::AnyCgroupManager> {
    let config = container
        .spec()
        .with_context(|| format!("cannot load the config of container {}", container.id()))?;
    libcgroups::common::create_cgroup_manager(libcgroups::common::CgroupConfig {
        cgroup_path: config.cgroup_path,
        systemd_cgroup: container.systemd(),
        container_name: container.id().to_owned(),
    })
    .with_context(|| format!("cannot open the cgroups of container {}", container.id()))
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn ids_follow_runc_rules() {
        assert!(check_id("sk-1_a.b+c").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("..").is_err());
        assert!(check_id("a/b").is_err());
    }
}
