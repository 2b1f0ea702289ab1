//! Memory taken by the documents: `cargo run --release -p skiff-openapi --example memory`.
//! Prints RSS (and its peak) after each step, and the bytes the caches hold.
use std::time::Instant;

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn report(step: &str, t: Instant) {
    println!(
        "{step:<40} rss {:>6} KiB (anon {:>6}, file {:>6})  peak {:>6} KiB  cache {:>8} B  {:?}",
        status("VmRSS:"),
        status("RssAnon:"),
        status("RssFile:"),
        status("VmHWM:"),
        skiff_openapi::cache_heap_bytes(),
        t.elapsed()
    );
}

fn main() {
    let t = Instant::now();
    report("start", t);
    let rs = skiff_openapi::builtin_resources();
    report("builtin_resources", t);
    let mut gvs: Vec<(String, String)> = rs
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    if std::env::var_os("V2_FIRST").is_some() {
        let t = Instant::now();
        let d = skiff_openapi::cached_v2(&rs);
        report(&format!("v2 first ({} B json)", d.json_len()), t);
    }
    let t = Instant::now();
    let d = skiff_openapi::cached_v3_group_version("", "v1", &rs).expect("doc");
    report(&format!("v3 api/v1 ({} B json)", d.json_len()), t);
    let t = Instant::now();
    for (g, v) in &gvs {
        skiff_openapi::cached_v3_group_version(g, v, &rs);
    }
    report(&format!("v3 all {} group-versions", gvs.len()), t);
    let t = Instant::now();
    let d = skiff_openapi::cached_v2(&rs);
    report(&format!("v2 ({} B json)", d.json_len()), t);
    let t = Instant::now();
    let n = skiff_openapi::tree_heap_bytes();
    report(&format!("unknown-field tree ({n} B)"), t);
    let t = Instant::now();
    let d = skiff_openapi::cached_v3_group_version("apps", "v1", &rs).expect("doc");
    report("v3 apps/v1 again (cached)", t);
    let t = Instant::now();
    let _ = d.json();
    report("decompress apps/v1", t);
    // What the API server gets back by trimming after serving (skiff-memtrim, as its shims do).
    let t = Instant::now();
    skiff_memtrim::trim_heap();
    report("after malloc_trim", t);
}
