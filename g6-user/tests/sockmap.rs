//! The `sockmap` data path end to end with the real binary: the bytes cross the agent without
//! the agent reading or writing them, the counters still say exactly what crossed, and an
//! agent without the privileges for eBPF, or built without the eBPF object, falls back to
//! user space and says why.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::*;

/// `rchar + wchar` of a process: every byte it read or wrote through syscalls.
fn io_bytes(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn worker_of(g6: &G6Proc) -> i32 {
    let monitor = g6.pid();
    wait_for(WAIT_TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{monitor}/task/{monitor}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .expect("no worker process")
}

fn sockmap_available() -> bool {
    match g6::fastpath::probe() {
        Ok(_) => true,
        Err(e) if std::env::var("G6_EBPF_STRICT").as_deref() == Ok("1") => {
            panic!("G6_EBPF_STRICT=1 but the fast path is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: sockmap unavailable here: {e}");
            false
        }
    }
}

#[test]
fn spliced_bytes_never_pass_through_the_agent() {
    if !sockmap_available() {
        return;
    }
    const N: u64 = 64 << 20;
    let sink = Backend::sink();
    let generator = Backend::generator(N);
    let (up, down) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let g6 = G6Proc::start(
        &format!(
            "up RR *:* - {up} > {} ;\ndown RR *:* - {down} > {} ;\n",
            sink.addr(),
            generator.addr()
        ),
        &[&up, &down],
        &["--data-path", "sockmap"],
    );
    g6.expect_log("path in use", WAIT_TIMEOUT, |t| {
        t.contains("data path sockmap")
    });
    let worker = worker_of(&g6);
    // A first session makes sure the worker has loaded its fast path (loading reads the
    // kernel's BTF, megabytes that are not relayed bytes).
    upload_checked(up.addr(), &[&sink], 1024);
    g6.expect_log("warm-up", WAIT_TIMEOUT, |t| {
        t.contains("path=sockmap bytes_in=1024 ")
    });
    let before = io_bytes(worker);
    upload_checked(up.addr(), &[&sink], N);
    download_checked(down.addr(), &[&generator]);
    let moved = io_bytes(worker) - before;
    // 128 MiB crossed; the agent itself handled a few KiB (log lines, control).
    assert!(
        moved < 1 << 20,
        "the worker read/wrote {moved} bytes for {} bytes relayed",
        2 * N
    );
    // The counters come from the kernel map and are exact.
    g6.expect_log("upload access line", WAIT_TIMEOUT, |t| {
        t.contains("rule=up ") && t.contains(&format!("path=sockmap bytes_in={N} "))
    });
    g6.expect_log("download access line", WAIT_TIMEOUT, |t| {
        t.contains("rule=down ") && t.contains(&format!("bytes_out={N} "))
    });
}

#[test]
fn unprivileged_agent_falls_back_to_user_space_and_says_why() {
    let setpriv = Path::new("/usr/bin/setpriv");
    if !setpriv.exists() || !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root and setpriv (util-linux)");
        return;
    }
    const N: u64 = 8 << 20;
    let sink = Backend::sink();
    let l = PreBound::tcp("127.0.0.1:0");
    let dir = G6Proc::conf_dir(&format!("r RR *:* - {l} > {} ;\n", sink.addr()));
    // nobody must read the config and write the log.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(
        dir.path().join("g6.conf"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut args: Vec<std::ffi::OsString> = [
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        support::g6proc::G6_BIN,
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.extend(G6Proc::standard_args(
        dir.path(),
        &["--data-path", "sockmap"],
    ));
    let g6 = G6Proc::launch(setpriv, &args, dir, &[&l], true);
    g6.expect_log("fallback reason", WAIT_TIMEOUT, |t| {
        t.contains("data path sockmap unavailable") && t.contains("Operation not permitted")
    });
    g6.expect_log("path in use", WAIT_TIMEOUT, |t| {
        t.contains("data path splice")
    });
    upload_checked(l.addr(), &[&sink], N);
    g6.expect_log("access line", WAIT_TIMEOUT, |t| {
        t.contains(&format!("path=splice bytes_in={N} "))
    });
}

/// The agent built without the eBPF object, from `G6_NO_EBPF_BIN`: `cargo xtask test` builds
/// it (`G6_EBPF_SKIP=1`, its own target dir) and always sets the variable. Unset under
/// `G6_EBPF_STRICT=1` is a failure; otherwise a printed skip.
fn no_ebpf_bin() -> Option<std::path::PathBuf> {
    const VAR: &str = "G6_NO_EBPF_BIN";
    let Some(bin) = std::env::var_os(VAR) else {
        assert!(
            std::env::var("G6_EBPF_STRICT").as_deref() != Ok("1"),
            "G6_EBPF_STRICT=1 but {VAR} is not set (`cargo xtask test` builds that agent)"
        );
        eprintln!("skipped: {VAR} not set; `cargo xtask test` builds the agent without eBPF");
        return None;
    };
    let bin = std::path::PathBuf::from(bin);
    assert!(bin.is_file(), "{VAR}={} does not exist", bin.display());
    Some(bin)
}

#[test]
fn agent_built_without_the_ebpf_object_serves_in_user_space_and_says_why() {
    let Some(bin) = no_ebpf_bin() else { return };
    const N: u64 = 8 << 20;
    let sink = Backend::sink();
    let generator = Backend::generator(N);
    let (up, down) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let dir = G6Proc::conf_dir(&format!(
        "up RR *:* - {up} > {} ;\ndown RR *:* - {down} > {} ;\n",
        sink.addr(),
        generator.addr()
    ));
    let args = G6Proc::standard_args(dir.path(), &["--data-path", "sockmap"]);
    let g6 = G6Proc::launch(&bin, &args, dir, &[&up, &down], true);
    g6.expect_log("fallback reason", WAIT_TIMEOUT, |t| {
        t.contains("data path sockmap unavailable")
            && t.contains("agent was built without the eBPF object (built with G6_EBPF_SKIP=1)")
    });
    g6.expect_log("path in use", WAIT_TIMEOUT, |t| {
        t.contains("data path splice")
    });
    upload_checked(up.addr(), &[&sink], N);
    download_checked(down.addr(), &[&generator]);
    g6.expect_log("upload access line", WAIT_TIMEOUT, |t| {
        t.contains("rule=up ") && t.contains(&format!("path=splice bytes_in={N} "))
    });
    g6.expect_log("download access line", WAIT_TIMEOUT, |t| {
        t.contains("rule=down ") && t.contains(&format!("bytes_out={N} "))
    });
}
