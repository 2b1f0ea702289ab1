//! Reading and checking an OCI bundle before `libcontainer` sees it.
//!
//! `libcontainer` reports a missing rootfs as a bare "io error" and leaves its state directory
//! behind, so `create` checks the bundle first and says what to fix. It also applies the one
//! host-specific adjustment Skiff makes: a *lower* `oomScoreAdj` than our own needs
//! `CAP_SYS_RESOURCE`; without it the value is clamped to our own score (as containerd's
//! `restrict_oom_score_adj` does) instead of failing the whole create.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::Spec;

const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// A bundle that passed the checks.
pub struct Bundle {
    /// The bundle directory as given (made absolute).
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute, canonical rootfs.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Load `<dir>/config.json` and check what `create` needs.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = std::path::absolute(dir)
            .with_context(|| format!("invalid bundle path {}", dir.display()))?;
        let config = dir.join("config.json");
        if !config.is_file() {
            bail!(
                "bundle {} has no config.json: pass --bundle pointing at an OCI bundle",
                dir.display()
            );
        }
        let spec = Spec::load(&config)
            .with_context(|| format!("cannot parse {}: fix the OCI config", config.display()))?;
        let root = spec
            .root()
            .as_ref()
            .with_context(|| format!("{} has no root: set root.path", config.display()))?;
        let rootfs = rootfs_path(&dir, root.path());
        let rootfs = match fs::canonicalize(&rootfs) {
            Ok(p) if p.is_dir() => p,
            Ok(p) => bail!("rootfs {} is not a directory", p.display()),
            Err(err) if err.kind() == ErrorKind::NotFound => bail!(
                "rootfs {} does not exist: unpack the image there or fix root.path in {}",
                rootfs.display(),
                config.display()
            ),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot resolve rootfs {}", rootfs.display()))
            }
        };
        if spec.process().is_none() {
            bail!("{} has no process: set process.args", config.display());
        }
        Ok(Self { dir, spec, rootfs })
    }

    /// The `oomScoreAdj` we must use instead of the spec's, if the spec's cannot be applied.
    pub fn oom_score_clamp(&self) -> Result<Option<(i32, i32)>> {
        let Some(wanted) = self.spec.process().as_ref().and_then(|p| p.oom_score_adj()) else {
            return Ok(None);
        };
        let current = read_own_oom_score_adj()?;
        if wanted >= current {
            return Ok(None);
        }
        // libcontainer writes the value to its own /proc/self/oom_score_adj before forking;
        // doing it here first tells whether that will work (and is harmless if it does).
        match fs::write(OOM_SCORE_ADJ, wanted.to_string()) {
            Ok(()) => Ok(None),
            Err(err) if matches!(err.kind(), ErrorKind::PermissionDenied) => {
                Ok(Some((wanted, current)))
            }
            Err(err) => Err(err).context("cannot write /proc/self/oom_score_adj"),
        }
    }

    /// Write a copy of the spec with `oomScoreAdj` replaced (and an absolute rootfs) into
    /// `shadow_dir`, for `libcontainer` to read instead of the original bundle.
    pub fn write_shadow(&self, shadow_dir: &Path, oom_score_adj: i32) -> Result<()> {
        let mut spec = self.spec.clone();
        if let Some(mut process) = spec.process().clone() {
            process.set_oom_score_adj(Some(oom_score_adj));
            spec.set_process(Some(process));
        }
        if let Some(mut root) = spec.root().clone() {
            root.set_path(self.rootfs.clone());
            spec.set_root(Some(root));
        }
        fs::create_dir_all(shadow_dir)
            .with_context(|| format!("cannot create {}", shadow_dir.display()))?;
        spec.save(shadow_dir.join("config.json"))
            .with_context(|| format!("cannot write {}/config.json", shadow_dir.display()))?;
        Ok(())
    }
}

/// `root.path` is relative to the bundle unless absolute (runtime-spec config.md).
pub fn rootfs_path(bundle: &Path, root: &Path) -> PathBuf {
    if root.is_absolute() {
        root.to_path_buf()
    } else {
        bundle.join(root)
    }
}

fn read_own_oom_score_adj() -> Result<i32> {
    let text = fs::read_to_string(OOM_SCORE_ADJ).context("cannot read /proc/self/oom_score_adj")?;
    text.trim()
        .parse()
        .with_context(|| format!("unexpected /proc/self/oom_score_adj content {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_root_is_joined_to_bundle() {
        assert_eq!(
            rootfs_path(Path::new("/b"), Path::new("rootfs")),
            PathBuf::from("/b/rootfs")
        );
        assert_eq!(
            rootfs_path(Path::new("/b"), Path::new("/r")),
            PathBuf::from("/r")
        );
    }

    #[test]
    fn missing_config_is_one_clear_error() {
        let dir = std::env::temp_dir().join(format!("sk-bundle-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = Bundle::load(&dir).err().unwrap();
        assert!(format!("{err:#}").contains("has no config.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
