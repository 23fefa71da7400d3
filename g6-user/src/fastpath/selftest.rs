//! The start-up functional test (~30 ms): a kernel-version check is not enough, sockmap
//! semantics changed many times and distributions backport (design §5).

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use super::{FastPath, FastPathError, sys};

/// Upper bound for each step; a healthy kernel needs well under a millisecond.
const STEP: Duration = Duration::from_secs(1);

fn fail(what: impl Into<String>) -> FastPathError {
    FastPathError::SelfTest(what.into())
}

fn io_fail(what: &'static str) -> impl FnOnce(std::io::Error) -> FastPathError {
    move |e| fail(format!("{what}: {e}"))
}

/// Two loopback connections `c1 <-> a` and `c2 <-> b` on port 0; (a, b) is the pair.
struct Rig {
    c1: TcpStream,
    a: TcpStream,
    c2: TcpStream,
    b: TcpStream,
}

impl Rig {
    fn new() -> Result<Rig, FastPathError> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(io_fail("bind 127.0.0.1:0"))?;
        let addr = l.local_addr().map_err(io_fail("local_addr"))?;
        let c1 = TcpStream::connect(addr).map_err(io_fail("connect"))?;
        let (a, _) = l.accept().map_err(io_fail("accept"))?;
        let c2 = TcpStream::connect(addr).map_err(io_fail("connect"))?;
        let (b, _) = l.accept().map_err(io_fail("accept"))?;
        for s in [&c1, &a, &c2, &b] {
            s.set_read_timeout(Some(STEP))
                .map_err(io_fail("SO_RCVTIMEO"))?;
            s.set_nodelay(true).map_err(io_fail("TCP_NODELAY"))?;
        }
        Ok(Rig { c1, a, c2, b })
    }
}

fn expect_byte(s: &mut TcpStream, want: u8, what: &str) -> Result<(), FastPathError> {
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        Ok(1) if buf[0] == want => Ok(()),
        Ok(n) => Err(fail(format!("{what}: read {n} byte(s) {:?}", &buf[..n]))),
        Err(e) => Err(fail(format!("{what}: {e}"))),
    }
}

impl FastPath {
    /// Functional test on a loopback pair: a byte queued before insertion is redirected after
    /// the RCVLOWAT kick, the reverse direction works, EOF is seen (`recv() == 0`), and the FIN
    /// leaves no error on the peer, whose transmit side still works. Removes its map entries.
    pub fn self_test(&self) -> Result<(), FastPathError> {
        let mut r = Rig::new()?;
        let keys = {
            // Sharp edge 1: queued before insertion, delivered only thanks to the kick.
            r.c1.write_all(b"x").map_err(io_fail("c1 write"))?;
            let rev =
                sys::poll_one(r.a.as_raw_fd(), libc::POLLIN, 1000).map_err(io_fail("poll a"))?;
            if rev & libc::POLLIN == 0 {
                return Err(fail("loopback byte did not arrive before insertion"));
            }
            self.insert_pair(&r.a, &r.b)?
        };
        let result = run_checks(self, &mut r);
        self.remove_pair(keys);
        result
    }
}

fn run_checks(fp: &FastPath, r: &mut Rig) -> Result<(), FastPathError> {
    expect_byte(
        &mut r.c2,
        b'x',
        "byte queued before insertion not redirected after the kick",
    )?;
    r.c2.write_all(b"y").map_err(io_fail("c2 write"))?;
    expect_byte(&mut r.c1, b'y', "reverse direction not redirected")?;

    // EOF: the FIN must reach `a` itself (recv() == 0), not be redirected (sharp edge 2).
    r.c1.shutdown(Shutdown::Write)
        .map_err(io_fail("c1 shutdown"))?;
    let mut buf = [0u8; 8];
    match r.a.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => return Err(fail(format!("expected EOF on a, read {n} byte(s)"))),
        Err(e) => return Err(fail(format!("expected EOF on a: {e}"))),
    }
    // A redirected FIN breaks b asynchronously (kworker); give it time to show, while
    // checking that b -> a still flows after the half-close.
    r.c2.write_all(b"z")
        .map_err(io_fail("c2 write after FIN"))?;
    expect_byte(&mut r.c1, b'z', "redirect after half-close")?;
    thread::sleep(Duration::from_millis(5));
    for (name, s) in [("b", &r.b), ("a", &r.a)] {
        match sys::so_error(s.as_raw_fd()) {
            Ok(0) => {}
            Ok(e) => {
                return Err(fail(format!(
                    "peer socket {name} got an error after FIN: {}",
                    std::io::Error::from_raw_os_error(e)
                )));
            }
            Err(e) => return Err(fail(format!("SO_ERROR on {name}: {e}"))),
        }
    }
    // b's transmit side must still work (a redirected FIN disables it).
    r.b.write_all(b"w")
        .map_err(io_fail("write on b after FIN"))?;
    expect_byte(&mut r.c2, b'w', "b cannot transmit after FIN")?;
    let st = fp.state(fp_cookie(&r.a)?).unwrap_or_default();
    if st.redirected_bytes != 1 || st.passed_bytes != 0 {
        return Err(fail(format!(
            "counters of a: redirected {} passed {} (want 1, 0)",
            st.redirected_bytes, st.passed_bytes
        )));
    }
    Ok(())
}

fn fp_cookie(s: &TcpStream) -> Result<u64, FastPathError> {
    sys::socket_cookie(s.as_raw_fd()).map_err(FastPathError::socket("SO_COOKIE", s.as_raw_fd()))
}
