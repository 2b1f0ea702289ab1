//! Returns memory a long-lived Skiff process no longer needs to the kernel: clean file pages
//! of its code (after start-up or a burst of work) and, with glibc, freed heap. Used by the
//! per-container monitor and the CRI daemon when idle. The only unsafe code is `madvise` and
//! `malloc_trim` on memory this module has checked.

pub mod counting;

/// Drop this process's clean, read-only file pages (our text and rodata, and libc's) from its
/// page tables once start-up or a burst of work is over. They are unmodified copies of the page
/// cache, so nothing is lost: the few pages the idle loop needs fault back in. This takes the
/// idle monitor from ~1 MiB RSS (mostly start-up code of std and glibc) to its working set.
/// In a mapping with anonymous (copy-on-write) pages, such as RELRO data written by relocation,
/// only the pages still the file's are dropped: dropping a written one would bring back the
/// unrelocated file contents.
pub fn trim_code_pages() {
    if FAULT_AROUND_LIMITED.load(std::sync::atomic::Ordering::Relaxed) {
        settle_fault_around();
    }
    // Collect first, drop the text, then advise in one tight loop: code that runs after the
    // first madvise faults its pages (and, with fault-around, their neighbours) back in.
    // Adjacent ranges are joined (after `limit_fault_around` the text is many mappings).
    let mut ranges = [(0usize, 0usize); 64];
    let mut n = 0;
    // Read-only file mappings with some written pages: RELRO data (`.data.rel.ro`, `.got`),
    // whose relocated pages are private copies but whose other pages are the file's.
    let mut mixed = [(0usize, 0usize); 16];
    let mut m_n = 0;
    for_each_mapping(|m| {
        if m.readonly_file() && !m.clean_file_code() && m_n < mixed.len() {
            mixed[m_n] = (m.start, m.end);
            m_n += 1;
        }
        if !m.clean_file_code() {
            return;
        }
        if n > 0 && ranges[n - 1].1 == m.start {
            ranges[n - 1].1 = m.end;
        } else if n < ranges.len() {
            ranges[n] = (m.start, m.end);
            n += 1;
        }
    });
    for &(start, end) in &ranges[..n] {
        // SAFETY: the range is whole, page-aligned, non-writable private file mappings of this
        // process (from /proc/self/smaps) with no anonymous pages. MADV_DONTNEED only removes
        // page-table entries; the next access re-reads the identical, unmodified page from the
        // page cache. No Rust object is ever written to such a mapping.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
    for &(start, end) in &mixed[..m_n] {
        drop_file_pages(start, end);
    }
}

/// In a read-only private file mapping that also holds written (anonymous) pages, drops only
/// the resident pages that are still the file's (/proc/self/pagemap: present, file-backed),
/// in runs. A written page is never dropped: that would bring back the file's unrelocated
/// contents. Such a mapping is read-only, so no page becomes a private copy meanwhile.
fn drop_file_pages(start: usize, end: usize) {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return;
    };
    let drop_run = |from: usize, to: usize| {
        if to > from {
            // SAFETY: [from, to) lies inside a read-only private file mapping of this process
            // (from /proc/self/smaps) and holds only pages that pagemap showed as unmodified
            // file pages (the mapping is read-only, so none can have been written since):
            // MADV_DONTNEED removes their page-table entries, and the next access re-reads the
            // identical page from the page cache.
            unsafe {
                libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED);
            }
        }
    };
    let mut buf = [0u8; 1024];
    let mut page = start;
    let mut run = start;
    while page < end {
        let count = ((end - page) / PAGE).min(buf.len() / 8);
        if count == 0
            || pagemap
                .read_exact_at(&mut buf[..count * 8], (page / PAGE * 8) as u64)
                .is_err()
        {
            return;
        }
        for (i, entry) in buf[..count * 8].chunks_exact(8).enumerate() {
            let at = page + i * PAGE;
            // Bit 63: present; bit 62: swapped; bit 61: file page (or shared anonymous);
            // little-endian. Droppable: a present file page, or nothing at all.
            let (present, swapped, file) = (
                entry[7] & 0x80 != 0,
                entry[7] & 0x40 != 0,
                entry[7] & 0x20 != 0,
            );
            let droppable = if present { file } else { !swapped };
            if !droppable {
                // A private copy: keep it, and end the run before it.
                drop_run(run, at);
                run = at + PAGE;
            }
        }
        page += count * PAGE;
    }
    drop_run(run, end);
}

