//! The systemd cgroup driver (`--cgroup-driver=systemd`, KubeletConfiguration `cgroupDriver`), as
//! upstream's kubelet: the QoS hierarchy is made of systemd slices, created and removed through
//! systemd's D-Bus API on the system bus, never by writing the cgroup files.
//!
//! Names: the kubelet keeps its cgroupfs-style names (`/kubepods/burstable/pod<uid>`, see
//! [`crate::cgroups`]) and converts them at the edges, as upstream's `CgroupName.ToSystemd`:
//! every component has its `-` turned into `_`, the components are joined with `-` and `.slice`
//! is added (`kubepods-burstable-pod<uid with _>.slice`); the slice's path is systemd's expansion
//! (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`), which is also
//! the cgroup parent the CRI gets (containerd and Skiff's CRI then run the containers in
//! `<prefix>-<id>.scope` units below it). The Guaranteed pods' slices sit directly in
//! `kubepods.slice`, and `--cgroup-root` is given as a slice (`/` or `/sk.slice`: pods then go
//! to `sk-kubepods.slice`).
//!
//! A slice is made with `StartTransientUnit` (mode `replace`) with runc's properties for a
//! kubelet-made slice (`Description`, `Wants` of the parent slice, `DefaultDependencies=no`,
//! `CPUAccounting`, `MemoryAccounting`, `TasksAccounting`, `BlockIOAccounting` or
//! `IOAccounting`) and the resources: on cgroup v1 `CPUShares`, `CPUQuotaPerSecUSec`,
//! `MemoryLimit`; on v2 `CPUWeight`, `CPUQuotaPerSecUSec`, `MemoryMax`. A slice that exists
//! already (a restarted kubelet) gets the resources with `SetUnitProperties`. Removal is
//! `StopUnit`, which also removes the cgroup folders.

use std::time::Duration;

use zbus::zvariant::{OwnedValue, Value};

use crate::cgroups::{CgroupLimits, CgroupMode, QUOTA_PERIOD};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// Errors of the systemd driver.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to systemd on the system bus: {0}")]
    Connect(#[source] Box<zbus::Error>),
    #[error("systemd {call} {unit} failed: {source}")]
    Call {
        call: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("invalid cgroup name {0:?} for the systemd driver")]
    Name(String),
}

/// Upstream's `escapeSystemdCgroupName`.
pub fn escape(part: &str) -> String {
    part.replace('-', "_")
}

/// Upstream's `unescapeSystemdCgroupName`.
pub fn unescape(part: &str) -> String {
    part.replace('_', "-")
}

/// The components of a cgroupfs-style name (`/kubepods/burstable/pod1`).
fn components(name: &str) -> Vec<&str> {
    name.split('/').filter(|p| !p.is_empty()).collect()
}

/// The slice (unit) name of a cgroupfs-style name: `-.slice` for the root.
pub fn slice_name(name: &str) -> String {
    let parts = components(name);
    if parts.is_empty() {
        return "-.slice".into();
    }
    let escaped: Vec<String> = parts.iter().map(|p| escape(p)).collect();
    format!("{}.slice", escaped.join("-"))
}

/// systemd's expansion of a slice name into its path (`a-b.slice` -> `/a.slice/a-b.slice`).
pub fn expand_slice(slice: &str) -> Result<String, SystemdError> {
    let bad = || SystemdError::Name(slice.to_string());
    let base = slice.strip_suffix(".slice").ok_or_else(bad)?;
    if base == "-" {
        return Ok("/".into());
    }
    if base.is_empty() || slice.contains('/') || base.split('-').any(str::is_empty) {
        return Err(bad());
    }
    let mut out = String::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push('/');
        out.push_str(&prefix);
        out.push_str(".slice");
    }
    Ok(out)
}

/// Upstream's `CgroupName.ToSystemd`: the slice path of a cgroupfs-style name.
pub fn to_systemd(name: &str) -> String {
    expand_slice(&slice_name(name)).unwrap_or_else(|_| "/".into())
}

/// The kubelet's name for `--cgroup-root` given in systemd form (upstream's
/// `ParseSystemdToCgroupName`): `/sk.slice` -> `/sk`, `/` -> `/`. A root that is not a slice is
/// taken as cgroupfs-style.
pub fn parse_root(root: &str) -> String {
    let base = root.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    match base.strip_suffix(".slice") {
        None if base.is_empty() => "/".into(),
        None => root.to_string(),
        Some("-") => "/".into(),
        Some(b) => format!(
            "/{}",
            b.split('-').map(unescape).collect::<Vec<_>>().join("/")
        ),
    }
}

