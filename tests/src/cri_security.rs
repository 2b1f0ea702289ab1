//! Security-context checks over the plain CRI client (privileged containers, capabilities,
//! refused security contexts, seccomp, PID namespace modes), for any runtime: the same checks
//! run against Skiff's server and containerd. Each check tears its sandbox down whatever happens.

use std::path::{Path, PathBuf};

use skiff_proto::cri;

use super::conformance::{Check, Target};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// containerd's default capabilities (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID,
/// SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP) as a mask.
pub const DEFAULT_CAPS: u64 = 0xa804_25fb;
const CAP_CHOWN: u64 = 1 << 0;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// Where the checks write their seccomp profiles; removed on drop.
pub struct Profiles {
    dir: tempfile::TempDir,
}

impl Profiles {
    pub fn new() -> Profiles {
        let dir = tempfile::Builder::new()
            .prefix("sk-seccomp-")
            .tempdir()
            .expect("temp dir for seccomp profiles");
        // Docker format, as Kubernetes' Localhost profiles are written.
        std::fs::write(
            dir.path().join("no-sethostname.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .expect("writing profile");
        std::fs::write(dir.path().join("broken.json"), "{\"defaultAction\": ").expect("profile");
        Profiles { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::new()
    }
}

/// The bounding set of this process (the CRI servers under test run as root with the same).
pub fn own_bounding_set() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status_field(&status, "CapBnd")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .expect("CapBnd in /proc/self/status")
}

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn sc(
    f: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
) -> Option<cri::LinuxContainerConfig> {
    let mut s = cri::LinuxContainerSecurityContext::default();
    f(&mut s);
    Some(cri::LinuxContainerConfig {
        security_context: Some(s),
        ..Default::default()
    })
}

fn profile(kind: cri::security_profile::ProfileType, path: &Path) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: path.display().to_string(),
    })
}

