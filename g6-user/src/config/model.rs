//! The typed, validated configuration (SPEC.md §4). Immutable once built: the proxy holds it
//! as a snapshot (`Arc<Config>`), runtime state lives elsewhere.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Default `connect_timeout` in seconds (SPEC.md §4.4).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 5;

/// 1-based position of a token in the config file (byte column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Balancing algorithm of a rule; `G` marks an admin rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Admin,
    MasterStandby,
    RoundRobin,
    LeastConnections,
    ResponseTime,
    Random,
    Hash,
}

impl Algorithm {
    pub fn from_token(tok: &[u8]) -> Option<Self> {
        Some(match tok {
            b"G" => Self::Admin,
            b"MS" => Self::MasterStandby,
            b"RR" => Self::RoundRobin,
            b"LC" => Self::LeastConnections,
            b"RT" => Self::ResponseTime,
            b"RD" => Self::Random,
            b"HS" => Self::Hash,
            _ => return None,
        })
    }

    /// The token as written in the config and shown by `show rules`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "G",
            Self::MasterStandby => "MS",
            Self::RoundRobin => "RR",
            Self::LeastConnections => "LC",
            Self::ResponseTime => "RT",
            Self::Random => "RD",
            Self::Hash => "HS",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Connection limits of a client or server entry; 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_connections: u32,
    pub max_ip: u32,
    pub max_connections_per_ip: u32,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// A client pattern `IPPAT:PORTPAT` or `[IP6PAT]:PORTPAT` (SPEC.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPattern {
    /// The pattern exactly as written (shown by `show rules`).
    pub text: String,
    /// Glob over the client's address text (IPv4 dotted, IPv6 RFC 5952 lowercase, no brackets).
    pub ip: String,
    /// Glob over the client's decimal source port.
    pub port: String,
}

impl ClientPattern {
    /// Whole-string glob match: `*` any run (also empty), `?` exactly one character.
    /// Runs for every accepted client, so the texts are formatted on the stack, and a part
    /// that is all stars (`*:*`, the common case) is not formatted at all.
    pub fn matches(&self, client: SocketAddr) -> bool {
        let any = |glob: &str| glob.bytes().all(|c| c == b'*');
        // `IpAddr`'s Display is RFC 5952 lowercase for IPv6 and dotted decimal for IPv4.
        (any(&self.ip) || StackText::of(client.ip()).matched_by(&self.ip))
            && (any(&self.port) || StackText::of(client.port()).matched_by(&self.port))
    }
}

/// A value's `Display` text in a stack buffer, long enough for any IP address (45 bytes:
/// IPv6 with an embedded IPv4) or port.
struct StackText {
    buf: [u8; 48],
    len: usize,
    /// The text did not fit (never for an address or a port): it is here instead.
    spilled: Option<String>,
}

impl StackText {
    fn of(value: impl fmt::Display) -> Self {
        use fmt::Write as _;
        let mut text = StackText {
            buf: [0; 48],
            len: 0,
            spilled: None,
        };
        if write!(text, "{value}").is_err() {
            text.spilled = Some(value.to_string());
        }
        text
    }

