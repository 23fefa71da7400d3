//! HS: rendezvous (highest-random-weight) hashing. Every server is scored for the client and
//! the best one is the only choice, so removing a server moves only the clients it won.

use std::net::IpAddr;

use super::Candidate;

const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// SPEC.md §6 HS score: FNV-1a 64 over the client IP in network byte order (4 or 16 bytes)
/// then the server text (`ip:port`, `[ip6]:port`), then the murmur3 fmix64 finaliser (FNV
/// alone mixes the last bytes poorly, and the server texts often differ only there).
pub fn hash_score(client_ip: IpAddr, server_text: &str) -> u64 {
    let fnv = |h: u64, bytes: &[u8]| {
        bytes
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
    };
    let mut x = match client_ip {
        IpAddr::V4(ip) => fnv(FNV_BASIS, &ip.octets()),
        IpAddr::V6(ip) => fnv(FNV_BASIS, &ip.octets()),
    };
    x = fnv(x, server_text.as_bytes());
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9f5_ec53_ba63);
    x ^= x >> 33;
    x
}

/// The highest-scoring server over ALL servers (ties: earlier in list), if it is eligible;
/// otherwise `None`: HS never falls back, so a client always lands on the same server.
pub(super) fn target(
    candidates: &[Candidate],
    client_ip: IpAddr,
    server_texts: &[String],
) -> Option<usize> {
    debug_assert_eq!(candidates.len(), server_texts.len(), "one text per server");
    if candidates.len() != server_texts.len() {
        return None;
    }
    let mut best: Option<(usize, u64)> = None;
    for (i, text) in server_texts.iter().enumerate() {
        let score = hash_score(client_ip, text);
        // Strictly greater: the earlier server keeps a tie.
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i).filter(|&i| candidates[i].eligible())
}
