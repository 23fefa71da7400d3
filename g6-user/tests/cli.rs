//! End to end: the command line (SPEC §2), configuration diagnostics (SPEC §4.5), start-up
//! failures, `--pid-file` and daemon mode (SPEC §3), running the real binary.

mod e2e;
mod support;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use e2e::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::g6proc::G6_BIN;
use support::*;

/// The original's usage line, up to its own last flag; the [ext] flags follow (SPEC §2).
const USAGE_ORIGINAL: &str = "USAGE : G6 -f (config_pathfilename) [ -t (forward_thread_size) ] \
[ -s (forward_session_size) ] [ --log-level (DEBUG|INFO|WARN|ERROR|FATAL) ] \
[ --log-filename (logfilename) ] [ --close-log ] [ --no-daemon ] [ --set-cpu-affinity ]";

fn run(args: &[&str]) -> (i32, String, String) {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    G6Proc::run(&args)
}

/// Checks that `stdout` is exactly the usage line.
fn assert_usage(stdout: &str, ctx: &str) {
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{ctx}: one usage line: {stdout:?}"
    );
    assert!(stdout.starts_with(USAGE_ORIGINAL), "{ctx}: {stdout:?}");
    for ext in [
        "--check",
        "--data-path",
        "--pid-file",
        "[ --xdp (auto|off|generic|native) ]",
        "[ --drain-timeout (seconds) ]",
    ] {
        assert!(
            stdout.contains(ext),
            "{ctx}: usage mentions {ext}: {stdout:?}"
        );
    }
}

/// Checks the two version lines; returns the rest of stdout.
fn split_version(stdout: &str) -> &str {
    let (l1, rest) = stdout.split_once('\n').expect("version line 1");
    let (l2, rest) = rest.split_once('\n').expect("version line 2");
    let v = l1
        .strip_prefix("G6 v")
        .unwrap_or_else(|| panic!("line 1: {l1:?}"));
    let (semver, date) = v
        .split_once(" build ")
        .unwrap_or_else(|| panic!("line 1: {l1:?}"));
    let parts: Vec<u64> = semver
        .split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("semver {semver:?}")))
        .collect();
    assert!(
        parts.len() == 3 && parts[0] >= 2,
        "semver >= 2.0.0: {semver:?}"
    );
    let ymd: Vec<&str> = date.split('-').collect();
    assert!(
        ymd.len() == 3
            && [4, 2, 2]
                .iter()
                .zip(&ymd)
                .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit())),
        "build date YYYY-MM-DD: {date:?}"
    );
    assert_eq!(l2, "TCP Bridge && Load-Balance Dispenser");
    rest
}

#[test]
fn no_arguments_prints_version_and_usage() {
    let (code, out, err) = run(&[]);
    assert_eq!((code, err.as_str()), (7, ""), "{out}");
    assert_usage(split_version(&out), "no arguments");
}

#[test]
fn version_flag() {
    let (code, out, err) = run(&["-v"]);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(split_version(&out), "", "only the two version lines");
}

#[test]
fn usage_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["-x"], "invalid opt[-x]\n"),
        (&["--bogus"], "invalid opt[--bogus]\n"),
        (&["stray"], "invalid opt[stray]\n"),
        (&["-f"], "invalid opt[-f]\n"),
        (&["-f", "g.conf", "-t"], "invalid opt[-t]\n"),
        (&["-f", "g.conf", "-s"], "invalid opt[-s]\n"),
        (
            &["-f", "g.conf", "--log-level"],
            "invalid opt[--log-level]\n",
        ),
        (&["-f", "g.conf", "-t", "0"], "invalid opt[-t 0]\n"),
        (&["-f", "g.conf", "-t", "-1"], "invalid opt[-t -1]\n"),
        (&["-f", "g.conf", "-t", "two"], "invalid opt[-t two]\n"),
        (&["-f", "g.conf", "-s", "0"], "invalid opt[-s 0]\n"),
        (&["-f", "g.conf", "-s", "1x"], "invalid opt[-s 1x]\n"),
        (&["-f", "g.conf", "-s", "+5"], "invalid opt[-s +5]\n"),
        (
            &["-f", "g.conf", "--log-level", "info"],
            "invalid log level[info]\n",
        ),
        (
            &["-f", "g.conf", "--log-level", "TRACE"],
            "invalid log level[TRACE]\n",
        ),
        // No -f: nothing on stderr, just the usage.
        (&["-t", "2"], ""),
        (&["--no-daemon", "--check"], ""),
    ];
    for (args, want_err) in cases {
        let (code, out, err) = run(args);
        assert_eq!((code, err.as_str()), (7, *want_err), "{args:?}: {out}");
        assert_usage(&out, &format!("{args:?}"));
    }
    // Not in the original: an unknown data path is a usage error too.
    let (code, out, err) = run(&["-f", "g.conf", "--data-path", "fast"]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.starts_with("invalid opt[") && err.contains("fast"),
        "{err:?}"
    );
    assert_usage(&out, "--data-path fast");
    // Nor in the original: an unknown XDP mode, in the same style.
    let (code, out, err) = run(&["-f", "g.conf", "--xdp", "on"]);
    assert_eq!(
        (code, err.as_str()),
        (7, "invalid opt[--xdp on]\n"),
        "{out}"
    );
    assert_usage(&out, "--xdp on");
}

