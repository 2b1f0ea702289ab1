//! A real systemd as PID 1 in a box of the test's own, for what needs systemd-logind and D-Bus
//! (graceful node shutdown). The box is new pid, mount and uts namespaces (`unshare`); its root
//! is an overlay of the host root with a tmpfs upper layer (nothing the box writes reaches the
//! host), with a fresh `/proc` (`/proc/sys` read-only), the host's `/sys` and `/dev`, and a
//! private `/run` and `/tmp`. The folders the test shares with the box are bind-mounted at the
//! same paths. systemd runs in container mode (`container=skiff`) from a cgroup `sk...` of its
//! own, and boots `skbox.target` only: dbus.socket and systemd-logind (dbus-daemon without its
//! negative OOMScoreAdjust, which this host refuses; timers, gettys, tmpfiles and the units that
//! would touch the host's kernel settings masked). Network: the host's (the kubelet in the box
//! talks to the API server on loopback); nothing in the box listens.
//!
//! [`SystemdBox::exec`] runs a command inside (`nsenter`), [`SystemdBox::service`] as a transient
//! service of the box's systemd (`systemd-run`; processes that are not its children would hold
//! up its final stage until the stop timeout, 20 s here); [`SystemdBox::poweroff`] powers the
//! box off; dropping it kills what is left (by PID, in the box's cgroup) and removes the cgroup
//! and the cgroups the box's systemd added at the top of the host's hierarchies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::standalone::{remove_cgroup_root, remove_cgroup_tree, Proc};
use crate::{io_err, HarnessError, Result};