impl Target {
    /// `/proc/self/status` of container `id` (the status of `cat` run by ExecSync, which gets the container process's capabilities and seccomp filter).
    async fn init_status(&mut self, id: &str) -> Result<String, String> {
        let r = self
            .exec_sync(id, &["cat", "/proc/self/status"], 10)
            .await
            .map_err(|e| format!("ExecSync cat /proc/self/status: {e}"))?;
        ensure!(r.exit_code == 0, "cat /proc/self/status: {r:?}");
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    async fn cap_eff(&mut self, id: &str) -> Result<u64, String> {
        let st = self.init_status(id).await?;
        status_field(&st, "CapEff")
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .ok_or_else(|| format!("no CapEff in {st:?}"))
    }

    /// Starts container `name` running `script` from its own init (so under the container's
    /// seccomp filter, which an exec'd process may not share), keeps it running, and returns
    /// the script's output.
    async fn probe(
        &mut self,
        sb: &str,
        sb_cfg: &cri::PodSandboxConfig,
        name: &str,
        linux: Option<cri::LinuxContainerConfig>,
        script: &str,
    ) -> Result<String, String> {
        Ok(self.probe_id(sb, sb_cfg, name, linux, script).await?.1)
    }

    /// [`Self::probe`], also returning the container's id.
    async fn probe_id(
        &mut self,
        sb: &str,
        sb_cfg: &cri::PodSandboxConfig,
        name: &str,
        linux: Option<cri::LinuxContainerConfig>,
        script: &str,
    ) -> Result<(String, String), String> {
        let full = format!("({script}) > /tmp/sk-probe 2>&1; touch /tmp/sk-probe-done; sleep 1000");
        let mut c = self.container(name, &["sh", "-c", &full]);
        c.linux = linux;
        let id = self.start_container(sb, sb_cfg, c).await?;
        for _ in 0..200 {
            let r = self
                .sh(&id, "test -e /tmp/sk-probe-done && cat /tmp/sk-probe")
                .await?;
            if r.exit_code == 0 {
                return Ok((id, String::from_utf8_lossy(&r.stdout).into_owned()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(format!("{name}: the probe script never finished"))
    }

    async fn sh(&mut self, id: &str, script: &str) -> Result<cri::ExecSyncResponse, String> {
        self.exec_sync(id, &["sh", "-c", script], 10)
            .await
            .map_err(|e| format!("ExecSync {script:?}: {e}"))
    }

    fn privileged_sandbox(&self, name: &str) -> cri::PodSandboxConfig {
        let mut cfg = self.sandbox_config(name);
        cfg.linux.as_mut().expect("linux").security_context =
            Some(cri::LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            });
        cfg
    }

    async fn create_err(
        &mut self,
        sb: &str,
        sb_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<tonic::Status, String> {
        match self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.into(),
                config: Some(cfg),
                sandbox_config: Some(sb_cfg.clone()),
            })
            .await
        {
            Ok(r) => Err(format!(
                "CreateContainer succeeded ({})",
                r.into_inner().container_id
            )),
            Err(s) => Ok(s),
        }
    }

    async fn containers_of(&mut self, sb: &str) -> Result<usize, String> {
        Ok(self
            .rt
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sb.into(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|e| format!("ListContainers: {e}"))?
            .into_inner()
            .containers
            .len())
    }
}

/// Runs `body` in a fresh sandbox made from `cfg`, then tears the sandbox down in any case.
macro_rules! in_sandbox {
    ($t:expr, $cfg:expr, |$sb:ident, $sbc:ident| $body:block) => {{
        let $sbc = $cfg;
        let $sb = $t.run_sandbox_with(&$sbc).await?;
        let r: Check = async { $body }.await;
        let td = $t.teardown(&$sb).await;
        r.and(td)
    }};
}

/// Privileged: every capability of the bounding set, host devices, no seccomp even when a
/// profile is given, no masked or read-only paths, writable /sys and cgroup mounts; an
/// unprivileged container of the same pod has none of that.
pub async fn privileged(t: &mut Target, profiles: &Profiles) -> Check {
    let bounding = own_bounding_set();
    let blocker = profiles.path("no-sethostname.json");
    let skiff = t.name == "skiff";
    let cfg = t.privileged_sandbox("skpriv");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut c = t.container("skpriv", &["sleep", "1000"]);
        c.linux = sc(|s| {
            s.privileged = true;
            s.seccomp = profile(cri::security_profile::ProfileType::Localhost, &blocker);
        });
        let id = t.start_container(&sb, &sb_cfg, c).await?;
        let eff = t.cap_eff(&id).await?;
        ensure!(
            eff == bounding,
            "privileged CapEff {eff:#x}, the server's bounding set is {bounding:#x}"
        );
        let linux = sc(|s| {
            s.privileged = true;
            s.seccomp = profile(cri::security_profile::ProfileType::Localhost, &blocker);
        });
        let out = t
            .probe(
                &sb,
                &sb_cfg,
                "skprivsc",
                linux,
                "grep Seccomp: /proc/self/status; hostname skprivhost && hostname",
            )
            .await?;
        ensure!(
            out.contains("Seccomp:\t0") && out.contains("skprivhost"),
            "a privileged container given a profile that blocks sethostname: {out:?}"
        );
        let r = t
            .sh(
                &id,
                "test -c /dev/loop-control && test -b /dev/loop0 && test -c /dev/kmsg",
            )
            .await?;
        ensure!(
            r.exit_code == 0,
            "host devices missing in the privileged container: {r:?}"
        );
        // /proc/keys: a default masked path this kernel has (it lacks /proc/kcore).
        let r = t.sh(&id, "test -c /proc/keys").await?;
        ensure!(
            r.exit_code != 0,
            "/proc/keys is masked in the privileged container"
        );
        let mounts = t.sh(&id, "cat /proc/self/mounts").await?;
        let mounts = String::from_utf8_lossy(&mounts.stdout).into_owned();
        let opts = |dest: &str| {
            mounts
                .lines()
                .find(|l| l.split(' ').nth(1) == Some(dest))
                .and_then(|l| l.split(' ').nth(3))
                .unwrap_or("")
                .to_string()
        };
        // containerd 1.6 keeps /sys read-only for a pod with its own network namespace.
        let dests: &[&str] = if skiff {
            &["/sys", "/sys/fs/cgroup/memory", "/proc/sys"]
        } else {
            &["/sys/fs/cgroup/memory", "/proc/sys"]
        };
        for dest in dests {
            let o = opts(dest);
            ensure!(
                o.is_empty() || o.starts_with("rw"),
                "{dest} is mounted {o:?} in the privileged container"
            );
        }
        ensure!(!opts("/sys").is_empty(), "/sys not in {mounts}");
        let r = t.sh(&id, "mkdir /sys/fs/cgroup/memory/skpriv-probe && rmdir /sys/fs/cgroup/memory/skpriv-probe").await?;
        ensure!(
            r.exit_code == 0,
            "cgroup mount not writable in the privileged container: {r:?}"
        );

        // The same pod, unprivileged, with masked and read-only paths as the kubelet sends.
        let mut c = t.container("skunpriv", &["sleep", "1000"]);
        c.linux = sc(|s| {
            s.masked_paths = vec!["/proc/keys".into(), "/proc/timer_list".into()];
            s.readonly_paths = vec!["/proc/sys".into(), "/proc/bus".into()];
        });
        let id = t.start_container(&sb, &sb_cfg, c).await?;
        let r = t.sh(&id, "test -e /dev/loop-control").await?;
        ensure!(
            r.exit_code != 0,
            "an unprivileged container sees /dev/loop-control"
        );
        let r = t.sh(&id, "test -c /proc/keys").await?;
        ensure!(
            r.exit_code == 0,
            "/proc/keys is not masked in an unprivileged container"
        );
        let r = t.sh(&id, "grep ' /sys sysfs ro' /proc/self/mounts").await?;
        ensure!(
            r.exit_code == 0,
            "/sys is not read-only in an unprivileged container: {r:?}"
        );
        Ok(())
    })
}

/// add ALL / drop ALL resolve against the bounding set; single caps show in CapEff.
pub async fn capabilities(t: &mut Target) -> Check {
    let bounding = own_bounding_set();
    let cfg = t.sandbox_config("skcaps");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let cases: [(&str, &[&str], &[&str], u64); 4] = [
            ("skcapdef", &[], &[], DEFAULT_CAPS),
            ("skcapall", &["ALL"], &[], bounding),
            ("skcapnone", &["NET_ADMIN"], &["ALL"], CAP_NET_ADMIN),
            (
                "skcapone",
                // The kubelet sends names without CAP_ (containerd 1.6 adds the prefix itself).
                &["SYS_ADMIN"],
                &["CHOWN"],
                (DEFAULT_CAPS | CAP_SYS_ADMIN) & !CAP_CHOWN,
            ),
        ];
        for (name, add, drop, want) in cases {
            let mut c = t.container(name, &["sleep", "1000"]);
            c.linux = sc(|s| {
                s.capabilities = Some(cri::Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                });
            });
            let id = t.start_container(&sb, &sb_cfg, c).await?;
            let eff = t.cap_eff(&id).await?;
            ensure!(
                eff == want,
                "{name} (add {add:?}, drop {drop:?}): CapEff {eff:#x}, want {want:#x}"
            );
        }
        Ok(())
    })
}

