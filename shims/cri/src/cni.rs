//! CNI with libcni semantics: the first `*.conflist` (lexical order) of the conf dir is the pod
//! network; ADD runs its plugins in order chaining `prevResult`, DEL in reverse order with the
//! cached ADD result; the loopback plugin brings `lo` up. The ADD result and the exact config used
//! are cached on disk so DEL works even after the conf dir changed or the server restarted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::error::{CriError, Result};

/// Pod identity passed to plugins in `CNI_ARGS`.
pub(crate) struct PodRef<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub sandbox_id: &'a str,
}

/// What `add` leaves on disk for `del`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CniCache {
    pub conflist: Value,
    pub runtime_config: Value,
    pub ifname: String,
    pub result: Value,
}

pub(crate) struct Cni<'a> {
    pub conf_dir: &'a Path,
    pub bin_dir: &'a Path,
    pub timeout: Duration,
}

const IFNAME: &str = "eth0";

/// File name of the default network [`default_bridge_conflist`] is installed as.
pub const DEFAULT_CONFLIST_NAME: &str = "10-skiff-bridge.conflist";

/// A default pod network for a standalone CRI server (what CRI-O's `10-crio-bridge.conflist`
/// is): bridge `bridge` as the pods' gateway with IP masquerade, host-local addresses from
/// `subnet`, a default route, and port mappings.
pub fn default_bridge_conflist(bridge: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "skiff-bridge",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
             "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// Why the pod network is not ready yet, naming the folder to fill and how.
pub(crate) fn not_configured(conf_dir: &Path) -> String {
    format!(
        "no CNI network config (*.conflist) in {}: install one there (`skiff cni-config` writes a default bridge network, {DEFAULT_CONFLIST_NAME})",
        conf_dir.display()
    )
}

impl Cni<'_> {
    /// The network's conflist, or None when the conf dir holds none yet.
    pub(crate) fn load_conflist(&self) -> Result<Option<(PathBuf, Value)>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(self.conf_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("conflist"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CriError::io("reading CNI conf dir", self.conf_dir)(e)),
        };
        files.sort();
        let Some(path) = files.into_iter().next() else {
            return Ok(None);
        };
        let data = std::fs::read(&path).map_err(CriError::io("reading CNI conflist", &path))?;
        let v: Value = serde_json::from_slice(&data)
            .map_err(|e| CriError::Cni(format!("{}: invalid JSON: {e}", path.display())))?;
        if !v.get("plugins").map(Value::is_array).unwrap_or(false) || v.get("name").is_none() {
            return Err(CriError::Cni(format!(
                "{}: a conflist needs \"name\" and a \"plugins\" list",
                path.display()
            )));
        }
        Ok(Some((path, v)))
    }

    /// CNI 1.1 GC of the current network: each plugin frees what it holds for attachments not
    /// in `valid` (sandbox ids; interface eth0). Networks older than 1.1.0 are skipped, as
    /// libcni does. Returns how many plugins were asked.
    pub(crate) async fn gc(&self, valid: &[String]) -> Result<usize> {
        let Some((_, conflist)) = self.load_conflist()? else {
            return Ok(0);
        };
        let version = conflist
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.0.0")
            .to_string();
        if !version_at_least(&version, (1, 1, 0)) {
            return Ok(0);
        }
        let attachments: Vec<Value> = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": IFNAME}))
            .collect();
        let name = conflist.get("name").cloned().unwrap_or(json!("skiff"));
        let plugins = conflist["plugins"].as_array().cloned().unwrap_or_default();
        let pod = PodRef {
            namespace: "",
            name: "",
            uid: "",
            sandbox_id: "",
        };
        let mut first_err = None;
        for plugin in &plugins {
            let mut conf = plugin_conf(plugin, &json!(version), &name, None, &json!({}));
            conf["cni.dev/valid-attachments"] = Value::Array(attachments.clone());
            if let Err(e) = self.exec("GC", &conf, &pod, Path::new(""), "").await {
                tracing::warn!(error = %e, "CNI GC failed");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(plugins.len()),
        }
    }

    /// Sets up the pod network in `netns`; returns the cache to keep for `del`.
    pub(crate) async fn add(
        &self,
        pod: &PodRef<'_>,
        netns: &Path,
        runtime_config: Value,
    ) -> Result<CniCache> {
        let (path, conflist) = self
            .load_conflist()?
            .ok_or_else(|| CriError::Cni(not_configured(self.conf_dir)))?;
        tracing::debug!(conflist = %path.display(), "CNI ADD");
        self.loopback("ADD", pod, netns).await?;
        let mut prev: Option<Value> = None;
        let version = conflist
            .get("cniVersion")
            .cloned()
            .unwrap_or(json!("1.0.0"));
        let name = conflist.get("name").cloned().unwrap_or(json!("skiff"));
        for plugin in conflist["plugins"].as_array().into_iter().flatten() {
            let conf = plugin_conf(plugin, &version, &name, prev.as_ref(), &runtime_config);
            let out = self.exec("ADD", &conf, pod, netns, IFNAME).await?;
            prev = Some(out);
        }
        let result = prev.unwrap_or(json!({}));
        Ok(CniCache {
            conflist,
            runtime_config,
            ifname: IFNAME.to_string(),
            result,
        })
    }

    /// Tears the pod network down: plugins in reverse order, each with the cached result.
    pub(crate) async fn del(
        &self,
        pod: &PodRef<'_>,
        netns: Option<&Path>,
        cache: &CniCache,
    ) -> Result<()> {
        let version = cache
            .conflist
            .get("cniVersion")
            .cloned()
            .unwrap_or(json!("1.0.0"));
        let name = cache
            .conflist
            .get("name")
            .cloned()
            .unwrap_or(json!("skiff"));
        let plugins: Vec<Value> = cache.conflist["plugins"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // No prevResult when ADD never finished (the pending cache).
        let prev = cache
            .result
            .as_object()
            .is_some_and(|o| !o.is_empty())
            .then_some(&cache.result);
        let mut first_err = None;
        for plugin in plugins.iter().rev() {
            let conf = plugin_conf(plugin, &version, &name, prev, &cache.runtime_config);
            let ns = netns.unwrap_or(Path::new(""));
            if let Err(e) = self.exec("DEL", &conf, pod, ns, &cache.ifname).await {
                tracing::warn!(error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        if let Some(ns) = netns {
            let _ = self.loopback("DEL", pod, ns).await;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn loopback(&self, cmd: &str, pod: &PodRef<'_>, netns: &Path) -> Result<()> {
        let conf = json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"});
        self.exec(cmd, &conf, pod, netns, "lo").await.map(|_| ())
    }

    async fn exec(
        &self,
        cmd: &str,
        conf: &Value,
        pod: &PodRef<'_>,
        netns: &Path,
        ifname: &str,
    ) -> Result<Value> {
        let typ = conf.get("type").and_then(Value::as_str).unwrap_or_default();
        if typ.is_empty() || typ.contains('/') {
            return Err(CriError::Cni(format!(
                "plugin config has an invalid \"type\": {typ:?}"
            )));
        }
        let bin = self.bin_dir.join(typ);
        if !bin.exists() {
            return Err(CriError::Cni(format!(
                "plugin {typ:?} not found in {}: install the CNI plugins there",
                self.bin_dir.display()
            )));
        }
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.sandbox_id, pod.uid
        );
        let stdin = serde_json::to_vec(conf).expect("JSON value serialises");
        let mut plugin_cmd = tokio::process::Command::new(&bin);
        // A plugin must not outlive a server killed mid-call: the restart's teardown DELs what
        // it made, and one still running could allocate after that.
        crate::sys::die_with_parent(plugin_cmd.as_std_mut());
        let mut child = plugin_cmd
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", pod.sandbox_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(CriError::io("running CNI plugin", &bin))?;
        if let Some(mut si) = child.stdin.take() {
            si.write_all(&stdin)
                .await
                .map_err(CriError::io("writing to CNI plugin", &bin))?;
        }
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| CriError::Cni(format!("{typ} {cmd} timed out after {:?}", self.timeout)))?
            .map_err(CriError::io("waiting for CNI plugin", &bin))?;
        if !out.status.success() {
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .map(|v| {
                    let m = v
                        .get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    match v.get("details").and_then(Value::as_str) {
                        Some(d) if !d.is_empty() => format!("{m}: {d}"),
                        _ => m,
                    }
                })
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(CriError::Cni(format!(
                "plugin {typ} {cmd} failed ({}): {msg}",
                out.status
            )));
        }
        if cmd == "ADD" {
            serde_json::from_slice(&out.stdout).map_err(|e| {
                CriError::Cni(format!("plugin {typ} ADD printed an invalid result: {e}"))
            })
        } else {
            Ok(Value::Null)
        }
    }
}

/// `v` (e.g. "1.1.0") is at least `min`.
fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    got >= min
}

fn plugin_conf(
    plugin: &Value,
    version: &Value,
    name: &Value,
    prev: Option<&Value>,
    runtime_config: &Value,
) -> Value {
    let mut conf = plugin.clone();
    let obj = conf.as_object_mut().expect("plugin entries are objects");
    obj.insert("cniVersion".into(), version.clone());
    obj.insert("name".into(), name.clone());
    if let Some(p) = prev {
        obj.insert("prevResult".into(), p.clone());
    }
    // Only the capabilities a plugin declares get their runtime config (libcni's rule).
    if let (Some(caps), Some(rc)) = (
        plugin.get("capabilities").and_then(Value::as_object),
        runtime_config.as_object(),
    ) {
        let mut selected = serde_json::Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = rc.get(cap) {
                    selected.insert(cap.clone(), v.clone());
                }
            }
        }
        if !selected.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(selected));
        }
    }
    conf
}

