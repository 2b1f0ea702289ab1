//! seccomp profiles of containers: `RuntimeDefault` (an allow-list with the behaviour of the
//! profile containerd and moby ship: deny by default with EPERM; namespace and admin syscalls
//! only with the capability that makes them safe), `Localhost` (a JSON profile from the node, in
//! the Docker/containerd format or the OCI one) and `Unconfined` (none). Privileged containers
//! get none whatever they ask.

use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_proto::cri;

use super::security::cap_bit;
use crate::error::{CriError, Result};

/// Syscalls every container may make.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
    "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll",
    "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile",
    "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid",
    "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid",
    "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat",
    "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4",
    "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo",
    "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
];

/// Syscalls allowed only to a container holding one of the capabilities.
#[rustfmt::skip]
const BY_CAPABILITY: &[(&[&str], &[&str])] = &[
    (
        &["SYS_ADMIN"],
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
            "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
            "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        ],
    ),
    (&["SYS_BOOT"], &["reboot"]),
    (&["SYS_CHROOT"], &["chroot"]),
    (&["SYS_MODULE"], &["delete_module", "init_module", "finit_module"]),
    (&["SYS_PACCT"], &["acct"]),
    (
        &["SYS_PTRACE"],
        &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
    ),
    (&["SYS_RAWIO"], &["iopl", "ioperm"]),
    (&["SYS_TIME"], &["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    (&["SYS_TTY_CONFIG"], &["vhangup"]),
    (&["SYS_NICE"], &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (&["SYSLOG"], &["syslog"]),
    (&["BPF"], &["bpf"]),
    (&["PERFMON"], &["perf_event_open"]),
    (&["DAC_READ_SEARCH"], &["open_by_handle_at"]),
];

/// `personality(2)` personas allowed to anyone: Linux, UNAME26, ADDR_NO_RANDOMIZE... and query.
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// clone(2) flags that make namespaces (CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER |
/// NEWPID | NEWNET): without CAP_SYS_ADMIN, clone must not set any of them.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;
/// AF_VSOCK: host sockets stay closed.
const AF_VSOCK: u64 = 40;

fn native_arches() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    } else {
        &["SCMP_ARCH_NATIVE"]
    }
}

/// The RuntimeDefault profile for a container with capability mask `caps`, as OCI JSON.
pub(crate) fn default_profile(caps: u64) -> Value {
    let has = |names: &[&str]| {
        names
            .iter()
            .any(|n| cap_bit(n).is_some_and(|b| caps & (1 << b) != 0))
    };
    let mut allowed: Vec<&str> = ALLOWED.to_vec();
    if cfg!(target_arch = "x86_64") {
        allowed.extend(["arch_prctl", "modify_ldt"]);
    }
    for (need, names) in BY_CAPABILITY {
        if has(need) {
            allowed.extend(names.iter());
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    let mut syscalls = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    for p in PERSONAS {
        syscalls.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]}));
    }
    syscalls.push(json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]}));
    if !has(&["SYS_ADMIN"]) {
        // s390 swaps clone's first two arguments; the flags are argument 0 everywhere else.
        syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NS_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        // ENOSYS makes libc fall back to clone(2), whose flags can be checked.
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": libc::EPERM,
        "architectures": native_arches(),
        "syscalls": syscalls,
    })
}

/// A profile file in the Docker/containerd format (what Kubernetes' Localhost profiles are) or
/// the OCI one: `archMap`, `name`, `includes`/`excludes` are the Docker extras.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileFile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<SyscallRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallRule {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

fn this_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        std::env::consts::ARCH
    }
}

/// Converts a profile file's text to OCI JSON for a container with capability mask `caps`.
fn convert(text: &str, caps: u64) -> std::result::Result<Value, String> {
    let p: ProfileFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let has_cap = |c: &String| cap_bit(c).is_some_and(|b| caps & (1 << b) != 0);
    let mut arches = p.architectures.clone();
    for m in &p.arch_map {
        arches.push(m.architecture.clone());
        arches.extend(m.sub_architectures.iter().cloned());
    }
    let mut syscalls = Vec::new();
    for r in &p.syscalls {
        if !r.includes.caps.is_empty() && !r.includes.caps.iter().all(has_cap) {
            continue;
        }
        if !r.includes.arches.is_empty() && !r.includes.arches.iter().any(|a| a == this_arch()) {
            continue;
        }
        if r.excludes.caps.iter().any(has_cap) || r.excludes.arches.iter().any(|a| a == this_arch())
        {
            continue;
        }
        let mut names = r.names.clone();
        names.extend(r.name.iter().cloned());
        if names.is_empty() {
            return Err(format!("a syscall rule ({}) names no syscall", r.action));
        }
        let mut rule = json!({"names": names, "action": r.action});
        if let Some(e) = r.errno_ret {
            rule["errnoRet"] = json!(e);
        }
        if !r.args.is_empty() {
            rule["args"] = Value::Array(r.args.clone());
        }
        syscalls.push(rule);
    }
    let mut out = json!({"defaultAction": p.default_action, "syscalls": syscalls});
    if let Some(e) = p.default_errno_ret {
        out["defaultErrnoRet"] = json!(e);
    }
    if !arches.is_empty() {
        out["architectures"] = json!(arches);
    }
    if !p.flags.is_empty() {
        out["flags"] = json!(p.flags);
    }
    Ok(out)
}

