//! `cargo xtask soak`: the full soak (g6-user/tests/soak.rs `soak_full`), bounded in time.

use anyhow::Result;
use clap::Args;

use crate::steps::{Ctx, sh, step};

#[derive(Args)]
pub struct SoakArgs {
    /// Sessions in all, spread over the data paths.
    #[arg(long, default_value_t = 10_000)]
    pub sessions: u64,
    /// Time limit in seconds (the run fails if the sessions are not done by then).
    #[arg(long, default_value_t = 1200)]
    pub secs: u64,
    /// Data paths, comma-separated (default: copy,splice,sockmap).
    #[arg(long)]
    pub paths: Option<String>,
    /// Seed of a run to replay (printed by every run).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(ctx: &Ctx, args: &SoakArgs) -> Result<()> {
    let name = format!("soak: {} sessions, at most {} s", args.sessions, args.secs);
    step(&name, || {
        let mut c = ctx.cargo([
            "test",
            "--release",
            "-p",
            "g6-user",
            "--test",
            "soak",
            "--",
            "--ignored",
            "--exact",
            "soak_full",
            "--nocapture",
        ]);
        c.env("G6_SOAK_SESSIONS", args.sessions.to_string())
            .env("G6_SOAK_MAX_SECS", args.secs.to_string());
        if let Some(p) = &args.paths {
            c.env("G6_TEST_PATHS", p);
        }
        if let Some(s) = args.seed {
            c.env("G6_SOAK_SEED", s.to_string());
        }
        sh(&mut c)
    })
}
