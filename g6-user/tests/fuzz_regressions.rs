//! Replays the fuzz corpora kept in git — `fuzz/seeds/<target>/` and the crash inputs saved
//! in `fuzz/regressions/<target>/` — through the fuzz targets' own property code, so a normal
//! `cargo test` catches a regression without cargo-fuzz or a nightly toolchain.
//!
//! The property code lives in `fuzz/src/` (the `g6-fuzz` crate, outside this workspace) and is
//! included here as is; it only uses `g6`, `serde_json` and `std`. See `fuzz/README.md`.

#[path = "../../fuzz/src/admin_command.rs"]
mod admin_command;
#[path = "../../fuzz/src/admin_dispatch.rs"]
mod admin_dispatch;
#[path = "../../fuzz/src/common.rs"]
mod common;
#[path = "../../fuzz/src/config_parse.rs"]
mod config_parse;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

const TARGETS: [&str; 3] = ["config_parse", "admin_command", "admin_dispatch"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every input file of `target` (dot files aside), seeds first, each group sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| {
                e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .path()
            })
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        all.extend(files);
    }
    all
}

fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for {target} in fuzz/seeds/{target}/"
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs fail (messages above; replay one with \
         `cargo +nightly-2026-05-20 fuzz run {target} <file>` in fuzz/): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn config_parse_inputs() {
    replay("config_parse", config_parse::check);
}

#[test]
fn admin_command_inputs() {
    replay("admin_command", admin_command::check);
}

#[test]
fn admin_dispatch_inputs() {
    replay("admin_dispatch", admin_dispatch::check);
}

/// Inputs saved under a name that is not a target would never be replayed.
#[test]
fn corpus_directories_name_targets() {
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for e in entries {
            let name = e.expect("dir entry").file_name();
            let name = name.to_string_lossy();
            assert!(
                TARGETS.contains(&name.as_ref()),
                "fuzz/{kind}/{name} is not one of {TARGETS:?}"
            );
        }
    }
    for t in TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{t}.rs"));
        assert!(target.is_file(), "{} missing", target.display());
    }
}