/// Makes a page fault in this process's code and read-only data map at most `chunk` bytes
/// (rounded to pages) instead of the kernel's fault-around window (64 KiB by default): the
/// read-only file mappings are split into `chunk`-sized mappings by setting MADV_RANDOM on every
/// other chunk (the kernel never maps pages around a fault across a mapping's end, and mappings
/// with different flags are not merged). After `trim_code_pages`, an idle loop that touches a
/// few scattered pages of a 1 MiB text then keeps those pages resident, not 64 KiB around each.
/// The cost is kernel bookkeeping: one VMA (~200 bytes) per chunk, and a minor fault per page
/// touched after a trim. For tiny long-lived processes (the monitor); call it once at start.
pub fn limit_fault_around(chunk: usize) {
    FAULT_AROUND_LIMITED.store(true, std::sync::atomic::Ordering::Relaxed);
    let page = 4096usize;
    let chunk = chunk.max(page) / page * page;
    let mut ranges = [(0usize, 0usize); 32];
    let mut n = 0;
    for_each_mapping(|m| {
        if m.readonly_file() && n < ranges.len() {
            ranges[n] = (m.start, m.end);
            n += 1;
        }
    });
    for &(start, end) in &ranges[..n] {
        let mut at = start + chunk;
        while at < end {
            let len = chunk.min(end - at);
            // SAFETY: [at, at+len) lies inside a read-only file mapping of this process;
            // MADV_RANDOM only changes the mapping's readahead flag (no page is touched or
            // dropped), which splits the mapping at the range's ends.
            unsafe {
                libc::madvise(at as *mut libc::c_void, len, libc::MADV_RANDOM);
            }
            at += 2 * chunk;
        }
    }
}

/// Set by `limit_fault_around`: `trim_code_pages` then also re-splits the code by use.
static FAULT_AROUND_LIMITED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Before a trim, after `limit_fault_around`: keeps a mapping boundary only around the pages
/// used since the last trim (present in /proc/self/pagemap) and joins everything else back, so a
/// few hundred 4 KiB mappings become about one per used page. Each used page gets a mapping of
/// its own (MADV_RANDOM and MADV_SEQUENTIAL alternating by page number, so two used neighbours
/// never merge), the unused ones MADV_NORMAL: a used page faulting back maps only itself, and
/// code used rarely (container creation, attach) faults in up to the kernel's window of unused
/// neighbours once; the next trim sees those as used, the one after as unused again.
fn settle_fault_around() {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let mut ranges = [(0usize, 0usize); 32];
    let mut n = 0;
    for_each_mapping(|m| {
        if !m.readonly_file() {
            return;
        }
        if n > 0 && ranges[n - 1].1 == m.start {
            ranges[n - 1].1 = m.end;
        } else if n < ranges.len() {
            ranges[n] = (m.start, m.end);
            n += 1;
        }
    });
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return;
    };
    let advise = |start: usize, len: usize, advice: libc::c_int| {
        // SAFETY: [start, start+len) lies inside read-only file mappings of this process (from
        // /proc/self/smaps); MADV_NORMAL/RANDOM/SEQUENTIAL only set the mappings' readahead
        // flags (splitting or joining them); no page is touched or dropped.
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, advice);
        }
    };
    for &(start, end) in &ranges[..n] {
        advise(start, end - start, libc::MADV_NORMAL);
        let mut page = start;
        let mut buf = [0u8; 1024];
        while page < end {
            let count = ((end - page) / PAGE).min(buf.len() / 8);
            if pagemap
                .read_exact_at(&mut buf[..count * 8], (page / PAGE * 8) as u64)
                .is_err()
            {
                return;
            }
            for (i, entry) in buf[..count * 8].chunks_exact(8).enumerate() {
                let present = entry[7] & 0x80 != 0; // bit 63, little-endian
                if present {
                    let at = page + i * PAGE;
                    let advice = if (at / PAGE).is_multiple_of(2) {
                        libc::MADV_RANDOM
                    } else {
                        libc::MADV_SEQUENTIAL
                    };
                    advise(at, PAGE, advice);
                }
            }
            page += count * PAGE;
        }
    }
}

/// One mapping of /proc/self/smaps.
struct Mapping {
    start: usize,
    end: usize,
    /// r-xp or r--p
    readonly_private: bool,
    /// Backed by a file (inode != 0).
    file: bool,
    anon_kb: u64,
}

impl Mapping {
    fn readonly_file(&self) -> bool {
        self.readonly_private && self.file
    }

    /// A mapping whose pages are all unmodified copies of the page cache.
    fn clean_file_code(&self) -> bool {
        self.readonly_file() && self.anon_kb == 0
    }
}

/// Calls `f` for each mapping of /proc/self/smaps, reading it through a small stack buffer (a
/// whole smaps can be 100 KiB and more: never allocated).
fn for_each_mapping(mut f: impl FnMut(&Mapping)) {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open("/proc/self/smaps") else {
        return;
    };
    let mut buf = [0u8; 4096];
    let mut len = 0;
    let mut current: Option<Mapping> = None;
    let mut skipping = false; // inside an overlong line
    loop {
        let n = match file.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let eof = n == 0;
        len += n;
        let mut from = 0;
        while let Some(i) = buf[from..len].iter().position(|&b| b == b'\n') {
            if !skipping {
                parse_line(&buf[from..from + i], &mut current, &mut f);
            }
            skipping = false;
            from += i + 1;
        }
        buf.copy_within(from..len, 0);
        len -= from;
        if len == buf.len() {
            // A line longer than the buffer (a very long path): skip the rest of it.
            len = 0;
            skipping = true;
        }
        if eof {
            break;
        }
    }
    if let Some(m) = current.take() {
        f(&m);
    }
}