    fn matched_by(&self, glob: &str) -> bool {
        let text = self
            .spilled
            .as_deref()
            .map_or(&self.buf[..self.len], str::as_bytes);
        glob_match(glob.as_bytes(), text)
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Iterative glob matcher with single-star backtracking: linear in practice, no recursion.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEntry {
    pub pattern: ClientPattern,
    /// Effective limits after inheritance.
    pub limits: Limits,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEntry {
    pub addr: SocketAddr,
    /// Idle timeout in seconds; 0 = none.
    pub timeout: u32,
    /// Connect timeout in seconds used for servers that set none; 0 = no G6 limit.
    pub connect_timeout: u32,
    pub pos: Pos,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub addr: SocketAddr,
    /// Effective heartbeat period in seconds; 0 = no heartbeat mode.
    pub heartbeat: u32,
    /// Effective limits after inheritance (server list default → own).
    pub limits: Limits,
    /// Set only if the server or its list set one; else the listener's applies.
    pub connect_timeout: Option<u32>,
    pub pos: Pos,
}

impl ServerEntry {
    /// Connect timeout in seconds for an attempt via `listen` (SPEC.md §4.4); 0 = no G6 limit.
    pub fn connect_timeout_via(&self, listen: &ListenEntry) -> u32 {
        self.connect_timeout.unwrap_or(listen.connect_timeout)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub alg: Algorithm,
    pub clients: Vec<ClientEntry>,
    pub listens: Vec<ListenEntry>,
    pub servers: Vec<ServerEntry>,
    pub pos: Pos,
}

impl Rule {
    pub fn is_admin(&self) -> bool {
        self.alg == Algorithm::Admin
    }

    /// First client entry (config order) whose pattern matches (SPEC.md §5.1).
    pub fn match_client(&self, client: SocketAddr) -> Option<usize> {
        self.clients.iter().position(|c| c.pattern.matches(client))
    }
}

/// A diagnostic that does not stop loading (SPEC.md §4.5 warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub pos: Pos,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// Process-wide moratorium in seconds (last global value in the file wins); 0 = none.
    pub moratorium: u32,
    pub rules: Vec<Rule>,
    pub warnings: Vec<Warning>,
}

impl Config {
    pub fn listen_count(&self) -> usize {
        self.rules.iter().map(|r| r.listens.len()).sum()
    }

    pub fn server_count(&self) -> usize {
        self.rules.iter().map(|r| r.servers.len()).sum()
    }

    /// Every listen address with its (rule, listen) indexes, in config order.
    pub fn listeners(&self) -> impl Iterator<Item = (usize, usize, &ListenEntry)> {
        self.rules
            .iter()
            .enumerate()
            .flat_map(|(ri, r)| r.listens.iter().enumerate().map(move |(li, l)| (ri, li, l)))
    }
}

/// `ip:port`, IPv6 as `[ip]:port` (canonical), as `show rules` prints addresses.
pub fn fmt_addr(addr: &SocketAddr) -> String {
    addr.to_string()
}

/// The IP as `show rules` prints it, without brackets.
pub fn fmt_ip(ip: &IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_basics() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"*", b"127.0.0.1"));
        assert!(glob_match(b"127.0.0.*", b"127.0.0.1"));
        assert!(glob_match(b"127.0.0.?", b"127.0.0.1"));
        assert!(!glob_match(b"127.0.0.?", b"127.0.0.10"));
        assert!(glob_match(b"1*", b"1"));
        assert!(glob_match(b"*1*0", b"12310"));
        assert!(!glob_match(b"", b"1"));
        assert!(glob_match(b"", b""));
        assert!(glob_match(b"fe80::*", b"fe80::1"));
    }

    fn pattern(ip: &str, port: &str) -> ClientPattern {
        ClientPattern {
            text: format!("{ip}:{port}"),
            ip: ip.into(),
            port: port.into(),
        }
    }

    #[test]
    fn the_longest_address_texts_are_matched_whole() {
        let full = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let client: SocketAddr = full.parse().unwrap();
        let text = client.ip().to_string();
        assert_eq!(text.len(), 39);
        assert!(pattern(&text, "65535").matches(client));
        assert!(pattern(&format!("{}?", &text[..38]), "6553?").matches(client));
        assert!(!pattern(&text[..38], "*").matches(client));
        assert!(!pattern(&text, "6553").matches(client));
        let mapped: SocketAddr = "[::ffff:255.255.255.255]:1".parse().unwrap();
        assert!(pattern("::ffff:255.255.255.25?", "?").matches(mapped));
        assert!(!pattern("255.255.255.255", "1").matches(mapped));
    }

    #[test]
    fn all_star_parts_match_without_formatting_and_others_still_apply() {
        let client: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        assert!(pattern("*", "*").matches(client));
        assert!(pattern("**", "4567").matches(client));
        assert!(!pattern("*", "4568").matches(client));
        assert!(!pattern("10.1.2.4", "**").matches(client));
    }

    #[test]
    fn a_text_too_long_for_the_stack_is_matched_from_the_heap() {
        let long = "x".repeat(100);
        let text = StackText::of(&long);
        assert!(text.spilled.is_some());
        assert!(text.matched_by(&long));
        assert!(text.matched_by("x*"));
        assert!(!text.matched_by("y*"));
    }
}