/// Loads a Localhost profile from `path` (absolute).
pub(crate) fn load_localhost(path: &str, caps: u64) -> Result<LinuxSeccomp> {
    if !Path::new(path).is_absolute() {
        return Err(CriError::InvalidArgument(format!(
            "seccomp Localhost profile {path:?}: the path must be absolute"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CriError::InvalidArgument(format!("seccomp Localhost profile {path}: {e}")))?;
    let oci = convert(&text, caps).map_err(|e| {
        CriError::InvalidArgument(format!(
            "seccomp Localhost profile {path}: not a valid profile: {e}"
        ))
    })?;
    serde_json::from_value(oci).map_err(|e| {
        CriError::InvalidArgument(format!(
            "seccomp Localhost profile {path}: not a valid profile: {e}"
        ))
    })
}

/// The seccomp filter of a container: none for privileged ones; otherwise as `seccomp` (or the
/// deprecated `seccomp_profile_path`) asks; neither set means unconfined (containerd 1.6 and the
/// kubelet's default before SeccompDefault).
pub(crate) fn for_container(
    sc: &cri::LinuxContainerSecurityContext,
    caps: u64,
) -> Result<Option<LinuxSeccomp>> {
    if sc.privileged {
        return Ok(None);
    }
    enum Want<'a> {
        Default,
        Unconfined,
        Localhost(&'a str),
    }
    // `seccomp_profile_path` is deprecated in the CRI but still what older kubelets send.
    #[allow(deprecated)]
    let old_path = sc.seccomp_profile_path.as_str();
    let want = match &sc.seccomp {
        Some(p) => match cri::security_profile::ProfileType::try_from(p.profile_type) {
            Ok(cri::security_profile::ProfileType::RuntimeDefault) => Want::Default,
            Ok(cri::security_profile::ProfileType::Unconfined) => Want::Unconfined,
            Ok(cri::security_profile::ProfileType::Localhost) => {
                Want::Localhost(p.localhost_ref.as_str())
            }
            Err(_) => {
                return Err(CriError::InvalidArgument(format!(
                    "seccomp profile type {} is not RuntimeDefault, Unconfined or Localhost",
                    p.profile_type
                )))
            }
        },
        None => match old_path {
            "" | "unconfined" => Want::Unconfined,
            "runtime/default" | "docker/default" => Want::Default,
            other => match other.strip_prefix("localhost/") {
                Some(path) => Want::Localhost(path),
                None => {
                    return Err(CriError::InvalidArgument(format!(
                        "seccomp_profile_path {other:?}: expected runtime/default, unconfined or localhost/<path>"
                    )))
                }
            },
        },
    };
    match want {
        Want::Unconfined => Ok(None),
        Want::Default => serde_json::from_value(default_profile(caps))
            .map(Some)
            .map_err(|e| CriError::Spec(format!("the RuntimeDefault seccomp profile: {e}"))),
        Want::Localhost(path) => load_localhost(path, caps).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_gates_admin_syscalls_on_caps() {
        let without: LinuxSeccomp = serde_json::from_value(default_profile(0)).unwrap();
        let names = |s: &LinuxSeccomp| -> Vec<String> {
            s.syscalls().as_ref().unwrap()[0].names().to_vec()
        };
        assert!(names(&without).iter().any(|n| n == "read"));
        assert!(!names(&without).iter().any(|n| n == "sethostname"));
        assert!(!names(&without).iter().any(|n| n == "mount"));
        let admin = 1 << cap_bit("SYS_ADMIN").unwrap();
        let with: LinuxSeccomp = serde_json::from_value(default_profile(admin)).unwrap();
        assert!(names(&with).iter().any(|n| n == "sethostname"));
        assert_eq!(with.default_errno_ret(), Some(libc::EPERM as u32));
    }

    #[test]
    fn docker_format_profiles_convert() {
        let text = r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
            "syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                        {"name":"mount","action":"SCMP_ACT_ERRNO","excludes":{"caps":["CAP_SYS_ADMIN"]}}]}"#;
        let admin = 1 << cap_bit("SYS_ADMIN").unwrap();
        let v = convert(text, admin).unwrap();
        let s: LinuxSeccomp = serde_json::from_value(v).unwrap();
        assert_eq!(s.syscalls().as_ref().unwrap().len(), 1);
        assert_eq!(s.architectures().as_ref().unwrap().len(), 2);
        let s: LinuxSeccomp = serde_json::from_value(convert(text, 0).unwrap()).unwrap();
        assert_eq!(s.syscalls().as_ref().unwrap().len(), 2);
        assert!(convert("{", 0).is_err());
    }

    #[test]
    fn missing_localhost_profile_names_the_path() {
        let e = load_localhost("/nonexistent/sk-profile.json", 0).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/sk-profile.json"),
            "{e}"
        );
    }
}
