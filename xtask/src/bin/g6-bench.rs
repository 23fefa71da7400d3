//! `cargo run -p xtask --bin g6-bench -- [--quick] …`: the benchmark of `cargo xtask bench`
//! (xtask/src/bench/) as a binary of its own, handy while developing it.

#[path = "../bench/mod.rs"]
mod bench;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "g6-bench",
    about = "G6 side by side with HAProxy, nginx stream and a direct connection (loopback)"
)]
struct Cli {
    #[command(flatten)]
    args: bench::BenchArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = bench::run(&cli.args) {
        eprintln!("g6-bench: FAILED: {e:#}");
        std::process::exit(1);
    }
}