/// Security contexts that cannot work are refused before anything is made. Skiff answers
/// InvalidArgument naming the field; containerd only has to refuse.
pub async fn bad_security_contexts(t: &mut Target) -> Check {
    let cfg = t.sandbox_config("skbadsc");
    let strict = t.name == "skiff";
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut cases: Vec<(&str, Option<cri::LinuxContainerConfig>, &str)> = vec![
            (
                "run_as_group without a user",
                sc(|s| s.run_as_group = Some(cri::Int64Value { value: 100 })),
                "run_as_group",
            ),
            (
                "run_as_username missing from /etc/passwd",
                sc(|s| s.run_as_username = "skghost".into()),
                "skghost",
            ),
        ];
        if strict {
            // containerd 1.6 ignores a container's network/ipc options (it uses the pod's).
            cases.push((
                "container network NODE in a pod network",
                sc(|s| {
                    s.namespace_options = Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    })
                }),
                "network",
            ));
            cases.push((
                "pid TARGET without a target id",
                sc(|s| {
                    s.namespace_options = Some(cri::NamespaceOption {
                        pid: cri::NamespaceMode::Target as i32,
                        ..Default::default()
                    })
                }),
                "target_id",
            ));
        }
        for (what, linux, names) in cases {
            let mut c = t.container("skbad", &["sleep", "1000"]);
            c.linux = linux;
            let s = t
                .create_err(&sb, &sb_cfg, c)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            if strict {
                ensure!(
                    s.code() == tonic::Code::InvalidArgument && s.message().contains(names),
                    "{what}: {s:?} (want InvalidArgument naming {names:?})"
                );
            }
            let n = t.containers_of(&sb).await?;
            ensure!(n == 0, "{what}: {n} containers left after the refusal");
        }
        Ok(())
    })
}

