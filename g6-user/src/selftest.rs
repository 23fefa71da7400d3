//! Start-up self-tests of the data paths on a loopback pair (SPEC.md §5.6): a path that fails
//! is unavailable and the next one is used.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::proxy::pool;
use crate::proxy::relay::DataPath;

/// Ok if `path` works on this kernel with these privileges, else the reason.
pub fn check(path: DataPath) -> Result<(), String> {
    match path {
        DataPath::Copy => Ok(()),
        DataPath::Splice => splice_roundtrip().map_err(|e| format!("splice self-test failed: {e}")),
        DataPath::Sockmap => crate::fastpath::probe()
            .map(drop)
            .map_err(|e| format!("sockmap self-test failed: {e}")),
    }
}

/// Moves bytes socket → pipe → socket with the same calls the splice relay makes.
fn splice_roundtrip() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut a = TcpStream::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    let (c_listener, c_addr) = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        (l, addr)
    };
    let c = TcpStream::connect(c_addr)?;
    let (mut d, _) = c_listener.accept()?;
    for s in [&a, &b, &c, &d] {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    a.write_all(b"g6-splice-selftest")?;
    let pipe = pool::take_pipe()?;
    b.set_nonblocking(false)?;
    let n = blocking_retry(|| pool::splice(b.as_raw_fd(), pipe.write_fd(), 64))?;
    let mut left = n;
    while left > 0 {
        left -= blocking_retry(|| pool::splice(pipe.read_fd(), c.as_raw_fd(), left))?;
    }
    let mut got = vec![0u8; n];
    d.read_exact(&mut got)?;
    if got != b"g6-splice-selftest"[..n] || n == 0 {
        return Err(std::io::Error::other("bytes differ"));
    }
    pool::give_pipe(pipe);
    Ok(())
}

/// The splice helper is non-blocking; retry briefly while the loopback bytes arrive.
fn blocking_retry(mut f: impl FnMut() -> std::io::Result<usize>) -> std::io::Result<usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return Err(std::io::Error::other("timed out"));
                }
                std::thread::yield_now();
            }
            r => return r,
        }
    }
}
