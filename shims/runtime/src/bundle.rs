//! Reading and checking an OCI bundle before `libcontainer` sees it.
//!
//! `libcontainer` reports a missing rootfs as a bare "io error" and leaves its state directory
//! behind, so `create` checks the bundle first and says what to fix. It also makes two
//! adjustments to the spec handed to libcontainer (in memory): a *lower* `oomScoreAdj` than our
//! own needs `CAP_SYS_RESOURCE`; without it the value is clamped to our own score (as
//! containerd's `restrict_oom_score_adj` does) instead of failing the whole create; and the
//! cgroup v1 hierarchies under a read-only `cgroup` mount are listed as `readonlyPaths`, which
//! libcontainer 0.7 would otherwise leave writable (runc mounts them read-only); and
//! `noNewPrivileges: false` becomes unset (see [`nnp_false_as_unset`]); runc's recursive
//! `rootfsPropagation` names (`rshared`, ...) become the plain ones libcontainer knows.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

    /// The spec libcontainer should run, if it differs from the bundle's: `oomScoreAdj`
    /// clamped (see the module doc) and read-only cgroup v1 hierarchies (see
    /// [`ro_cgroup_paths`]). `None` when the bundle can be used as it is.
    pub fn adjusted_spec(&self) -> Result<Option<Spec>> {
        let mut spec = self.spec.clone();
        let mut changed = false;
        if let Some((wanted, clamped)) = self.oom_score_clamp()? {
            tracing::warn!(
                wanted,
                clamped,
                "oomScoreAdj needs CAP_SYS_RESOURCE to go below ours; clamped"
            );
            if let Some(mut process) = spec.process().clone() {
                process.set_oom_score_adj(Some(clamped));
                spec.set_process(Some(process));
            }
            changed = true;
        }
        if let Some(process) = spec.process().clone() {
            if process.no_new_privileges() == Some(false) {
                spec.set_process(Some(nnp_false_as_unset(process)));
                changed = true;
            }
        }
        if let Some(mut linux) = spec.linux().clone() {
            // runc takes rshared/rslave/rprivate/runbindable; libcontainer 0.7 only the plain
            // names (it makes `/` MS_REC anyway) and fails "UnknownRootfsPropagation".
            let plain = match linux.rootfs_propagation().as_deref() {
                Some("rshared") => Some("shared"),
                Some("rslave") => Some("slave"),
                Some("rprivate") => Some("private"),
                Some("runbindable") => Some("unbindable"),
                _ => None,
            };
            if let Some(p) = plain {
                linux.set_rootfs_propagation(Some(p.to_string()));
                spec.set_linux(Some(linux));
                changed = true;
            }
        }
        let extra = ro_cgroup_paths(&spec, &host_cgroup_v1_mounts());
        if !extra.is_empty() {
            if let Some(mut linux) = spec.linux().clone() {
                let mut paths = linux.readonly_paths().clone().unwrap_or_default();
                paths.extend(extra);
                linux.set_readonly_paths(Some(paths));
                spec.set_linux(Some(linux));
                changed = true;
            }
        }
        Ok(changed.then_some(spec))
    }
}

/// `noNewPrivileges: false` as no key at all. libcontainer 0.7 tests `is_none()`, not the
/// value: with `Some(false)` it loads the seccomp filter after dropping capabilities, without
/// no_new_privs, and seccomp(2) fails with EACCES ("failed to load seccomp context") unless the
/// process keeps CAP_SYS_ADMIN. runc loads it before dropping them in that case.
pub fn nnp_false_as_unset(mut process: oci_spec::runtime::Process) -> oci_spec::runtime::Process {
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
    process
}

/// Our `/proc/self/mountinfo`, read once per invocation (the kernel formats every mount of the
/// namespace on each read): `create` looks the cgroup v1 hierarchies up in it, and a foreground
/// `run`'s teardown the cgroup directories it removes.
pub fn own_mountinfo() -> Option<&'static str> {
    static INFO: OnceLock<Option<String>> = OnceLock::new();
    INFO.get_or_init(|| fs::read_to_string("/proc/self/mountinfo").ok())
        .as_deref()
}

/// Mount points of the host's cgroup v1 hierarchies (`/sys/fs/cgroup/<name>`), by name.
fn host_cgroup_v1_mounts() -> Vec<String> {
    let Some(mountinfo) = own_mountinfo() else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if fields.get(sep + 1) != Some(&"cgroup") {
                return None;
            }
            let name = fields.get(4)?.strip_prefix("/sys/fs/cgroup/")?;
            (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
        })
        .collect()
}

/// runc mounts every cgroup v1 hierarchy read-only when the spec's `cgroup` mount has `ro`;
/// libcontainer 0.7 mounts them read-write (only the tmpfs above them honours `ro`), which
/// would let the container change its own limits. Listing them as `readonlyPaths` makes
/// libcontainer remount each one read-only after mounting. (Upstream: honour `ro` in
/// libcontainer's `mount_cgroup_v1`.)
pub fn ro_cgroup_paths(spec: &Spec, hierarchies: &[String]) -> Vec<String> {
    let Some(mounts) = spec.mounts() else {
        return Vec::new();
    };
    let existing: Vec<String> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in mounts {
        let ro = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "ro"));
        if m.typ().as_deref() != Some("cgroup") || !ro {
            continue;
        }
        for name in hierarchies {
            let path = m.destination().join(name).display().to_string();
            if !existing.contains(&path) && !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
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
    fn ro_cgroup_mount_lists_each_hierarchy() {
        let mut spec = Spec::default();
        let names = vec!["cpu".to_owned(), "memory".to_owned()];
        let paths = ro_cgroup_paths(&spec, &names);
        // runc's default spec has a read-only cgroup mount at /sys/fs/cgroup.
        assert_eq!(paths, ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory"]);
        let mut linux = spec.linux().clone().unwrap();
        linux.set_readonly_paths(Some(vec!["/sys/fs/cgroup/cpu".into()]));
        spec.set_linux(Some(linux));
        assert_eq!(ro_cgroup_paths(&spec, &names), ["/sys/fs/cgroup/memory"]);
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
