//! Compiles a rule's client patterns (SPEC.md §4.3: whole-string globs over the address text
//! and the decimal source port) into forms the XDP program checks exactly. The guard must
//! never drop a client the agent would admit, so a pattern is compiled only when the result
//! is provably equivalent; otherwise the family is left unfiltered (the agent filters).
//!
//! * IPv4: the address text has exactly three dots. A pattern with exactly three literal dots
//!   matches octet by octet (a wildcard that swallowed a dot would leave too few dots for the
//!   literal ones), so it becomes four 256-bit sets, each computed by running the real glob
//!   matcher on the 256 octet texts. A pattern with fewer dots is expanded first: each `*`
//!   may stand for a run containing k dots (`*` → `*.*…`), each `?` for a dot or not; the
//!   union of the expansions with exactly three dots is the same set of addresses.
//! * IPv6: `*`-only patterns (any address), wildcard-free literals (one address, or none if
//!   not in canonical form) and IPv4-style patterns (none) are compiled; any other wildcard
//!   leaves IPv6 unfiltered.
//! * Ports: the 65536-bit set of source ports the port glob matches, by enumeration.
//!
//! [`CompiledPattern::matches`] mirrors the kernel's evaluation; the tests check it against
//! [`glob_match`] so the two can never disagree.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::config::{ClientPattern, glob_match};

/// 256-bit sets of allowed values, one per IPv4 octet.
pub type OctetSets = [[u64; 4]; 4];
/// A 65536-bit set of source ports (bit p of word p / 64).
pub type PortBits = Box<[u64; 1024]>;

/// Expansions of one IPv4 pattern considered at most; more and the family stays unfiltered.
const MAX_EXPANSIONS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpMatch {
    Any,
    V4(OctetSets),
    V6Exact(Ipv6Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    Any,
    Bits(PortBits),
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::Any => true,
            PortSet::Bits(b) => b[usize::from(port >> 6)] >> (port & 63) & 1 == 1,
        }
    }
}

/// One compiled alternative: a client matches if both its address and its port do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPattern {
    pub ip: IpMatch,
    pub ports: PortSet,
}

impl CompiledPattern {
    /// The kernel's check, in user space (for tests and diagnostics).
    pub fn matches(&self, client: SocketAddr) -> bool {
        let ip_ok = match (&self.ip, client.ip()) {
            (IpMatch::Any, _) => true,
            (IpMatch::V4(sets), IpAddr::V4(a)) => a
                .octets()
                .iter()
                .zip(sets)
                .all(|(&o, set)| set[usize::from(o >> 6)] >> (o & 63) & 1 == 1),
            (IpMatch::V6Exact(want), IpAddr::V6(a)) => *want == a,
            _ => false,
        };
        ip_ok && self.ports.contains(client.port())
    }
}

/// A rule's patterns per family: `None` = cannot be compiled exactly (unfiltered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    pub v4: Option<Vec<CompiledPattern>>,
    pub v6: Option<Vec<CompiledPattern>>,
}

impl CompiledRule {
    /// What the kernel decides for `client`: `None` = unfiltered (passed to the agent).
    pub fn allows(&self, client: SocketAddr) -> Option<bool> {
        let family = if client.is_ipv4() { &self.v4 } else { &self.v6 };
        family
            .as_ref()
            .map(|ps| ps.iter().any(|p| p.matches(client)))
    }
}

/// Compiles every pattern of a rule (config order does not matter for allow/deny).
pub fn compile_rule<'a>(patterns: impl IntoIterator<Item = &'a ClientPattern>) -> CompiledRule {
    let mut ports: HashMap<&str, PortSet> = HashMap::new();
    let mut v4 = Some(Vec::new());
    let mut v6 = Some(Vec::new());
    for p in patterns {
        let port = ports
            .entry(p.port.as_str())
            .or_insert_with(|| port_set(&p.port))
            .clone();
        let alternatives = |ips: Option<Vec<IpMatch>>| {
            ips.map(|ips| {
                ips.into_iter()
                    .map(|ip| CompiledPattern {
                        ip,
                        ports: port.clone(),
                    })
                    .collect::<Vec<_>>()
            })
        };
        extend(&mut v4, alternatives(v4_ips(&p.ip)));
        extend(&mut v6, alternatives(v6_ips(&p.ip)));
    }
    CompiledRule { v4, v6 }
}

