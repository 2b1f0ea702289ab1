//! The OCI runtime spec (config.json) of a container, built with `oci-spec`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::container::Container;
use crate::store::image::ImageRecord;
use crate::store::sandbox::Sandbox;

use super::sandbox_run::NS_NODE;

fn spec_err(e: impl std::fmt::Display) -> CriError {
    CriError::Spec(e.to_string())
}

/// Process args by the Kubernetes rules: `command` replaces the image Entrypoint (and drops its
/// Cmd); `args` alone replace the image Cmd.
pub(crate) fn process_args(config: &cri::ContainerConfig, image: &ImageRecord) -> Vec<String> {
    let ic = &image.config;
    if !config.command.is_empty() {
        config
            .command
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else if !config.args.is_empty() {
        ic.entrypoint
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else {
        ic.entrypoint.iter().chain(ic.cmd.iter()).cloned().collect()
    }
}

/// Image env first, then the container's, a later key replacing an earlier one in place.
pub(crate) fn merge_env(image_env: &[String], envs: &[cri::KeyValue]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let pairs = image_env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .chain(envs.iter().map(|kv| (kv.key.clone(), kv.value.clone())));
    for (k, v) in pairs {
        let entry = format!("{k}={v}");
        match index.get(&k) {
            Some(&i) => out[i] = entry,
            None => {
                index.insert(k, out.len());
                out.push(entry);
            }
        }
    }
    out
}

/// Resolves `user` ("uid[:gid]" or names) against the rootfs's /etc/passwd and /etc/group.
fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, Option<String>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 4)
        .collect();
    let (uid, mut gid, name) = if u.is_empty() {
        (0, 0, Some("root".to_string()))
    } else if let Ok(uid) = u.parse::<u32>() {
        let e = entries.iter().find(|f| f[2] == u);
        (
            uid,
            e.and_then(|f| f[3].parse().ok()).unwrap_or(0),
            e.map(|f| f[0].to_string()),
        )
    } else {
        let e = entries.iter().find(|f| f[0] == u).ok_or_else(|| {
            CriError::InvalidArgument(format!("user {u:?} is not in the image's /etc/passwd"))
        })?;
        (
            e[2].parse().unwrap_or(0),
            e[3].parse().unwrap_or(0),
            Some(u.to_string()),
        )
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
                group
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 3 && f[0] == g)
                    .and_then(|f| f[2].parse().ok())
                    .ok_or_else(|| {
                        CriError::InvalidArgument(format!(
                            "group {g:?} is not in the image's /etc/group"
                        ))
                    })?
            }
        };
    }
    Ok((uid, gid, name))
}

/// Groups of /etc/group that list `name` as a member.
fn member_groups(rootfs: &Path, name: &str) -> Vec<u32> {
    std::fs::read_to_string(rootfs.join("etc/group"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == name))
        .filter_map(|f| f[2].parse().ok())
        .collect()
}

fn bind(dest: &str, src: &Path, readonly: bool, propagation: &str) -> Result<Mount> {
    let mut opts = vec!["rbind".to_string(), propagation.to_string()];
    opts.push(if readonly { "ro" } else { "rw" }.to_string());
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(opts)
        .build()
        .map_err(spec_err)
}