/// The uid of a pod slice (`kubepods-burstable-pod12_ab.slice` -> `12-ab`).
pub fn pod_uid_of_slice(file_name: &str) -> Option<String> {
    let base = file_name.strip_suffix(".slice")?;
    let last = base.rsplit('-').next()?;
    last.strip_prefix("pod").map(unescape)
}

/// systemd's root cgroup as its PID 1 sees it, as runc finds it: the slices' folders are below
/// it in every hierarchy.
pub fn root_cgroup() -> String {
    skiff_systemd_root::root()
}

/// runc's rounding of a quota into `CPUQuotaPerSecUSec` (a multiple of 10 ms).
pub fn quota_per_sec(quota_us: i64) -> u64 {
    let per_sec = (quota_us.max(0) as u64) * 1_000_000 / QUOTA_PERIOD;
    if !per_sec.is_multiple_of(10_000) {
        (per_sec / 10_000 + 1) * 10_000
    } else {
        per_sec
    }
}

fn v<'a>(x: impl Into<Value<'a>>) -> OwnedValue {
    let val: Value<'a> = x.into();
    val.try_to_owned().expect("plain values have no fds")
}

/// The resource properties of `limits` for the host's cgroup mode.
pub fn resource_properties(mode: CgroupMode, limits: &CgroupLimits) -> Vec<(String, OwnedValue)> {
    let mut p = Vec::new();
    if let Some(s) = limits.cpu_shares {
        match mode {
            CgroupMode::V1 => p.push(("CPUShares".to_string(), v(s))),
            CgroupMode::V2 => p.push((
                "CPUWeight".to_string(),
                v(crate::cgroups::shares_to_weight(s)),
            )),
        }
    }
    if let Some(q) = limits.cpu_quota {
        p.push(("CPUQuotaPerSecUSec".to_string(), v(quota_per_sec(q))));
    }
    if let Some(m) = limits.memory {
        let name = match mode {
            CgroupMode::V1 => "MemoryLimit",
            CgroupMode::V2 => "MemoryMax",
        };
        p.push((name.to_string(), v(m.max(0) as u64)));
    }
    p
}

/// systemd's manager on the system bus.
#[derive(Debug)]
pub struct Systemd {
    conn: zbus::Connection,
}

