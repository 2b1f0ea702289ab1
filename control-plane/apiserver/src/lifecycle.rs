//! Side effects of writes that upstream spreads over registries and controllers, kept inside
//! the API server until the controllers issue moves them out: Service IP and node port
//! allocation, what every namespace holds (`default` ServiceAccount, `kube-root-ca.crt`), and
//! cascading deletion (Background, Foreground and Orphan propagation through ownerReferences).
//! Namespace deletion is the namespace controller's (skiff-controllers' `namespace` module).

use crate::handlers::{self, Ctx, Target};
use crate::registry::Resource;
use crate::status::{FieldError, StatusError};
use crate::wire::Format;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

/// One service IP range of one family (`--service-cidr` holds one or two, k3s and
/// kube-apiserver's `--service-cluster-ip-range`: IPv4, IPv6 or a pair of both).
#[derive(Clone, Debug)]
pub struct IpRange {
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    base: u128,
    size: u128,
    cidr: String,
}

impl IpRange {
    fn parse(cidr: &str) -> Result<Self, String> {
        let (ip, len) = cidr.split_once('/').ok_or_else(|| {
            format!("--service-cidr {cidr:?}: expected a CIDR like 10.43.0.0/16 or fd00:43::/112")
        })?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|e| format!("--service-cidr {cidr:?}: {e}"))?;
        let len: u32 = len
            .parse()
            .map_err(|_| format!("--service-cidr {cidr:?}: bad prefix length"))?;
        let (family, bits, min, value) = match ip {
            IpAddr::V4(a) => ("IPv4", 32u32, 8u32, u128::from(u32::from(a))),
            // As kube-apiserver: an IPv6 service range is at most 2^20 addresses (/108).
            IpAddr::V6(a) => ("IPv6", 128, 108, u128::from(a)),
        };
        if len < min || len > bits - 2 {
            return Err(format!(
                "--service-cidr {cidr:?}: prefix length must be {min}..{}",
                bits - 2
            ));
        }
        let size = 1u128 << (bits - len);
        let base = value & !(size - 1);
        let cidr = format!("{}/{len}", addr_of(family, base));
        Ok(Self {
            family,
            base,
            size,
            cidr,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let v = ip_value(ip);
        family_of(ip) == self.family && v > self.base && v < self.base + self.size - 1
    }

    fn at(&self, off: u128) -> IpAddr {
        addr_of(self.family, self.base + off)
    }
}

fn ip_value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn addr_of(family: &str, v: u128) -> IpAddr {
    if family == "IPv4" {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The service IP ranges (one per family, the first is the primary) and the node port range.
#[derive(Clone, Debug)]
pub struct ServiceRanges {
    ranges: Vec<IpRange>,
    ports: (u16, u16),
}

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

impl ServiceRanges {
    /// `cidrs`: one CIDR, or an IPv4 and an IPv6 one separated by a comma (either order; the
    /// first is the primary family, as upstream).
    pub fn parse(cidrs: &str, ports: (u16, u16)) -> Result<Self, String> {
        let ranges = cidrs
            .split(',')
            .map(|c| IpRange::parse(c.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        match ranges.as_slice() {
            [_] => {}
            [a, b] if a.family != b.family => {}
            _ => {
                return Err(format!(
                    "--service-cidr {cidrs:?}: expected one CIDR or a dual-stack pair (one IPv4, one IPv6)"
                ))
            }
        }
        Ok(Self { ranges, ports })
    }

    /// The first address of the primary range: the `kubernetes` Service's.
    pub fn first(&self) -> IpAddr {
        self.ranges[0].at(1)
    }

    /// The primary family (`IPv4` or `IPv6`).
    pub fn primary_family(&self) -> &'static str {
        self.ranges[0].family
    }

    fn range(&self, family: &str) -> Option<&IpRange> {
        self.ranges.iter().find(|r| r.family == family)
    }

    fn dual(&self) -> bool {
        self.ranges.len() == 2
    }
}

/// What the start-up repair check found about one cluster IP of a Service.
#[derive(Debug, PartialEq)]
pub enum IpCheck {
    Ok,
    NotValid,
    FamilyNotConfigured(&'static str),
    /// Family, the configured range of it.
    OutOfRange(&'static str, String),
    AlreadyAllocated(&'static str),
    /// Not recorded: recorded now for the Service.
    Repaired(&'static str),
}

/// Checks `ip` of Service `owner` (`namespace/name`) against the ranges and the allocation
/// records (upstream's repair controller), recording it when the record is missing.
pub async fn check_cluster_ip(ctx: &Ctx, ip: &str, owner: &str) -> IpCheck {
    let Ok(a) = ip.parse::<IpAddr>() else {
        return IpCheck::NotValid;
    };
    let fam = family_of(a);
    let Some(range) = ctx.services.range(fam) else {
        return IpCheck::FamilyNotConfigured(fam);
    };
    // The first address of a range is the `kubernetes` Service's; it is in range.
    if !range.contains(a) {
        return IpCheck::OutOfRange(fam, range.cidr.clone());
    }
    let key = format!("{IP_PREFIX}{a}");
    match ctx.store.get(&key).await {
        Ok(Some(kv)) if kv.value == owner.as_bytes() => IpCheck::Ok,
        Ok(Some(_)) => IpCheck::AlreadyAllocated(fam),
        Ok(None) => {
            let _ = ctx.store.create(&key, owner.as_bytes().to_vec()).await;
            IpCheck::Repaired(fam)
        }
        Err(_) => IpCheck::Ok,
    }
}

/// What the start-up repair check found about one node port of a Service.
#[derive(Debug, PartialEq)]
pub enum PortCheck {
    Ok,
    /// Outside `--service-node-port-range` (its record, if any, is dropped, as upstream's
    /// rebuilt allocation cannot hold it).
    OutOfRange,
    AlreadyAllocated,
    /// Not recorded: recorded now for the Service.
    Repaired,
}

/// The node port range as upstream prints it (`30000-32767`).
pub fn node_port_range(ctx: &Ctx) -> String {
    format!("{}-{}", ctx.services.ports.0, ctx.services.ports.1)
}

/// Checks node port `port` of Service `owner` (`namespace/name`) against the range and the
/// allocation records (upstream's portallocator repair controller), recording it when the
/// record is missing.
pub async fn check_node_port(ctx: &Ctx, port: u64, owner: &str) -> PortCheck {
    let (lo, hi) = ctx.services.ports;
    let key = format!("{PORT_PREFIX}{port}");
    let record = ctx.store.get(&key).await;
    if port < u64::from(lo) || port > u64::from(hi) {
        if matches!(&record, Ok(Some(kv)) if kv.value == owner.as_bytes()) {
            release(ctx, &key).await;
        }
        return PortCheck::OutOfRange;
    }
    match record {
        Ok(Some(kv)) if kv.value == owner.as_bytes() => PortCheck::Ok,
        Ok(Some(_)) => PortCheck::AlreadyAllocated,
        Ok(None) => match ctx.store.create(&key, owner.as_bytes().to_vec()).await {
            Ok(_) => PortCheck::Repaired,
            // Taken meanwhile by another Service.
            Err(_) => PortCheck::AlreadyAllocated,
        },
        Err(_) => PortCheck::Ok,
    }
}

/// Takes `key` for `owner`: true when it is now `owner`'s (newly, or it already was: a Service
/// update keeps what the Service holds). Keys taken newly are pushed to `fresh`.
async fn take(ctx: &Ctx, key: String, owner: &str, fresh: &mut Vec<String>) -> bool {
    if ctx
        .store
        .create(&key, owner.as_bytes().to_vec())
        .await
        .is_ok()
    {
        fresh.push(key);
        return true;
    }
    matches!(ctx.store.get(&key).await, Ok(Some(kv)) if kv.value == owner.as_bytes())
}

async fn release(ctx: &Ctx, key: &str) {
    let _ = ctx.store.delete(key, None).await;
}

fn svc_owner(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn invalid_svc(obj: &Value, e: FieldError) -> StatusError {
    StatusError::invalid(
        "Service",
        obj["metadata"]["name"].as_str().unwrap_or(""),
        "",
        &[e],
    )
}

fn invalid_named(name: &str, e: FieldError) -> StatusError {
    StatusError::invalid("Service", name, "", &[e])
}

/// Allocates what a new object needs before it is stored.
pub async fn before_create(
    ctx: &Ctx,
    res: &Resource,
    obj: &mut Value,
    dry_run: bool,
) -> Result<(), StatusError> {
    if !(res.group.is_empty() && res.kind == "Service") {
        return Ok(());
    }
    allocate(ctx, obj, None, dry_run).await.map(|_| ())
}

/// A Service update: what the new spec needs that the Service does not hold yet is allocated
/// (NodePorts when it becomes a NodePort or LoadBalancer, a ClusterIP when it stops being an
/// ExternalName); returns the keys taken newly, for [`after_service_update`].
pub async fn before_service_update(
    ctx: &Ctx,
    res: &Resource,
    obj: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<Vec<String>, StatusError> {
    if !(res.group.is_empty() && res.kind == "Service") {
        return Ok(vec![]);
    }
    allocate(ctx, obj, old, dry_run).await
}

/// After a Service update: on success, what the old spec held and the new one does not is
/// released; on failure, what [`before_service_update`] took newly.
pub async fn after_service_update(ctx: &Ctx, old: &Value, new: Option<&Value>, fresh: &[String]) {
    match new {
        Some(new) => {
            let keep = service_keys(new);
            for k in service_keys(old) {
                if !keep.contains(&k) {
                    release(ctx, &k).await;
                }
            }
        }
        None => release_all(ctx, fresh).await,
    }
}

/// Reserves the Service's ClusterIP and NodePorts (given or free ones, filled in); returns the
/// keys taken newly.
async fn allocate(
    ctx: &Ctx,
    obj: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<Vec<String>, StatusError> {
    let owner = svc_owner(obj);
    let obj_name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let spec = &mut obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if ty == "ExternalName" {
        return Ok(vec![]);
    }
    let r = &ctx.services;
    let mut reserved: Vec<String> = vec![];
    if let Err(errs) = init_ip_families(r, spec, old) {
        return Err(StatusError::invalid(
            "Service",
            obj_name.as_str(),
            "",
            &errs,
        ));
    }
    if let Err(e) = alloc_cluster_ips(ctx, &obj_name, spec, &owner, dry_run, &mut reserved).await {
        release_all(ctx, &reserved).await;
        return Err(e);
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let alloc_lb = spec["allocateLoadBalancerNodePorts"] != false;
        if let Some(ports) = spec["ports"].as_array_mut() {
            for (i, p) in ports.iter_mut().enumerate() {
                if ty == "LoadBalancer" && !alloc_lb && p["nodePort"].is_null() {
                    continue;
                }
                match p["nodePort"].as_u64() {
                    Some(n) => {
                        let n = n as u16;
                        if n < r.ports.0 || n > r.ports.1 {
                            return release_then_err(ctx, &reserved, invalid_svc(&Value::Null, FieldError::invalid(format!("spec.ports[{i}].nodePort"), &n.to_string(), format!("provided port is not in the valid range. The range of valid ports is {}-{}", r.ports.0, r.ports.1)))).await;
                        }
                        let key = format!("{PORT_PREFIX}{n}");
                        if !dry_run && !take(ctx, key, &owner, &mut reserved).await {
                            return release_then_err(
                                ctx,
                                &reserved,
                                invalid_svc(
                                    &Value::Null,
                                    FieldError::invalid(
                                        format!("spec.ports[{i}].nodePort"),
                                        &n.to_string(),
                                        "provided port is already allocated",
                                    ),
                                ),
                            )
                            .await;
                        }
                    }
                    None if !dry_run => {
                        let got = free_port(ctx, r, &owner, &mut reserved).await;
                        let Some(n) = got else {
                            release_all(ctx, &reserved).await;
                            return Err(StatusError::internal(
                                "failed to allocate a nodePort: range is full",
                            ));
                        };
                        p["nodePort"] = json!(n);
                    }
                    None => {}
                }
            }
        }
        if ty == "LoadBalancer"
            && spec["externalTrafficPolicy"] == "Local"
            && spec["healthCheckNodePort"].is_null()
            && !dry_run
        {
            if let Some(n) = free_port(ctx, r, &owner, &mut reserved).await {
                spec["healthCheckNodePort"] = json!(n);
            }
        }
    }
    Ok(reserved)
}

/// `spec.<field>: Invalid value: []string{...}: detail`, as upstream prints a list value.
fn invalid_list(field: &str, values: &[String], detail: &str) -> FieldError {
    let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    FieldError {
        value: None,
        detail: format!("[]string{{{}}}: {detail}", list.join(", ")),
        ..FieldError::invalid(field, "", "")
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn other_family(f: &str) -> &'static str {
    if f == "IPv4" {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Fills `ipFamilyPolicy` and `ipFamilies` from the request, the old object and the cluster's
/// ranges, as upstream's service REST storage (`initIPFamilyFields`) does before allocating:
/// the policy defaults to the old one (else SingleStack; RequireDualStack for a headless
/// Service without selector), families are inferred from given clusterIPs, completed with the
/// cluster's other family for the dual-stack policies, and checked against what the cluster
/// serves. A SingleStack update that keeps the IPs drops the secondary IP and family.
fn init_ip_families(
    r: &ServiceRanges,
    spec: &mut Value,
    old: Option<&Value>,
) -> Result<(), Vec<FieldError>> {
    let old_spec = old
        .map(|o| &o["spec"])
        .filter(|s| s["type"] != "ExternalName");
    if spec["ipFamilyPolicy"].is_null() {
        spec["ipFamilyPolicy"] = match old_spec.map(|s| &s["ipFamilyPolicy"]) {
            Some(p) if !p.is_null() => p.clone(),
            _ if spec["clusterIP"] == "None" && selectorless(spec) => json!("RequireDualStack"),
            _ => json!("SingleStack"),
        };
    }
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or("").to_string();
    let mut ips = strings(&spec["clusterIPs"]);
    let mut fams = strings(&spec["ipFamilies"]);
    let mut errs = vec![];
    if let Some(os) = old_spec {
        let (old_ips, old_fams) = (strings(&os["clusterIPs"]), strings(&os["ipFamilies"]));
        if policy == "SingleStack" {
            if ips == old_ips && ips.len() > 1 {
                ips.truncate(1);
            }
            if fams == old_fams && fams.len() > 1 {
                fams.truncate(1);
            }
        } else {
            if ips.len() < old_ips.len() {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    &policy,
                    "must be 'SingleStack' to release the secondary cluster IP",
                ));
            }
            if fams.len() < old_fams.len() {
                errs.push(FieldError::invalid(
                    "spec.ipFamilyPolicy",
                    &policy,
                    "must be 'SingleStack' to release the secondary IP family",
                ));
            }
        }
    }
    if policy == "SingleStack" {
        if ips.len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &policy,
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified",
            ));
        }
        if fams.len() == 2 {
            errs.push(FieldError::invalid(
                "spec.ipFamilyPolicy",
                &policy,
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
            ));
        }
    }
    // Families of given IPs that the request leaves out.
    for (i, ip) in ips.iter().enumerate() {
        let Ok(a) = ip.parse::<IpAddr>() else { break };
        if i >= fams.len() {
            let f = family_of(a);
            if r.range(f).is_none() {
                errs.push(invalid_list(
                    &format!("spec.clusterIPs[{i}]"),
                    &ips,
                    &format!("{f} is not configured on this cluster"),
                ));
            } else {
                fams.push(f.to_string());
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let headless = spec["clusterIP"] == "None";
    if headless && selectorless(spec) {
        // Headless without selector: any families, even on a single-stack cluster.
        if fams.is_empty() {
            fams.push(r.primary_family().to_string());
        }
        if fams.len() < 2 && policy != "SingleStack" {
            let o = other_family(&fams[0]);
            fams.push(o.to_string());
        }
        spec["ipFamilies"] = json!(fams);
        set_ips(spec, &ips);
        return Ok(());
    }
    if policy == "RequireDualStack" && !r.dual() {
        errs.push(FieldError::invalid(
            "spec.ipFamilyPolicy",
            &policy,
            "this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in fams.iter().enumerate() {
        if r.range(f).is_none() {
            errs.push(FieldError::invalid(
                format!("spec.ipFamilies[{i}]"),
                f,
                "not configured on this cluster",
            ));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    if fams.is_empty() {
        fams.push(r.primary_family().to_string());
    }
    if policy != "SingleStack" && fams.len() == 1 && r.dual() {
        let o = other_family(&fams[0]);
        fams.push(o.to_string());
    }
    spec["ipFamilies"] = json!(fams);
    set_ips(spec, &ips);
    Ok(())
}

fn set_ips(spec: &mut Value, ips: &[String]) {
    if ips.is_empty() {
        if let Some(m) = spec.as_object_mut() {
            m.remove("clusterIPs");
        }
    } else {
        spec["clusterIPs"] = json!(ips);
    }
}

fn selectorless(spec: &Value) -> bool {
    spec["selector"].as_object().is_none_or(|m| m.is_empty())
}

/// Reserves a free address of `range`, scanning from a random start (like upstream's bitmap
/// allocator); the low addresses (the `kubernetes` Service's, cluster DNS's `.10`) are taken
/// last.
async fn free_ip(
    ctx: &Ctx,
    range: &IpRange,
    owner: &str,
    fresh: &mut Vec<String>,
) -> Option<IpAddr> {
    let span = range.size.saturating_sub(2).max(1);
    let start = uuid::Uuid::new_v4().as_u128() % span;
    for i in 0..span {
        let off = 1 + (start + i) % span;
        if off < 11 && i < span.saturating_sub(10) {
            continue;
        }
        let a = range.at(off);
        if take(ctx, format!("{IP_PREFIX}{a}"), owner, fresh).await {
            return Some(a);
        }
    }
    None
}

/// Reserves the Service's cluster IPs, one per family in `spec.ipFamilies` (given ones or
/// free ones, filled in).
async fn alloc_cluster_ips(
    ctx: &Ctx,
    name: &str,
    spec: &mut Value,
    owner: &str,
    dry_run: bool,
    reserved: &mut Vec<String>,
) -> Result<(), StatusError> {
    let r = &ctx.services;
    if spec["clusterIP"] == "None" {
        return Ok(());
    }
    let fams = strings(&spec["ipFamilies"]);
    let mut ips = strings(&spec["clusterIPs"]);
    for (i, fam) in fams.iter().enumerate() {
        let Some(range) = r.range(fam) else { continue };
        match ips.get(i).filter(|s| !s.is_empty()).cloned() {
            Some(ip) => {
                let a: Option<IpAddr> = ip.parse().ok();
                match a {
                    Some(a) if range.contains(a) => {
                        if !dry_run
                            && !take(ctx, format!("{IP_PREFIX}{a}"), owner, reserved).await
                        {
                            return Err(invalid_named(name, invalid_list("spec.clusterIPs", &ips, &format!("failed to allocate IP {ip}: provided IP is already allocated"))));
                        }
                    }
                    _ => {
                        return Err(invalid_named(
                            name,
                            invalid_list(
                                "spec.clusterIPs",
                                &ips,
                                &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", range.cidr),
                            ),
                        ))
                    }
                }
            }
            None if dry_run => {}
            None => {
                let Some(a) = free_ip(ctx, range, owner, reserved).await else {
                    return Err(StatusError::internal(format!(
                        "failed to allocate a serviceIP: range is full ({})",
                        range.cidr
                    )));
                };
                if i < ips.len() {
                    ips[i] = a.to_string();
                } else {
                    ips.push(a.to_string());
                }
            }
        }
    }
    if let Some(first) = ips.first() {
        spec["clusterIP"] = json!(first);
        spec["clusterIPs"] = json!(ips);
    }
    Ok(())
}

async fn release_all(ctx: &Ctx, keys: &[String]) {
    for k in keys {
        release(ctx, k).await;
    }
}

async fn release_then_err(
    ctx: &Ctx,
    keys: &[String],
    e: StatusError,
) -> Result<Vec<String>, StatusError> {
    release_all(ctx, keys).await;
    Err(e)
}

/// Reserves a free node port, scanning from a random start.
async fn free_port(
    ctx: &Ctx,
    r: &ServiceRanges,
    owner: &str,
    fresh: &mut Vec<String>,
) -> Option<u32> {
    let span = (r.ports.1 - r.ports.0 + 1) as u32;
    let start = (uuid::Uuid::new_v4().as_u128() % span as u128) as u32;
    for k in 0..span {
        let n = r.ports.0 as u32 + (start + k) % span;
        if take(ctx, format!("{PORT_PREFIX}{n}"), owner, fresh).await {
            return Some(n);
        }
    }
    None
}

fn service_keys(obj: &Value) -> Vec<String> {
    let mut keys = vec![];
    let spec = &obj["spec"];
    if let Some(ips) = spec["clusterIPs"].as_array() {
        for ip in ips
            .iter()
            .filter_map(Value::as_str)
            .filter(|i| *i != "None")
        {
            keys.push(format!("{IP_PREFIX}{ip}"));
        }
    }
    for p in spec["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_u64() {
            keys.push(format!("{PORT_PREFIX}{n}"));
        }
    }
    if let Some(n) = spec["healthCheckNodePort"].as_u64() {
        keys.push(format!("{PORT_PREFIX}{n}"));
    }
    keys
}

/// Releases what `before_create` took when the create itself failed.
pub async fn undo_create(ctx: &Ctx, res: &Resource, obj: &Value) {
    if res.group.is_empty() && res.kind == "Service" {
        for k in service_keys(obj) {
            release(ctx, &k).await;
        }
    }
}

/// Quota status follows writes of the kinds quotas count (in namespaces that have quotas).
/// The namespace's quotas are looked up here (a read of the store's memory, as admission's
/// quota check does), and a task to recompute them is started only when there are some: a
/// task per write woke a second runtime worker for every create in namespaces without quotas.
async fn refresh_quota(ctx: &Ctx, res: &Resource, obj: &Value) {
    if !res.namespaced {
        return;
    }
    let Some(ns) = obj["metadata"]["namespace"].as_str() else {
        return;
    };
    if !crate::quota::has_quotas(ctx, ns).await {
        return;
    }
    let Some(ctx) = ctx.self_ref() else { return };
    let ns = ns.to_string();
    tokio::spawn(async move { crate::quota::refresh_status(&ctx, &ns).await });
}

/// What follows a create: quota status, and a new namespace gets its `default`
/// ServiceAccount and the `kube-root-ca.crt` ConfigMap.
pub async fn after_create(ctx: &Ctx, res: &Resource, obj: &Value) {
    after_update(ctx, res, obj).await;
    refresh_quota(ctx, res, obj).await;
    if res.group.is_empty() && res.kind == "Namespace" {
        if let Some(ns) = obj["metadata"]["name"].as_str() {
            namespace_contents(ctx, ns).await;
        }
    }
}

/// What follows a create or update: a CRD's resources are served.
pub async fn after_update(ctx: &Ctx, res: &Resource, obj: &Value) {
    if res.group == crate::rbac::GROUP {
        ctx.rbac.invalidate();
    }
    if res.group == "admissionregistration.k8s.io" {
        ctx.webhooks.invalidate();
    }
    if res.group == "apiextensions.k8s.io" && res.kind == "CustomResourceDefinition" {
        crate::crd::established(ctx, obj).await;
    }
}

/// Creates (when missing) what every namespace holds.
pub async fn namespace_contents(ctx: &Ctx, ns: &str) {
    let reg = &ctx.registry;
    if let Some(sa) = reg.by_kind("", "ServiceAccount") {
        let mut o = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        create_internal(ctx, &sa, &mut o).await;
    }
    if let Some(cm) = reg.by_kind("", "ConfigMap") {
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
                         "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": ctx.ca_pem}});
        create_internal(ctx, &cm, &mut o).await;
    }
}

/// Stores an object the server makes itself (no admission), unless it exists.
pub async fn create_internal(ctx: &Ctx, res: &Resource, obj: &mut Value) -> bool {
    let key = res.key(
        obj["metadata"]["namespace"].as_str(),
        obj["metadata"]["name"].as_str().unwrap_or(""),
    );
    if matches!(ctx.store.get(&key).await, Ok(Some(_))) {
        return false;
    }
    handlers::stamp_new(obj);
    res.strategy.prepare_create(obj);
    res.strategy.set_defaults(obj);
    crate::managed::record(obj, None, "kube-apiserver", "Update", &res.api_version());
    ctx.store
        .create(&key, handlers::encode_for(res, obj))
        .await
        .is_ok()
}

/// Seconds of grace a deletion gets (pods on a node: their own or the request's; else none).
pub fn grace_period(res: &Resource, obj: &Value, requested: Option<i64>) -> i64 {
    if !(res.group.is_empty() && res.kind == "Pod") {
        return 0;
    }
    let phase = obj["status"]["phase"].as_str().unwrap_or("");
    if obj["spec"]["nodeName"].as_str().unwrap_or("").is_empty()
        || phase == "Succeeded"
        || phase == "Failed"
    {
        return 0;
    }
    requested
        .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

pub fn default_propagation(_res: &Resource) -> &'static str {
    "Background"
}

/// After an object is gone: allocations are released, dependents collected (Background).
pub async fn after_delete(ctx: &Ctx, res: &Resource, gone: &Value) {
    refresh_quota(ctx, res, gone).await;
    if res.group == crate::rbac::GROUP {
        ctx.rbac.invalidate();
    }
    if res.group == "admissionregistration.k8s.io" {
        ctx.webhooks.invalidate();
    }
    if res.group == "apiextensions.k8s.io" && res.kind == "CustomResourceDefinition" {
        crate::crd::removed(ctx, gone).await;
    }
    if res.group.is_empty() && res.kind == "Service" {
        for k in service_keys(gone) {
            release(ctx, &k).await;
        }
    }
    if let Some(uid) = gone["metadata"]["uid"].as_str() {
        let ns = gone["metadata"]["namespace"].as_str().map(str::to_string);
        let uid = uid.to_string();
        if let Some(ctx) = ctx.self_ref() {
            tokio::spawn(async move {
                for (r, o) in dependents(&ctx, ns.as_deref(), &uid).await {
                    let _ = delete_object(&ctx, &r, &o, None).await;
                }
            });
        }
    }
}

/// After a deletion started (deletionTimestamp set): foreground and orphan finalizers worked
/// off.
pub fn after_delete_started(ctx: &Ctx, res: &Resource, obj: &Value) {
    // A terminating namespace is emptied and finalized by the namespace controller.
    if res.group.is_empty() && res.kind == "Namespace" {
        return;
    }
    let Some(ctx) = ctx.self_ref() else { return };
    let finalizers = finalizer_names(obj);
    let wants = |f: &str| finalizers.iter().any(|x| x == f);
    if !(wants("orphan") || wants("foregroundDeletion")) {
        return;
    }
    let res = Arc::new(res.clone());
    let obj = obj.clone();
    tokio::spawn(async move { finish_propagation(&ctx, &res, &obj).await });
}

/// The names in `metadata.finalizers`.
fn finalizer_names(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn finish_propagation(ctx: &Arc<Ctx>, res: &Arc<Resource>, obj: &Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let finalizers = finalizer_names(obj);
    let done: &str = if finalizers.iter().any(|f| f == "orphan") {
        for (r, mut o) in dependents(ctx, ns.as_deref(), &uid).await {
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|x| x["uid"] != uid.as_str());
            }
            let key = r.key(
                o["metadata"]["namespace"].as_str(),
                o["metadata"]["name"].as_str().unwrap_or(""),
            );
            let rv = o["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok());
            let _ = ctx
                .store
                .update(&key, handlers::encode_for(&r, &o), rv)
                .await;
        }
        "orphan"
    } else {
        // Foreground: dependents go first (each with foreground propagation), then the owner.
        for _ in 0..600 {
            let deps = dependents(ctx, ns.as_deref(), &uid).await;
            if deps.is_empty() {
                break;
            }
            for (r, o) in deps {
                if o["metadata"]["deletionTimestamp"].is_null() {
                    let _ = delete_object(ctx, &r, &o, Some("Foreground")).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        "foregroundDeletion"
    };
    remove_finalizer(ctx, res, obj, done).await;
}

async fn remove_finalizer(ctx: &Ctx, res: &Resource, obj: &Value, finalizer: &str) {
    let key = res.key(
        obj["metadata"]["namespace"].as_str(),
        obj["metadata"]["name"].as_str().unwrap_or(""),
    );
    for _ in 0..10 {
        let Ok(Some(kv)) = ctx.store.get(&key).await else {
            return;
        };
        let Ok(mut cur) = handlers::decode_as(res, &kv) else {
            return;
        };
        if let Some(f) = cur["metadata"]["finalizers"].as_array_mut() {
            f.retain(|x| x != finalizer);
        }
        let t = internal_target(ctx, res, &cur);
        match handlers::commit_update(ctx, &t, &cur, kv.mod_revision).await {
            Err(e) if e.code == 409 => continue,
            _ => return,
        }
    }
}

fn internal_target(_ctx: &Ctx, res: &Resource, obj: &Value) -> Target {
    Target {
        res: Arc::new(res.clone()),
        namespace: obj["metadata"]["namespace"].as_str().map(str::to_string),
        name: obj["metadata"]["name"].as_str().map(str::to_string),
        sub: None,
        query: vec![],
        accept: String::new(),
        content_type: "application/json".into(),
        format: Format::Json,
        gzip: false,
        user: Default::default(),
    }
}

/// Deletes one object as a client would (grace, finalizers, propagation).
fn delete_object<'a>(
    ctx: &'a Ctx,
    res: &'a Arc<Resource>,
    obj: &'a Value,
    propagation: Option<&'a str>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, StatusError>> + Send + 'a>> {
    // Boxed: deletion recurses through cascades (delete -> dependents -> delete).
    Box::pin(async move {
        let mut t = internal_target(ctx, res, obj);
        t.res = res.clone();
        if let Some(p) = propagation {
            t.query.push(("propagationPolicy".into(), p.into()));
        }
        handlers::delete_sync(ctx, &t).await
    })
}

/// Every stored resource once (versions sharing storage counted once).
fn stored_resources(ctx: &Ctx) -> Vec<Arc<Resource>> {
    let mut seen = std::collections::HashSet::new();
    ctx.registry
        .all()
        .into_iter()
        .filter(|r| r.stored() && r.preferred)
        .filter(|r| seen.insert(r.prefix()))
        .collect()
}

/// Objects whose ownerReferences name `uid` (in namespace `ns` for a namespaced owner).
async fn dependents(ctx: &Ctx, ns: Option<&str>, uid: &str) -> Vec<(Arc<Resource>, Value)> {
    let Some(keys) = ctx.owners.dependents_of(&*ctx.store, uid).await else {
        tracing::warn!(
            uid,
            "owner index not caught up; searching the store for dependents"
        );
        return search_dependents(ctx, ns, uid).await;
    };
    let resources: Vec<(String, Arc<Resource>)> = stored_resources(ctx)
        .into_iter()
        .map(|r| (r.prefix(), r))
        .collect();
    let mut out = vec![];
    for key in keys {
        let Some((prefix, r)) = resources.iter().find(|(p, _)| key.starts_with(p.as_str())) else {
            continue;
        };
        let in_scope = match ns {
            Some(ns) => {
                r.namespaced
                    && key[prefix.len()..]
                        .strip_prefix(ns)
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            None => true,
        };
        if !in_scope {
            continue;
        }
        let Ok(Some(kv)) = ctx.store.get(&key).await else {
            continue;
        };
        if let Some(o) = owned_by(r, &kv, uid) {
            out.push((r.clone(), o));
        }
    }
    out
}

/// The object in `kv` if its ownerReferences name `uid`.
fn owned_by(r: &Resource, kv: &skiff_store::KeyValue, uid: &str) -> Option<Value> {
    let o = handlers::decode_as(r, kv).ok()?;
    let owned = o["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|x| x["uid"] == uid));
    owned.then_some(o)
}

/// [`dependents`] without the owner index: every stored object of the scope is searched for
/// the uid's bytes (in place, by the store) before any is decoded.
async fn search_dependents(ctx: &Ctx, ns: Option<&str>, uid: &str) -> Vec<(Arc<Resource>, Value)> {
    let mut out = vec![];
    // A cluster-scoped owner's dependents may be anywhere.
    for r in stored_resources(ctx) {
        let prefix = match ns {
            Some(ns) if r.namespaced => format!("{}{ns}/", r.prefix()),
            Some(_) => continue,
            None => r.prefix(),
        };
        let Ok(kvs) = ctx.store.list_containing(&prefix, uid.as_bytes()).await else {
            continue;
        };
        for kv in kvs {
            if let Some(o) = owned_by(&r, &kv, uid) {
                out.push((r.clone(), o));
            }
        }
    }
    out
}