/// RuntimeDefault filters (Seccomp: 2) and blocks namespace creation without CAP_SYS_ADMIN;
/// Unconfined does not filter; a Localhost profile that blocks sethostname blocks it even with
/// CAP_SYS_ADMIN; a missing or broken Localhost profile is refused naming its path.
pub async fn seccomp(t: &mut Target, profiles: &Profiles) -> Check {
    use cri::security_profile::ProfileType as P;
    let blocker = profiles.path("no-sethostname.json");
    let missing = profiles.path("sk-missing.json");
    let broken = profiles.path("broken.json");
    let cfg = t.sandbox_config("skseccomp");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let out = t
            .probe(
                &sb,
                &sb_cfg,
                "skscdefault",
                sc(|s| s.seccomp = profile(P::RuntimeDefault, Path::new(""))),
                "grep Seccomp: /proc/self/status; unshare -U true && echo unshare-ok; echo ok",
            )
            .await?;
        ensure!(
            out.contains("Seccomp:\t2") && !out.contains("unshare-ok") && out.contains("ok\n"),
            "RuntimeDefault: {out:?} (want Seccomp: 2 and unshare(CLONE_NEWUSER) refused)"
        );
        let out = t
            .probe(
                &sb,
                &sb_cfg,
                "skscunconf",
                sc(|s| s.seccomp = profile(P::Unconfined, Path::new(""))),
                "grep Seccomp: /proc/self/status",
            )
            .await?;
        ensure!(out.contains("Seccomp:\t0"), "Unconfined: {out:?}");
        let (blocked, out) = t
            .probe_id(
                &sb,
                &sb_cfg,
                "skschost",
                sc(|s| {
                    s.seccomp = profile(P::Localhost, &blocker);
                    s.capabilities = Some(cri::Capability {
                        add_capabilities: vec!["SYS_ADMIN".into()],
                        ..Default::default()
                    });
                }),
                "grep -E 'Seccomp:|CapEff:' /proc/self/status; hostname skblocked && echo hostname-ok",
            )
            .await?;
        let eff = status_field(&out, "CapEff").and_then(|v| u64::from_str_radix(&v, 16).ok());
        ensure!(
            out.contains("Seccomp:\t2")
                && eff.is_some_and(|e| e & CAP_SYS_ADMIN != 0)
                && !out.contains("hostname-ok"),
            "a Localhost profile blocking sethostname, with CAP_SYS_ADMIN: {out:?}"
        );
        // A process exec'd into the container runs under the container's filter too (runc's
        // behaviour): the profile still blocks sethostname.
        let r = t
            .sh(
                &blocked,
                "grep Seccomp: /proc/self/status; hostname skexecblocked && echo hostname-ok",
            )
            .await?;
        let out = String::from_utf8_lossy(&r.stdout);
        ensure!(
            out.contains("Seccomp:\t2") && !out.contains("hostname-ok"),
            "ExecSync into a container with a Localhost profile blocking sethostname: {out:?}"
        );

        for (what, path) in [("missing", &missing), ("broken", &broken)] {
            let mut c = t.container("skscbad", &["sleep", "1000"]);
            c.linux = sc(|s| s.seccomp = profile(P::Localhost, path));
            let s = t
                .create_err(&sb, &sb_cfg, c)
                .await
                .map_err(|e| format!("{what} profile: {e}"))?;
            let p = path.display().to_string();
            ensure!(
                s.message().contains(&p),
                "{what} Localhost profile: the error does not name {p}: {s:?}"
            );
        }
        Ok(())
    })
}

