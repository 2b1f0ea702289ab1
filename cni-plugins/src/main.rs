use std::io::Read;

use anyhow::Context;
use skiff_cni::{install, parse_argv, plugin_for, skel, Invocation};

fn main() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries the CNI result.
    skiff_cni::log::init(skiff_cni::log::level_from(
        std::env::var("SKIFF_CNI_LOG").ok().as_deref(),
    ));

    let argv: Vec<_> = std::env::args_os().collect();
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
