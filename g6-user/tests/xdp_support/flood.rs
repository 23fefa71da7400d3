//! Bounded floods for the measurement in tests/xdp_netns.rs (README "XDP guard"): at most
//! FLOOD_PACKETS SYNs / FLOOD_CONNECTS connections per phase, each within FLOOD_LIMIT.

use std::net::{Ipv4Addr, SocketAddr};

use super::g6ns::WEB_PORT;
use super::netns::Segment;
use super::packet::{self, Tcp};

pub const FLOOD_PACKETS: u64 = 400_000;
pub const FLOOD_CONNECTS: u64 = 20_000;
pub const FLOOD_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// CPU seconds (user + system) of the processes in `pids`, from /proc/<pid>/stat.
pub fn cpu_secs(pids: &[i32]) -> f64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            let f: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (t(11) + t(12)) / hz // utime, stime (fields 14, 15 of the whole line)
        })
        .sum()
}

/// Busy and total jiffies of all CPUs (/proc/stat), for the kernel's share of the work.
pub fn host_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    (total - v[3] - v.get(4).copied().unwrap_or(0), total)
}

/// Sends `n` SYNs from `src` (random source ports) to `dst` on a raw socket, within
/// FLOOD_LIMIT; returns (sent, seconds).
pub fn raw_syn_flood(src: Ipv4Addr, dst: SocketAddr, n: u64) -> (u64, f64) {
    // SAFETY: plain socket calls on a descriptor we own; buffers outlive each call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let SocketAddr::V4(d) = dst else {
            panic!("IPv4 only")
        };
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(d.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let start = std::time::Instant::now();
        let mut sent = 0;
        while sent < n && start.elapsed() < FLOOD_LIMIT {
            let sport = 1024 + (sent % 60_000) as u16;
            let s = SocketAddr::new(src.into(), sport);
            let mut pkt = packet::ipv4_header(s, dst, &[], 20);
            pkt.extend_from_slice(&packet::tcp_header(s, dst, Tcp::Syn, sent as u32));
            let r = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            if r < 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "sendto: {e}");
                continue;
            }
            sent += 1;
        }
        libc::close(fd);
        (sent, start.elapsed().as_secs_f64())
    }
}

/// Up to `n` connections from `src` (4 threads, within `limit`), each read to EOF; returns
/// (refused, seconds).
pub fn connect_flood(
    seg: &Segment,
    src: &'static str,
    n: u64,
    limit: std::time::Duration,
) -> (u64, f64) {
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            seg.client.spawn(move || {
                let src: SocketAddr = format!("{src}:0").parse().unwrap();
                let dst: SocketAddr = format!("{}:{WEB_PORT}", super::netns::SERVER_IP)
                    .parse()
                    .unwrap();
                let mut refused = 0;
                let begin = std::time::Instant::now();
                for _ in 0..n / 4 {
                    if begin.elapsed() >= limit {
                        break;
                    }
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    s.bind(&src.into()).unwrap();
                    if s.connect_timeout(&dst.into(), std::time::Duration::from_millis(200))
                        .is_err()
                    {
                        continue;
                    }
                    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                        .unwrap();
                    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                    if matches!(s.recv(&mut b), Ok(0)) {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let refused = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (refused, start.elapsed().as_secs_f64())
}
