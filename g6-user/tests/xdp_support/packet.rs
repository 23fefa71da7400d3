//! Ethernet frames with IPv4/IPv6 and a TCP header, checksums included (so the same frames
//! are valid on a real link, e.g. for the flood sender).

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    Ack,
    SynAck,
    Rst,
    FinAck,
}

impl Tcp {
    fn bits(self) -> u8 {
        match self {
            Tcp::Syn => 0x02,
            Tcp::Ack => 0x10,
            Tcp::SynAck => 0x12,
            Tcp::Rst => 0x04,
            Tcp::FinAck => 0x11,
        }
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A 20-byte TCP header from `src` to `dst` with its checksum (IPv4 or IPv6 pseudo-header).
pub fn tcp_header(src: SocketAddr, dst: SocketAddr, flags: Tcp, seq: u32) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&src.port().to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags.bits();
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut acc = 0;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
            acc += 6 + 20;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
            acc += 20 + 6;
        }
        _ => panic!("mixed families {src} {dst}"),
    }
    let c = fold(sum16(&t, acc));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// The 20-byte IPv4 header (with checksum) for a TCP segment of `payload` bytes.
pub fn ipv4_header(src: SocketAddr, dst: SocketAddr, options: &[u8], payload: usize) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("not IPv4: {src} {dst}");
    };
    let hlen = 20 + options.len();
    let mut ip = vec![0u8; 20];
    ip[0] = 0x40 | (hlen / 4) as u8;
    ip[2..4].copy_from_slice(&((hlen + payload) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&s.octets());
    ip[16..20].copy_from_slice(&d.octets());
    ip.extend_from_slice(options);
    let c = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

pub fn v4(src: SocketAddr, dst: SocketAddr, flags: Tcp) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(src, dst, &[], 20));
    f.extend_from_slice(&tcp_header(src, dst, flags, 1));
    f
}

/// IPv4 with 4 bytes of options (IHL 6: NOPs).
pub fn v4_with_options(src: SocketAddr, dst: SocketAddr, flags: Tcp) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(src, dst, &[1, 1, 1, 1], 20));
    f.extend_from_slice(&tcp_header(src, dst, flags, 1));
    f
}

/// IPv6; `ext`: insert one 8-byte extension header of this type before TCP.
pub fn v6(src: SocketAddr, dst: SocketAddr, flags: Tcp, ext: Option<u8>) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("not IPv6: {src} {dst}");
    };
    let mut f = eth(0x86dd);
    let payload = 20 + if ext.is_some() { 8 } else { 0 };
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload as u16).to_be_bytes());
    f.push(ext.unwrap_or(6));
    f.push(64);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    if ext.is_some() {
        f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next: TCP, len 0, PadN
    }
    f.extend_from_slice(&tcp_header(src, dst, flags, 1));
    f
}
