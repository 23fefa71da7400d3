//! Command line (SPEC.md §2): the original G6 flags plus the [ext] ones, parsed with clap and
//! reported with the original's messages and exit codes.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser};

/// Exit status for usage errors (the original's).
pub const EXIT_USAGE: i32 = 7;
/// Exit status for configuration, file and listen errors.
pub const EXIT_CONFIG: i32 = 1;

pub const USAGE: &str = "USAGE : G6 -f (config_pathfilename) [ -t (forward_thread_size) ] \
[ -s (forward_session_size) ] [ --log-level (DEBUG|INFO|WARN|ERROR|FATAL) ] \
[ --log-filename (logfilename) ] [ --close-log ] [ --no-daemon ] [ --set-cpu-affinity ] \
[ --check ] [ --data-path (auto|sockmap|splice|copy) ] [ --pid-file (pathfilename) ] \
[ --xdp (auto|off|generic|native) ] [ --drain-timeout (seconds) ]";

/// `G6 v<semver> build <date>` then the product line.
pub fn version_text() -> String {
    format!(
        "G6 v{} build {}\nTCP Bridge && Load-Balance Dispenser\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("G6_BUILD_DATE").unwrap_or("unknown")
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl LogLevel {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "DEBUG" => Self::Debug,
            "INFO" => Self::Info,
            "WARN" => Self::Warn,
            "ERROR" => Self::Error,
            "FATAL" => Self::Fatal,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPathChoice {
    Auto,
    Sockmap,
    Splice,
    Copy,
}

impl DataPathChoice {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "sockmap" => Self::Sockmap,
            "splice" => Self::Splice,
            "copy" => Self::Copy,
            _ => return None,
        })
    }
}

/// `--xdp` [ext]: the XDP guard's attachment mode, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpChoice {
    /// Native mode where the driver has an XDP hook, nothing elsewhere (the default).
    Auto,
    Off,
    Generic,
    Native,
}

impl XdpChoice {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "off" => Self::Off,
            "generic" => Self::Generic,
            "native" => Self::Native,
            _ => return None,
        })
    }
}

/// Validated options of a serving or checking run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub threads: Option<usize>,
    pub sessions: Option<u64>,
    pub log_level: LogLevel,
    pub log_filename: Option<PathBuf>,
    pub close_log: bool,
    pub no_daemon: bool,
    pub set_cpu_affinity: bool,
    pub check: bool,
    pub data_path: DataPathChoice,
    pub pid_file: Option<PathBuf>,
    pub xdp: XdpChoice,
    /// `--drain-timeout` [ext]: seconds a stopping generation (TERM, or the old one after
    /// USR2) lets its sessions run before it closes them; none = no limit (SPEC §3).
    pub drain_timeout: Option<u64>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    Version,
    Run(Box<Options>),
}

/// A usage error: `message` (possibly empty) goes to stderr, then [`USAGE`] to stdout, exit 7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Raw flags as clap sees them; values stay strings so errors can quote them like the original.
#[derive(Parser, Debug)]
#[command(
    name = "G6",
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true
)]
struct RawArgs {
    #[arg(short = 'f', allow_hyphen_values = true)]
    config: Option<PathBuf>,
    #[arg(short = 't', allow_hyphen_values = true)]
    threads: Option<String>,
    #[arg(short = 's', allow_hyphen_values = true)]
    sessions: Option<String>,
    #[arg(long = "log-level", allow_hyphen_values = true)]
    log_level: Option<String>,
    #[arg(long = "log-filename", allow_hyphen_values = true)]
    log_filename: Option<PathBuf>,
    #[arg(long = "close-log")]
    close_log: bool,
    #[arg(long = "no-daemon")]
    no_daemon: bool,
    #[arg(long = "set-cpu-affinity")]
    set_cpu_affinity: bool,
    #[arg(short = 'v')]
    version: bool,
    #[arg(long = "check")]
    check: bool,
    #[arg(long = "data-path", allow_hyphen_values = true)]
    data_path: Option<String>,
    #[arg(long = "pid-file", allow_hyphen_values = true)]
    pid_file: Option<PathBuf>,
    #[arg(long = "xdp", allow_hyphen_values = true)]
    xdp: Option<String>,
    #[arg(long = "drain-timeout", allow_hyphen_values = true)]
    drain_timeout: Option<String>,
}

