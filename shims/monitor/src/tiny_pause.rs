//! The tiny pause: a 300-byte static x86-64 ELF image that a forked pause child (the one a pod
//! monitor clones into a pod's user namespace, or forks as PID 1 of a pod's PID namespace)
//! exec's once its namespaces and maps are made. Until then the child is a copy-on-write fork
//! of the monitor, and RSS counts every page it still shares with the monitor again (~200 KiB);
//! after the exec it owns one code page and one stack page (12 KiB RSS).
//!
//! It does what `pause::hold` does: SIGINT, SIGTERM and SIGCHLD blocked (already blocked in the
//! monitor, whose mask the exec keeps; blocked again here for a caller that did not), then
//! `rt_sigtimedwait` on them: SIGCHLD reaps every zombie (`wait4(-1, WNOHANG)` until none),
//! SIGTERM or SIGINT ends it with status 0. As PID 1 of a PID namespace, blocked signals
//! still reach it from the parent namespace. It also sets its parent-death signal to SIGKILL
//! again (the exec keeps the one set before; this one costs nothing) and names itself `pause`
//! (`/proc/PID/comm`); its command line is the monitor's, so the CRI server finds it as before.
//!
//! The image is written to a sealed memfd and run with `fexecve`; the code below is the whole
//! program, assembled by hand (Intel syntax beside each instruction).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// Where the image is loaded (any address above `vm.mmap_min_addr`).
const BASE: u64 = 0x40_0000;
const EHDR: usize = 64;
const PHDR: usize = 56;
/// The ELF header, a PT_LOAD and a PT_GNU_STACK header, then the code.
const CODE_OFFSET: usize = EHDR + 2 * PHDR;

#[rustfmt::skip]
const CODE: &[u8] = &[
    // prctl(PR_SET_PDEATHSIG, SIGKILL)
    0xbf, 0x01, 0x00, 0x00, 0x00,                   // mov edi, 1
    0xbe, 0x09, 0x00, 0x00, 0x00,                   // mov esi, 9
    0xb8, 0x9d, 0x00, 0x00, 0x00,                   // mov eax, 157 (prctl)
    0x0f, 0x05,                                     // syscall
    // prctl(PR_SET_NAME, "pause")
    0x48, 0xb8, 0x70, 0x61, 0x75, 0x73, 0x65, 0x00, 0x00, 0x00, // movabs rax, "pause\0\0\0"
    0x50,                                           // push rax
    0xbf, 0x0f, 0x00, 0x00, 0x00,                   // mov edi, 15 (PR_SET_NAME)
    0x48, 0x89, 0xe6,                               // mov rsi, rsp
    0xb8, 0x9d, 0x00, 0x00, 0x00,                   // mov eax, 157 (prctl)
    0x0f, 0x05,                                     // syscall
    // the set {SIGINT, SIGTERM, SIGCHLD} at [rsp]; rt_sigprocmask(SIG_BLOCK, set, NULL, 8)
    0x68, 0x02, 0x40, 0x01, 0x00,                   // push 0x14002
    0x31, 0xff,                                     // xor edi, edi (SIG_BLOCK)
    0x48, 0x89, 0xe6,                               // mov rsi, rsp
    0x31, 0xd2,                                     // xor edx, edx
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00,             // mov r10d, 8
    0xb8, 0x0e, 0x00, 0x00, 0x00,                   // mov eax, 14 (rt_sigprocmask)
    0x0f, 0x05,                                     // syscall
    // wait: rt_sigtimedwait(set, NULL, NULL, 8)
    0x48, 0x89, 0xe7,                               // mov rdi, rsp
    0x31, 0xf6,                                     // xor esi, esi
    0x31, 0xd2,                                     // xor edx, edx
    0x41, 0xba, 0x08, 0x00, 0x00, 0x00,             // mov r10d, 8
    0xb8, 0x80, 0x00, 0x00, 0x00,                   // mov eax, 128 (rt_sigtimedwait)
    0x0f, 0x05,                                     // syscall
    0x83, 0xf8, 0x11,                               // cmp eax, 17 (SIGCHLD)
    0x75, 0x1c,                                     // jne other
    // reap: wait4(-1, NULL, WNOHANG, NULL) until it returns <= 0
    0xbf, 0xff, 0xff, 0xff, 0xff,                   // mov edi, -1
    0x31, 0xf6,                                     // xor esi, esi
    0xba, 0x01, 0x00, 0x00, 0x00,                   // mov edx, 1 (WNOHANG)
    0x45, 0x31, 0xd2,                               // xor r10d, r10d
    0xb8, 0x3d, 0x00, 0x00, 0x00,                   // mov eax, 61 (wait4)
    0x0f, 0x05,                                     // syscall
    0x85, 0xc0,                                     // test eax, eax
    0x7f, 0xe6,                                     // jg reap
    0xeb, 0xcb,                                     // jmp wait
    // other: SIGTERM or SIGINT ends it; anything else (EINTR) waits again
    0x83, 0xf8, 0x0f,                               // cmp eax, 15 (SIGTERM)
    0x74, 0x05,                                     // je done
    0x83, 0xf8, 0x02,                               // cmp eax, 2 (SIGINT)
    0x75, 0xc1,                                     // jne wait
    // done: exit_group(0)
    0x31, 0xff,                                     // xor edi, edi
    0xb8, 0xe7, 0x00, 0x00, 0x00,                   // mov eax, 231 (exit_group)
    0x0f, 0x05,                                     // syscall
];

