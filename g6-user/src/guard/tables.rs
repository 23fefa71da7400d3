//! The contents of the XDP guard's maps for one config: listener keys, each listener's slice of
//! compiled patterns, and the distinct source-port sets. Pure: the loader writes the result.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use g6_common::{
    XDP_LISTEN_UNFILTERED, XDP_PAT_ANY_IP, XDP_PAT_V4, XDP_PAT_V6_EXACT, XDP_PATTERNS_PER_LISTENER,
    XDP_PORTS_ANY, XdpListen4, XdpListen6, XdpListener, XdpPattern,
};

use super::compile::{CompiledPattern, IpMatch, PortBits, PortSet, compile_rule};
use crate::config::Config;

#[derive(Debug, Default)]
pub struct Tables {
    pub listen4: Vec<(XdpListen4, XdpListener)>,
    pub listen6: Vec<(XdpListen6, XdpListener)>,
    /// `XdpListener::first` indexes this vector (the loader adds its region's base).
    pub patterns: Vec<XdpPattern>,
    /// `XdpPattern::port_set` indexes this vector (the loader adds its region's base).
    pub port_sets: Vec<PortBits>,
    /// Listen addresses the kernel passes unfiltered (patterns not compilable exactly).
    pub unfiltered: Vec<SocketAddr>,
}

pub fn listen4_key(ip: Ipv4Addr, port: u16) -> XdpListen4 {
    XdpListen4 {
        addr: u32::from_ne_bytes(ip.octets()),
        port: u32::from(port),
    }
}

pub fn v6_words(ip: Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    [0, 1, 2, 3].map(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

pub fn listen6_key(ip: Ipv6Addr, port: u16) -> XdpListen6 {
    XdpListen6 {
        addr: v6_words(ip),
        port: u32::from(port),
    }
}

/// Builds the tables for `cfg` within the given capacities (a rule that does not fit is left
/// unfiltered, never dropped).
pub fn build(cfg: &Config, max_patterns: usize, max_port_sets: usize) -> Tables {
    let mut t = Tables::default();
    for rule in &cfg.rules {
        let compiled = compile_rule(rule.clients.iter().map(|c| &c.pattern));
        let mut v4 = None;
        let mut v6 = None;
        for l in &rule.listens {
            let (slot, family) = match l.addr.ip() {
                IpAddr::V4(_) => (&mut v4, &compiled.v4),
                IpAddr::V6(_) => (&mut v6, &compiled.v6),
            };
            let value = *slot
                .get_or_insert_with(|| t.add_slice(family.as_deref(), max_patterns, max_port_sets));
            if value.flags & XDP_LISTEN_UNFILTERED != 0 {
                t.unfiltered.push(l.addr);
            }
            match l.addr.ip() {
                IpAddr::V4(ip) => t.listen4.push((listen4_key(ip, l.addr.port()), value)),
                IpAddr::V6(ip) => t.listen6.push((listen6_key(ip, l.addr.port()), value)),
            }
        }
    }
    t
}

impl Tables {
    fn add_slice(
        &mut self,
        patterns: Option<&[CompiledPattern]>,
        max_patterns: usize,
        max_port_sets: usize,
    ) -> XdpListener {
        let unfiltered = XdpListener {
            first: 0,
            count: 0,
            flags: XDP_LISTEN_UNFILTERED,
        };
        let Some(ps) = patterns else {
            return unfiltered;
        };
        if ps.len() > XDP_PATTERNS_PER_LISTENER as usize
            || self.patterns.len() + ps.len() > max_patterns
        {
            return unfiltered;
        }
        let (patterns_before, sets_before) = (self.patterns.len(), self.port_sets.len());
        for p in ps {
            let Some(port_set) = self.port_set_index(&p.ports, max_port_sets) else {
                self.patterns.truncate(patterns_before);
                self.port_sets.truncate(sets_before);
                return unfiltered;
            };
            self.patterns.push(kernel_pattern(&p.ip, port_set));
        }
        XdpListener {
            first: patterns_before as u32,
            count: ps.len() as u32,
            flags: 0,
        }
    }

    fn port_set_index(&mut self, ports: &PortSet, max: usize) -> Option<u32> {
        let PortSet::Bits(bits) = ports else {
            return Some(XDP_PORTS_ANY);
        };
        if let Some(i) = self.port_sets.iter().position(|b| b == bits) {
            return Some(i as u32);
        }
        if self.port_sets.len() >= max {
            return None;
        }
        self.port_sets.push(bits.clone());
        Some(self.port_sets.len() as u32 - 1)
    }
}

fn kernel_pattern(ip: &IpMatch, port_set: u32) -> XdpPattern {
    let mut p = XdpPattern {
        port_set,
        ..XdpPattern::default()
    };
    match ip {
        IpMatch::Any => p.kind = XDP_PAT_ANY_IP,
        IpMatch::V4(sets) => {
            p.kind = XDP_PAT_V4;
            for (i, set) in sets.iter().enumerate() {
                p.octets[4 * i..4 * i + 4].copy_from_slice(set);
            }
        }
        IpMatch::V6Exact(a) => {
            p.kind = XDP_PAT_V6_EXACT;
            p.v6 = v6_words(*a);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        crate::config::parse("t.conf", text.as_bytes()).unwrap()
    }

    #[test]
    fn rules_share_slices_per_family_and_port_sets_dedupe() {
        let c = cfg("a G 127.0.0.1:* - 127.0.0.1:8600 ;\n\
                     r RR 10.0.0.*:8? 10.0.1.*:8? [fe80::*]:* - 0.0.0.0:80 127.0.0.1:81 [::]:80 > 10.1.1.1:80 ;\n");
        let t = build(&c, 100, 10);
        assert_eq!(t.listen4.len(), 3);
        assert_eq!(t.listen6.len(), 1);
        // admin: one pattern, any port; r: two patterns sharing one port set.
        assert_eq!(t.patterns.len(), 3);
        assert_eq!(t.port_sets.len(), 1);
        let (k, v) = t.listen4[1];
        assert_eq!(k, listen4_key(Ipv4Addr::UNSPECIFIED, 80));
        assert_eq!((v.first, v.count, v.flags), (1, 2, 0));
        assert_eq!(t.listen4[2].1, v, "same rule, same slice");
        assert_eq!(
            t.listen6[0].1.flags, XDP_LISTEN_UNFILTERED,
            "fe80::* is not exact"
        );
        assert_eq!(t.unfiltered, vec!["[::]:80".parse().unwrap()]);
        assert_eq!(t.patterns[1].port_set, 0);
        assert_eq!(t.patterns[0].port_set, XDP_PORTS_ANY);
    }

    #[test]
    fn capacity_overflow_is_unfiltered_not_dropped() {
        let c = cfg("r RR 1.*:1? 2.*:2? 3.*:3? - 127.0.0.1:80 > 10.1.1.1:80 ;\n");
        let t = build(&c, 100, 2);
        assert_eq!(t.listen4[0].1.flags, XDP_LISTEN_UNFILTERED);
        assert!(t.patterns.is_empty() && t.port_sets.is_empty());
        let t = build(&c, 2, 10);
        assert_eq!(t.listen4[0].1.flags, XDP_LISTEN_UNFILTERED);
    }
}