fn with_pid_mode(mut cfg: cri::PodSandboxConfig, pid: cri::NamespaceMode) -> cri::PodSandboxConfig {
    cfg.linux.as_mut().expect("linux").security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid: pid as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

fn pid_opts(pid: cri::NamespaceMode, target: &str) -> Option<cri::LinuxContainerConfig> {
    sc(|s| {
        s.namespace_options = Some(cri::NamespaceOption {
            pid: pid as i32,
            target_id: target.into(),
            ..Default::default()
        })
    })
}

impl Target {
    /// Command lines of the processes container `id` sees (`args` joined by spaces), and its
    /// PID 1's.
    async fn processes(&mut self, id: &str) -> Result<(String, String), String> {
        let all = self
            .sh(
                id,
                "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done",
            )
            .await?;
        let one = self.sh(id, "tr '\\0' ' ' < /proc/1/cmdline").await?;
        Ok((
            String::from_utf8_lossy(&all.stdout).into_owned(),
            String::from_utf8_lossy(&one.stdout).into_owned(),
        ))
    }
}

/// PID namespace modes: POD (the sandbox's, PID 1 its pause process, containers see each
/// other), CONTAINER (its own, PID 1 its command), NODE (the host's), TARGET (another
/// container's).
pub async fn pid_namespaces(t: &mut Target) -> Check {
    use cri::NamespaceMode as M;
    let cfg = with_pid_mode(t.sandbox_config("skpidpod"), M::Pod);
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut a = t.container("skpida", &["sleep", "1001"]);
        a.linux = pid_opts(M::Pod, "");
        t.start_container(&sb, &sb_cfg, a).await?;
        let mut b = t.container("skpidb", &["sleep", "1002"]);
        b.linux = pid_opts(M::Pod, "");
        let b = t.start_container(&sb, &sb_cfg, b).await?;
        let (all, one) = t.processes(&b).await?;
        ensure!(
            all.lines().any(|l| l.trim() == "sleep 1001"),
            "POD: container b does not see container a's process: {all}"
        );
        ensure!(
            !one.contains("sleep 100"),
            "POD: PID 1 is {one:?}, not the sandbox's pause process"
        );
        Ok(())
    })?;

    let cfg = with_pid_mode(t.sandbox_config("skpidct"), M::Container);
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut c = t.container("skpidc", &["sleep", "1003"]);
        c.linux = pid_opts(M::Container, "");
        let c = t.start_container(&sb, &sb_cfg, c).await?;
        let mut d = t.container("skpidd", &["sleep", "1004"]);
        d.linux = pid_opts(M::Container, "");
        let d = t.start_container(&sb, &sb_cfg, d).await?;
        let (all, one) = t.processes(&d).await?;
        ensure!(one.trim() == "sleep 1004", "CONTAINER: PID 1 is {one:?}");
        ensure!(
            !all.contains("sleep 1003"),
            "CONTAINER: sees the other container's process: {all}"
        );
        let mut e = t.container("skpide", &["sleep", "1005"]);
        e.linux = pid_opts(M::Target, &c);
        let e = t.start_container(&sb, &sb_cfg, e).await?;
        let (all, one) = t.processes(&e).await?;
        ensure!(
            one.trim() == "sleep 1003" && all.contains("sleep 1005"),
            "TARGET {c}: PID 1 is {one:?}, processes {all}"
        );
        Ok(())
    })?;

    let host_init = std::fs::read("/proc/1/cmdline")
        .map_err(|e| format!("/proc/1/cmdline: {e}"))?
        .iter()
        .map(|&b| if b == 0 { ' ' } else { b as char })
        .collect::<String>();
    let cfg = with_pid_mode(t.sandbox_config("skpidnode"), M::Node);
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut n = t.container("skpidn", &["sleep", "1006"]);
        n.linux = pid_opts(M::Node, "");
        let n = t.start_container(&sb, &sb_cfg, n).await?;
        let (_, one) = t.processes(&n).await?;
        ensure!(
            one == host_init,
            "NODE: PID 1 is {one:?}, the host's is {host_init:?}"
        );
        let me = std::process::id();
        let r = t.sh(&n, &format!("test -d /proc/{me}")).await?;
        ensure!(
            r.exit_code == 0,
            "NODE: the test process {me} is not visible"
        );
        Ok(())
    })
}

