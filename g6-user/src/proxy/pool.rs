//! Per-thread pools of relay buffers and splice pipes. A session takes one only while bytes
//! are in flight and returns it empty, so idle sessions hold neither (SPEC.md §5.5 memory).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Copy buffer size: large enough for bulk throughput, well under the 1 MiB per direction cap.
pub const BUFFER_SIZE: usize = 64 * 1024;
/// Bytes one splice call moves at most (the pipe's capacity).
pub const PIPE_CAPACITY: usize = 256 * 1024;
/// Idle pooled items kept per thread; more are freed.
const POOL_MAX: usize = 64;

thread_local! {
    static BUFFERS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

pub fn take_buffer() -> Box<[u8]> {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice())
}

pub fn give_buffer(buf: Box<[u8]>) {
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < POOL_MAX {
            b.push(buf);
        }
    });
}

/// A non-blocking pipe; empty whenever it is in the pool.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(io::Error::from)?;
        // Best effort: a bigger pipe means fewer splice calls on bulk transfers.
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_CAPACITY as libc::c_int,
            )
        };
        Ok(Pipe { read, write })
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

pub fn take_pipe() -> io::Result<Pipe> {
    match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

pub fn give_pipe(pipe: Pipe) {
    PIPES.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(pipe);
        }
    });
}

/// Non-blocking splice(2) of up to `len` bytes; EAGAIN surfaces as `WouldBlock`.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on descriptors owned by the caller; null offsets (sockets/pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
