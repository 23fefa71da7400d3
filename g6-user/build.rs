//! Builds the eBPF object (`g6-ebpf`, bin `g6`) into `$OUT_DIR/g6` with aya-build, the
//! aya-template way, but tolerant: if the eBPF toolchain (pinned nightly + rust-src,
//! bpf-linker) is missing or the build fails, it warns and writes an EMPTY object, and the agent
//! runs on its userspace data paths. `G6_EBPF_STRICT=1` (CI, releases) makes that a hard error.
//! `G6_EBPF_SKIP=1` builds that fallback agent on purpose (the CI tests it; it wins over
//! STRICT). The reason for an empty object is compiled in (`G6_EBPF_MISSING`), so the agent
//! can say why it has no fast path. See shared/design/ebpf-fastpath.md §1.

use std::{
    env, fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::Command,
};

/// Must match bpf-linker's LLVM major (22); `cargo xtask setup` installs both together.
const TOOLCHAIN: &str = "nightly-2026-05-20";
const STRICT: &str = "G6_EBPF_STRICT";
const SKIP: &str = "G6_EBPF_SKIP";

/// `YYYY-MM-DD` (UTC) of `SOURCE_DATE_EPOCH` (reproducible builds) or of now, for `g6 -v`.
fn build_date() -> String {
    let secs = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rustc-env=G6_BUILD_DATE={}", build_date());
    let strict = env::var(STRICT).is_ok_and(|v| v == "1");

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        // Cargo always sets OUT_DIR; without it there is nowhere to write, even in fallback.
        eprintln!("g6 build.rs: OUT_DIR not set");
        std::process::exit(1);
    };
    let object = out_dir.join("g6");
    // Never embed a stale object from an earlier build.
    let _ = fs::remove_file(&object);

    let ebpf_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(|d| PathBuf::from(d).join("../g6-ebpf"))
        .and_then(|d| d.canonicalize().ok());
    if let Some(d) = &ebpf_dir {
        watch_toolchain(d);
    }
    println!("cargo:rerun-if-env-changed={SKIP}");
    let result = if env::var(SKIP).is_ok_and(|v| v == "1") {
        Err(format!("built with {SKIP}=1"))
    } else {
        build(ebpf_dir.as_deref(), &object)
    };
    let Err(reason) = result else {
        println!("cargo:rustc-env=G6_EBPF_MISSING=");
        return;
    };
    println!("cargo:rustc-env=G6_EBPF_MISSING={reason}");
    if reason.contains(SKIP) {
        println!("cargo:warning=g6: eBPF object NOT built ({reason}): a user-space-only agent");
        write_empty(&object);
        return;
    }
    // Only a degraded build depends on the switch: with the object built, strict or not gives
    // the same result, and re-running would rebuild the agent each time CI and a developer
    // alternate.
    println!("cargo:rerun-if-env-changed={STRICT}");
    if strict {
        eprintln!("g6: eBPF object NOT built ({reason}) and {STRICT}=1");
        std::process::exit(1);
    }
    println!(
        "cargo:warning=g6: eBPF object NOT built ({reason}); the agent will use the userspace data paths"
    );
    write_empty(&object);
}

fn write_empty(object: &Path) {
    if let Err(e) = fs::write(object, b"") {
        eprintln!("g6 build.rs: cannot write {}: {e}", object.display());
        std::process::exit(1);
    }
}

/// Runs aya-build and checks that it produced a non-empty `object`.
fn build(ebpf_dir: Option<&Path>, object: &Path) -> Result<(), String> {
    let ebpf_dir = ebpf_dir.ok_or("g6-ebpf not found beside g6-user")?;
    let root_dir = ebpf_dir.to_str().ok_or("non-UTF-8 path to g6-ebpf")?;
    preflight()?;
    let package = aya_build::Package {
        name: "g6-ebpf",
        root_dir,
        ..Default::default()
    };
    // aya-build 0.2.0 can panic in its output relay threads; a panic must degrade too.
    let built = catch_unwind(AssertUnwindSafe(|| {
        aya_build::build_ebpf([package], aya_build::Toolchain::Custom(TOOLCHAIN))
    }));
    match built {
        Ok(Ok(())) => {}
        // "<the whole command line> failed: exit status: 101" says little; the compiler's
        // messages were relayed as warnings above.
        Ok(Err(e)) if e.to_string().contains(" failed: ") => {
            return Err(format!(
                "cargo +{TOOLCHAIN} build -p g6-ebpf failed, see the warnings above"
            ));
        }
        Ok(Err(e)) => return Err(one_line(&format!("{e:#}"))),
        Err(_) => return Err("aya-build panicked".into()),
    }
    // AYA_BUILD_SKIP=1 returns Ok without producing a file.
    match fs::metadata(object) {
        Ok(m) if m.len() > 0 => Ok(()),
        Ok(_) => Err("aya-build produced an empty object".into()),
        Err(_) => Err("aya-build produced no object (AYA_BUILD_SKIP set?)".into()),
    }
}

/// Cheap checks first, so the usual reasons are stated plainly (and no time is spent compiling
/// the eBPF crate's dependencies only to fail at the link).
fn preflight() -> Result<(), String> {
    let setup = "run `cargo xtask setup`";
    let sysroot = Command::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output();
    let sysroot = match sysroot {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        Ok(_) => return Err(format!("toolchain {TOOLCHAIN} not installed; {setup}")),
        Err(e) => return Err(format!("rustup not runnable ({e}); {setup}")),
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(format!("rust-src missing from {TOOLCHAIN}; {setup}"));
    }
    // rustup puts $CARGO_HOME/bin first on the PATH of the eBPF build; look there too.
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    let path = env::var_os("PATH").unwrap_or_default();
    let found = cargo_bin
        .into_iter()
        .chain(env::split_paths(&path))
        .any(|d| d.join("bpf-linker").is_file());
    if !found {
        return Err(format!("bpf-linker not found; {setup}"));
    }
    Ok(())
}

/// Re-run when the pinned toolchain, rust-src or bpf-linker appears or changes, so a degraded
/// build heals itself after `cargo xtask setup`. Only existing paths are watched: cargo treats
/// a missing one as always changed, which would rebuild the agent on every build.
fn watch_toolchain(ebpf_dir: &Path) {
    let home = env::var_os("HOME").map(PathBuf::from);
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".rustup")));
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
    let host = env::var("HOST").unwrap_or_default();
    let mut watch = vec![ebpf_dir.to_path_buf()];
    if let Some(r) = rustup_home {
        // A file per installed channel toolchain (written by `rustup toolchain install`).
        watch.push(r.join("update-hashes"));
        // Rewritten when a component (rust-src) is added.
        let tc = r.join("toolchains").join(format!("{TOOLCHAIN}-{host}"));
        watch.push(tc.join("lib/rustlib/components"));
    }
    if let Some(c) = cargo_home {
        // Small directory; `cargo install bpf-linker` changes it.
        watch.push(c.join("bin"));
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

/// Cargo warnings are single lines: drop backtraces and blank lines, join the rest, cap it.
fn one_line(s: &str) -> String {
    let s = s.split("Stack backtrace").next().unwrap_or(s);
    let s = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ");
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}