fn sample_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/G6.conf")
}

#[test]
fn check_the_sample_config() {
    let path = sample_conf();
    let (code, out, err) =
        G6Proc::run(&[OsStr::new("-f"), path.as_os_str(), OsStr::new("--check")]);
    assert_eq!(
        (code, out, err),
        (
            0,
            format!(
                "{}: ok, 2 rules, 2 listen addresses, 2 server entries\n",
                path.display()
            ),
            String::new()
        )
    );
}

#[test]
fn check_binds_nothing_and_reports_warnings() {
    // The listen address is in use: --check does not care, it binds nothing.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let conf = format!(
        "admin G 127.0.0.1:* - {addr} ;\nlonely RR *:* - [::1]:1 > ;\nnobody RR - 127.0.0.1:2 > 127.0.0.1:3 ;\n"
    );
    let dir = G6Proc::conf_dir(&conf);
    let path = dir.path().join("g6.conf");
    // Repeated options: the last wins (here -f and -t).
    let (code, out, err) = G6Proc::run(&[
        OsStr::new("-f"),
        OsStr::new("/nonexistent.conf"),
        OsStr::new("-t"),
        OsStr::new("0"),
        OsStr::new("-t"),
        OsStr::new("2"),
        OsStr::new("-f"),
        path.as_os_str(),
        OsStr::new("--check"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{}: ok, 3 rules, 3 listen addresses, 1 server entries\n",
            path.display()
        )
    );
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].starts_with(&format!("{}:2:", path.display()))
            && warnings[0].contains(": warning: "),
        "{err}"
    );
    assert!(
        warnings[1].starts_with(&format!("{}:3:", path.display()))
            && warnings[1].contains(": warning: "),
        "{err}"
    );
}

#[test]
fn config_errors_exit_1_with_one_diagnostic_line() {
    let cases = [
        (
            "r1 XX *:* - 127.0.0.1:8080 > 127.0.0.1:1 ;\n",
            ":1:4: error: expected ",
            ", found 'XX'",
        ),
        (
            "// comment\nr1 RR *:* -\n  127.0.0.1:83601 > 127.0.0.1:1 ;\n",
            ":3:3: error: ",
            "invalid port '83601' (1..65535)",
        ),
        (
            "r1 RR *:* - 127.0.0.1:8080 > 127.0.0.1:1\n",
            ":2:1: error: expected ",
            "end of file",
        ),
    ];
    for (conf, at, found) in cases {
        for check in [true, false] {
            let dir = G6Proc::conf_dir(conf);
            let path = dir.path().join("g6.conf");
            let log = dir.path().join("g6.log");
            let mut args: Vec<OsString> = vec![
                "-f".into(),
                path.clone().into(),
                "--no-daemon".into(),
                "--log-filename".into(),
                log.into(),
            ];
            if check {
                args.push("--check".into());
            }
            let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
            let (code, out, err) = G6Proc::run(&args);
            let ctx = format!("{conf:?} check={check}: stdout {out:?} stderr {err:?}");
            assert_eq!((code, out.as_str()), (1, ""), "{ctx}");
            assert_eq!(err.lines().count(), 1, "{ctx}");
            let line = err.trim_end();
            assert!(
                line.starts_with(&format!("{}{at}", path.display())) && line.ends_with(found),
                "{ctx}"
            );
        }
    }
    // A missing file.
    let dir = G6Proc::conf_dir("");
    let missing = dir.path().join("missing.conf");
    let (code, out, err) =
        G6Proc::run(&[OsStr::new("-f"), missing.as_os_str(), OsStr::new("--check")]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!(
            "{}: error: cannot open: No such file or directory",
            missing.display()
        )) && err.lines().count() == 1,
        "{err:?}"
    );
}

/// Processes (other than zombies) whose command line mentions `needle`.
fn live_processes_mentioning(needle: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (text.contains(needle) && !is_zombie_or_gone(pid)).then_some(pid)
        })
        .collect()
}

