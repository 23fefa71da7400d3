//! Builds the eBPF object (`g6-ebpf`, bin `g6`) into `$OUT_DIR/g6` with aya-build, the
//! aya-template way, but tolerant: if the eBPF toolchain (pinned nightly + rust-src,
//! bpf-linker) is missing or the build fails, it warns and writes an EMPTY object, and the agent
//! runs on its userspace data paths. `G6_EBPF_STRICT=1` (CI, releases) makes that a hard error.
//! See shared/design/ebpf-fastpath.md §1.

use std::{
    env, fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

/// Must match bpf-linker's LLVM major (22); `cargo xtask setup` installs both together.
const TOOLCHAIN: &str = "nightly-2026-05-20";
const STRICT: &str = "G6_EBPF_STRICT";

fn main() {
    println!("cargo:rerun-if-env-changed={STRICT}");
    println!("cargo:rerun-if-changed=build.rs");
    let strict = env::var(STRICT).is_ok_and(|v| v == "1");

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        // Cargo always sets OUT_DIR; without it there is nowhere to write, even in fallback.
        eprintln!("g6 build.rs: OUT_DIR not set");
        std::process::exit(1);
    };
    let object = out_dir.join("g6");
    // Never embed a stale object from an earlier build.
    let _ = fs::remove_file(&object);

    watch_toolchain();
    let Err(reason) = build(&object) else {
        return;
    };
    if strict {
        eprintln!("g6: eBPF object NOT built ({reason}) and {STRICT}=1");
        std::process::exit(1);
    }
    println!(
        "cargo:warning=g6: eBPF object NOT built ({reason}); the agent will use the userspace data paths"
    );
    if let Err(e) = fs::write(&object, b"") {
        eprintln!("g6 build.rs: cannot write {}: {e}", object.display());
        std::process::exit(1);
    }
}

/// Runs aya-build and checks that it produced a non-empty object.
fn build(object: &Path) -> Result<(), String> {
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = manifest_dir.join("../g6-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().unwrap_or(ebpf_dir);
    let root_dir = ebpf_dir.to_str().ok_or("non-UTF-8 path to g6-ebpf")?;
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

/// Re-run when the pinned toolchain or bpf-linker appears or changes, so a degraded build
/// heals itself once `cargo xtask setup` has run. Cargo treats a missing path as changed, so a
/// degraded build retries on every build (it fails fast while the toolchain is absent).
fn watch_toolchain() {
    let home = env::var_os("HOME").map(PathBuf::from);
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".rustup")));
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
    let host = env::var("HOST").unwrap_or_default();
    if let Some(r) = rustup_home {
        // Rewritten whenever a component (rust-src) is added.
        let components = r
            .join("toolchains")
            .join(format!("{TOOLCHAIN}-{host}"))
            .join("lib/rustlib/components");
        println!("cargo:rerun-if-changed={}", components.display());
    }
    if let Some(c) = cargo_home {
        println!(
            "cargo:rerun-if-changed={}",
            c.join("bin/bpf-linker").display()
        );
    }
}

/// Cargo warnings are single lines; keep the first line of a long error chain readable.
fn one_line(s: &str) -> String {
    let s = s.replace('\n', " | ");
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
