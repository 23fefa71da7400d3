//! Crafting a TCP segment that overlaps bytes the receiver already has: what a spurious
//! retransmission coalesced with new data looks like, made deterministic.
//!
//! The test thread moves into a private network namespace (gone with its sockets) where TCP
//! timestamps are off, so a segment without options is acceptable; the sequence numbers come
//! from the sending socket through TCP_REPAIR; a raw socket sends the segment.

use std::{io, mem, net::SocketAddrV4, os::fd::AsRawFd};

/// Moves the calling thread into a new network namespace with `lo` up and TCP timestamps off.
pub fn private_netns_without_timestamps() {
    // SAFETY: affects only the calling thread's namespaces.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        "unshare(CLONE_NEWNET)",
    );
    // /proc/sys/net follows the calling thread's namespace; never touch the host's.
    let ns = |p: &str| std::fs::read_link(p).expect("read netns link");
    assert_ne!(
        ns("/proc/thread-self/ns/net"),
        ns("/proc/self/ns/net"),
        "still in the main thread's network namespace"
    );
    set_lo_up();
    std::fs::write("/proc/sys/net/ipv4/tcp_timestamps", "0")
        .expect("tcp_timestamps=0 in the private namespace");
}

fn set_lo_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        check(fd, "socket for SIOCSIFFLAGS");
        let mut ifr: libc::ifreq = mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        check(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr),
            "SIOCGIFFLAGS lo",
        );
        ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        check(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr),
            "SIOCSIFFLAGS lo up",
        );
        libc::close(fd);
    }
}

/// `(snd_nxt, rcv_nxt)` of an idle established socket, read in TCP_REPAIR mode (left
/// again without a window probe).
pub fn sequence_numbers(s: &impl AsRawFd) -> (u32, u32) {
    let fd = s.as_raw_fd();
    let queue_seq = |queue: i32| {
        setsockopt(fd, libc::TCP_REPAIR_QUEUE, queue);
        let mut v: u32 = 0;
        let mut len = mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: one u32 out-parameter of the given length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUEUE_SEQ,
                (&mut v as *mut u32).cast(),
                &mut len,
            )
        };
        check(rc, "TCP_QUEUE_SEQ");
        v
    };
    setsockopt(fd, libc::TCP_REPAIR, 1);
    let snd_nxt = queue_seq(2); // TCP_SEND_QUEUE
    let rcv_nxt = queue_seq(1); // TCP_RECV_QUEUE
    setsockopt(fd, libc::TCP_REPAIR, -1); // TCP_REPAIR_OFF_NO_WP
    (snd_nxt, rcv_nxt)
}

/// Sends one ACK|PSH segment `from -> to` carrying `payload` at sequence `seq`.
pub fn send_segment(from: SocketAddrV4, to: SocketAddrV4, seq: u32, ack: u32, payload: &[u8]) {
    let mut seg = Vec::with_capacity(20 + payload.len());
    seg.extend_from_slice(&from.port().to_be_bytes());
    seg.extend_from_slice(&to.port().to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.extend_from_slice(&[5 << 4, 0x18]); // 20-byte header; ACK|PSH
    seg.extend_from_slice(&u16::MAX.to_be_bytes()); // window
    seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    seg.extend_from_slice(payload);
    let sum = checksum(from, to, &seg);
    seg[16..18].copy_from_slice(&sum.to_be_bytes());
    // SAFETY: a raw socket; the sockaddr_in and buffer outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
        check(fd, "raw socket");
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            fd,
            seg.as_ptr().cast(),
            seg.len(),
            0,
            (&dst as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        libc::close(fd);
        assert_eq!(
            n,
            seg.len() as isize,
            "raw sendto: {}",
            io::Error::last_os_error()
        );
    }
}

/// The TCP checksum over the IPv4 pseudo-header and the segment.
fn checksum(from: SocketAddrV4, to: SocketAddrV4, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&from.ip().octets());
    add(&to.ip().octets());
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn setsockopt(fd: i32, name: i32, v: i32) {
    // SAFETY: one c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            name,
            (&v as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt(IPPROTO_TCP)");
}

fn check(rc: i32, what: &str) {
    assert!(rc >= 0, "{what}: {}", io::Error::last_os_error());
}
