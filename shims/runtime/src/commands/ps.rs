//! `ps`: the processes of a container's cgroup, as a JSON pid list or `ps` table rows.

use std::io::Write;
use std::process::Command;

use anyhow::{bail, Context, Result};
use libcgroups::common::CgroupManager;

use super::{cgroup_manager, load_container, Globals};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `table` (filtered `ps` output) or `json` (a list of host pids).
    #[arg(short, long, default_value = "table")]
    pub format: String,
    /// Container id.
    pub id: String,
    /// Options for `ps` (table format only; default `-ef`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

pub fn ps(args: Args, globals: &Globals) -> Result<()> {
    let container = load_container(globals, &args.id)?;
    let manager = cgroup_manager(&container)?;
    let mut pids: Vec<i32> = manager
        .get_all_pids()
        .with_context(|| format!("cannot list the processes of container {}", args.id))?
        .iter()
        .map(|p| p.as_raw())
        .collect();
    pids.sort_unstable();
    let mut out = std::io::stdout().lock();
    match args.format.as_str() {
        "json" => writeln!(out, "{}", serde_json::to_string(&pids)?)?,
        "table" => {
            let opts = if args.ps_options.is_empty() {
                vec!["-ef".to_owned()]
            } else {
                args.ps_options.clone()
            };
            let output = Command::new("ps")
                .args(&opts)
                .output()
                .context("cannot run ps: install procps")?;
            if !output.status.success() {
                bail!(
                    "ps {} failed: {}",
                    opts.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&output.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let column = header
                .split_whitespace()
                .position(|c| c == "PID")
                .context("ps output has no PID column: pass ps options that print one")?;
            writeln!(out, "{header}")?;
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(column)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        other => bail!("invalid format {other:?}: use table or json"),
    }
    Ok(())
}
