//! RunPodSandbox: pause process, netns bind mount, CNI ADD, per-sandbox /etc files.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use skiff_proto::cri;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cni::{result_ips, Cni, PodRef};
use crate::error::{CriError, Result};
use crate::server::State;
use crate::store::sandbox::{Sandbox, SandboxState};
use crate::util::{new_id, write_fast, write_json_atomic};

/// NamespaceMode::NODE in CRI.
pub(crate) const NS_NODE: i32 = cri::NamespaceMode::Node as i32;

pub(crate) fn namespace_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

/// Whether the sandbox's pause holds a PID namespace for the pod: only when the sandbox's
/// namespace options ask for pid mode POD (the kubelet's `shareProcessNamespace`).
pub(crate) fn holds_pid_ns(config: &cri::PodSandboxConfig) -> bool {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|o| o.pid == cri::NamespaceMode::Pod as i32)
}

pub(crate) fn cni_for(st: &State) -> Cni<'_> {
    Cni {
        conf_dir: &st.cfg.cni_conf_dir,
        bin_dir: &st.cfg.cni_bin_dir,
        timeout: Duration::from_secs(st.cfg.cni_timeout_secs),
    }
}

pub(crate) async fn run(
    st: &State,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse> {
    let config = req
        .config
        .ok_or_else(|| CriError::InvalidArgument("RunPodSandbox needs a sandbox config".into()))?;
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| CriError::InvalidArgument("RunPodSandbox needs sandbox metadata".into()))?;
    if meta.name.is_empty() {
        return Err(CriError::InvalidArgument(
            "sandbox metadata needs a name".into(),
        ));
    }
    st.cfg.handler(&req.runtime_handler)?;
    let userns = super::userns::for_sandbox(
        &config,
        st.cfg.supports_user_namespaces(&req.runtime_handler),
        &req.runtime_handler,
    )?;
    let id = new_id();
    tracing::Span::current().record("sandbox", id.as_str());
    let mut sb = Sandbox::new(id.clone(), config, req.runtime_handler);
    sb.userns = userns;
    let name = sb.name();
    if let Some(other) = st
        .sandboxes
        .list()
        .into_iter()
        .find(|o| o.name() == name && o.state != SandboxState::NotReady)
    {
        return Err(CriError::AlreadyExists(format!(
            "sandbox name {name:?} is reserved by sandbox {}: stop and remove it first",
            other.id
        )));
    }
    sb.host_network = namespace_options(&sb.config).network == NS_NODE;
    sb.cgroup_parent = sb
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| st.cfg.default_cgroup_parent.clone());
    if st.cfg.systemd_cgroup {
        // A slice (the kubelet's systemd form): its path below systemd's root. Anything else
        // stays a cgroupfs path, as containerd does.
        let root = crate::cgroups::systemd::root();
        if let Some(path) = crate::cgroups::systemd::parent_path(&sb.cgroup_parent, &root) {
            sb.cgroup_parent = path;
            sb.systemd_cgroup = true;
        }
    }
    st.sandboxes.put(sb.clone())?;

    match setup(st, &mut sb).await {
        Ok(()) => {
            sb.state = SandboxState::Ready;
            st.sandboxes.put(sb.clone())?;
            tracing::info!(ip = %sb.ip, pause = sb.pause_pid, "sandbox ready");
            Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
        }
        Err(e) => {
            tracing::warn!(error = %e, "RunPodSandbox failed; cleaning up");
            if let Err(ce) = super::sandbox_stop::teardown(st, &sb).await {
                tracing::warn!(error = %ce, "cleanup after failed RunPodSandbox");
            }
            let _ = crate::util::remove_dir_all_quiet(&st.sandboxes.record_dir(&id));
            let _ = st.sandboxes.delete(&id);
            Err(e)
        }
    }
}

