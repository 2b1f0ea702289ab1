//! Returns memory a long-lived Skiff process no longer needs to the kernel: clean file pages
//! of its code (after start-up or a burst of work) and, with glibc, freed heap. Used by the
//! per-container monitor and the CRI daemon when idle. The only unsafe code is `madvise` and
//! `malloc_trim` on memory this module has checked.

/// Drop this process's clean, read-only file pages (our text and rodata, and libc's) from its
/// page tables once start-up or a burst of work is over. They are unmodified copies of the page
/// cache, so nothing is lost: the few pages the idle loop needs fault back in. This takes the
/// idle monitor from ~1 MiB RSS (mostly start-up code of std and glibc) to its working set.
/// A mapping with any anonymous (copy-on-write) page, such as RELRO data written by relocation,
/// is never touched: dropping it would bring back the unrelocated file contents.
pub fn trim_code_pages() {
    // Collect first, drop the text, then advise in one tight loop: code that runs after the
    // first madvise faults its pages (and, with fault-around, their neighbours) back in.
    let mut ranges = [(0usize, 0usize); 64];
    let mut n = 0;
    if let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") {
        let mut candidate: Option<(usize, usize)> = None;
        for line in smaps.lines() {
            if let Some(v) = line.strip_prefix("Anonymous:") {
                let anon_kb: u64 = v
                    .split_whitespace()
                    .next()
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(1);
                if let (Some(r), 0, true) = (candidate.take(), anon_kb, n < ranges.len()) {
                    ranges[n] = r;
                    n += 1;
                }
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue; // a "Key: value" line, not a mapping header
            };
            // Only private, non-writable mappings of a real file (inode != 0).
            candidate =
                ((perms == "r-xp" || perms == "r--p") && inode != "0").then_some((start, end));
        }
    }
    for &(start, end) in &ranges[..n] {
        // SAFETY: the range is a whole, page-aligned, non-writable private file mapping of this
        // process (from /proc/self/smaps) with no anonymous pages. MADV_DONTNEED only removes
        // page-table entries; the next access re-reads the identical, unmodified page from the
        // page cache. No Rust object is ever written to such a mapping.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Caps glibc's malloc arenas at `n` (it makes up to 8 per core as threads contend, and memory
/// freed in one arena is not reused by the others): for a long-lived process whose heap is
/// mostly caches, fewer arenas mean a smaller RSS for the same live data. A no-op elsewhere.
pub fn limit_arenas(n: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; M_ARENA_MAX takes a count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = n;
}

/// Returns freed heap memory to the kernel (glibc keeps it otherwise); a no-op elsewhere.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    fn rss_of_text_kib() -> u64 {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut total = 0;
        for line in smaps.lines() {
            if line.contains(" r-xp ") {
                ours = line.ends_with(exe.to_str().unwrap());
            } else if line.contains(" rw-p ") || line.contains(" r--p ") || line.contains(" ---p ")
            {
                ours = false;
            } else if let Some(v) = line.strip_prefix("Rss:") {
                if ours {
                    total += v.split_whitespace().next().unwrap().parse::<u64>().unwrap();
                }
            }
        }
        total
    }

    #[test]
    fn trimmed_code_still_runs_and_rss_drops() {
        let before = rss_of_text_kib();
        super::trim_code_pages();
        let after = rss_of_text_kib();
        assert!(after < before, "text RSS {before} KiB -> {after} KiB");
        // Everything keeps working: the pages come back from the page cache.
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[255], "ff");
        super::trim_heap();
    }
}