fn mnt(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The oom_score_adj we may set: without CAP_SYS_RESOURCE it cannot go below our own.
fn clamp_oom_score_adj(v: i64) -> i32 {
    let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    v.clamp(own, 1000) as i32
}

/// `/proc/<init>/ns/pid` of container `target` (CRI NamespaceMode TARGET): it must be a
/// running container of the same sandbox.
pub(crate) fn target_pid_ns(st: &State, sb: &Sandbox, target: &str) -> Result<PathBuf> {
    let t = st.containers.get(target).map_err(|_| {
        CriError::InvalidArgument(format!(
            "namespace options: pid TARGET container {target:?} does not exist"
        ))
    })?;
    if t.sandbox_id != sb.id {
        return Err(CriError::InvalidArgument(format!(
            "namespace options: pid TARGET container {target} is in sandbox {}, not {}",
            t.sandbox_id, sb.id
        )));
    }
    if t.pid <= 0 || !crate::sys::alive(t.pid, t.pid_start_time) {
        return Err(CriError::FailedPrecondition(format!(
            "namespace options: pid TARGET container {target} is not running"
        )));
    }
    Ok(PathBuf::from(format!("/proc/{}/ns/pid", t.pid)))
}

/// The container's cgroupfs path: `<sandbox cgroup parent>/<container id>`, absolute.
pub(crate) fn cgroups_path(sb: &Sandbox, id: &str) -> String {
    crate::cgroups::child_path(sb, id)
}

/// The supplemental groups of the container's process, as containerd 2.x computes them:
/// SupplementalGroupsPolicy Merge (the default) = the groups the image's /etc/group gives the
/// user plus the pod's `supplemental_groups`; Strict = only the pod's. The primary gid is always
/// one of them (containerd's `ensureAdditionalGids`), so ContainerStatus reports every group
/// the process has.
pub(crate) fn effective_groups(
    sc: &cri::LinuxContainerSecurityContext,
    gid: u32,
    image_groups: impl FnOnce() -> Vec<u32>,
) -> Vec<u32> {
    let mut groups = vec![gid];
    if sc.supplemental_groups_policy != cri::SupplementalGroupsPolicy::Strict as i32 {
        groups.extend(image_groups());
    }
    groups.extend(sc.supplemental_groups.iter().map(|g| *g as u32));
    let mut seen = HashSet::new();
    groups.retain(|g| seen.insert(*g));
    groups
}

/// Where the idmapped clone of CRI mount `i` of the container is attached.
pub(crate) fn idmapped_volume(ct: &Container, i: usize) -> PathBuf {
    idmap_dir(ct).join(format!("vol-{i}"))
}

/// The container's folder of idmapped mounts (`<container dir>/idmap`).
pub(crate) fn idmap_dir(ct: &Container) -> PathBuf {
    ct.bundle.parent().unwrap_or(Path::new("/")).join("idmap")
}

fn oci_maps(maps: &[cri::IdMapping]) -> Result<Vec<oci_spec::runtime::LinuxIdMapping>> {
    maps.iter()
        .map(|m| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.length)
                .build()
                .map_err(spec_err)
        })
        .collect()
}

