//! The benchmark's `floor` target must relay correctly, or its numbers bound nothing:
//! byte-exact both ways with a receiver that lags (its pending buffer), half-close passed on
//! in each direction, and round robin over the backends.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(backends: &[SocketAddr]) -> Relay {
    let dir = std::env::temp_dir().join(format!("floor-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let routes = dir.join(format!("routes-{}", backends[0].port()));
    let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    std::fs::write(&routes, format!("# test\n127.0.0.1:0 {}\n", list.join(" "))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_floor-relay"))
        .arg(&routes)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start floor-relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("floor-relay: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Relay { child, addr }
}

/// Deterministic bytes that catch reordering, loss and duplication.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn timeouts(s: &TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
}

#[test]
fn relays_large_transfers_byte_exact_with_half_close_both_ways() {
    const UP: usize = 24 << 20;
    const DOWN: usize = 16 << 20;
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        timeouts(&s);
        // Reads until the client's half-close arrives, then answers and half-closes.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&pattern(DOWN, 7)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    let relay = start_relay(&[backend_addr]);
    let mut c = TcpStream::connect(relay.addr).unwrap();
    timeouts(&c);
    // Nobody reads the answer while the upload runs: the relay's receivers lag on both sides.
    c.write_all(&pattern(UP, 1)).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut down = Vec::new();
    c.read_to_end(&mut down).unwrap();
    let up = server.join().unwrap();
    assert!(up == pattern(UP, 1), "upload differs ({} bytes)", up.len());
    assert!(
        down == pattern(DOWN, 7),
        "download differs ({} bytes)",
        down.len()
    );
}

#[test]
fn server_half_close_reaches_the_client_while_it_still_sends() {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = backend.accept().unwrap();
        timeouts(&s);
        s.write_all(b"banner\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let relay = start_relay(&[backend_addr]);
    let mut c = TcpStream::connect(relay.addr).unwrap();
    timeouts(&c);
    let mut banner = Vec::new();
    c.read_to_end(&mut banner).unwrap();
    assert_eq!(banner, b"banner\n");
    c.write_all(b"after the server's FIN").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), b"after the server's FIN");
}

#[test]
fn round_robin_over_the_backends() {
    let backends: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.local_addr().unwrap()).collect();
    let servers: Vec<_> = backends
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            thread::spawn(move || {
                for _ in 0..2 {
                    let (mut s, _) = b.accept().unwrap();
                    s.write_all(&[b'0' + i as u8]).unwrap();
                }
            })
        })
        .collect();
    let relay = start_relay(&addrs);
    let answers: Vec<u8> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(relay.addr).unwrap();
            timeouts(&c);
            let mut b = Vec::new();
            c.read_to_end(&mut b).unwrap();
            assert_eq!(b.len(), 1);
            b[0]
        })
        .collect();
    assert_eq!(answers, b"0101");
    for s in servers {
        s.join().unwrap();
    }
}
