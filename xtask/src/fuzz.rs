//! `cargo xtask fuzz` and the fuzz step of `cargo xtask test`: every cargo-fuzz target for a
//! bounded time through `fuzz/run.sh` (which builds once, runs each target on its corpus,
//! seeds and regressions, and prints executions and coverage).

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::steps::{Ctx, sh, step};

/// The nightly the fuzz targets build with (the eBPF toolchain, installed by `setup`).
const TOOLCHAIN: &str = "nightly-2026-05-20";
/// Seconds per target in `cargo xtask test` (override: `G6_FUZZ_SECS`, 0 = skip).
pub const CI_SECS: u64 = 20;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    pub secs: u64,
    /// Targets (default: all): config_parse, admin_command, admin_dispatch.
    pub targets: Vec<String>,
}

/// `cargo xtask fuzz`: a long run.
pub fn run(ctx: &Ctx, args: &FuzzArgs) -> Result<()> {
    ensure_cargo_fuzz(ctx)?;
    step(&format!("fuzz/run.sh {} s per target", args.secs), || {
        run_sh(ctx, args.secs, &args.targets)
    })
}

/// The fuzz step of `cargo xtask test`: `CI_SECS` per target, or `G6_FUZZ_SECS`.
pub fn ci_step(ctx: &Ctx) -> Result<()> {
    let secs = match std::env::var("G6_FUZZ_SECS") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("G6_FUZZ_SECS={v:?} is not a number of seconds"))?,
        Err(_) => CI_SECS,
    };
    if secs == 0 {
        println!("xtask: fuzz step skipped (G6_FUZZ_SECS=0)");
        return Ok(());
    }
    ensure_cargo_fuzz(ctx)?;
    step(&format!("fuzz/run.sh {secs} (s per target)"), || {
        run_sh(ctx, secs, &[])
    })
}

fn run_sh(ctx: &Ctx, secs: u64, targets: &[String]) -> Result<()> {
    let mut c = Command::new(ctx.root.join("fuzz/run.sh"));
    c.arg(secs.to_string())
        .args(targets)
        .env("G6_FUZZ_TOOLCHAIN", TOOLCHAIN);
    sh(&mut c)
}

/// cargo-fuzz is a cargo subcommand installed per machine; install it if it is missing.
fn ensure_cargo_fuzz(ctx: &Ctx) -> Result<()> {
    let present = Command::new("cargo")
        .args([&format!("+{TOOLCHAIN}"), "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    step("cargo install cargo-fuzz --locked", || {
        sh(&mut ctx.cargo(["install", "cargo-fuzz", "--locked"]))
    })
}