/// The whole ELF image.
pub fn image() -> Vec<u8> {
    let len = (CODE_OFFSET + CODE.len()) as u64;
    let mut v = Vec::with_capacity(len as usize);
    // ELF header: 64-bit, little-endian, version 1, System V ABI.
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    v.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    v.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    v.extend_from_slice(&1u32.to_le_bytes()); // e_version
    v.extend_from_slice(&(BASE + CODE_OFFSET as u64).to_le_bytes()); // e_entry
    v.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    v.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    v.extend_from_slice(&(EHDR as u16).to_le_bytes()); // e_ehsize
    v.extend_from_slice(&(PHDR as u16).to_le_bytes()); // e_phentsize
    v.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    v.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
                                  // PT_LOAD, R+X: the whole file at BASE.
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&5u32.to_le_bytes());
    for x in [0, BASE, BASE, len, len, 0x1000] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    // PT_GNU_STACK, R+W: a stack that is not executable.
    v.extend_from_slice(&0x6474_e551u32.to_le_bytes());
    v.extend_from_slice(&6u32.to_le_bytes());
    for x in [0u64, 0, 0, 0, 0, 16] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    debug_assert_eq!(v.len(), CODE_OFFSET);
    v.extend_from_slice(CODE);
    v
}

/// Replaces this process with the tiny pause, keeping its command line (`argv`). Returns only
/// on failure, naming the step that failed.
pub fn exec() -> Result<std::convert::Infallible, String> {
    // SAFETY: memfd_create with a NUL-terminated name; the fd it returns is ours alone.
    let fd = unsafe {
        libc::memfd_create(
            c"skiff-pause".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned to us and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(&image())
        .map_err(|e| format!("writing the pause image: {e}"))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(format!("sealing: {}", std::io::Error::last_os_error()));
    }
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are NULL-terminated arrays of NUL-terminated strings that outlive
    // the call; fexecve returns only on failure.
    unsafe { libc::fexecve(file.as_raw_fd(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("fexecve: {}", std::io::Error::last_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;

    fn status_field(pid: u32, key: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    }

    /// The image runs: it names itself, blocks its three signals, holds, and ends with status
    /// 0 on SIGTERM.
    #[test]
    fn the_image_holds_and_ends_on_sigterm() {
        let dir = tempfile_dir();
        let path = dir.join("pause");
        std::fs::write(&path, image()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        let pid = child.id();
        // Blocked by its own rt_sigprocmask before it waits (rt_sigtimedwait shows them
        // unblocked while it sleeps, so wait for the name, set just before, and the wait state).
        let mut ready = false;
        for _ in 0..6000 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
            if status_field(pid, "Name:") == "pause" && stat.contains("sigtimedwait") {
                ready = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ready, "the pause never waited for its signals");
        let rss = status_field(pid, "VmRSS:");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let st = child.wait().unwrap();
        assert_eq!(
            st.code(),
            Some(0),
            "status {st:?} (signal {:?})",
            st.signal()
        );
        let kib: u64 = rss.trim_end_matches(" kB").trim().parse().unwrap();
        assert!(kib <= 64, "RSS of the tiny pause: {rss}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sk-tiny-pause-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
