// No Rust `main`: the C `main` below skips std's runtime set-up, which a process living a few
// milliseconds does not need (a SIGSEGV handler on an alternate stack, and finding the main
// thread's stack bounds, which musl does with one mremap probe per page: ~35 system calls).
#![no_main]

use std::ffi::{c_char, c_int, CStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStringExt;

use anyhow::Context;
use skiff_cni::{install, parse_argv, plugin_for, skel, Invocation};

#[global_allocator]
static ALLOC: skiff_cni::arena::Arena = skiff_cni::arena::Arena::new();

/// The program's entry, called by the C runtime with the real argument vector (std's own
/// argument capture is not used: with musl's start-up it would not see argc/argv).
///
/// # Safety
/// `argv` holds `argc` valid NUL-terminated strings, as the C runtime guarantees.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: the C runtime passes argc valid NUL-terminated strings.
    let args: Vec<OsString> = (0..argc.max(0) as usize)
        .map(|i| unsafe { CStr::from_ptr(*argv.add(i)) })
        .map(|s| OsString::from_vec(s.to_bytes().to_vec()))
        .collect();
    std_setup();
    let code = match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:?}");
            1
        }
    };
    // std's exit flushes stdout, which returning to the C runtime would not.
    std::process::exit(code)
}

/// What std's runtime set-up does that matters here: standard descriptors that are closed get
/// /dev/null (so no file we open lands on fd 1), and SIGPIPE is ignored (a write to a gone
/// reader fails with EPIPE instead of killing us).
fn std_setup() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll on three valid pollfd structs; open/dup only fill closed standard fds.
    unsafe {
        if libc::poll(fds.as_mut_ptr(), 3, 0) >= 0 {
            for p in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != p.fd {
                    libc::dup2(null, p.fd);
                    libc::close(null);
                }
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn run(argv: Vec<OsString>) -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries the CNI result.
    skiff_cni::log::init(skiff_cni::log::level_from(
        std::env::var("SKIFF_CNI_LOG").ok().as_deref(),
    ));

    match parse_argv(&argv) {
        Invocation::Plugin(name) => {
            let plugin = plugin_for(&name).context("unknown plugin")?;
            let mut stdin = Vec::new();
            if std::env::var("CNI_COMMAND").as_deref() != Ok("VERSION") || !is_tty() {
                std::io::stdin()
                    .read_to_end(&mut stdin)
                    .context("reading the network config from stdin")?;
            }
            let env = |k: &str| std::env::var(k).ok();
            let code = skel::run(plugin.as_ref(), &env, stdin, &mut std::io::stdout().lock());
            if let Some(dir) = std::env::var_os("SKIFF_CNI_SMAPS_DIR") {
                // For memory work (bench/cni): which mappings this run kept resident (the copy
                // itself runs cold code, so text figures come out a little high).
                let to = std::path::Path::new(&dir).join(format!("{name}.{}", std::process::id()));
                let _ = std::fs::copy("/proc/self/smaps", to);
            }
            std::process::exit(code);
        }
        Invocation::Install(dir) => {
            let exe = std::env::current_exe().context("finding this executable")?;
            for l in install(&dir, &exe)
                .with_context(|| format!("creating plugin symlinks in {}", dir.display()))?
            {
                println!("{} -> {}", l.display(), exe.display());
            }
            Ok(())
        }
        Invocation::Usage(msg) => {
            anyhow::bail!(
                "{msg}\nusage: skiff-cni <bridge|host-local|loopback|portmap> (CNI env + config on stdin)\n       skiff-cni install <CNI bin dir>"
            )
        }
    }
}

fn is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor number; fd 0 needs no ownership.
    unsafe { libc::isatty(0) == 1 }
}