/// The pod's IPs from a CNI result: those on `eth0` (or any when no interface is named), IPv4 first.
pub(crate) fn result_ips(result: &Value) -> Vec<String> {
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    let eth0 = ifaces.and_then(|l| {
        l.iter()
            .position(|i| i.get("name").and_then(Value::as_str) == Some(IFNAME))
    });
    let mut ips: Vec<String> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(
            |ip| match (eth0, ip.get("interface").and_then(Value::as_u64)) {
                (Some(e), Some(i)) => e as u64 == i,
                _ => true,
            },
        )
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .collect();
    ips.sort_by_key(|a| a.contains(':'));
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_prefer_eth0_and_ipv4() {
        let r = json!({
            "interfaces": [{"name": "skbr"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.244.1.5/24", "interface": 2},
                {"address": "10.244.1.1/24", "interface": 0}
            ]
        });
        assert_eq!(result_ips(&r), ["10.244.1.5", "fd00::5"]);
    }

    #[test]
    fn gc_needs_cni_1_1() {
        assert!(version_at_least("1.1.0", (1, 1, 0)));
        assert!(version_at_least("1.2.0", (1, 1, 0)));
        assert!(!version_at_least("1.0.0", (1, 1, 0)));
        assert!(!version_at_least("0.4.0", (1, 1, 0)));
    }

    #[test]
    fn plugin_conf_chains_and_filters_capabilities() {
        let plugin = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        let rc = json!({"portMappings": [{"hostPort": 80}], "bandwidth": {}});
        let c = plugin_conf(
            &plugin,
            &json!("1.0.0"),
            &json!("net"),
            Some(&json!({"ips": []})),
            &rc,
        );
        assert_eq!(c["name"], "net");
        assert_eq!(c["prevResult"], json!({"ips": []}));
        assert_eq!(
            c["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 80}]})
        );
    }
}