fn is_zombie_or_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Processes mentioning `tag` that hold a listening socket on `addr`. (Checked through /proc
/// rather than by connecting: once g6 released the port, another test may bind it.)
fn listening_holders(addr: SocketAddr, tag: &str) -> Vec<i32> {
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let inodes: Vec<u64> = tcp_sockets()
        .into_iter()
        .filter(|(local, remote, _)| *local == addr && *remote == any)
        .map(|(_, _, inode)| inode)
        .collect();
    live_processes_mentioning(tag)
        .into_iter()
        .filter(|&pid| {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .any(|fd| fd_inode(pid, fd).is_some_and(|i| inodes.contains(&i)))
        })
        .collect()
}

/// `-f <dir>/g6.conf --log-filename <dir>/g6.log --data-path copy --xdp off <extra>` (no
/// --no-daemon; the XDP guard off as in `G6Proc::standard_args`).
fn daemon_args(dir: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "-f".into(),
        dir.join("g6.conf").into(),
        "--log-filename".into(),
        dir.join("g6.log").into(),
        "--data-path".into(),
        "copy".into(),
        "--xdp".into(),
        "off".into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v
}

#[test]
fn listen_address_in_use_exits_1_and_leaves_nothing_bound() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    for daemon in [false, true] {
        // The first listener is inherited (so its port is race-free), the second is busy.
        let l = PreBound::tcp("127.0.0.1:0");
        let conf = format!("r1 RR *:* - {l} {busy_addr} > 127.0.0.1:1 ;\n");
        let dir = G6Proc::conf_dir(&conf);
        let tag = dir.path().to_string_lossy().into_owned();
        let mut args = daemon_args(dir.path(), &[]);
        if !daemon {
            args.push("--no-daemon".into());
        }
        let g6 = G6Proc::launch(Path::new(G6_BIN), &args, dir, &[&l], false);
        let status = g6
            .wait_exit(WAIT_TIMEOUT)
            .unwrap_or_else(|| panic!("no exit {}", g6.diagnostics()));
        assert_eq!(
            status.code(),
            Some(1),
            "daemon={daemon} {}",
            g6.diagnostics()
        );
        // (The exact line is checked by `listen_error_message_is_exact`.)
        let want = format!("cannot listen on {busy_addr}: Address already in use");
        assert!(
            g6.stderr().lines().any(|line| line.contains(&want)),
            "daemon={daemon}: {}",
            g6.diagnostics()
        );
        g6.expect_log("the error in the log", WAIT_TIMEOUT, |log| {
            log.contains("| ERROR |") && log.contains(&want)
        });
        // Nothing bound, nothing running: the inherited listener is closed too.
        assert_eq!(listening_holders(l.addr(), &tag), Vec::<i32>::new());
        assert_eq!(live_processes_mentioning(&tag), Vec::<i32>::new());
    }
}

/// SPEC §4.5: one diagnostic line ending `cannot listen on <addr>: Address already in use`
/// (a `<file>:<line>:<col>: error: ` prefix would be fine), in the log too.
#[test]
fn listen_error_message_is_exact() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let g6 = G6Proc::spawn(
        &format!("r1 RR *:* - {busy_addr} > 127.0.0.1:1 ;\n"),
        &[],
        COPY,
    );
    let status = g6.wait_exit(WAIT_TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(1));
    let want = format!("cannot listen on {busy_addr}: Address already in use");
    let err = g6.stderr();
    assert!(
        err.lines().count() == 1 && err.trim_end().ends_with(&want),
        "{err:?}"
    );
    let log = g6.log_contents();
    assert!(
        log.lines()
            .any(|l| l.contains("| ERROR |") && l.ends_with(&want)),
        "{log}"
    );
}

#[test]
fn pid_file_is_written_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("g6.pid");
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let s1 = Backend::identify("s1");
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nr1 RR *:* - {l} > {} ;\n",
        s1.addr()
    );
    let pf = pid_file.to_str().unwrap();
    let g6 = G6Proc::start(&conf, &[&a, &l], &["--data-path", "copy", "--pid-file", pf]);
    let want = format!("{}\n", g6.pid());
    assert!(
        wait_until(WAIT_TIMEOUT, || fs::read_to_string(&pid_file)
            .ok()
            .as_deref()
            == Some(want.as_str())),
        "pid file {:?} {}",
        fs::read_to_string(&pid_file),
        g6.diagnostics()
    );
    assert_eq!(identify(l.addr()), "s1");
    g6.signal(Signal::SIGTERM);
    let st = g6
        .wait_exit(WAIT_TIMEOUT)
        .unwrap_or_else(|| panic!("no exit on TERM {}", g6.diagnostics()));
    assert_eq!(st.code(), Some(0));
    assert!(!pid_file.exists(), "pid file removed at exit");
}

