//! `cargo xtask setup`: idempotent install of what builds and tests need (design doc §1).
//! 1. the pinned nightly with rust-src (builds the eBPF crate);
//! 2. bpf-linker 0.13.0 linked against that nightly's own libLLVM (via /opt/rust-llvm);
//! 3. Debian packages the tests use (only as root; otherwise the missing ones are listed).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::steps::{Ctx, is_root, sh, step};

/// Must stay in sync with g6-user/build.rs (TOOLCHAIN).
const NIGHTLY: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/opt/rust-llvm";
/// Debian packages the tests use: `ss`/`ip` (iproute2), `nc`, `setpriv` (util-linux).
const PACKAGES: &[&str] = &["iproute2", "netcat-openbsd", "util-linux"];

pub fn run(_ctx: &Ctx) -> Result<()> {
    step("setup: nightly toolchain + rust-src", ensure_nightly)?;
    step("setup: bpf-linker", ensure_bpf_linker)?;
    step("setup: Debian packages", ensure_packages)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", crate::steps::show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            crate::steps::show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_nightly() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .map(|s| s.lines().any(|l| l.starts_with("rust-src")))
    .unwrap_or(false);
    if installed {
        println!("    {NIGHTLY} with rust-src: present");
        return Ok(());
    }
    sh(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

/// The nightly's sysroot, its libLLVM file name and LLVM major version.
fn nightly_llvm() -> Result<(PathBuf, String, String)> {
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let lib = fs::read_dir(sysroot.join("lib"))
        .with_context(|| format!("reading {}/lib", sysroot.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        .with_context(|| format!("no libLLVM in {}/lib", sysroot.display()))?;
    let vv = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"]))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV shows no LLVM version")?
        .to_string();
    Ok((sysroot, lib, major))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Why the installed bpf-linker is not usable, or None if it is.
fn bpf_linker_problem(linker: &Path, want_llvm: &Path) -> Option<String> {
    let version = match output(Command::new(linker).arg("--version")) {
        Ok(v) => v,
        Err(e) => return Some(format!("not runnable ({e})")),
    };
    if !version.contains(BPF_LINKER_VERSION) {
        return Some(format!(
            "version {} (want {BPF_LINKER_VERSION})",
            version.trim()
        ));
    }
    let ldd = match output(Command::new("ldd").arg(linker)) {
        Ok(v) => v,
        Err(e) => return Some(format!("ldd failed ({e})")),
    };
    let Some(line) = ldd.lines().find(|l| l.contains("libLLVM")) else {
        return Some("not linked against a shared libLLVM".into());
    };
    let Some(path) = line
        .split("=>")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
    else {
        return Some(format!("libLLVM not found ({})", line.trim()));
    };
    match (fs::canonicalize(path), fs::canonicalize(want_llvm)) {
        (Ok(a), Ok(b)) if a == b => None,
        (Ok(a), _) => Some(format!(
            "linked to {} (want {})",
            a.display(),
            want_llvm.display()
        )),
        (Err(_), _) => Some(format!("libLLVM {path} missing")),
    }
}

fn ensure_bpf_linker() -> Result<()> {
    let (sysroot, lib, major) = nightly_llvm()?;
    let want = sysroot.join("lib").join(&lib);
    let linker = cargo_home().join("bin/bpf-linker");
    let problem = if linker.exists() {
        bpf_linker_problem(&linker, &want)
    } else {
        Some("not installed".into())
    };
    let Some(problem) = problem else {
        println!("    bpf-linker {BPF_LINKER_VERSION} against {lib} (LLVM {major}): present");
        return Ok(());
    };
    println!("    bpf-linker: {problem}; building it against {lib} (LLVM {major})");
    link_llvm(&want, &lib)?;
    sh(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", LLVM_PREFIX))
}

/// /opt/rust-llvm/lib/{libLLVM.so, <lib>} -> the nightly's libLLVM (sudo when not root).
fn link_llvm(target: &Path, lib: &str) -> Result<()> {
    let dir = Path::new(LLVM_PREFIX).join("lib");
    let sudo = !is_root();
    let run = |args: &[&str]| -> Result<()> {
        let mut c = if sudo {
            let mut c = Command::new("sudo");
            c.arg(args[0]);
            c
        } else {
            Command::new(args[0])
        };
        sh(c.args(&args[1..]))
    };
    let dir_s = dir.to_string_lossy();
    let target_s = target.to_string_lossy();
    run(&["mkdir", "-p", &dir_s])?;
    for name in ["libLLVM.so", lib] {
        let link = dir.join(name);
        run(&["ln", "-sfn", &target_s, &link.to_string_lossy()])?;
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    {}: present", PACKAGES.join(", "));
        return Ok(());
    }
    if !is_root() {
        println!(
            "    missing Debian packages (not root, not installing): {}",
            missing.join(" ")
        );
        return Ok(());
    }
    sh(Command::new("apt-get").arg("update"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
