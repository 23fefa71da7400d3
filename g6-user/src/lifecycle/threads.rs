//! Relay threads (`-t N`): each runs its own single-threaded tokio runtime, accepts on every
//! listener itself and serves the clients it accepted to their end. A connection therefore
//! never changes threads: no work-stealing hand-off between accept and session, no wake-up
//! across threads, no shared run queue (measured: a quarter of the time went to task
//! switching with the work-stealing runtime).

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The running relay threads; dropping this stops them (their tasks are dropped).
pub struct RelayThreads {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl RelayThreads {
    /// Starts `n` threads named `g6-relay`; with `pin`, thread i is pinned to allowed CPU i+1
    /// (`--set-cpu-affinity`).
    pub fn start(n: usize, pin: Option<&[usize]>) -> io::Result<RelayThreads> {
        let mut all = RelayThreads {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let cpus = pin.map(<[usize]>::to_vec);
            let thread = std::thread::Builder::new()
                .name("g6-relay".into())
                .spawn(move || {
                    if let Some(cpus) = &cpus {
                        crate::app::pin_current_thread(cpus, Some(i));
                    }
                    let rt = match Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    // Tasks spawned through the handle run while this blocks.
                    rt.block_on(async {
                        tokio::select! {
                            _ = stop_rx => {}
                            _ = keep_a_timer_armed() => {}
                        }
                    });
                    rt.shutdown_timeout(Duration::from_millis(100));
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("relay thread ended before starting"))??;
            all.handles.push(handle);
            all.stops.push(stop_tx);
            all.threads.push(thread);
        }
        Ok(all)
    }

    /// One runtime handle per relay thread, in thread order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// A timer always pending within a second. Tokio writes to the runtime's eventfd whenever a
/// timer is armed that expires before every pending one (or when none is pending), even from
/// the runtime's own thread; each session arms its connect timeout, so without this an
/// otherwise timer-free thread paid a write and an extra epoll round per connection
/// (measured with strace: ~0.7 per connection).
async fn keep_a_timer_armed() {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Drop for RelayThreads {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
