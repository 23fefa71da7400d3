//! Logging (SPEC.md §10): `tracing` events written as
//! `YYYY-MM-DD hh:mm:ss.uuuuuu | LEVEL | pid:tid | message` to the log file, one `write` per line
//! (O_APPEND, so lines from several processes never interleave). The file can be reopened at
//! any time (USR1, logrotate) and, with `--close-log`, is opened for each write.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::cli::LogLevel;

/// Where log lines go. Shared by every thread; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    path: PathBuf,
    close_after_write: bool,
    file: Mutex<Option<File>>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        // `$HOME/log` may not exist yet on a fresh install.
        let _ = std::fs::create_dir_all(dir);
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogSink {
    /// Opens (creates or appends) the log file. On failure: a warning on stderr and file
    /// logging stays off until a reopen succeeds.
    pub fn open(path: PathBuf, close_after_write: bool) -> Self {
        let file = match open_append(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "warning: cannot open log file {}: {e}; file logging is off",
                    path.display()
                );
                None
            }
        };
        let file = if close_after_write { None } else { file };
        LogSink {
            inner: Arc::new(SinkInner {
                path,
                close_after_write,
                file: Mutex::new(file),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Re-creates the file if it was moved or deleted (USR1).
    pub fn reopen(&self) {
        if self.inner.close_after_write {
            return;
        }
        let new = open_append(&self.inner.path).ok();
        *self.inner.file.lock().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn write_line(&self, line: &[u8]) {
        if self.inner.close_after_write {
            if let Ok(mut f) = open_append(&self.inner.path) {
                let _ = f.write_all(line);
            }
            return;
        }
        let mut guard = self.inner.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            let _ = f.write_all(line);
        }
    }
}

/// The default log file: `$HOME/log/G6.log`.
pub fn default_log_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join("log").join("G6.log")
}

static SINK: OnceLock<LogSink> = OnceLock::new();

/// The process's sink once [`init`] ran (USR1 handling reopens it).
pub fn sink() -> Option<&'static LogSink> {
    SINK.get()
}

/// Installs the global subscriber. Call once, before any thread is spawned.
pub fn init(level: LogLevel, sink: LogSink) {
    let filter = match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        // tracing has no FATAL; fatal conditions are logged at ERROR.
        LogLevel::Error | LogLevel::Fatal => LevelFilter::ERROR,
    };
    let _ = SINK.set(sink.clone());
    let subscriber = tracing_subscriber::registry().with(G6Layer { sink }.with_filter(filter));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct G6Layer {
    sink: LogSink,
}

struct MessageVisitor<'a>(&'a mut String);

impl Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// Local wall-clock time as `YYYY-MM-DD hh:mm:ss.uuuuuu`.
pub fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r only writes into the provided tm.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_micros()
    )
}

impl<S: Subscriber> Layer<S> for G6Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = String::with_capacity(160);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let _ = write!(
            line,
            "{} | {:<5} | {}:{} | ",
            timestamp(),
            level_name(event.metadata().level()),
            std::process::id(),
            tid
        );
        event.record(&mut MessageVisitor(&mut line));
        line.push('\n');
        self.sink.write_line(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 26, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], " ");
        assert_eq!(&t[19..20], ".");
    }

    #[test]
    fn sink_reopens_a_moved_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("g6.log");
        let sink = LogSink::open(path.clone(), false);
        sink.write_line(b"one\n");
        std::fs::rename(&path, dir.path().join("old.log")).unwrap();
        sink.write_line(b"two\n");
        sink.reopen();
        sink.write_line(b"three\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("old.log")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