fn invalid_opt(s: impl fmt::Display) -> UsageError {
    UsageError {
        message: format!("invalid opt[{s}]"),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    flag: &str,
    value: &str,
) -> Result<T, UsageError> {
    // Digits only: the original rejected signs and garbage; 0 is not a positive count.
    match value.parse::<T>() {
        Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) && n > T::default() => Ok(n),
        _ => Err(invalid_opt(format!("{flag} {value}"))),
    }
}

/// The option as the user typed it, from clap's "invalid argument" context (`-f <CONFIG>` → `-f`).
fn offending_arg(err: &clap::Error) -> String {
    match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split_whitespace().next().unwrap_or(s).to_string(),
        Some(ContextValue::Strings(v)) => v.first().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Parses argv (without the program name).
pub fn parse<I, T>(args: I) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = std::iter::once(OsString::from("G6"))
        .chain(args.into_iter().map(Into::into))
        .collect();
    if argv.len() == 1 {
        // No arguments: version + usage, exit 7, like the original.
        return Err(UsageError {
            message: String::new(),
        });
    }
    let matches = RawArgs::command()
        .try_get_matches_from(&argv)
        .map_err(|e| match e.kind() {
            ErrorKind::UnknownArgument | ErrorKind::InvalidValue | ErrorKind::NoEquals => {
                invalid_opt(offending_arg(&e))
            }
            _ => invalid_opt(offending_arg(&e)),
        })?;
    let raw = RawArgs::from_arg_matches(&matches).map_err(|e| invalid_opt(offending_arg(&e)))?;
    if raw.version {
        return Ok(Invocation::Version);
    }
    let threads = raw
        .threads
        .as_deref()
        .map(|v| positive("-t", v))
        .transpose()?;
    let sessions = raw
        .sessions
        .as_deref()
        .map(|v| positive("-s", v))
        .transpose()?;
    let log_level = match raw.log_level.as_deref() {
        None => LogLevel::Info,
        Some(v) => LogLevel::parse(v).ok_or_else(|| UsageError {
            message: format!("invalid log level[{v}]"),
        })?,
    };
    let data_path = match raw.data_path.as_deref() {
        None => DataPathChoice::Auto,
        Some(v) => {
            DataPathChoice::parse(v).ok_or_else(|| invalid_opt(format!("--data-path {v}")))?
        }
    };
    let drain_timeout = raw
        .drain_timeout
        .as_deref()
        .map(|v| positive("--drain-timeout", v))
        .transpose()?;
    let xdp = match raw.xdp.as_deref() {
        None => XdpChoice::Auto,
        Some(v) => XdpChoice::parse(v).ok_or_else(|| invalid_opt(format!("--xdp {v}")))?,
    };
    let Some(config) = raw.config else {
        // No `-f`: the original printed only the usage.
        return Err(UsageError {
            message: String::new(),
        });
    };
    Ok(Invocation::Run(Box::new(Options {
        config,
        threads,
        sessions,
        log_level,
        log_filename: raw.log_filename,
        close_log: raw.close_log,
        no_daemon: raw.no_daemon,
        set_cpu_affinity: raw.set_cpu_affinity,
        check: raw.check,
        data_path,
        pid_file: raw.pid_file,
        xdp,
        drain_timeout,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().copied()) {
            Ok(Invocation::Run(o)) => *o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        parse(args.iter().copied()).unwrap_err().message
    }

    #[test]
    fn defaults() {
        let o = run(&["-f", "g.conf"]);
        assert_eq!(o.config, PathBuf::from("g.conf"));
        assert_eq!(o.threads, None);
        assert_eq!(o.sessions, None);
        assert_eq!(o.log_level, LogLevel::Info);
        assert_eq!(o.data_path, DataPathChoice::Auto);
        assert_eq!(o.xdp, XdpChoice::Auto);
        assert!(!o.no_daemon && !o.close_log && !o.set_cpu_affinity && !o.check);
    }

    #[test]
    fn every_flag() {
        let o = run(&[
            "-f",
            "a.conf",
            "-t",
            "3",
            "-s",
            "100",
            "--log-level",
            "DEBUG",
            "--log-filename",
            "/tmp/x.log",
            "--close-log",
            "--no-daemon",
            "--set-cpu-affinity",
            "--check",
            "--data-path",
            "splice",
            "--pid-file",
            "/tmp/g6.pid",
            "--xdp",
            "native",
        ]);
        assert_eq!(o.xdp, XdpChoice::Native);
        assert_eq!(run(&["-f", "a", "--xdp", "off"]).xdp, XdpChoice::Off);
        assert_eq!(run(&["-f", "a", "--xdp", "auto"]).xdp, XdpChoice::Auto);
        assert_eq!(
            run(&["-f", "a", "--xdp", "generic"]).xdp,
            XdpChoice::Generic
        );
        assert_eq!(o.threads, Some(3));
        assert_eq!(o.sessions, Some(100));
        assert_eq!(o.log_level, LogLevel::Debug);
        assert_eq!(o.log_filename, Some(PathBuf::from("/tmp/x.log")));
        assert!(o.close_log && o.no_daemon && o.set_cpu_affinity && o.check);
        assert_eq!(o.data_path, DataPathChoice::Splice);
        assert_eq!(o.pid_file, Some(PathBuf::from("/tmp/g6.pid")));
        assert_eq!(o.drain_timeout, None, "no limit unless asked");
        assert_eq!(
            run(&["-f", "a", "--drain-timeout", "30"]).drain_timeout,
            Some(30)
        );
    }

    #[test]
    fn repeated_option_last_wins() {
        let o = run(&["-f", "a", "-t", "2", "-f", "b", "-t", "4"]);
        assert_eq!(o.config, PathBuf::from("b"));
        assert_eq!(o.threads, Some(4));
    }

    #[test]
    fn version_and_no_args() {
        assert_eq!(parse(["-v"]), Ok(Invocation::Version));
        assert_eq!(err(&[]), "");
        assert!(version_text().starts_with("G6 v2."));
    }

    #[test]
    fn usage_errors_use_the_original_messages() {
        assert_eq!(err(&["-x"]), "invalid opt[-x]");
        assert_eq!(err(&["--bogus"]), "invalid opt[--bogus]");
        assert_eq!(err(&["-f"]), "invalid opt[-f]");
        assert_eq!(err(&["-f", "a", "-t"]), "invalid opt[-t]");
        assert_eq!(err(&["-f", "a", "-t", "0"]), "invalid opt[-t 0]");
        assert_eq!(err(&["-f", "a", "-t", "-1"]), "invalid opt[-t -1]");
        assert_eq!(err(&["-f", "a", "-s", "1x"]), "invalid opt[-s 1x]");
        assert_eq!(err(&["-f", "a", "-s", "+5"]), "invalid opt[-s +5]");
        assert_eq!(
            err(&["-f", "a", "--log-level", "info"]),
            "invalid log level[info]"
        );
        assert_eq!(
            err(&["-f", "a", "--data-path", "fast"]),
            "invalid opt[--data-path fast]"
        );
        assert_eq!(err(&["-f", "a", "--xdp", "on"]), "invalid opt[--xdp on]");
        assert_eq!(err(&["-f", "a", "--xdp"]), "invalid opt[--xdp]");
        for bad in ["0", "-1", "5s", "x"] {
            assert_eq!(
                err(&["-f", "a", "--drain-timeout", bad]),
                format!("invalid opt[--drain-timeout {bad}]")
            );
        }
        assert_eq!(
            err(&["-f", "a", "--drain-timeout"]),
            "invalid opt[--drain-timeout]"
        );
        assert_eq!(err(&["-t", "2"]), "", "no -f: usage only");
        assert_eq!(err(&["stray"]), "invalid opt[stray]");
    }
}
