//! Deterministic test data and chunking-independent checksums.
//!
//! `DataGen::new(seed)` yields the same byte stream however it is chunked; `Checksum`
//! gives the same digest however the input is split. Both are cheap enough for
//! multi-megabyte transfers in debug builds (they work on 64-bit words).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser: a good 64-bit avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fresh seed, unique within this test process (so concurrent transfers are told apart).
pub fn fresh_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    mix64(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A seekable deterministic pseudo-random byte stream.
#[derive(Clone, Debug)]
pub struct DataGen {
    seed: u64,
    pos: u64,
}

impl DataGen {
    pub fn new(seed: u64) -> Self {
        DataGen { seed, pos: 0 }
    }

    /// Bytes produced so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn word(&self, index: u64) -> u64 {
        mix64(self.seed.rotate_left(32) ^ index.wrapping_add(1).wrapping_mul(GOLDEN))
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        // Leading bytes up to a word boundary.
        while i < buf.len() && !self.pos.is_multiple_of(8) {
            buf[i] = self.word(self.pos / 8).to_le_bytes()[(self.pos % 8) as usize];
            i += 1;
            self.pos += 1;
        }
        let mut words = buf[i..].chunks_exact_mut(8);
        for chunk in &mut words {
            chunk.copy_from_slice(&self.word(self.pos / 8).to_le_bytes());
            self.pos += 8;
            i += 8;
        }
        for b in &mut buf[i..] {
            *b = self.word(self.pos / 8).to_le_bytes()[(self.pos % 8) as usize];
            self.pos += 1;
        }
    }

    /// The next `n` bytes as a vector.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

/// The first `n` bytes of the stream for `seed`.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    DataGen::new(seed).take(n)
}

/// The digest of the first `n` bytes of the stream for `seed`, computed in bounded memory.
pub fn digest_of_stream(seed: u64, n: u64) -> Digest {
    let mut g = DataGen::new(seed);
    let mut c = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        g.fill(&mut buf[..k]);
        c.update(&buf[..k]);
        left -= k as u64;
    }
    c.digest()
}

/// Length plus a 64-bit order-sensitive checksum of a byte sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest {
    pub len: u64,
    pub sum: u64,
}

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        let mut c = Checksum::new();
        c.update(data);
        c.digest()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({} bytes, sum {:016x})", self.len, self.sum)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Streaming checksum; the result does not depend on how the input is split.
#[derive(Clone, Copy, Debug)]
pub struct Checksum {
    h: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Self {
        Checksum {
            h: 0xCBF2_9CE4_8422_2325,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }

    fn absorb(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(GOLDEN).rotate_left(29);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.tail_len > 0 {
            let k = (8 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + k].copy_from_slice(&data[..k]);
            self.tail_len += k;
            data = &data[k..];
            if self.tail_len < 8 {
                return;
            }
            self.absorb(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.absorb(u64::from_le_bytes(w.try_into().unwrap()));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything seen so far (does not consume the state).
    pub fn digest(&self) -> Digest {
        let mut c = *self;
        if c.tail_len > 0 {
            let mut last = [0u8; 8];
            last[..c.tail_len].copy_from_slice(&c.tail[..c.tail_len]);
            c.absorb(u64::from_le_bytes(last) ^ ((c.tail_len as u64) << 59));
        }
        Digest {
            len: self.len,
            sum: mix64(c.h ^ self.len),
        }
    }
}