async fn setup(st: &State, sb: &mut Sandbox) -> Result<()> {
    let dir = st.sandboxes.record_dir(&sb.id);
    write_etc_files(&dir, sb)?;
    if namespace_options(&sb.config).ipc != NS_NODE {
        // One /dev/shm for the whole pod, as its containers share the IPC namespace.
        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(CriError::io("creating shm dir", &shm))?;
        crate::sys::mount_shm(&shm)?;
    }

    let hostname = hostname_of(sb);
    let (pid, start_time) = start_pause(st, sb, &dir, &hostname).await?;
    sb.pause_pid = pid;
    sb.pause_start_time = start_time;
    st.sandboxes.put(sb.clone())?;
    // The pause process lives in the pod's cgroup, `<cgroup_parent>/<sandbox id>`
    // (`cri-skiff-<sandbox id>.scope` in the pod's slice with the systemd driver).
    let cg = crate::cgroups::sandbox_path(sb);
    crate::cgroups::enter(&cg, pid).map_err(|e| {
        CriError::Monitor(format!("moving the pause process into cgroup {cg}: {e}"))
    })?;

    if sb.host_network {
        return Ok(());
    }
    let netns = st.cfg.netns_dir.join(&sb.id);
    std::fs::create_dir_all(&st.cfg.netns_dir)
        .map_err(CriError::io("creating netns dir", &st.cfg.netns_dir))?;
    std::fs::File::create(&netns).map_err(CriError::io("creating netns file", &netns))?;
    sb.netns_path = Some(netns.clone());
    st.sandboxes.put(sb.clone())?;
    crate::sys::bind_mount(Path::new(&format!("/proc/{pid}/ns/net")), &netns)?;

    let meta = sb.metadata();
    let pod = PodRef {
        namespace: &meta.namespace,
        name: &meta.name,
        uid: &meta.uid,
        sandbox_id: &sb.id,
    };
    let runtime_config = runtime_config(&sb.config);
    let _no_gc = st.cni_gc_lock.read().await;
    // Before ADD: what DEL needs if we die before the result is written (a server killed mid
    // ADD leaves plugin state behind; the teardown at restart DELs with this).
    if let Ok(Some((_, conflist))) = cni_for(st).load_conflist() {
        let pending = crate::cni::CniCache {
            conflist,
            runtime_config: runtime_config.clone(),
            ifname: "eth0".into(),
            result: json!({}),
        };
        crate::util::write_json_fast(&dir.join("cni-cache.json"), &pending)?;
    }
    let cache = cni_for(st).add(&pod, &netns, runtime_config).await;
    let cache = match cache {
        Ok(c) => c,
        Err(e) => {
            // Plugins may have allocated before failing: DEL with what we know (libcni does too),
            // once; the teardown that follows must not fail on the same broken plugin.
            if let Ok(Some((_, conflist))) = cni_for(st).load_conflist() {
                let partial = crate::cni::CniCache {
                    conflist,
                    runtime_config: sb_runtime_config(sb),
                    ifname: "eth0".into(),
                    result: json!({}),
                };
                let _ = cni_for(st).del(&pod, Some(&netns), &partial).await;
            }
            let _ = std::fs::remove_file(dir.join("cni-cache.json"));
            return Err(e);
        }
    };
    write_json_atomic(&dir.join("cni-cache.json"), &cache)?;
    let ips = result_ips(&cache.result);
    sb.ip = ips.first().cloned().unwrap_or_default();
    sb.additional_ips = ips.into_iter().skip(1).collect();
    Ok(())
}

fn sb_runtime_config(sb: &Sandbox) -> Value {
    runtime_config(&sb.config)
}

/// libcni runtime config from the sandbox: port mappings (for `portmap`).
fn runtime_config(config: &cri::PodSandboxConfig) -> Value {
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let proto = match cri::Protocol::try_from(p.protocol).unwrap_or(cri::Protocol::Tcp) {
                cri::Protocol::Tcp => "tcp",
                cri::Protocol::Udp => "udp",
                cri::Protocol::Sctp => "sctp",
            };
            json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto, "hostIP": p.host_ip})
        })
        .collect();
    json!({ "portMappings": ports })
}

pub(crate) fn hostname_of(sb: &Sandbox) -> String {
    if !sb.config.hostname.is_empty() {
        sb.config.hostname.clone()
    } else {
        let mut h = sb.metadata().name;
        h.truncate(63);
        h
    }
}