impl Systemd {
    pub async fn connect() -> Result<Self, SystemdError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        Ok(Systemd { conn })
    }

    /// Creates slice `unit` (a child of `parent`) with `limits`, or updates an existing one.
    pub async fn ensure_slice(
        &self,
        unit: &str,
        parent: &str,
        mode: CgroupMode,
        limits: &CgroupLimits,
    ) -> Result<(), SystemdError> {
        let mut props: Vec<(String, OwnedValue)> = vec![
            (
                "Description".into(),
                v(format!("libcontainer container {unit}")),
            ),
            ("DefaultDependencies".into(), v(false)),
            ("CPUAccounting".into(), v(true)),
            ("MemoryAccounting".into(), v(true)),
            ("TasksAccounting".into(), v(true)),
        ];
        if parent != "-.slice" {
            props.push(("Wants".into(), v(vec![parent.to_string()])));
        }
        props.push(match mode {
            CgroupMode::V1 => ("BlockIOAccounting".into(), v(true)),
            CgroupMode::V2 => ("IOAccounting".into(), v(true)),
        });
        props.extend(resource_properties(mode, limits));
        let aux: Vec<(String, Vec<(String, OwnedValue)>)> = Vec::new();
        let res = self
            .conn
            .call_method(
                Some(SYSTEMD),
                SYSTEMD_PATH,
                Some(SYSTEMD_MANAGER),
                "StartTransientUnit",
                &(unit, "replace", &props, &aux),
            )
            .await;
        match res {
            Ok(_) => {
                self.wait_active(unit).await;
                Ok(())
            }
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.UnitExists" =>
            {
                let resources = resource_properties(mode, limits);
                if resources.is_empty() {
                    return Ok(());
                }
                self.conn
                    .call_method(
                        Some(SYSTEMD),
                        SYSTEMD_PATH,
                        Some(SYSTEMD_MANAGER),
                        "SetUnitProperties",
                        &(unit, true, &resources),
                    )
                    .await
                    .map_err(|source| SystemdError::Call {
                        call: "SetUnitProperties",
                        unit: unit.to_string(),
                        source: Box::new(source),
                    })?;
                Ok(())
            }
            Err(source) => Err(SystemdError::Call {
                call: "StartTransientUnit",
                unit: unit.to_string(),
                source: Box::new(source),
            }),
        }
    }

    /// The unit's `ActiveState` (`active`, `inactive`...; `inactive` for an unknown unit).
    pub async fn active_state(&self, unit: &str) -> Result<String, SystemdError> {
        let err = |source| SystemdError::Call {
            call: "GetUnit",
            unit: unit.to_string(),
            source: Box::new(source),
        };
        let reply = match self
            .conn
            .call_method(
                Some(SYSTEMD),
                SYSTEMD_PATH,
                Some(SYSTEMD_MANAGER),
                "GetUnit",
                &(unit,),
            )
            .await
        {
            Ok(r) => r,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                return Ok("inactive".into())
            }
            Err(e) => return Err(err(e)),
        };
        let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize().map_err(err)?;
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Unit", "ActiveState"),
            )
            .await
            .map_err(err)?;
        let val: OwnedValue = reply.body().deserialize().map_err(err)?;
        Ok(String::try_from(val).unwrap_or_default())
    }

    /// Waits (at most 5 s) for a started unit's job to make it active, as runc waits for the
    /// job: the cgroup exists when this returns.
    async fn wait_active(&self, unit: &str) {
        for _ in 0..50 {
            if matches!(self.active_state(unit).await.as_deref(), Ok("active")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::warn!(%unit, "systemd unit not active after 5 s");
    }

    /// Stops (and so removes) `unit`; an unknown unit is fine.
    pub async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        match self
            .conn
            .call_method(
                Some(SYSTEMD),
                SYSTEMD_PATH,
                Some(SYSTEMD_MANAGER),
                "StopUnit",
                &(unit, "replace"),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            Err(source) => Err(SystemdError::Call {
                call: "StopUnit",
                unit: unit.to_string(),
                source: Box::new(source),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_upstream() {
        assert_eq!(slice_name("/kubepods"), "kubepods.slice");
        assert_eq!(
            slice_name("/kubepods/burstable/pod1234-ab-cd"),
            "kubepods-burstable-pod1234_ab_cd.slice"
        );
        assert_eq!(slice_name("/"), "-.slice");
        assert_eq!(
            to_systemd("/kubepods/burstable/pod12-ab"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_ab.slice"
        );
        assert_eq!(
            to_systemd("/kubepods/pod12"),
            "/kubepods.slice/kubepods-pod12.slice"
        );
        assert_eq!(to_systemd("/"), "/");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert!(expand_slice("a--b.slice").is_err());
        assert!(expand_slice("a.scope").is_err());
        assert_eq!(parse_root("/"), "/");
        assert_eq!(parse_root("/sk1.slice"), "/sk1");
        assert_eq!(parse_root("/a.slice/a-b.slice"), "/a/b");
        assert_eq!(parse_root("-.slice"), "/");
        assert_eq!(
            pod_uid_of_slice("kubepods-burstable-pod12_ab.slice").as_deref(),
            Some("12-ab")
        );
        assert_eq!(pod_uid_of_slice("kubepods-burstable.slice"), None);
    }

    #[test]
    fn root_and_properties() {
        assert_eq!(
            skiff_systemd_root::root_of("9:name=systemd:/init.scope\n0::/init.scope\n"),
            ""
        );
        assert_eq!(
            skiff_systemd_root::root_of("1:name=systemd:/box/init.scope\n"),
            "/box"
        );
        assert_eq!(skiff_systemd_root::root_of("0::/\n"), "");
        assert_eq!(quota_per_sec(75_000), 750_000);
        assert_eq!(quota_per_sec(1_000), 10_000);
        assert_eq!(quota_per_sec(1_500), 20_000);
        let p = resource_properties(
            CgroupMode::V1,
            &CgroupLimits {
                cpu_shares: Some(102),
                cpu_quota: Some(50_000),
                memory: Some(64 << 20),
            },
        );
        let names: Vec<String> = p.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names, ["CPUShares", "CPUQuotaPerSecUSec", "MemoryLimit"]);
        let values: Vec<u64> = p
            .into_iter()
            .map(|(_, x)| u64::try_from(x).unwrap())
            .collect();
        assert_eq!(values, [102, 500_000, 64 << 20]);
    }
}