/// A temp dir (prefix `sk-prop-`) for mount propagation checks; on drop everything mounted at
/// or under it is detached (MNT_DETACH takes the whole subtree) and the dir removed.
struct PropDir {
    dir: tempfile::TempDir,
}

impl PropDir {
    fn new() -> Result<PropDir, String> {
        let dir = tempfile::Builder::new()
            .prefix("sk-prop-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        Ok(PropDir { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PropDir {
    fn drop(&mut self) {
        while nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    }
}

fn host_tmpfs(at: &Path) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    nix::mount::mount(
        Some("sktmpfs"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", at.display()))
}

/// Optional mountinfo fields (`shared:N`, `master:N`) of the mount at `point`, if mounted.
fn host_mount_fields(point: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = point.to_str()?;
    info.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(point))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap_or(f.len());
            f[6.min(sep)..sep].join(" ")
        })
}

fn bind_mount(dest: &str, src: &Path, p: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: dest.into(),
        host_path: src.display().to_string(),
        propagation: p as i32,
        ..Default::default()
    }
}

/// Mount propagation on CRI mounts of one shared host tmpfs: PRIVATE sees nothing mounted
/// later, HOST_TO_CONTAINER (rslave) sees a host mount, BIDIRECTIONAL (rshared, privileged)
/// sends its own mount back to the host. Skiff also makes a private source shared as needed
/// (containerd 1.6 refuses such a source).
pub async fn mount_propagation(t: &mut Target) -> Check {
    use cri::MountPropagation as MP;
    let src = PropDir::new()?;
    host_tmpfs(src.path())?;
    nix::mount::mount(
        None::<&str>,
        src.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|e| format!("MS_SHARED on {}: {e}", src.path().display()))?;
    let plain = PropDir::new()?;
    let skiff = t.name == "skiff";
    let cfg = t.privileged_sandbox("skprop");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut h = t.container("skproph", &["sleep", "1000"]);
        h.mounts = vec![bind_mount(
            "/mnt/h",
            src.path(),
            MP::PropagationHostToContainer,
        )];
        if skiff {
            h.mounts.push(bind_mount(
                "/mnt/plain",
                plain.path(),
                MP::PropagationHostToContainer,
            ));
        }
        let h = t.start_container(&sb, &sb_cfg, h).await?;
        let mut p = t.container("skpropp", &["sleep", "1000"]);
        p.mounts = vec![bind_mount("/mnt/p", src.path(), MP::PropagationPrivate)];
        let p = t.start_container(&sb, &sb_cfg, p).await?;
        let mut b = t.container("skpropb", &["sleep", "1000"]);
        b.mounts = vec![bind_mount(
            "/mnt/b",
            src.path(),
            MP::PropagationBidirectional,
        )];
        b.linux = sc(|s| s.privileged = true);
        let b = t.start_container(&sb, &sb_cfg, b).await?;

        host_tmpfs(&src.path().join("fromhost"))?;
        std::fs::write(src.path().join("fromhost/marker"), "host\n")
            .map_err(|e| format!("writing marker: {e}"))?;
        let r = t.sh(&h, "cat /mnt/h/fromhost/marker").await?;
        ensure!(
            r.stdout == b"host\n",
            "HOST_TO_CONTAINER: a host mount made after start is not seen: {r:?}"
        );
        let r = t.sh(&p, "test -e /mnt/p/fromhost/marker").await?;
        ensure!(
            r.exit_code != 0,
            "PRIVATE: a host mount made after start is seen"
        );
        let r = t
            .sh(
                &b,
                "mkdir -p /mnt/b/fromct && mount -t tmpfs skct /mnt/b/fromct && echo ct > /mnt/b/fromct/marker",
            )
            .await?;
        ensure!(
            r.exit_code == 0,
            "BIDIRECTIONAL: mount inside failed: {r:?}"
        );
        let got = std::fs::read_to_string(src.path().join("fromct/marker")).unwrap_or_default();
        ensure!(
            got == "ct\n",
            "BIDIRECTIONAL: the container's mount did not reach the host (marker {got:?})"
        );
        let r = t.sh(&h, "cat /mnt/h/fromct/marker").await?;
        ensure!(
            r.stdout == b"ct\n",
            "HOST_TO_CONTAINER: the bidirectional container's mount is not seen: {r:?}"
        );

        if skiff {
            let fields = host_mount_fields(plain.path()).unwrap_or_default();
            ensure!(
                fields.contains("shared:"),
                "a private source of a HOST_TO_CONTAINER mount was not made shared: {fields:?}"
            );
            host_tmpfs(&plain.path().join("late"))?;
            std::fs::write(plain.path().join("late/marker"), "late\n")
                .map_err(|e| format!("writing marker: {e}"))?;
            let r = t.sh(&h, "cat /mnt/plain/late/marker").await?;
            ensure!(
                r.stdout == b"late\n",
                "HOST_TO_CONTAINER on a source made shared: host mount not seen: {r:?}"
            );
        }
        Ok(())
    })
}

