//! The OCI runtime spec (config.json) of a container, built with `oci-spec`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use skiff_proto::cri;

use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::container::Container;
use crate::store::image::ImageRecord;
use crate::store::sandbox::Sandbox;

use super::sandbox_run::NS_NODE;

/// containerd's default capability set for Kubernetes containers.
const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

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

fn parse_caps(names: &[String]) -> Vec<Capability> {
    names
        .iter()
        .filter_map(|n| {
            let n = n.trim().to_uppercase();
            let n = n.strip_prefix("CAP_").unwrap_or(&n);
            n.parse::<Capability>().ok()
        })
        .collect()
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

/// The container's cgroupfs path: `<sandbox cgroup parent>/<container id>`, absolute.
pub(crate) fn cgroups_path(sb: &Sandbox, id: &str) -> String {
    format!("/{}/{}", sb.cgroup_parent.trim_matches('/'), id).replace("//", "/")
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
        sc.run_as_username.clone()
    } else {
        image.config.user.clone()
    };
    let (uid, mut gid, uname) = resolve_user(&ct.rootfs, &user_str)?;
    if let (Some(_), Some(g)) = (&sc.run_as_user, &sc.run_as_group) {
        gid = g.value as u32;
    }
    let mut groups: Vec<u32> = uname
        .as_deref()
        .map(|n| member_groups(&ct.rootfs, n))
        .unwrap_or_default();
    groups.extend(sc.supplemental_groups.iter().map(|g| *g as u32));
    groups.sort_unstable();
    groups.dedup();
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(groups)
        .build()
        .map_err(spec_err)?;

    let caps: HashSet<Capability> = if privileged {
        all_caps()
    } else {
        let mut set: HashSet<Capability> = parse_caps(
            &DEFAULT_CAPS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .collect();
        if let Some(c) = &sc.capabilities {
            if c.add_capabilities
                .iter()
                .any(|a| a.eq_ignore_ascii_case("ALL"))
            {
                set = all_caps();
            }
            set.extend(parse_caps(&c.add_capabilities));
            if c.drop_capabilities
                .iter()
                .any(|a| a.eq_ignore_ascii_case("ALL"))
            {
                set.clear();
                set.extend(parse_caps(&c.add_capabilities));
            }
            for d in parse_caps(&c.drop_capabilities) {
                set.remove(&d);
            }
        }
        set
    };
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
        .no_new_privileges(sc.no_new_privs)
        .build()
        .map_err(spec_err)?;
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
    if ct_ns.pid != NS_NODE && pod_ns.pid != NS_NODE {
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
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
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
    for m in &cfg.mounts {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            continue;
        }
        let prop = match cri::MountPropagation::try_from(m.propagation)
            .unwrap_or(cri::MountPropagation::PropagationPrivate)
        {
            cri::MountPropagation::PropagationPrivate => "rprivate",
            cri::MountPropagation::PropagationHostToContainer => "rslave",
            cri::MountPropagation::PropagationBidirectional => "rshared",
        };
        mounts.push(bind(
            &m.container_path,
            Path::new(&m.host_path),
            m.readonly,
            prop,
        )?);
    }

    // cgroups (cgroupfs driver): <sandbox cgroup parent>/<container id>.
    let cgroups_path = PathBuf::from(cgroups_path(sb, &ct.id));
    let mut rb =
        LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(spec_err)?]);
    if resources.memory_limit_in_bytes > 0 {
        rb = rb.memory(
            LinuxMemoryBuilder::default()
                .limit(resources.memory_limit_in_bytes)
                .build()
                .map_err(spec_err)?,
        );
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
    if !privileged {
        let masked = if sc.masked_paths.is_empty() {
            oci_spec::runtime::get_default_maskedpaths()
        } else {
            sc.masked_paths.clone()
        };
        let ro = if sc.readonly_paths.is_empty() {
            oci_spec::runtime::get_default_readonly_paths()
        } else {
            sc.readonly_paths.clone()
        };
        linux = linux.masked_paths(masked).readonly_paths(ro);
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
    let _ = st;

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

fn all_caps() -> HashSet<Capability> {
    [
        "AUDIT_CONTROL",
        "AUDIT_READ",
        "AUDIT_WRITE",
        "BLOCK_SUSPEND",
        "BPF",
        "CHECKPOINT_RESTORE",
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "IPC_LOCK",
        "IPC_OWNER",
        "KILL",
        "LEASE",
        "LINUX_IMMUTABLE",
        "MAC_ADMIN",
        "MAC_OVERRIDE",
        "MKNOD",
        "NET_ADMIN",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_RAW",
        "PERFMON",
        "SETGID",
        "SETFCAP",
        "SETPCAP",
        "SETUID",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_CHROOT",
        "SYS_MODULE",
        "SYS_NICE",
        "SYS_PACCT",
        "SYS_PTRACE",
        "SYS_RAWIO",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "SYSLOG",
        "WAKE_ALARM",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
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

    #[test]
    fn caps_parse() {
        assert_eq!(parse_caps(&["CAP_CHOWN".into(), "kill".into()]).len(), 2);
        assert_eq!(all_caps().len(), 41);
    }
}
