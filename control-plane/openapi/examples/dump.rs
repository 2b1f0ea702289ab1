//! Writes the documents to a directory and prints their sizes and build times:
//! `cargo run -p skiff-openapi --example dump -- /tmp/openapi`.
use std::time::Instant;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/skiff-openapi".into());
    std::fs::create_dir_all(&dir).expect("mkdir");
    let rs = skiff_openapi::builtin_resources();
    let t = Instant::now();
    let v2 = skiff_openapi::cached_v2(&rs);
    println!(
        "v2: {} bytes json, {} gzip, {:?}",
        v2.json_len(),
        v2.gzip().len(),
        t.elapsed()
    );
    std::fs::write(format!("{dir}/v2.json"), v2.json()).expect("write");
    std::fs::write(format!("{dir}/v2.pb"), v2.protobuf().unwrap_or_default()).expect("write");
    let mut gvs: Vec<(String, String)> = rs
        .iter()
        .map(|r| (r.group.clone(), r.version.clone()))
        .collect();
    gvs.sort();
    gvs.dedup();
    let t = Instant::now();
    for (g, v) in &gvs {
        let d = skiff_openapi::cached_v3_group_version(g, v, &rs).expect("doc");
        let name = if g.is_empty() {
            format!("api_{v}")
        } else {
            format!("apis_{g}_{v}")
        };
        std::fs::write(format!("{dir}/v3_{name}.json"), d.json()).expect("write");
    }
    println!("v3: {} documents in {:?}", gvs.len(), t.elapsed());
    let t = Instant::now();
    let n = skiff_openapi::tree_heap_bytes();
    println!("field tree: {n} bytes, built in {:?}", t.elapsed());
    println!("cache: {} bytes", skiff_openapi::cache_heap_bytes());
    std::fs::write(
        format!("{dir}/index.json"),
        skiff_openapi::v3_index(&rs).to_string(),
    )
    .expect("write");
}
