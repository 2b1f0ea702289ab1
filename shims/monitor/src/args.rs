//! Hand-rolled flag parsing (clap would double the binary and its RSS).

use std::path::PathBuf;

pub struct PauseArgs {
    pub hostname: String,
    /// Also hold a PID namespace for the pod (CRI NamespaceMode POD): the pause process forks
    /// and its child, PID 1 of the new namespace, is the pause.
    pub pid_ns: bool,
    /// Serve the pod monitor's control socket `<dir>/monitor.sock` (see `pod.rs`): the pause
    /// then also monitors the pod's containers. Ignored with `pid_ns` (the runtime must not
    /// start inside the pod's PID namespace).
    pub socket_dir: Option<PathBuf>,
    /// A user namespace for the pod (CRI `userns_options` mode POD): the pause is forked into
    /// it (and into the pod's other new namespaces, which it then owns) and this process, which
    /// stays on the host, writes its `uid_map`/`gid_map` (`--uid-map`/`--gid-map`).
    pub userns: Option<UsernsMaps>,
}

/// `/proc/<pid>/{uid,gid}_map` text for the pause's user namespace: `container host length`
/// lines (given on the command line with `,` between lines).
pub struct UsernsMaps {
    pub uid_map: String,
    pub gid_map: String,
}

impl UsernsMaps {
    fn parse(flag: &str, value: &str) -> Result<String, String> {
        let mut text = String::new();
        for line in value.split(',') {
            let nums: Vec<&str> = line.split_whitespace().collect();
            if nums.len() != 3 || nums.iter().any(|n| n.parse::<u32>().is_err()) {
                return Err(format!(
                    "--{flag} {value:?}: expected `container host length` lines separated by ','"
                ));
            }
            text.push_str(&nums.join(" "));
            text.push('\n');
        }
        Ok(text)
    }
}

pub struct ContainerArgs {
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub bundle: PathBuf,
    pub id: String,
    pub log_path: PathBuf,
    pub state_dir: PathBuf,
    /// The container's stdin: none (/dev/null), open (a pipe kept open for attach sessions), or
    /// once (closed when the first attach session ends).
    pub stdin: StdinMode,
    /// Run the container on a pty (the spec has `terminal: true`).
    pub tty: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinMode {
    None,
    Open,
    Once,
}

pub struct ExecArgs {
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub id: String,
    pub process: PathBuf,
    pub console_socket: PathBuf,
    pub pid_file: PathBuf,
}

impl ExecArgs {
    pub fn parse(argv: &[String]) -> Result<Self, String> {
        let known = [
            "runtime",
            "runtime-root",
            "id",
            "process",
            "console-socket",
            "pid-file",
        ];
        let p = pairs(argv, &known)?;
        Ok(Self {
            runtime: take(&p, "runtime")?.into(),
            runtime_root: take(&p, "runtime-root")?.into(),
            id: take(&p, "id")?,
            process: take(&p, "process")?.into(),
            console_socket: take(&p, "console-socket")?.into(),
            pid_file: take(&p, "pid-file")?.into(),
        })
    }
}

/// `--flag value` or `--flag=value` pairs.
fn pairs(argv: &[String], known: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), v.to_owned()),
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("flag --{flag} needs a value"))?;
                (flag.to_owned(), v.clone())
            }
        };
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown flag --{name}"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn take(pairs: &[(String, String)], name: &str) -> Result<String, String> {
    pairs
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("missing required flag --{name}"))
}

impl PauseArgs {
    pub fn parse(argv: &[String]) -> Result<Self, String> {
        // `--sandbox ID` is only read by whoever scans process lists: it names the sandbox a
        // pause belongs to, so a CRI server killed before it recorded the pid finds it again.
        let p = pairs(
            argv,
            &[
                "hostname",
                "pid-ns",
                "sandbox",
                "socket-dir",
                "uid-map",
                "gid-map",
            ],
        )?;
        let pid_ns = match take(&p, "pid-ns").as_deref() {
            Err(_) | Ok("no") => false,
            Ok("yes") => true,
            Ok(other) => return Err(format!("--pid-ns {other:?}: expected yes or no")),
        };
        let userns = match (take(&p, "uid-map"), take(&p, "gid-map")) {
            (Err(_), Err(_)) => None,
            (Ok(u), Ok(g)) => Some(UsernsMaps {
                uid_map: UsernsMaps::parse("uid-map", &u)?,
                gid_map: UsernsMaps::parse("gid-map", &g)?,
            }),
            _ => return Err("--uid-map and --gid-map go together".into()),
        };
        if userns.is_some() && take(&p, "socket-dir").is_err() {
            // The pause dies with the process that forked it: that one must stay.
            return Err("--uid-map/--gid-map need --socket-dir (the pod monitor)".into());
        }
        Ok(Self {
            hostname: take(&p, "hostname")?,
            pid_ns,
            socket_dir: take(&p, "socket-dir").ok().map(PathBuf::from),
            userns,
        })
    }
}

