//! Helpers shared by the property modules (JSON shape checks, small parsers).

use serde_json::Value;

/// A `show … json` reply (SPEC.md §9.6): one JSON document on one line followed by `\n`.
pub fn json_document(reply: &str) -> Value {
    let body = reply
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("JSON reply does not end with \\n: {reply:?}"));
    assert!(!body.contains('\n'), "JSON reply spans lines: {reply:?}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {reply:?}"))
}

/// `v` is an object whose keys are exactly `keys`, in that order; returns it for indexing.
pub fn keys_in_order<'v>(
    v: &'v Value,
    keys: &[&str],
    what: &str,
) -> &'v serde_json::Map<String, Value> {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let got: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(got, keys, "{what}: keys (order binding, SPEC.md §9.6): {v}");
    obj
}

/// `v` is an array; returns its items.
pub fn array<'v>(v: &'v Value, what: &str) -> &'v [Value] {
    v.as_array()
        .unwrap_or_else(|| panic!("{what}: not an array: {v}"))
}

/// Non-empty ASCII digits as u64, `None` on anything else or overflow.
pub fn digits(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() {
        return None;
    }
    tok.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Tokens of an admin line: split on spaces and TABs only, empty pieces dropped (SPEC.md §9.1).
pub fn admin_tokens(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|t| !t.is_empty())
        .collect()
}

/// A tiny deterministic PRNG (xorshift64*) for choices derived from one input byte.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
