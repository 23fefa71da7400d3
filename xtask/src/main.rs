//! G6 developer tasks: `cargo xtask <setup|build-ebpf|build|run|test|ci|bench|fuzz|soak>`.
//! Each step is printed with its duration; the first failing step stops the task and is named.

mod bench;
mod fuzz;
mod setup;
mod soak;
mod steps;

use anyhow::Result;
use clap::{Parser, Subcommand};

use steps::Ctx;

#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "G6 developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install (idempotently) the pinned nightly + rust-src, bpf-linker against that nightly's
    /// LLVM, and the Debian packages the tests use.
    Setup,
    /// Build the release agent with the eBPF object required (G6_EBPF_STRICT=1).
    BuildEbpf,
    /// `cargo build --release`.
    Build,
    /// Build the release binary, then run `target/release/g6 ARGS` (via `sudo -E` if not root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// setup, fmt --check, clippy -D warnings, tests (release), each fuzz target for 20 s
    /// (G6_FUZZ_SECS), `g6 -f etc/G6.conf --check`.
    Test,
    /// `test` with G6_EBPF_STRICT=1: a missing eBPF object or privileges fail the run.
    Ci,
    /// G6 side by side with HAProxy, nginx stream and a direct connection (xtask/src/bench).
    Bench(bench::BenchArgs),
    /// Every fuzz target for `--secs` each (fuzz/run.sh; builds with cargo-fuzz first).
    Fuzz(fuzz::FuzzArgs),
    /// The full soak: `--sessions` random sessions over every data path (g6-user/tests/soak.rs).
    Soak(soak::SoakArgs),
}

fn main() {
    let cli = Cli::parse();
    let mut ctx = Ctx::new();
    let result: Result<()> = match cli.task {
        Task::Setup => setup::run(&ctx),
        Task::BuildEbpf => steps::build_ebpf(&ctx),
        Task::Build => steps::build(&ctx),
        Task::Run { args } => steps::run(&ctx, &args),
        Task::Test => steps::test(&ctx),
        Task::Ci => {
            ctx.strict = true;
            steps::test(&ctx)
        }
        Task::Bench(args) => bench::run(&args),
        Task::Fuzz(args) => fuzz::run(&ctx, &args),
        Task::Soak(args) => soak::run(&ctx, &args),
    };
    if let Err(e) = result {
        eprintln!("xtask: FAILED: {e:#}");
        std::process::exit(1);
    }
}