pub(crate) fn generate(
    st: &State,
    ct: &Container,
    sb: &Sandbox,
    sb_dir: &Path,
    image: &ImageRecord,
) -> Result<Spec> {
    let cfg = &ct.config;
    let lin = cfg.linux.clone().unwrap_or_default();
    let sc = lin.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged;

    let args = process_args(cfg, image);
    if args.is_empty() {
        return Err(CriError::InvalidArgument(
            "no command: the image has no Entrypoint/Cmd and the container config gives none"
                .into(),
        ));
    }
    let env = merge_env(&image.config.env, &cfg.envs);
    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else if !image.config.working_dir.is_empty() {
        image.config.working_dir.clone()
    } else {
        "/".to_string()
    };

    // User: security context first, then the image's User.
    let user_str = if let Some(uid) = &sc.run_as_user {
        match &sc.run_as_group {
            Some(g) => format!("{}:{}", uid.value, g.value),
            None => uid.value.to_string(),
        }
    } else if !sc.run_as_username.is_empty() {
        match &sc.run_as_group {
            Some(g) => format!("{}:{}", sc.run_as_username, g.value),
            None => sc.run_as_username.clone(),
        }
    } else {
        image.config.user.clone()
    };
    let (uid, mut gid, uname) = resolve_user(&ct.rootfs, &user_str)?;
    if let (Some(_), Some(g)) = (&sc.run_as_user, &sc.run_as_group) {
        gid = g.value as u32;
    }
    let groups = effective_groups(&sc, gid, || {
        uname
            .as_deref()
            .map(|n| member_groups(&ct.rootfs, n))
            .unwrap_or_default()
    });
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(groups)
        .build()
        .map_err(spec_err)?;

    let cap_mask = super::security::resolve_caps(
        privileged,
        sc.capabilities.as_ref(),
        super::security::bounding_set(),
    )?;
    let caps: HashSet<Capability> = super::security::mask_names(cap_mask)
        .into_iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(spec_err)?;

    let resources = lin.resources.clone().unwrap_or_default();
    let mut process = ProcessBuilder::default()
        .terminal(ct.config.tty)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(user)
        .capabilities(capabilities)
        .build()
        .map_err(spec_err)?;
    // `true` only when asked, else no key (oci-spec's default is `true`): runtimes read a
    // present `false` differently (libcontainer 0.7 then loads seccomp after dropping
    // capabilities, which fails without CAP_SYS_ADMIN).
    process.set_no_new_privileges(sc.no_new_privs.then_some(true));
    if resources.oom_score_adj != 0 {
        process.set_oom_score_adj(Some(clamp_oom_score_adj(resources.oom_score_adj)));
    }

    // Namespaces: join the pause process's net/ipc/uts; new mount and pid namespaces.
    let pod_ns = super::sandbox_run::namespace_options(&sb.config);
    let ct_ns = sc.namespace_options.clone().unwrap_or_default();
    let mut namespaces = vec![LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Mount)
        .build()
        .map_err(spec_err)?];
    // PID: the pod's (POD: the pause holds it), a new one (CONTAINER, also when the container
    // gives no options), the host's (NODE), or another container's (TARGET).
    let ct_pid = sc
        .namespace_options
        .as_ref()
        .map(|o| o.pid)
        .unwrap_or(cri::NamespaceMode::Container as i32);
    if ct_pid == NS_NODE || pod_ns.pid == NS_NODE {
        // The host's: no namespace entry.
    } else if ct_pid == cri::NamespaceMode::Pod as i32 {
        if !super::sandbox_run::holds_pid_ns(&sb.config) {
            return Err(CriError::InvalidArgument(format!(
                "namespace options: container pid mode POD, but sandbox {} does not share a PID namespace (its pid mode is not POD)",
                sb.id
            )));
        }
        let path = sb.ns_path("pid").ok_or_else(|| {
            CriError::FailedPrecondition(format!(
                "the pause process of sandbox {} is gone: stop and recreate the sandbox",
                sb.id
            ))
        })?;
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .path(path)
                .build()
                .map_err(spec_err)?,
        );
    } else if ct_pid == cri::NamespaceMode::Target as i32 {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .path(target_pid_ns(st, sb, &ct_ns.target_id)?)
                .build()
                .map_err(spec_err)?,
        );
    } else {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()
                .map_err(spec_err)?,
        );
    }
    let join = |typ: LinuxNamespaceType, kind: &str| -> Result<_> {
        let path = sb.ns_path(kind).ok_or_else(|| {
            CriError::FailedPrecondition(format!(
                "the pause process of sandbox {} is gone: stop and recreate the sandbox",
                sb.id
            ))
        })?;
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(path)
            .build()
            .map_err(spec_err)
    };
    if !sb.host_network {
        namespaces.push(join(LinuxNamespaceType::Network, "net")?);
        namespaces.push(join(LinuxNamespaceType::Uts, "uts")?);
    }
    if pod_ns.ipc != NS_NODE {
        namespaces.push(join(LinuxNamespaceType::Ipc, "ipc")?);
    }
    // The pod's user namespace (held by the pause): joined, never made, so the runtime writes
    // no maps; the maps are in the spec too, as runtimes that check them want.
    if sb.userns.is_some() {
        namespaces.push(join(LinuxNamespaceType::User, "user")?);
    }

    // Mounts: defaults, then the sandbox's /etc files, then the CRI mounts.
    let mut mounts = vec![
        mnt("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mnt(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mnt(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mnt(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mnt(
            "/sys",
            "sysfs",
            "sysfs",
            &[
                "nosuid",
                "noexec",
                "nodev",
                if privileged { "rw" } else { "ro" },
            ],
        )?,
        mnt(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                if privileged { "rw" } else { "ro" },
            ],
        )?,
    ];
    // /dev/shm: the pod's tmpfs, or the host's for host-IPC pods.
    let shm_src = if pod_ns.ipc == NS_NODE {
        PathBuf::from("/dev/shm")
    } else {
        sb_dir.join("shm")
    };
    mounts.push(bind("/dev/shm", &shm_src, false, "rprivate")?);
    let user_dests: HashSet<&str> = cfg
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for (dest, file) in [
        ("/etc/hosts", "hosts"),
        ("/etc/hostname", "hostname"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        if !user_dests.contains(dest) {
            mounts.push(bind(
                dest,
                &sb_dir.join(file),
                sc.readonly_rootfs,
                "rprivate",
            )?);
        }
    }
    let mut rootfs_shared = false;
    for (i, m) in cfg.mounts.iter().enumerate() {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            continue;
        }
        let src = Path::new(&m.host_path);
        // An idmapped mount: its idmapped clone, made by CreateContainer before this.
        let idmapped = super::userns::mount_is_idmapped(m)?.then(|| idmapped_volume(ct, i));
        let prop = match cri::MountPropagation::try_from(m.propagation)
            .unwrap_or(cri::MountPropagation::PropagationPrivate)
        {
            cri::MountPropagation::PropagationPrivate => "rprivate",
            cri::MountPropagation::PropagationHostToContainer => {
                crate::sys::ensure_shared(src, true)?;
                "rslave"
            }
            cri::MountPropagation::PropagationBidirectional => {
                crate::sys::ensure_shared(src, false)?;
                // The container's mounts must stay peers of the host's for mounts to go back.
                rootfs_shared = true;
                "rshared"
            }
        };
        let mut mount = bind(
            &m.container_path,
            idmapped.as_deref().unwrap_or(src),
            m.readonly,
            prop,
        )?;
        if m.recursive_read_only {
            // Checked at CreateContainer: readonly, PRIVATE, a handler that can.
            let mut opts = mount.options().clone().unwrap_or_default();
            opts.push("rro".into());
            mount.set_options(Some(opts));
        }
        mounts.push(mount);
    }

    // cgroups: <sandbox cgroup parent>/<container id> (systemd driver: cri-skiff-<id>.scope).
    let cgroups_path = PathBuf::from(cgroups_path(sb, &ct.id));
    let mut rb =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(spec_err)?]);
    // Swap, hugepages and unified as containerd maps them on this host (`cgroups.rs`).
    let resources = crate::cgroups::effective_resources(&resources, crate::cgroups::features());
    if resources.memory_limit_in_bytes > 0 || resources.memory_swap_limit_in_bytes > 0 {
        let mut mem = LinuxMemoryBuilder::default();
        if resources.memory_limit_in_bytes > 0 {
            mem = mem.limit(resources.memory_limit_in_bytes);
        }
        if resources.memory_swap_limit_in_bytes > 0 {
            mem = mem.swap(resources.memory_swap_limit_in_bytes);
        }
        rb = rb.memory(mem.build().map_err(spec_err)?);
    }
    if !resources.hugepage_limits.is_empty() {
        let limits = resources
            .hugepage_limits
            .iter()
            .map(|h| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                    .build()
                    .map_err(spec_err)
            })
            .collect::<Result<Vec<_>>>()?;
        rb = rb.hugepage_limits(limits);
    }
    if !resources.unified.is_empty() {
        rb = rb.unified(resources.unified.clone());
    }
    let mut cpu = LinuxCpuBuilder::default();
    let mut has_cpu = false;
    if resources.cpu_shares > 0 {
        cpu = cpu.shares(resources.cpu_shares as u64);
        has_cpu = true;
    }
    if resources.cpu_quota > 0 {
        cpu = cpu.quota(resources.cpu_quota);
        has_cpu = true;
    }
    if resources.cpu_period > 0 {
        cpu = cpu.period(resources.cpu_period as u64);
        has_cpu = true;
    }
    if !resources.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(resources.cpuset_cpus.clone());
        has_cpu = true;
    }
    if !resources.cpuset_mems.is_empty() {
        cpu = cpu.mems(resources.cpuset_mems.clone());
        has_cpu = true;
    }
    if has_cpu {
        rb = rb.cpu(cpu.build().map_err(spec_err)?);
    }
    let sysctls: HashMap<String, String> = sb
        .config
        .linux
        .as_ref()
        .map(|l| l.sysctls.clone())
        .unwrap_or_default();

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path)
        .resources(rb.build().map_err(spec_err)?)
        .sysctl(sysctls);
    if privileged {
        // No masked or read-only paths (oci-spec's builder would fill in its defaults), every
        // host device, no seccomp whatever profile was asked.
        linux = linux
            .masked_paths(Vec::<String>::new())
            .readonly_paths(Vec::<String>::new())
            .devices(super::security::host_devices());
    } else {
        if let Some(seccomp) = super::seccomp::for_container(&sc, cap_mask)? {
            linux = linux.seccomp(seccomp);
        }
        // Both lists empty in a pod with its own user namespace is a kubelet's
        // `procMount: Unmasked` (only allowed with `hostUsers: false`): nothing masked. Elsewhere
        // empty lists mean the defaults, for clients that send none.
        let unmasked =
            sb.userns.is_some() && sc.masked_paths.is_empty() && sc.readonly_paths.is_empty();
        let masked = if unmasked {
            vec![]
        } else if sc.masked_paths.is_empty() {
            oci_spec::runtime::get_default_maskedpaths()
        } else {
            sc.masked_paths.clone()
        };
        let ro = if unmasked {
            vec![]
        } else if sc.readonly_paths.is_empty() {
            oci_spec::runtime::get_default_readonly_paths()
        } else {
            sc.readonly_paths.clone()
        };
        linux = linux.masked_paths(masked).readonly_paths(ro);
    }
    if rootfs_shared {
        linux = linux.rootfs_propagation("rshared");
    }
    if let Some(u) = &sb.userns {
        linux = linux
            .uid_mappings(oci_maps(&u.uids)?)
            .gid_mappings(oci_maps(&u.gids)?);
    }
    let linux = linux.build().map_err(spec_err)?;

    let mut annotations = cfg.annotations.clone();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), sb.id.clone());
    annotations.insert(
        "io.kubernetes.cri.container-name".into(),
        ct.metadata().name,
    );
    annotations.insert(
        "io.kubernetes.cri.image-name".into(),
        image.repo_tags.first().cloned().unwrap_or_default(),
    );

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(sc.readonly_rootfs)
                .build()
                .map_err(spec_err)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(spec_err)?;
    // Host-network pods share the host's UTS namespace: no hostname of their own.
    spec.set_hostname((!sb.host_network).then(|| super::sandbox_run::hostname_of(sb)));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(entry: &[&str], cmd: &[&str]) -> ImageRecord {
        let mut i = ImageRecord::new("sha256:00".into());
        i.config.entrypoint = entry.iter().map(|s| s.to_string()).collect();
        i.config.cmd = cmd.iter().map(|s| s.to_string()).collect();
        i
    }

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let i = img(&["/ep"], &["c1"]);
        assert_eq!(process_args(&cfg(&[], &[]), &i), ["/ep", "c1"]);
        assert_eq!(process_args(&cfg(&[], &["a"]), &i), ["/ep", "a"]);
        assert_eq!(process_args(&cfg(&["sh"], &[]), &i), ["sh"]);
        assert_eq!(
            process_args(&cfg(&["sh"], &["-c", "x"]), &i),
            ["sh", "-c", "x"]
        );
    }

    #[test]
    fn supplemental_groups_policy() {
        let mut sc = cri::LinuxContainerSecurityContext {
            supplemental_groups: vec![4000, 3000],
            ..Default::default()
        };
        // Merge (default): primary gid first, the image's groups, then the pod's; no repeats.
        assert_eq!(
            effective_groups(&sc, 3000, || vec![50000, 4000]),
            [3000, 50000, 4000]
        );
        sc.supplemental_groups_policy = cri::SupplementalGroupsPolicy::Strict as i32;
        let mut image_read = false;
        assert_eq!(
            effective_groups(&sc, 3000, || {
                image_read = true;
                vec![50000]
            }),
            [3000, 4000]
        );
        assert!(!image_read, "Strict must not read the image's /etc/group");
    }

    #[test]
    fn env_container_overrides_image() {
        let env = merge_env(
            &["PATH=/bin".into(), "A=1".into()],
            &[
                cri::KeyValue {
                    key: "A".into(),
                    value: "2".into(),
                },
                cri::KeyValue {
                    key: "B".into(),
                    value: "3".into(),
                },
            ],
        );
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
    }
}