/// Kills a daemon (and what it started) by PID when dropped, if it is still ours.
struct DaemonGuard {
    pid: Option<i32>,
    tag: String,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        for p in live_processes_mentioning(&self.tag) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        if let Some(p) = self.pid {
            let _ = wait_until(WAIT_TIMEOUT, || is_zombie_or_gone(p));
        }
    }
}

/// The pid in a pid file once it is completely written (its newline is there).
fn pid_written(pid_file: &Path) -> Option<i32> {
    fs::read_to_string(pid_file)
        .ok()
        .filter(|t| t.ends_with('\n'))?
        .trim()
        .parse()
        .ok()
}

fn session_id(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // pid (comm) state ppid pgrp session …
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn daemon_mode_launcher_exits_0_and_the_daemon_serves() {
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let s1 = Backend::identify("s1");
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nr1 RR *:* - {l} > {} ;\n",
        s1.addr()
    );
    let dir = G6Proc::conf_dir(&conf);
    let tag = dir.path().to_string_lossy().into_owned();
    let pid_file = dir.path().join("g6.pid");
    let pf = pid_file.to_str().unwrap().to_string();
    let mut guard = DaemonGuard {
        pid: None,
        tag: tag.clone(),
    };
    let args = daemon_args(dir.path(), &["--pid-file", &pf]);
    let launcher = G6Proc::launch(Path::new(G6_BIN), &args, dir, &[&a, &l], false);
    let st = launcher
        .wait_exit(WAIT_TIMEOUT)
        .unwrap_or_else(|| panic!("launcher did not exit {}", launcher.diagnostics()));
    assert_eq!(st.code(), Some(0), "{}", launcher.diagnostics());

    let daemon: i32 = wait_for(WAIT_TIMEOUT, || pid_written(&pid_file))
        .unwrap_or_else(|| panic!("no pid file {}", launcher.diagnostics()));
    guard.pid = Some(daemon);
    assert_ne!(daemon, launcher.pid());
    assert!(!is_zombie_or_gone(daemon), "daemon {daemon} running");
    assert_ne!(
        session_id(daemon),
        session_id(std::process::id() as i32),
        "setsid"
    );
    for fd in 0..3 {
        assert_eq!(
            fs::read_link(format!("/proc/{daemon}/fd/{fd}")).unwrap(),
            Path::new("/dev/null"),
            "stdio of the daemon"
        );
    }
    assert_eq!(
        fs::read_link(format!("/proc/{daemon}/cwd")).unwrap(),
        std::env::current_dir().unwrap(),
        "cwd kept"
    );

    // It serves: admin and proxied.
    assert!(admin(a.addr(), "?").starts_with("show (rules|sessions|stats) [json]\n"));
    assert_eq!(identify(l.addr()), "s1");

    // USR2: the successor daemonises too. The old generation names the successor's monitor
    // (the pid file's), not the launcher it started, and leaves it serving.
    let old = daemon;
    kill(Pid::from_raw(old), Signal::SIGUSR2).unwrap();
    let daemon: i32 = wait_for(WAIT_TIMEOUT, || {
        pid_written(&pid_file).filter(|&p| p != old)
    })
    .unwrap_or_else(|| panic!("no successor in the pid file {}", launcher.diagnostics()));
    guard.pid = Some(daemon);
    let log = pid_file.with_file_name("g6.log");
    let said = format!("USR2: successor {daemon} is serving");
    assert!(
        wait_until(WAIT_TIMEOUT, || fs::read_to_string(&log)
            .is_ok_and(|t| t.contains(&said))),
        "no `{said}` in {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        wait_until(WAIT_TIMEOUT, || is_zombie_or_gone(old)),
        "old generation {old} did not exit after the hand-over"
    );
    assert_eq!(identify(l.addr()), "s1");

    // Stopped by PID.
    kill(Pid::from_raw(daemon), Signal::SIGTERM).unwrap();
    assert!(
        wait_until(WAIT_TIMEOUT, || is_zombie_or_gone(daemon)),
        "daemon {daemon} did not stop on TERM"
    );
    for addr in [a.addr(), l.addr()] {
        assert!(
            wait_until(WAIT_TIMEOUT, || listening_holders(addr, &tag).is_empty()),
            "{addr} still listening in {:?}",
            listening_holders(addr, &tag)
        );
    }
    assert!(
        wait_until(WAIT_TIMEOUT, || live_processes_mentioning(&tag).is_empty()),
        "processes left: {:?}",
        live_processes_mentioning(&tag)
    );
    assert!(!pid_file.exists(), "pid file removed at exit");
    drop(guard);
}