fn parse_line(line: &[u8], current: &mut Option<Mapping>, f: &mut impl FnMut(&Mapping)) {
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    if let Some(v) = line.strip_prefix("Anonymous:") {
        if let Some(m) = current.as_mut() {
            m.anon_kb = v
                .split_whitespace()
                .next()
                .and_then(|k| k.parse().ok())
                .unwrap_or(1);
        }
        return;
    }
    let mut fields = line.split_whitespace();
    let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return;
    };
    let Some((start, end)) = range.split_once('-') else {
        return;
    };
    let (Ok(start), Ok(end)) = (
        usize::from_str_radix(start, 16),
        usize::from_str_radix(end, 16),
    ) else {
        return; // a "Key: value" line, not a mapping header
    };
    if let Some(m) = current.take() {
        f(&m);
    }
    *current = Some(Mapping {
        start,
        end,
        readonly_private: perms == "r-xp" || perms == "r--p",
        file: inode != "0",
        // Unknown until its "Anonymous:" line: assume modified.
        anon_kb: 1,
    });
}

/// Caps glibc's malloc arenas at `n` (it makes up to 8 per core as threads contend, and memory
/// freed in one arena is not reused by the others): for a long-lived process whose heap is
/// mostly caches, fewer arenas mean a smaller RSS for the same live data. A no-op elsewhere,
/// and when the user set glibc's own `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`
/// `glibc.malloc.arena_max`): theirs wins.
pub fn limit_arenas(n: i32) {
    let user_set = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if user_set {
        return;
    }
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

    /// The tests share the process's mappings: one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn trimmed_code_still_runs_and_rss_drops() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = rss_of_text_kib();
        super::trim_code_pages();
        let after = rss_of_text_kib();
        assert!(after < before, "text RSS {before} KiB -> {after} KiB");
        // Everything keeps working: the pages come back from the page cache.
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[255], "ff");
        super::trim_heap();
    }

    /// Whether the page at `addr` is mapped in this process (/proc/self/pagemap bit 63).
    fn present(addr: usize) -> bool {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut e = [0u8; 8];
        f.read_exact_at(&mut e, (addr / 4096 * 8) as u64).unwrap();
        e[7] & 0x80 != 0
    }

    /// A read-only private file mapping with one written page (as RELRO data after
    /// relocation): the trim drops its file pages and keeps the written one.
    #[test]
    fn trim_keeps_written_pages_of_read_only_file_mappings() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        const PAGE: usize = 4096;
        let mut file = tempfile::NamedTempFile::with_prefix("sk-memtrim").unwrap();
        for i in 0..8u8 {
            file.write_all(&[b'a' + i; PAGE]).unwrap();
        }
        file.flush().unwrap();
        let len = 8 * PAGE;
        // SAFETY: a fresh private mapping of our own temp file, unmapped at the end; only this
        // test touches it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_file().as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let at = |page: usize| base as usize + page * PAGE;
        // SAFETY: every address is inside the mapping made above; page 2 is written while it
        // is writable, then the whole mapping becomes read-only.
        unsafe {
            for page in 0..8 {
                std::ptr::read_volatile(at(page) as *const u8);
            }
            std::ptr::write_volatile(at(2) as *mut u8, b'Z');
            assert_eq!(libc::mprotect(base, len, libc::PROT_READ), 0);
        }
        assert!((0..8).all(|p| present(at(p))));
        super::trim_code_pages();
        // The file's pages are gone from the page tables; the written copy stays.
        assert!(present(at(2)), "the written page was dropped");
        for p in [0, 1, 3, 4, 5, 6, 7] {
            assert!(!present(at(p)), "file page {p} still mapped");
        }
        // SAFETY: inside the mapping, which is still readable.
        unsafe {
            assert_eq!(std::ptr::read_volatile(at(2) as *const u8), b'Z');
            assert_eq!(std::ptr::read_volatile((at(2) + 1) as *const u8), b'c');
            assert_eq!(std::ptr::read_volatile(at(5) as *const u8), b'f');
            assert_eq!(libc::munmap(base, len), 0);
        }
    }

    fn mappings_of_exe() -> usize {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.ends_with(exe.to_str().unwrap()))
            .count()
    }

    fn largest_mapping_of_exe() -> usize {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.ends_with(exe.to_str().unwrap()) && !l.contains(" rw"))
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                Some(usize::from_str_radix(b, 16).ok()? - usize::from_str_radix(a, 16).ok()?)
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn fault_around_limit_splits_code_and_trim_still_works() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = mappings_of_exe();
        super::limit_fault_around(16 * 1024);
        let split = mappings_of_exe();
        assert!(split > before + 4, "mappings {before} -> {split}");
        // The trim keeps boundaries only around the pages used since: far fewer mappings.
        super::trim_code_pages();
        let v: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(v[4095 % 1000], "5f");
        super::trim_code_pages();
        // Unused code is joined back into mappings longer than the split's chunks.
        let longest = largest_mapping_of_exe();
        assert!(
            longest > 32 * 1024,
            "longest mapping {longest} bytes after the trim"
        );
        assert_eq!(format!("{:x}", v.len()), "3e8");
    }
}
