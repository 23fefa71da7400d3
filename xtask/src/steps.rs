//! Step runner and the build/run/test tasks.

use std::{
    env, ffi::OsStr, os::unix::process::CommandExt as _, path::PathBuf, process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

pub struct Ctx {
    /// The workspace root (parent of this crate).
    pub root: PathBuf,
    /// Export G6_EBPF_STRICT=1 to every child (`ci`, or already set by the caller).
    pub strict: bool,
}

impl Ctx {
    pub fn new() -> Ctx {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        let strict = env::var("G6_EBPF_STRICT").is_ok_and(|v| v == "1");
        Ctx { root, strict }
    }

    /// `cargo` (the one that runs us, so the toolchain matches), in the workspace root.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        c.args(args).current_dir(&self.root);
        if self.strict {
            c.env("G6_EBPF_STRICT", "1");
        }
        c
    }

    pub fn g6_bin(&self) -> PathBuf {
        self.root.join("target/release/g6")
    }
}

/// Runs one named step, printing its start, result and duration.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let t = Instant::now();
    match f() {
        Ok(v) => {
            println!("<== {name}: ok ({:.1?})", t.elapsed());
            Ok(v)
        }
        Err(e) => Err(e.context(format!("step `{name}` failed after {:.1?}", t.elapsed()))),
    }
}

/// Runs a command to completion; non-zero exit is an error naming the command.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} exited with {status}", show(cmd));
    }
    Ok(())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    // Effective uid from /proc avoids a libc dependency; a failure to read means "not root".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn build_ebpf(ctx: &Ctx) -> Result<()> {
    step(
        "cargo build --release -p g6-user (G6_EBPF_STRICT=1)",
        || {
            let mut c = ctx.cargo(["build", "--release", "-p", "g6-user"]);
            sh(c.env("G6_EBPF_STRICT", "1"))
        },
    )
}

/// Where the tests find the agent built without the eBPF object (g6-user/tests/sockmap.rs).
const NO_EBPF_BIN: &str = "G6_NO_EBPF_BIN";

/// Builds only the g6 binary with `G6_EBPF_SKIP=1` into its own target dir (so the main
/// build is not invalidated); returns its path. The dev profile: from cold it compiles
/// about a third faster than release, and the test that uses it moves only a few MiB.
fn build_no_ebpf(ctx: &Ctx) -> Result<PathBuf> {
    let dir = ctx.root.join("target/no-ebpf");
    step(
        "cargo build --bin g6 (G6_EBPF_SKIP=1, target/no-ebpf)",
        || {
            let mut c = ctx.cargo(["build", "-p", "g6-user", "--bin", "g6"]);
            sh(c.env("G6_EBPF_SKIP", "1").env("CARGO_TARGET_DIR", &dir))
        },
    )?;
    Ok(dir.join("debug/g6"))
}

pub fn build(ctx: &Ctx) -> Result<()> {
    step("cargo build --release", || {
        sh(&mut ctx.cargo(["build", "--release"]))
    })
}

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    build(ctx)?;
    let bin = ctx.g6_bin();
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    cmd.args(args);
    println!("==> exec {}", show(&cmd));
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot exec {}", show(&cmd)))
}

pub fn test(ctx: &Ctx) -> Result<()> {
    let t = Instant::now();
    if ctx.strict {
        println!("xtask: G6_EBPF_STRICT=1 (the eBPF object and the fast-path tests are required)");
    }
    crate::setup::run(ctx)?;
    step("cargo fmt --all -- --check", || {
        sh(&mut ctx.cargo(["fmt", "--all", "--", "--check"]))
    })?;
    // Default members only: g6-ebpf cannot be built for the host.
    step("cargo clippy --all-targets -- -D warnings", || {
        sh(&mut ctx.cargo(["clippy", "--all-targets", "--", "-D", "warnings"]))
    })?;
    let no_ebpf = build_no_ebpf(ctx)?;
    step("cargo test --release", || {
        let mut c = ctx.cargo(["test", "--release"]);
        sh(c.env(NO_EBPF_BIN, &no_ebpf))
    })?;
    crate::fuzz::ci_step(ctx)?;
    // The benchmark's CI size: it must keep working (its own packages, every target, every
    // figure); the measured run is `cargo xtask bench`.
    step("cargo xtask bench --smoke", || {
        #[derive(clap::Parser)]
        struct Smoke {
            #[command(flatten)]
            args: crate::bench::BenchArgs,
        }
        let smoke = <Smoke as clap::Parser>::parse_from(["bench", "--smoke"]);
        crate::bench::run(&smoke.args)
    })?;
    step("g6 -f etc/G6.conf --check", || {
        let mut c = Command::new(ctx.g6_bin());
        c.args(["-f", "etc/G6.conf", "--check"])
            .current_dir(&ctx.root);
        sh(&mut c)
    })?;
    println!("xtask: all steps passed ({:.1?})", t.elapsed());
    Ok(())
}