/// `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` for the sandbox's containers.
fn write_etc_files(dir: &Path, sb: &Sandbox) -> Result<()> {
    let hostname = if sb.host_network {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| hostname_of(sb))
    } else {
        hostname_of(sb)
    };
    write_fast(&dir.join("hostname"), format!("{hostname}\n").as_bytes())?;
    let hosts = if sb.host_network {
        std::fs::read("/etc/hosts").unwrap_or_default()
    } else {
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n".to_vec()
    };
    write_fast(&dir.join("hosts"), &hosts)?;
    let resolv = match &sb.config.dns_config {
        Some(dns)
            if !dns.servers.is_empty() || !dns.searches.is_empty() || !dns.options.is_empty() =>
        {
            let mut s = String::new();
            if !dns.searches.is_empty() {
                s.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            for ns in &dns.servers {
                s.push_str(&format!("nameserver {ns}\n"));
            }
            if !dns.options.is_empty() {
                s.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            s.into_bytes()
        }
        _ => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    write_fast(&dir.join("resolv.conf"), &resolv)?;
    Ok(())
}

/// Starts `skiff-monitor pause` in a new session and waits for its `ready` line.
async fn start_pause(
    st: &State,
    sb: &mut Sandbox,
    dir: &Path,
    hostname: &str,
) -> Result<(i32, u64)> {
    let log = dir.join("pause.log");
    let stderr = std::fs::File::create(&log).map_err(CriError::io("creating", &log))?;
    // CRI NamespaceMode POD for pid: the pause holds a PID namespace all containers join.
    let pid_ns = holds_pid_ns(&sb.config);
    let mut cmd = tokio::process::Command::new(&st.cfg.monitor_bin);
    cmd.args(["pause", "--hostname", hostname])
        .args(["--pid-ns", if pid_ns { "yes" } else { "no" }])
        .args(["--sandbox", &sb.id]);
    // The pause is also the pod monitor: it runs and monitors the pod's containers (asked over
    // `<dir>/monitor.sock`). With a PID namespace or a user namespace the process we start stays
    // on the host as the pod monitor and its child is the pause (PID 1 of the pod with a PID
    // namespace; root of the pod's user namespace, whose maps the monitor writes, with one),
    // which dies with it.
    let abs = std::path::absolute(dir).map_err(CriError::io("resolving", dir))?;
    cmd.arg("--socket-dir").arg(abs);
    let userns = sb.userns.is_some();
    if let Some(u) = &sb.userns {
        let line =
            |maps: &[cri::IdMapping]| crate::userns::map_text(maps).trim_end().replace('\n', ",");
        cmd.arg("--uid-map").arg(line(&u.uids));
        cmd.arg("--gid-map").arg(line(&u.gids));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        CriError::Monitor(format!(
            "cannot start {} pause: {e} (is skiff-monitor installed?)",
            st.cfg.monitor_bin.display(),
        ))
    })?;
    let mut pid = child.id().unwrap_or(0) as i32;
    // Recorded at once: a server killed before `ready` leaves a pause its restart must find.
    // (With --pid-ns this is the pod monitor, the pause's parent: the pause dies with it, and
    // the restart's scan by `--sandbox` finds both.)
    sb.pause_pid = pid;
    sb.pause_start_time = crate::sys::proc_stat(pid).map(|(t, _)| t).unwrap_or(0);
    if let Err(e) = st.sandboxes.put(sb.clone()) {
        let _ = crate::sys::signal(pid, nix::sys::signal::Signal::SIGKILL);
        return Err(e);
    }
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    let mut ready = matches!(read, Ok(Ok(_))) && line.trim() == "ready";
    if pid_ns || userns {
        // `ready <pid>`: the pause is the forked child. The process we started stays as the
        // pod monitor (and is what `pause_children` holds).
        if let Some(p) = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse::<i32>().ok())
        {
            ready = true;
            pid = p;
        }
    }
    let start_time = crate::sys::proc_stat(pid).map(|(t, _)| t).unwrap_or(0);
    st.pause_children
        .lock()
        .expect("pause map poisoned")
        .insert(sb.id.clone(), child);
    if !ready {
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        // Make sure teardown kills it.
        crate::sys::signal(pid, nix::sys::signal::Signal::SIGKILL)?;
        if err.contains("the kernel refused") {
            // Maps the kernel will not take (e.g. host ids it cannot map): the request's fault.
            return Err(CriError::InvalidArgument(
                err.trim().replace("skiff-monitor: ", ""),
            ));
        }
        return Err(CriError::Monitor(format!(
            "pause process did not report ready: {}",
            err.trim()
        )));
    }
    Ok((pid, start_time))
}

pub(crate) fn sandbox_dir(st: &State, id: &str) -> PathBuf {
    st.sandboxes.record_dir(id)
}
