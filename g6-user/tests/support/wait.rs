//! The one sanctioned way to wait: poll a condition with a short backoff, bounded in time.

use std::thread;
use std::time::{Duration, Instant};

/// Per-operation socket timeout (SO_RCVTIMEO / SO_SNDTIMEO, connect) used by all helpers.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound for "this should happen promptly" waits in the helpers (accept counts, records…).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `cond` until it returns true (→ true) or `timeout` elapses (→ false).
/// The condition is always evaluated at least once, and once more at the deadline.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Polls `f` until it returns `Some(v)` (→ `Some(v)`) or `timeout` elapses (→ `None`).
/// Backoff starts at 1 ms and doubles up to 25 ms.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}