fn extend(acc: &mut Option<Vec<CompiledPattern>>, more: Option<Vec<CompiledPattern>>) {
    match (acc.as_mut(), more) {
        (Some(a), Some(m)) => {
            for p in m {
                if !a.contains(&p) {
                    a.push(p);
                }
            }
        }
        _ => *acc = None,
    }
}

fn all_stars(glob: &str) -> bool {
    glob.bytes().all(|b| b == b'*')
}

/// The source ports `glob` matches.
pub fn port_set(glob: &str) -> PortSet {
    if all_stars(glob) {
        return PortSet::Any;
    }
    let mut bits: PortBits = Box::new([0; 1024]);
    let mut text = String::with_capacity(5);
    for port in 0..=u16::MAX {
        text.clear();
        use std::fmt::Write as _;
        let _ = write!(text, "{port}");
        if glob_match(glob.as_bytes(), text.as_bytes()) {
            bits[usize::from(port >> 6)] |= 1 << (port & 63);
        }
    }
    if bits.iter().all(|&w| w == u64::MAX) {
        PortSet::Any
    } else {
        PortSet::Bits(bits)
    }
}

/// IPv4 alternatives of an address glob; `None` if there would be too many.
fn v4_ips(glob: &str) -> Option<Vec<IpMatch>> {
    if all_stars(glob) {
        return Some(vec![IpMatch::Any]);
    }
    let literal_dots = glob.bytes().filter(|&b| b == b'.').count();
    if literal_dots > 3 || glob.contains(':') {
        // No IPv4 text has more than three dots, or any ':'.
        return Some(Vec::new());
    }
    let mut expansions = Vec::new();
    let mut cur = Vec::with_capacity(glob.len() * 2);
    if !expand(glob.as_bytes(), 3 - literal_dots, &mut cur, &mut expansions) {
        return None;
    }
    let mut out = Vec::new();
    for e in expansions {
        let mut sets: OctetSets = [[0; 4]; 4];
        for (set, part) in sets.iter_mut().zip(e.split(|&b| b == b'.')) {
            for v in 0..=255u8 {
                if glob_match(part, v.to_string().as_bytes()) {
                    set[usize::from(v >> 6)] |= 1 << (v & 63);
                }
            }
        }
        let ip = IpMatch::V4(sets);
        if sets.iter().all(|s| s.iter().any(|&w| w != 0)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Some(out)
}

/// Pushes every rewrite of `rest` in which wildcards absorb exactly `dots` dots. False if
/// more than `MAX_EXPANSIONS` would be produced.
fn expand(rest: &[u8], dots: usize, cur: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) -> bool {
    let Some((&c, tail)) = rest.split_first() else {
        if dots == 0 {
            out.push(cur.clone());
        }
        return out.len() <= MAX_EXPANSIONS;
    };
    let len = cur.len();
    match c {
        b'*' => (0..=dots).all(|k| {
            cur.push(b'*');
            for _ in 0..k {
                cur.extend_from_slice(b".*");
            }
            let ok = expand(tail, dots - k, cur, out);
            cur.truncate(len);
            ok
        }),
        b'?' => {
            cur.push(b'?');
            let mut ok = expand(tail, dots, cur, out);
            cur.truncate(len);
            if ok && dots > 0 {
                cur.push(b'.');
                ok = expand(tail, dots - 1, cur, out);
                cur.truncate(len);
            }
            ok
        }
        _ => {
            cur.push(c);
            let ok = expand(tail, dots, cur, out);
            cur.truncate(len);
            ok
        }
    }
}

/// IPv6 alternatives of an address glob; `None` when not compilable exactly.
fn v6_ips(glob: &str) -> Option<Vec<IpMatch>> {
    if all_stars(glob) {
        return Some(vec![IpMatch::Any]);
    }
    if glob.contains(['*', '?']) {
        // IPv6 text has a ':' before any '.', so a text starting with a '.' before any ':'
        // is never IPv6: an IPv4-style pattern like `192.168.1.*` matches no IPv6 client.
        let literal_prefix = &glob[..glob.find(['*', '?']).unwrap_or(glob.len())];
        return match literal_prefix.split_once('.') {
            Some((head, _)) if !head.contains(':') => Some(Vec::new()),
            _ => None,
        };
    }
    // A literal matches only the address whose canonical text it is (if any).
    Some(match glob.parse::<Ipv6Addr>() {
        Ok(a) if a.to_string() == glob => vec![IpMatch::V6Exact(a)],
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddrV6};

    fn pat(ip: &str, port: &str) -> ClientPattern {
        ClientPattern {
            text: format!("{ip}:{port}"),
            ip: ip.into(),
            port: port.into(),
        }
    }

    fn userspace(p: &[ClientPattern], c: SocketAddr) -> bool {
        p.iter().any(|p| p.matches(c))
    }

    /// The invariant: where the kernel decides, it decides as user space does.
    fn agrees(p: &[ClientPattern], c: SocketAddr) -> bool {
        let rule = compile_rule(p);
        match rule.allows(c) {
            None => true,
            Some(k) => k == userspace(p, c),
        }
    }

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn common_patterns_compile() {
        let r = compile_rule(&[pat("*", "*")]);
        assert_eq!(r.v4.as_ref().unwrap().len(), 1);
        assert_eq!(r.v6.as_ref().unwrap().len(), 1);
        assert_eq!(r.allows(v4("1.2.3.4:5")), Some(true));
        assert_eq!(r.allows("[::1]:5".parse().unwrap()), Some(true));

        let r = compile_rule(&[pat("192.168.1.*", "*"), pat("::1", "1*")]);
        assert_eq!(r.allows(v4("192.168.1.77:9")), Some(true));
        assert_eq!(r.allows(v4("192.168.2.77:9")), Some(false));
        assert_eq!(r.allows("[::1]:19".parse().unwrap()), Some(true));
        assert_eq!(r.allows("[::1]:29".parse().unwrap()), Some(false));
        assert_eq!(r.allows("[::2]:19".parse().unwrap()), Some(false));

        // Fewer dots: `*` may swallow them.
        let r = compile_rule(&[pat("10.*", "*")]);
        assert_eq!(r.allows(v4("10.9.8.7:1")), Some(true));
        assert_eq!(r.allows(v4("11.9.8.7:1")), Some(false));
        // `?` may be a dot: `1?2.3.4` matches 1.2.3.4 (and 102.3.4? no: 4 octets needed).
        let r = compile_rule(&[pat("1?2.3.4", "*")]);
        assert_eq!(r.allows(v4("1.2.3.4:1")), Some(true));
        assert_eq!(r.allows(v4("112.3.4.5:1")), Some(false));
    }

    #[test]
    fn ipv6_wildcards_are_unfiltered_and_never_wrong() {
        // IPv4-style wildcards never match IPv6 text: IPv6 stays exact.
        let r = compile_rule(&[pat("10.0.*", "*"), pat("::1", "*")]);
        assert_eq!(r.allows("[::1]:1".parse().unwrap()), Some(true));
        assert_eq!(r.allows("[::2]:1".parse().unwrap()), Some(false));
        let r = compile_rule(&[pat("fe80::*", "*"), pat("10.0.0.1", "*")]);
        assert_eq!(r.v6, None);
        assert_eq!(r.allows("[fe80::1]:1".parse().unwrap()), None);
        assert_eq!(r.allows(v4("10.0.0.1:1")), Some(true));
        // Non-canonical literal: matches no address text at all.
        let r = compile_rule(&[pat("0:0::1", "*")]);
        assert_eq!(r.allows("[::1]:1".parse().unwrap()), Some(false));
        assert!(!userspace(
            &[pat("0:0::1", "*")],
            "[::1]:1".parse().unwrap()
        ));
    }

    #[test]
    fn no_patterns_drop_everything() {
        let r = compile_rule(&[]);
        assert_eq!(r.allows(v4("1.2.3.4:1")), Some(false));
        assert_eq!(r.allows("[::1]:1".parse().unwrap()), Some(false));
    }

    #[test]
    fn port_sets_are_exact() {
        let set = port_set("8?");
        for p in 0..=u16::MAX {
            assert_eq!(set.contains(p), glob_match(b"8?", p.to_string().as_bytes()));
        }
        assert_eq!(port_set("*"), PortSet::Any);
        assert_eq!(port_set("**"), PortSet::Any);
        assert!(matches!(port_set("*1"), PortSet::Bits(_)));
    }

    #[test]
    fn too_many_expansions_leave_v4_unfiltered() {
        let r = compile_rule(&[pat("1*1*1*1*1*1*1*1*1*1*1*1*", "*")]);
        assert_eq!(r.v4, None);
    }

    #[test]
    fn exhaustive_on_small_octets() {
        // Every pattern of up to 5 symbols over a small alphabet, against addresses whose
        // octets use those digits, is decided exactly or not at all.
        let alphabet = [b'1', b'2', b'.', b'*', b'?'];
        let addrs: Vec<SocketAddr> = [1u8, 2, 11, 12, 21, 121, 212]
            .iter()
            .flat_map(|&a| [1u8, 12, 2].map(move |b| (a, b)))
            .map(|(a, b)| SocketAddr::from((Ipv4Addr::new(a, b, a, b), 1)))
            .chain([v4("1.2.1.2:1"), v4("1.1.1.1:1"), v4("12.1.2.1:1")])
            .collect();
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(p) = stack.pop() {
            if !p.is_empty() {
                let p = vec![pat(std::str::from_utf8(&p).unwrap(), "*")];
                let rule = compile_rule(&p);
                for &a in &addrs {
                    if let Some(k) = rule.allows(a) {
                        assert_eq!(k, userspace(&p, a), "{p:?} {a}");
                    }
                }
            }
            if p.len() < 5 {
                for &c in &alphabet {
                    let mut q = p.clone();
                    q.push(c);
                    stack.push(q);
                }
            }
        }
    }

    fn glob_from(alphabet: &'static [u8], max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(alphabet), 1..max)
            .prop_map(|v| String::from_utf8(v).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn kernel_view_agrees_with_glob_v4(
            ip in glob_from(b"0123459.*?", 14),
            port in glob_from(b"0189*?", 5),
            addr in any::<[u8; 4]>(),
            sport in any::<u16>(),
        ) {
            let p = vec![pat(&ip, &port)];
            let c = SocketAddr::from((Ipv4Addr::from(addr), sport));
            prop_assert!(agrees(&p, c));
        }

        /// Addresses drawn near the pattern's own digits, so matches are frequent.
        #[test]
        fn kernel_view_agrees_on_matching_candidates(
            ip in glob_from(b"12.*?", 12),
            octets in prop::array::uniform4(prop::sample::select(vec![1u8, 2, 11, 12, 21, 22, 112, 121, 212, 221])),
        ) {
            let p = vec![pat(&ip, "*")];
            let c = SocketAddr::from((Ipv4Addr::from(octets), 80));
            prop_assert!(agrees(&p, c));
        }

        #[test]
        fn kernel_view_agrees_with_glob_v6(
            ip in prop_oneof![glob_from(b"0123:abf.*?", 12), any::<Ipv6Addr>().prop_map(|a| a.to_string())],
            addr in prop_oneof![
                any::<Ipv6Addr>(),
                Just(Ipv6Addr::LOCALHOST),
                any::<Ipv4Addr>().prop_map(|a| a.to_ipv6_mapped()),
            ],
            sport in any::<u16>(),
        ) {
            let p = vec![pat(&ip, "*")];
            let c = SocketAddr::V6(SocketAddrV6::new(addr, sport, 0, 0));
            prop_assert!(agrees(&p, c));
            // A literal canonical pattern is always compiled and matches its own address.
            if let Ok(a) = ip.parse::<Ipv6Addr>() && a.to_string() == ip {
                let me = SocketAddr::V6(SocketAddrV6::new(a, sport, 0, 0));
                prop_assert_eq!(compile_rule(&p).allows(me), Some(true));
            }
        }
    }
}