/// Recursive read-only mounts (beyond containerd 1.6): Status advertises them for the default
/// handler; a `recursive_read_only` mount of a host dir with a sub-mount is read-only down to
/// the sub-mount, a plain read-only one only at the top; recursive_read_only without readonly
/// is refused.
pub async fn recursive_read_only(t: &mut Target) -> Check {
    let status =
        t.rt.status(cri::StatusRequest { verbose: false })
            .await
            .map_err(|e| format!("Status: {e}"))?
            .into_inner();
    let default = status.runtime_handlers.iter().find(|h| h.name.is_empty());
    ensure!(
        default.is_some_and(|h| h
            .features
            .as_ref()
            .is_some_and(|f| f.recursive_read_only_mounts)),
        "Status does not advertise recursive read-only mounts: {:?}",
        status.runtime_handlers
    );
    let src = PropDir::new()?;
    host_tmpfs(src.path())?;
    host_tmpfs(&src.path().join("sub"))?;
    let cfg = t.sandbox_config("skrro");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut c = t.container("skrro", &["sleep", "1000"]);
        let mut rro = bind_mount(
            "/mnt/rro",
            src.path(),
            cri::MountPropagation::PropagationPrivate,
        );
        rro.readonly = true;
        rro.recursive_read_only = true;
        let mut ro = bind_mount(
            "/mnt/ro",
            src.path(),
            cri::MountPropagation::PropagationPrivate,
        );
        ro.readonly = true;
        c.mounts = vec![rro.clone(), ro];
        let id = t.start_container(&sb, &sb_cfg, c).await?;
        let r = t
            .sh(&id, "touch /mnt/ro/sub/a && echo sub-writable")
            .await?;
        ensure!(
            r.stdout == b"sub-writable\n",
            "a plain read-only bind made its sub-mount read-only too: {r:?}"
        );
        let r = t.sh(&id, "touch /mnt/rro/sub/b").await?;
        ensure!(
            r.exit_code != 0,
            "the sub-mount of a recursive read-only bind is writable"
        );
        let r = t.sh(&id, "touch /mnt/rro/c").await?;
        ensure!(r.exit_code != 0, "a recursive read-only bind is writable");
        let mut bad = t.container("skrrobad", &["sleep", "1000"]);
        rro.readonly = false;
        bad.mounts = vec![rro];
        let s = t.create_err(&sb, &sb_cfg, bad).await?;
        ensure!(
            s.code() == tonic::Code::InvalidArgument && s.message().contains("readonly"),
            "recursive_read_only without readonly: {s:?}"
        );
        Ok(())
    })
}

/// A shell that grows past a 32 MiB memory limit (a 200 MB string in the shell itself, the
/// container's init): the kernel OOM-kills it.
pub const OOM_SCRIPT: &str = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";