/// Builds the box and execs systemd; runs as the first process of the new namespaces.
/// `$1`: the box's scratch folder, then the folders to share.
const BOOT: &str = r#"set -e
B=$1; shift
mount --make-rprivate /
mount -t tmpfs -o mode=755 skbox "$B"
mkdir -p "$B/upper" "$B/work" "$B/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$B/root"
R=$B/root
mount --rbind /dev "$R/dev"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount --rbind /sys "$R/sys"
# systemd gets a cgroup tmpfs of its own: it remounts that tmpfs read-only, which on the host's
# shared superblock would make the host's /sys/fs/cgroup read-only too. The host's hierarchies
# are bound in; a controller the host has not mounted gets an empty placeholder mount, so systemd
# does not mount it, which would make a new hierarchy that outlives the box and that containerd's
# shim then cannot find in the host's mounts (no OOM events).
mount -t tmpfs -o mode=755 skcg "$R/sys/fs/cgroup"
for m in /sys/fs/cgroup/*; do
  if mountpoint -q "$m"; then mkdir -p "$R$m"; mount --bind "$m" "$R$m"; fi
done
while read -r c _ _ on; do
  case "$c" in \#*) continue;; esac
  [ "$on" = 1 ] || continue
  grep -q " - cgroup [^ ]* [^ ]*[ ,]$c\(,\|\$\)" /proc/self/mountinfo && continue
  case "$c" in net_cls|net_prio) d=net_cls,net_prio;; cpu|cpuacct) d=cpu,cpuacct;; *) d=$c;; esac
  mkdir -p "$R/sys/fs/cgroup/$d"
  mountpoint -q "$R/sys/fs/cgroup/$d" || mount -t tmpfs -o size=4k,mode=555 sknone "$R/sys/fs/cgroup/$d"
done < /proc/cgroups
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
for d in "$@"; do mkdir -p "$R$d"; mount --bind "$d" "$R$d"; done
E=$R/etc/systemd/system
mkdir -p "$E/dbus.service.d"
printf '[Service]\nOOMScoreAdjust=0\n' > "$E/dbus.service.d/skbox.conf"
mkdir -p "$R/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStopSec=20s\n' > "$R/etc/systemd/system.conf.d/skbox.conf"
printf '[Unit]\nDescription=skbox\nRequires=dbus.socket systemd-logind.service\nAfter=dbus.socket systemd-logind.service\nAllowIsolate=yes\n' > "$E/skbox.target"
for u in systemd-timesyncd.service systemd-pstore.service getty@tty1.service console-getty.service \
  systemd-modules-load.service systemd-binfmt.service systemd-firstboot.service systemd-repart.service \
  systemd-sysctl.service systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
  systemd-tmpfiles-clean.timer systemd-random-seed.service systemd-update-utmp.service \
  systemd-journal-flush.service systemd-sysusers.service; do ln -sf /dev/null "$E/$u"; done
hostname skbox
cd "$R"
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
exec env -i container=skiff PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd --unit=skbox.target
"#;

/// A booted systemd box.
pub struct SystemdBox {
    proc: Option<Proc>,
    /// The box's PID 1 (systemd) as the host sees it.
    pub pid: u32,
    cgroup: String,
    /// Cgroups at the top of the host's hierarchies before the boot: on v1 the box's systemd
    /// makes its slices and scopes there, and the drop removes the ones it added.
    top_before: Vec<PathBuf>,
    _scratch: tempfile::TempDir,
}

/// The folders one level below each mounted hierarchy (`/sys/fs/cgroup/<hierarchy>/<dir>`).
fn top_level_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for d in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            if d.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(d.path());
            }
        }
    }
    out
}

fn missing(what: &str) -> HarnessError {
    HarnessError::Other(format!(
        "{what} missing: apt-get install systemd dbus util-linux"
    ))
}

impl SystemdBox {
    /// Boots systemd with the host folders `share` visible at the same paths, and waits (up to
    /// 90 s) until logind answers on the box's system bus.
    pub fn boot(share: &[&Path]) -> Result<SystemdBox> {
        for bin in [
            "/lib/systemd/systemd",
            "/lib/systemd/systemd-logind",
            "/usr/bin/dbus-daemon",
            "/usr/bin/busctl",
            "/usr/bin/unshare",
            "/usr/bin/nsenter",
        ] {
            if !Path::new(bin).exists() {
                return Err(missing(bin));
            }
        }
        let scratch = tempfile::Builder::new()
            .prefix("sk-box-")
            .tempdir()
            .map_err(io_err("creating the box's scratch dir"))?;
        let cgroup = format!("/skbox{}", std::process::id());
        let cg_dir = PathBuf::from("/sys/fs/cgroup/systemd").join(cgroup.trim_start_matches('/'));
        std::fs::create_dir_all(&cg_dir).map_err(io_err("creating the box's systemd cgroup"))?;
        let log = std::fs::File::create(scratch.path().join("boot.log"))
            .map_err(io_err("creating the box's log"))?;
        let top_before = top_level_cgroups();
        let procs = cg_dir.join("cgroup.procs");
        std::fs::create_dir_all(scratch.path().join("b")).map_err(io_err("box dir"))?;
        // The shell moves itself into the box's cgroup, then becomes unshare: systemd's cgroup
        // tree is then under it.
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1"; shift; exec unshare --pid --mount --uts --fork /bin/sh -c "$0" skbox "$@""#)
            .arg(BOOT)
            .arg(&procs)
            .arg(scratch.path().join("b"))
            .args(share)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io_err("box log"))?)
            .stderr(log)
            .spawn()
            .map_err(io_err("starting unshare"))?;
        let mut bx = SystemdBox {
            pid: 0,
            proc: Some(Proc(child)),
            cgroup,
            top_before,
            _scratch: scratch,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            if bx.pid == 0 {
                bx.pid = bx.find_pid1().unwrap_or(0);
            }
            if bx.pid != 0 {
                let o = bx.exec(&[
                    "busctl",
                    "get-property",
                    "org.freedesktop.login1",
                    "/org/freedesktop/login1",
                    "org.freedesktop.login1.Manager",
                    "InhibitDelayMaxUSec",
                ]);
                if o.status.success() {
                    return Ok(bx);
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Err(HarnessError::Other(format!(
            "systemd-logind did not answer in the box within 90 s; boot log:\n{}",
            bx.boot_log()
        )))
    }

    /// systemd: the process of the box whose command is `systemd` (the child of `unshare`).
    fn find_pid1(&self) -> Option<u32> {
        let unshare = self.proc.as_ref()?.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
        let pid: u32 = children.split_whitespace().next()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "systemd").then_some(pid)
    }

    pub fn boot_log(&self) -> String {
        std::fs::read_to_string(self._scratch.path().join("boot.log")).unwrap_or_default()
    }

    /// A command that runs `args` inside the box.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-p", "-u", "--"]);
        c.args(args);
        c
    }

    /// Runs `args` inside the box and returns its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {args:?}: {e}"))
    }

    /// The command prefix that runs a program as the transient service `unit` of the box's
    /// systemd, with `env` set and its stdout and stderr appended to `log` (host path, shared).
    pub fn service(&self, unit: &str, env: &[(&str, &str)], log: &Path) -> Vec<String> {
        let mut v: Vec<String> = [
            "nsenter",
            "-t",
            &self.pid.to_string(),
            "-m",
            "-p",
            "-u",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(["systemd-run".to_string(), format!("--unit={unit}")]);
        v.extend(env.iter().map(|(k, val)| format!("--setenv={k}={val}")));
        v.push(format!(
            "--property=StandardOutput=append:{}",
            log.display()
        ));
        v.push(format!("--property=StandardError=append:{}", log.display()));
        v.push("--".into());
        v
    }

    /// `systemctl poweroff` in the box (logind's PowerOff: delay inhibitors are honoured).
    pub fn poweroff(&self) -> Output {
        self.exec(&["systemctl", "poweroff"])
    }

    /// Waits up to `timeout` for the box's PID 1 to be gone; true if it is.
    pub fn wait_gone(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(p) = self.proc.as_mut() {
                if matches!(p.0.try_wait(), Ok(Some(_))) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        // Killing unshare's child (PID 1 of the box) ends the whole pid namespace.
        if self.pid != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        drop(self.proc.take());
        remove_cgroup_root(&self.cgroup);
        // The box's processes are gone with its pid namespace; its systemd's cgroups at the top
        // of the host's v1 hierarchies (system.slice, init.scope, ...) empty out a moment later.
        let added: Vec<PathBuf> = top_level_cgroups()
            .into_iter()
            .filter(|d| !self.top_before.contains(d))
            // Test-owned roots (`sk...`) are their tests' to remove, maybe still in use.
            .filter(|d| {
                !d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("sk"))
            })
            .collect();
        for _ in 0..50 {
            added.iter().for_each(|d| remove_cgroup_tree(d));
            if added.iter().all(|d| !d.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
