//! Pod and container securityContext to the CRI, as upstream's kubelet converts them
//! (`pkg/kubelet/kuberuntime/security_context.go`): the container's settings override the pod's
//! (runAsUser, runAsGroup, runAsNonRoot, seccompProfile); capabilities, privileged,
//! readOnlyRootFilesystem and allowPrivilegeEscalation are the container's; supplementalGroups
//! and fsGroup are the pod's; `runAsNonRoot` is checked against the image's user before the
//! container is created.

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SeccompProfile};

use skiff_proto::cri;

/// Where `Localhost` seccomp profiles live (`<root-dir>/seccomp`, upstream's default).
pub fn seccomp_root(root_dir: &std::path::Path) -> std::path::PathBuf {
    root_dir.join("seccomp")
}

fn pod_sc(pod: &Pod) -> PodSecurityContext {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default()
}

/// The effective user id: the container's runAsUser, else the pod's.
pub fn run_as_user(pod: &Pod, c: &Container) -> Option<i64> {
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or(pod_sc(pod).run_as_user)
}

fn seccomp(profile: Option<&SeccompProfile>, root: &std::path::Path) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    match profile {
        Some(p) if p.type_ == "RuntimeDefault" => cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
        Some(p) if p.type_ == "Localhost" => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: root
                .join(p.localhost_profile.as_deref().unwrap_or(""))
                .to_string_lossy()
                .into_owned(),
        },
        // Unconfined, and no profile (upstream's default without SeccompDefault).
        _ => cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        },
    }
}

/// The /proc and /sys paths masked for `procMount: Default` (upstream's `defaultMaskedPaths`).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The /proc paths made read-only for `procMount: Default` (upstream's `defaultReadonlyPaths`).
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Whether container `c` asks for an unmasked /proc (`procMount: Unmasked`).
pub fn unmasked(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.proc_mount.as_deref())
        == Some("Unmasked")
}

/// The CRI security context of container `c` of `pod` (namespace options are the caller's).
pub fn container_security(
    pod: &Pod,
    c: &Container,
    seccomp_root: &std::path::Path,
) -> cri::LinuxContainerSecurityContext {
    let psc = pod_sc(pod);
    let sc = c.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let caps = sc.capabilities.clone().unwrap_or_default();
    let mut groups: Vec<i64> = psc.supplemental_groups.clone().unwrap_or_default();
    if let Some(fs) = psc.fs_group {
        if !groups.contains(&fs) {
            groups.push(fs);
        }
    }
    let profile = sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref());
    cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            add_ambient_capabilities: vec![],
        }),
        privileged,
        run_as_user: run_as_user(pod, c).map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(psc.run_as_group)
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: groups,
        supplemental_groups_policy: match psc.supplemental_groups_policy.as_deref() {
            Some("Strict") => cri::SupplementalGroupsPolicy::Strict as i32,
            _ => cri::SupplementalGroupsPolicy::Merge as i32,
        },
        // allowPrivilegeEscalation: false (privileged containers may always escalate).
        no_new_privs: !privileged && sc.allow_privilege_escalation == Some(false),
        seccomp: (!privileged).then(|| seccomp(profile, seccomp_root)),
        // `procMount: Unmasked` drops the masked and read-only /proc paths; `Default` (or none)
        // sends upstream's lists.
        masked_paths: if unmasked(c) {
            vec![]
        } else {
            DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect()
        },
        readonly_paths: if unmasked(c) {
            vec![]
        } else {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect()
        },
        ..Default::default()
    }
}

/// Whether [`verify_run_as_non_root`] needs the image's user (runAsNonRoot without a runAsUser).
pub fn needs_image_user(pod: &Pod, c: &Container) -> bool {
    let non_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc(pod).run_as_non_root)
        .unwrap_or(false);
    non_root && run_as_user(pod, c).is_none()
}

/// Upstream's `verifyRunAsNonRoot`: with runAsNonRoot, the container must run with a non-zero
/// uid, given explicitly or by the image (`image_uid`; `image_user` when the image names a user
/// instead). The error is the CreateContainerConfigError message.
pub fn verify_run_as_non_root(
    pod: &Pod,
    c: &Container,
    image_uid: Option<i64>,
    image_user: &str,
) -> Result<(), String> {
    let non_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc(pod).run_as_non_root)
        .unwrap_or(false);
    if !non_root || c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
        return Ok(());
    }
    let pod_ref = format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or("")
    );
    if let Some(uid) = run_as_user(pod, c) {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy (pod: \"{pod_ref}\", container: {})",
                c.name
            ));
        }
        return Ok(());
    }
    match image_uid {
        Some(0) | None if image_user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{pod_ref}\", container: {})",
            c.name
        )),
        Some(_) => Ok(()),
        None => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root (pod: \"{pod_ref}\", container: {})",
            c.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Capabilities, PodSpec, SecurityContext};

    fn pod(psc: PodSecurityContext) -> Pod {
        Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("sk-p".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                security_context: Some(psc),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn container_overrides_pod_and_groups_include_fs_group() {
        let p = pod(PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            fs_group: Some(2000),
            supplemental_groups: Some(vec![4000]),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        });
        let c = Container {
            name: "c".into(),
            security_context: Some(SecurityContext {
                run_as_user: Some(1001),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sc = container_security(&p, &c, std::path::Path::new("/k/seccomp"));
        assert_eq!(sc.run_as_user.unwrap().value, 1001);
        assert_eq!(sc.run_as_group.unwrap().value, 3000);
        assert_eq!(sc.supplemental_groups, vec![4000, 2000]);
        assert!(sc.no_new_privs);
        assert_eq!(sc.capabilities.unwrap().drop_capabilities, vec!["ALL"]);
        assert_eq!(
            sc.seccomp.unwrap().profile_type,
            cri::security_profile::ProfileType::RuntimeDefault as i32
        );
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_image() {
        let p = pod(PodSecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        });
        let c = Container {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(
            verify_run_as_non_root(&p, &c, Some(0), "").unwrap_err(),
            "container has runAsNonRoot and image will run as root (pod: \"sk-p_default(u1)\", container: c)"
        );
        assert!(verify_run_as_non_root(&p, &c, Some(1000), "").is_ok());
        assert!(verify_run_as_non_root(&p, &c, None, "nginx")
            .unwrap_err()
            .contains("non-numeric user (nginx)"));
    }
}