/// A container killed by its memory limit: exit code 137, reason OOMKilled.
pub async fn oom_killed(t: &mut Target) -> Check {
    let cfg = t.sandbox_config("skoom");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let mut c = t.container("skoom", &["sh", "-c", OOM_SCRIPT]);
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = t.start_container(&sb, &sb_cfg, c).await?;
        let mut s = t.wait_ct(&id, cri::ContainerState::ContainerExited).await?;
        // containerd learns of the OOM kill from an event that may come after the exit's:
        // its status says OOMKilled a little later, as a kubelet's next poll sees it.
        for _ in 0..100 {
            if s.reason == "OOMKilled" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            s = t.ct_status(&id).await?;
        }
        ensure!(
            s.exit_code == 137 && s.reason == "OOMKilled",
            "exit code {} reason {:?} (want 137, OOMKilled){}",
            s.exit_code,
            s.reason,
            crate::cri_env::containerd::oom_watch_problem()
                .filter(|_| t.name == "containerd")
                .map(|p| format!("; {p}"))
                .unwrap_or_default()
        );
        // A plain non-zero exit is not an OOM kill.
        let c = t.container("skoomno", &["sh", "-c", "exit 3"]);
        let id = t.start_container(&sb, &sb_cfg, c).await?;
        let s = t.wait_ct(&id, cri::ContainerState::ContainerExited).await?;
        ensure!(
            s.exit_code == 3 && s.reason == "Error",
            "exit 3 gave code {} reason {:?}",
            s.exit_code,
            s.reason
        );
        Ok(())
    })
}

/// ExecSync past its timeout: DeadlineExceeded, and by then the process it started and that
/// process's children are gone (the next ExecSync sees none of them, without waiting).
pub async fn exec_timeout(t: &mut Target, children_too: bool) -> Check {
    let cfg = t.sandbox_config("skexecto");
    in_sandbox!(t, cfg, |sb, sb_cfg| {
        let c = t.container("skexecto", &["sleep", "1000"]);
        let id = t.start_container(&sb, &sb_cfg, c).await?;
        // containerd 1.6's ExecSync waits for every holder of the exec's stdout to close,
        // past its timeout: there the exec'd process has no children.
        let cmd: &[&str] = if children_too {
            &["sh", "-c", "sleep 1011 & sleep 1012 & sleep 1013"]
        } else {
            &["sleep", "1013"]
        };
        let timed = t.exec_sync(&id, cmd, 1).await;
        ensure!(
            matches!(&timed, Err(s) if s.code() == tonic::Code::DeadlineExceeded),
            "ExecSync past its timeout: {timed:?}"
        );
        let (all, _) = t.processes(&id).await?;
        ensure!(
            !all.contains("sleep 1013"),
            "the timed-out exec process still runs: {all}"
        );
        if children_too {
            ensure!(
                !all.contains("sleep 1011") && !all.contains("sleep 1012"),
                "children of the timed-out exec process still run: {all}"
            );
        }
        Ok(())
    })
}

/// Every check, in order, with its outcome.
pub async fn run(t: &mut Target) -> Vec<(&'static str, Check)> {
    let profiles = Profiles::new();
    let mut out = Vec::new();
    // SKIFF_TEST_CHECKS=privileged,seccomp runs only the checks whose names contain those.
    let only: Vec<String> = std::env::var("SKIFF_TEST_CHECKS")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let want = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    macro_rules! check {
        ($name:expr, $e:expr) => {
            if want($name) {
                // A runtime that hangs fails the check instead of the whole run.
                let r = tokio::time::timeout(std::time::Duration::from_secs(240), $e)
                    .await
                    .unwrap_or_else(|_| Err("no answer within 240 s".to_string()));
                out.push(($name, r));
            }
        };
    }
    check!("privileged", privileged(t, &profiles));
    check!("capabilities", capabilities(t));
    check!("bad security contexts", bad_security_contexts(t));
    check!("seccomp", seccomp(t, &profiles));
    check!("pid namespaces", pid_namespaces(t));
    check!("mount propagation", mount_propagation(t));
    check!("oom killed", oom_killed(t));
    // containerd 1.6 kills only the exec'd process; Skiff its whole tree.
    let skiff = t.name == "skiff";
    check!("exec sync timeout", exec_timeout(t, skiff));
    if skiff {
        // containerd 1.6 has no recursive read-only mounts.
        check!("recursive read-only mounts", recursive_read_only(t));
    }
    for (name, r) in &out {
        match r {
            Ok(()) => eprintln!("[{}] PASS {name}", t.name),
            Err(e) => eprintln!("[{}] FAIL {name}: {e}", t.name),
        }
    }
    out
}