impl ContainerArgs {
    pub fn parse(argv: &[String]) -> Result<Self, String> {
        let known = [
            "runtime",
            "runtime-root",
            "bundle",
            "id",
            "log-path",
            "state-dir",
            "stdin",
            "tty",
        ];
        let p = pairs(argv, &known)?;
        let stdin = match take(&p, "stdin").as_deref() {
            Err(_) | Ok("none") => StdinMode::None,
            Ok("open") => StdinMode::Open,
            Ok("once") => StdinMode::Once,
            Ok(v) => return Err(format!("--stdin takes none, open or once, not {v:?}")),
        };
        let tty = match take(&p, "tty").as_deref() {
            Err(_) | Ok("no") => false,
            Ok("yes") => true,
            Ok(v) => return Err(format!("--tty takes yes or no, not {v:?}")),
        };
        Ok(Self {
            runtime: take(&p, "runtime")?.into(),
            runtime_root: take(&p, "runtime-root")?.into(),
            bundle: take(&p, "bundle")?.into(),
            id: take(&p, "id")?,
            log_path: take(&p, "log-path")?.into(),
            state_dir: take(&p, "state-dir")?.into(),
            stdin,
            tty,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_container_flags_both_styles() {
        let a = ContainerArgs::parse(&v(&[
            "--runtime",
            "/bin/rt",
            "--runtime-root=/r",
            "--bundle",
            "/b",
            "--id",
            "sk1",
            "--log-path",
            "/l",
            "--state-dir",
            "/s",
        ]))
        .unwrap();
        assert_eq!(a.runtime, PathBuf::from("/bin/rt"));
        assert_eq!(a.runtime_root, PathBuf::from("/r"));
        assert_eq!(a.id, "sk1");
        assert_eq!((a.stdin, a.tty), (StdinMode::None, false));
        let mut with = v(&[
            "--runtime",
            "r",
            "--runtime-root",
            "r",
            "--bundle",
            "b",
            "--id",
            "i",
        ]);
        with.extend(v(&[
            "--log-path",
            "l",
            "--state-dir",
            "s",
            "--stdin=once",
            "--tty",
            "yes",
        ]));
        let a = ContainerArgs::parse(&with).unwrap();
        assert_eq!((a.stdin, a.tty), (StdinMode::Once, true));
        with.extend(v(&["--stdin", "sometimes"]));
        assert!(ContainerArgs::parse(&with)
            .err()
            .unwrap()
            .contains("none, open or once"));
    }

    #[test]
    fn parses_user_namespace_maps() {
        let a = PauseArgs::parse(&v(&[
            "--hostname",
            "h",
            "--socket-dir",
            "/s",
            "--uid-map",
            "0 2000000 65536",
            "--gid-map=0 3000000 1,1 3000001  99",
        ]))
        .unwrap();
        let u = a.userns.unwrap();
        assert_eq!(u.uid_map, "0 2000000 65536\n");
        assert_eq!(u.gid_map, "0 3000000 1\n1 3000001 99\n");
        let only_uid = PauseArgs::parse(&v(&["--hostname", "h", "--uid-map", "0 1 1"]));
        assert!(only_uid.err().unwrap().contains("go together"));
        let no_monitor = PauseArgs::parse(&v(&[
            "--hostname",
            "h",
            "--uid-map",
            "0 1 1",
            "--gid-map",
            "0 1 1",
        ]));
        assert!(no_monitor.err().unwrap().contains("need --socket-dir"));
        let bad = PauseArgs::parse(&v(&[
            "--hostname",
            "h",
            "--socket-dir",
            "/s",
            "--uid-map",
            "0 1",
            "--gid-map",
            "0 1 1",
        ]));
        assert!(bad.err().unwrap().contains("container host length"));
        assert!(PauseArgs::parse(&v(&["--hostname", "h"]))
            .unwrap()
            .userns
            .is_none());
    }

    #[test]
    fn reports_missing_and_unknown_flags() {
        assert!(PauseArgs::parse(&v(&[]))
            .err()
            .unwrap()
            .contains("--hostname"));
        assert!(PauseArgs::parse(&v(&["--bogus", "x"]))
            .err()
            .unwrap()
            .contains("unknown flag"));
        assert!(PauseArgs::parse(&v(&["--hostname"]))
            .err()
            .unwrap()
            .contains("needs a value"));
    }
}
