//! Parser and validator (SPEC.md §4.2–§4.5): tokens → [`Config`], with attribute inheritance
//! resolved. One pass in file order, so the first error in the file is the one reported.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::{AddrList, ErrorKind, Found, Place, Unit, show_token};
use super::lexer::{Lexer, Located, TokKind, Token};
use super::model::{
    Algorithm, ClientEntry, ClientPattern, Config, DEFAULT_CONNECT_TIMEOUT_SECS, Limits,
    ListenEntry, Pos, Rule, ServerEntry, Warning,
};

/// Parses a whole configuration file.
pub fn parse(src: &[u8]) -> Result<Config, Located> {
    let mut p = Parser {
        lx: Lexer::new(src),
        global: Attrs::default(),
        cfg: Config::default(),
        rule_ids: HashMap::new(),
        listens: HashMap::new(),
    };
    p.config()?;
    Ok(p.cfg)
}

/// The attributes of the language (SPEC.md §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    Moratorium,
    Timeout,
    ConnectTimeout,
    Heartbeat,
    MaxConnections,
    MaxIp,
    MaxConnectionsPerIp,
}

impl Attr {
    const ALL: [Self; 7] = [
        Self::Moratorium,
        Self::Timeout,
        Self::ConnectTimeout,
        Self::Heartbeat,
        Self::MaxConnections,
        Self::MaxIp,
        Self::MaxConnectionsPerIp,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Moratorium => "moratorium",
            Self::Timeout => "timeout",
            Self::ConnectTimeout => "connect_timeout",
            Self::Heartbeat => "heartbeat",
            Self::MaxConnections => "max_connections",
            Self::MaxIp => "max_ip",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }

    fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name().as_bytes() == name)
    }

    fn unit(self) -> Unit {
        match self {
            Self::Moratorium | Self::Timeout | Self::ConnectTimeout | Self::Heartbeat => Unit::Time,
            Self::MaxConnections | Self::MaxIp | Self::MaxConnectionsPerIp => Unit::Count,
        }
    }

    /// The marked cells of the SPEC.md §4.4 table; a list default and its addresses share one.
    fn allowed_in(self, place: Place) -> bool {
        use Place::*;
        match self {
            Self::Moratorium => place == Global,
            Self::Timeout => matches!(place, Global | ListenList),
            Self::ConnectTimeout => matches!(place, Global | ListenList | ServerList),
            Self::Heartbeat => place == ServerList,
            Self::MaxConnections | Self::MaxIp | Self::MaxConnectionsPerIp => {
                matches!(place, Global | ClientList | ServerList)
            }
        }
    }
}

/// Attribute values set at one level (`None` = not set there, so the next level applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Attrs {
    moratorium: Option<u32>,
    timeout: Option<u32>,
    connect_timeout: Option<u32>,
    heartbeat: Option<u32>,
    max_connections: Option<u32>,
    max_ip: Option<u32>,
    max_connections_per_ip: Option<u32>,
}

impl Attrs {
    fn set(&mut self, attr: Attr, value: u32) {
        let slot = match attr {
            Attr::Moratorium => &mut self.moratorium,
            Attr::Timeout => &mut self.timeout,
            Attr::ConnectTimeout => &mut self.connect_timeout,
            Attr::Heartbeat => &mut self.heartbeat,
            Attr::MaxConnections => &mut self.max_connections,
            Attr::MaxIp => &mut self.max_ip,
            Attr::MaxConnectionsPerIp => &mut self.max_connections_per_ip,
        };
        *slot = Some(value);
    }

    /// Field-wise: values set in `self` win over `fallback`.
    fn or(self, fallback: Self) -> Self {
        Self {
            moratorium: self.moratorium.or(fallback.moratorium),
            timeout: self.timeout.or(fallback.timeout),
            connect_timeout: self.connect_timeout.or(fallback.connect_timeout),
            heartbeat: self.heartbeat.or(fallback.heartbeat),
            max_connections: self.max_connections.or(fallback.max_connections),
            max_ip: self.max_ip.or(fallback.max_ip),
            max_connections_per_ip: self
                .max_connections_per_ip
                .or(fallback.max_connections_per_ip),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections.unwrap_or(0),
            max_ip: self.max_ip.unwrap_or(0),
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(0),
        }
    }
}

/// One address of a list with the attributes of the blocks that follow it.
struct Item<T> {
    value: T,
    attrs: Attrs,
    pos: Pos,
}

/// A parsed address list: its default (blocks before the first address) and its addresses.
struct List<'a, T> {
    default: Attrs,
    items: Vec<Item<T>>,
    /// The token that ended the list.
    end: Token<'a>,
}

/// Why an address token was rejected.
#[derive(Debug, PartialEq, Eq)]
enum AddrError {
    /// Nothing address-like (no `:`): reported as "expected …, found '…'".
    NotAddress,
    Invalid(ErrorKind),
}

struct Parser<'a> {
    lx: Lexer<'a>,
    /// Global values in force at the current point of the file.
    global: Attrs,
    cfg: Config,
    rule_ids: HashMap<String, Pos>,
    listens: HashMap<SocketAddr, Pos>,
}

fn found(t: &Token<'_>) -> Found {
    match t.kind {
        TokKind::Eof => Found::EndOfFile,
        _ => Found::Token(show_token(t.text)),
    }
}

fn expected(what: &'static str, t: &Token<'_>) -> Located {
    (
        t.pos,
        ErrorKind::Expected {
            expected: what,
            found: found(t),
        },
    )
}

/// `-` and `>` separate lists and so never start an address, a rule id or a value.
fn is_separator(t: &Token<'_>) -> bool {
    t.is_word(b"-") || t.is_word(b">")
}

impl<'a> Parser<'a> {
    fn next(&mut self) -> Result<Token<'a>, Located> {
        self.lx.next_token()
    }

    /// `config = { global | rule } EOF`
    fn config(&mut self) -> Result<(), Located> {
        loop {
            let t = self.next()?;
            match t.kind {
                TokKind::Eof => return Ok(()),
                TokKind::LParen => self.global_stmt()?,
                TokKind::Word if !is_separator(&t) => self.rule(t)?,
                _ => return Err(expected("rule id or '('", &t)),
            }
        }
    }

    /// `global = "(" [props] ")" ";"`, the `(` already read. Affects later rules only.
    fn global_stmt(&mut self) -> Result<(), Located> {
        let block = self.block_body(Place::Global)?;
        let t = self.next()?;
        if t.kind != TokKind::Semi {
            return Err(expected("';'", &t));
        }
        if let Some(m) = block.moratorium {
            self.cfg.moratorium = m;
        }
        self.global = block.or(self.global);
        Ok(())
    }

    /// The props of a block up to and including its `)`, the `(` already read.
    fn block_body(&mut self, place: Place) -> Result<Attrs, Located> {
        let mut attrs = Attrs::default();
        loop {
            let t = self.next()?;
            match t.kind {
                TokKind::RParen => return Ok(attrs),
                TokKind::Word => {}
                _ => return Err(expected("attribute name or ')'", &t)),
            }
            let attr = Attr::from_name(t.text).ok_or_else(|| {
                (
                    t.pos,
                    ErrorKind::UnknownAttribute {
                        name: show_token(t.text),
                    },
                )
            })?;
            if !attr.allowed_in(place) {
                let kind = ErrorKind::AttributeNotAllowed {
                    name: attr.name(),
                    place,
                };
                return Err((t.pos, kind));
            }
            let eq = self.next()?;
            if eq.kind != TokKind::Eq {
                return Err(expected("'='", &eq));
            }
            let v = self.next()?;
            if v.kind != TokKind::Word {
                return Err(expected("attribute value", &v));
            }
            attrs.set(attr, parse_value(attr, v.text).map_err(|k| (v.pos, k))?);
            let sep = self.next()?;
            match sep.kind {
                TokKind::Comma => {}
                TokKind::RParen => return Ok(attrs),
                _ => return Err(expected("',' or ')'", &sep)),
            }
        }
    }

    /// `{block} {ADDR {block}}` up to a token accepted by `is_end`. A block before the first
    /// address is the list default, a block after an address belongs to that address; later
    /// blocks win over earlier ones.
    fn list<T>(
        &mut self,
        place: Place,
        what: &'static str,
        is_end: impl Fn(&Token<'_>) -> bool,
        mut item: impl FnMut(&mut Self, &Token<'a>) -> Result<T, AddrError>,
    ) -> Result<List<'a, T>, Located> {
        let mut default = Attrs::default();
        let mut items: Vec<Item<T>> = Vec::new();
        loop {
            let t = self.next()?;
            if is_end(&t) {
                return Ok(List {
                    default,
                    items,
                    end: t,
                });
            }
            match t.kind {
                TokKind::LParen => {
                    let block = self.block_body(place)?;
                    let target = items.last_mut().map_or(&mut default, |it| &mut it.attrs);
                    *target = block.or(*target);
                }
                TokKind::Word if !is_separator(&t) => match item(self, &t) {
                    Ok(value) => items.push(Item {
                        value,
                        attrs: Attrs::default(),
                        pos: t.pos,
                    }),
                    Err(AddrError::NotAddress) => return Err(expected(what, &t)),
                    Err(AddrError::Invalid(kind)) => return Err((t.pos, kind)),
                },
                _ => return Err(expected(what, &t)),
            }
        }
    }

    /// `ID ALG {block} {CLIENT {block}} "-" {block} {LISTEN {block}} [">" …] ";"`
    fn rule(&mut self, id_tok: Token<'a>) -> Result<(), Located> {
        // Ids are compared as the text that `show rules` and HUP matching use.
        let id = String::from_utf8_lossy(id_tok.text).into_owned();
        if let Some(&first) = self.rule_ids.get(&id) {
            let kind = ErrorKind::DuplicateRuleId {
                id: show_token(id_tok.text),
                first,
            };
            return Err((id_tok.pos, kind));
        }
        self.rule_ids.insert(id.clone(), id_tok.pos);

        let t = self.next()?;
        let alg = match t.kind {
            TokKind::Word => Algorithm::from_token(t.text),
            _ => None,
        }
        .ok_or_else(|| expected("algorithm (G, MS, RR, LC, RT, RD or HS)", &t))?;
        // The global values in force at this rule; later global blocks do not affect it.
        let global = self.global;

        let clients = self.list(
            Place::ClientList,
            "client pattern, '(' or '-'",
            |t| t.is_word(b"-"),
            |_, t| parse_client_pattern(t.text),
        )?;

        let is_admin = alg == Algorithm::Admin;
        // Only a G rule may end after its listen list; other rules need `>`.
        let (what, listen_end): (_, fn(&Token<'_>) -> bool) = if is_admin {
            ("listen address, '(', '>' or ';'", |t| {
                t.is_word(b">") || t.kind == TokKind::Semi
            })
        } else {
            ("listen address, '(' or '>'", |t| t.is_word(b">"))
        };
        let listens = self.list(Place::ListenList, what, listen_end, |p, t| {
            let addr = parse_socket_addr(t.text, AddrList::Listen)?;
            if let Some(&first) = p.listens.get(&addr) {
                let addr = addr.to_string();
                return Err(AddrError::Invalid(ErrorKind::DuplicateListen {
                    addr,
                    first,
                }));
            }
            p.listens.insert(addr, t.pos);
            Ok(addr)
        })?;

        let servers = if listens.end.kind == TokKind::Semi {
            Vec::new()
        } else {
            let list = self.list(
                Place::ServerList,
                "server address, '(' or ';'",
                |t| t.kind == TokKind::Semi,
                |_, t| parse_socket_addr(t.text, AddrList::Server),
            )?;
            server_entries(list)
        };

        let rule = Rule {
            id,
            alg,
            clients: client_entries(clients, global),
            listens: listen_entries(listens, global),
            servers,
            pos: id_tok.pos,
        };
        self.warn_if_refusing(&rule);
        self.cfg.rules.push(rule);
        Ok(())
    }

    /// SPEC.md §4.5 warnings: rules that refuse every client.
    fn warn_if_refusing(&mut self, rule: &Rule) {
        let mut warn = |what: &str| {
            self.cfg.warnings.push(Warning {
                pos: rule.pos,
                message: format!(
                    "rule '{}' has no {what}: its clients are refused",
                    show_token(rule.id.as_bytes())
                ),
            });
        };
        if rule.clients.is_empty() {
            warn("client patterns");
        }
        if !rule.is_admin() && rule.servers.is_empty() {
            warn("servers");
        }
    }
}

// Inheritance (SPEC.md §4.4): own blocks → list default → (clients, listens) the global values
// in force at the rule → the built-in default.

fn client_entries(list: List<'_, ClientPattern>, global: Attrs) -> Vec<ClientEntry> {
    list.items
        .into_iter()
        .map(|it| ClientEntry {
            limits: it.attrs.or(list.default).or(global).limits(),
            pattern: it.value,
            pos: it.pos,
        })
        .collect()
}

fn listen_entries(list: List<'_, SocketAddr>, global: Attrs) -> Vec<ListenEntry> {
    list.items
        .into_iter()
        .map(|it| {
            let a = it.attrs.or(list.default).or(global);
            ListenEntry {
                addr: it.value,
                timeout: a.timeout.unwrap_or(0),
                connect_timeout: a.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
                pos: it.pos,
            }
        })
        .collect()
}

/// Servers inherit from their list only: global `max_*` are client limits, and a server
/// without a connect timeout of its own uses the listener's.
fn server_entries(list: List<'_, SocketAddr>) -> Vec<ServerEntry> {
    list.items
        .into_iter()
        .map(|it| {
            let a = it.attrs.or(list.default);
            ServerEntry {
                addr: it.value,
                heartbeat: a.heartbeat.unwrap_or(0),
                limits: a.limits(),
                connect_timeout: a.connect_timeout,
                pos: it.pos,
            }
        })
        .collect()
}

/// An attribute value: digits and an optional unit suffix (SPEC.md §4.4 "Values").
fn parse_value(attr: Attr, text: &[u8]) -> Result<u32, ErrorKind> {
    let unit = attr.unit();
    let invalid = || ErrorKind::InvalidValue {
        name: attr.name(),
        value: show_token(text),
        unit,
    };
    let out_of_range = || ErrorKind::ValueOutOfRange {
        name: attr.name(),
        value: show_token(text),
        unit,
    };
    let (digits, mult) = match text.split_last() {
        Some((&last, rest)) if !last.is_ascii_digit() => {
            let mult: u64 = match (unit, last) {
                (Unit::Time, b's' | b'S') => 1,
                (Unit::Time, b'm' | b'M') => 60,
                (Unit::Time, b'h' | b'H') => 3600,
                (Unit::Count, b'k' | b'K') => 1000,
                (Unit::Count, b'm' | b'M') => 1_000_000,
                _ => return Err(invalid()),
            };
            (rest, mult)
        }
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let n = decimal(digits).ok_or_else(out_of_range)?;
    n.checked_mul(mult)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(out_of_range)
}

/// Value of an all-digit string; `None` on u64 overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `PORT`: digits only, 1..65535.
fn parse_port(text: &[u8]) -> Option<u16> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    decimal(text)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p != 0)
}

/// `IPV4`: four decimal octets 0..255 without leading zeros.
fn parse_ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        let well_formed = (1..=3).contains(&part.len())
            && part.iter().all(u8::is_ascii_digit)
            && (part.len() == 1 || part[0] != b'0');
        if !well_formed {
            return None;
        }
        *octet = u8::try_from(decimal(part)?).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// `IPV6`: standard text form, no zone, no brackets.
fn parse_ipv6(text: &[u8]) -> Option<Ipv6Addr> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn has_wildcard(text: &[u8]) -> bool {
    text.iter().any(|&b| b == b'*' || b == b'?')
}

/// Splits `X:Y` at the first colon.
fn split_colon(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = text.iter().position(|&b| b == b':')?;
    Some((&text[..colon], &text[colon + 1..]))
}

/// Splits `[X]:Y` into `(X, Y)`.
fn split_bracketed(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let inner = text.strip_prefix(b"[")?;
    let close = inner.windows(2).position(|w| w == b"]:")?;
    Some((&inner[..close], &inner[close + 2..]))
}

impl AddrError {
    fn ipv4(ip: &[u8]) -> Self {
        Self::Invalid(ErrorKind::InvalidIpv4 { ip: show_token(ip) })
    }

    fn ipv6(ip: &[u8]) -> Self {
        Self::Invalid(ErrorKind::InvalidIpv6 { ip: show_token(ip) })
    }

    fn port(port: &[u8]) -> Self {
        Self::Invalid(ErrorKind::InvalidPort {
            port: show_token(port),
        })
    }
}

/// `LISTEN = SERVER = IPV4 ":" PORT | "[" IPV6 "]:" PORT`
fn parse_socket_addr(text: &[u8], list: AddrList) -> Result<SocketAddr, AddrError> {
    let invalid = |reason| {
        AddrError::Invalid(ErrorKind::InvalidAddress {
            list,
            token: show_token(text),
            reason,
        })
    };
    if !text.contains(&b':') {
        return Err(AddrError::NotAddress);
    }
    if has_wildcard(text) {
        return Err(AddrError::Invalid(ErrorKind::WildcardInAddress {
            list,
            token: show_token(text),
        }));
    }
    let (ip, port) = if text.starts_with(b"[") {
        let (ip, port) = split_bracketed(text).ok_or_else(|| invalid("expected [IPV6]:PORT"))?;
        (
            IpAddr::V6(parse_ipv6(ip).ok_or_else(|| AddrError::ipv6(ip))?),
            port,
        )
    } else {
        let (ip, port) = split_colon(text).ok_or(AddrError::NotAddress)?;
        if port.contains(&b':') {
            return Err(invalid("IPv6 must be written [IPV6]:PORT"));
        }
        (
            IpAddr::V4(parse_ipv4(ip).ok_or_else(|| AddrError::ipv4(ip))?),
            port,
        )
    };
    let port = parse_port(port).ok_or_else(|| AddrError::port(port))?;
    Ok(SocketAddr::new(ip, port))
}

/// `CLIENT = IPPAT ":" PORTPAT | "[" IP6PAT "]:" PORTPAT`. A part without wildcards must be a
/// valid address or port and is stored in canonical form, so it matches the client's text
/// (e.g. `[0:0::1]:*` matches `::1`); the pattern text is kept as written.
fn parse_client_pattern(text: &[u8]) -> Result<ClientPattern, AddrError> {
    let bad = |reason| {
        AddrError::Invalid(ErrorKind::InvalidClientPattern {
            token: show_token(text),
            reason,
        })
    };
    if !text.contains(&b':') {
        return Err(AddrError::NotAddress);
    }
    let v6 = text.starts_with(b"[");
    let (ip, port) = if v6 {
        split_bracketed(text).ok_or_else(|| bad("expected [IP6PAT]:PORTPAT"))?
    } else {
        let (ip, port) = split_colon(text).ok_or(AddrError::NotAddress)?;
        if port.contains(&b':') {
            return Err(bad("IPv6 patterns must be written [IP6PAT]:PORTPAT"));
        }
        (ip, port)
    };
    check_pattern_chars(ip, port, v6).map_err(bad)?;

    let ip_glob = match (has_wildcard(ip), v6) {
        // Client text is RFC 5952 lowercase; hex digits in a pattern match either case.
        (true, true) => String::from_utf8_lossy(ip).to_ascii_lowercase(),
        (true, false) => String::from_utf8_lossy(ip).into_owned(),
        (false, true) => parse_ipv6(ip)
            .ok_or_else(|| AddrError::ipv6(ip))?
            .to_string(),
        (false, false) => parse_ipv4(ip)
            .ok_or_else(|| AddrError::ipv4(ip))?
            .to_string(),
    };
    let port_glob = if has_wildcard(port) {
        String::from_utf8_lossy(port).into_owned()
    } else {
        parse_port(port)
            .ok_or_else(|| AddrError::port(port))?
            .to_string()
    };
    Ok(ClientPattern {
        text: String::from_utf8_lossy(text).into_owned(),
        ip: ip_glob,
        port: port_glob,
    })
}

/// The character sets of SPEC.md §4.3; `Err` says what is wrong.
fn check_pattern_chars(ip: &[u8], port: &[u8], v6: bool) -> Result<(), &'static str> {
    let wild = |b: u8| b == b'*' || b == b'?';
    if ip.is_empty() {
        return Err("empty IP part");
    }
    if port.is_empty() {
        return Err("empty port part");
    }
    if v6 {
        let ok = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.' || wild(b);
        if !ip.iter().all(|&b| ok(b)) {
            return Err("IPv6 part allows only hex digits and : . * ?");
        }
    } else if !ip
        .iter()
        .all(|&b| b.is_ascii_digit() || b == b'.' || wild(b))
    {
        return Err("IP part allows only 0-9 . * ?");
    }
    if !port.iter().all(|&b| b.is_ascii_digit() || wild(b)) {
        return Err("port part allows only 0-9 * ?");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, parse as parse_labeled};
    use super::*;

    fn ok(src: &str) -> Config {
        parse_labeled("t.conf", src.as_bytes())
            .unwrap_or_else(|e| panic!("{src:?} should parse, got: {e}"))
    }

    fn err(src: &[u8]) -> ConfigError {
        match parse_labeled("t.conf", src) {
            Ok(c) => panic!(
                "{:?} should be rejected, parsed {c:?}",
                String::from_utf8_lossy(src)
            ),
            Err(e) => e,
        }
    }

    fn lim(max_connections: u32, max_ip: u32, max_connections_per_ip: u32) -> Limits {
        Limits {
            max_connections,
            max_ip,
            max_connections_per_ip,
        }
    }

    /// Every rejection class with its exact diagnostic (file label `t.conf`).
    #[test]
    fn rejections_table() {
        let long = "a".repeat(65);
        let long_msg = format!(
            "t.conf:1:3: error: token longer than 64 bytes '{}'",
            "a".repeat(64)
        );
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            // Lexical.
            ("x G - ; /* x", "1:9: error: unterminated comment (no closing '*/')"),
            ("/*/", "1:1: error: unterminated comment (no closing '*/')"),
            (&format!("a {long} G - ;"), &long_msg["t.conf:".len()..]),
            // Statements.
            (";", "1:1: error: expected rule id or '(', found ';'"),
            ("- G - ;", "1:1: error: expected rule id or '(', found '-'"),
            ("> G - ;", "1:1: error: expected rule id or '(', found '>'"),
            (")", "1:1: error: expected rule id or '(', found ')'"),
            ("a G - ; ;", "1:9: error: expected rule id or '(', found ';'"),
            // Global blocks.
            ("(timeout=5)", "1:12: error: expected ';', found end of file"),
            ("(timeout=5) x", "1:13: error: expected ';', found 'x'"),
            ("(timeout=5", "1:11: error: expected ',' or ')', found end of file"),
            ("(timeout=5 max_ip=1);", "1:12: error: expected ',' or ')', found 'max_ip'"),
            ("(timeout 5);", "1:10: error: expected '=', found '5'"),
            ("(timeout=);", "1:10: error: expected attribute value, found ')'"),
            ("(timeout==5);", "1:10: error: expected attribute value, found '='"),
            ("(=5);", "1:2: error: expected attribute name or ')', found '='"),
            ("(,);", "1:2: error: expected attribute name or ')', found ','"),
            ("(timeout=5,,);", "1:12: error: expected attribute name or ')', found ','"),
            ("(", "1:2: error: expected attribute name or ')', found end of file"),
            ("(foo=1);", "1:2: error: unknown attribute 'foo'"),
            ("(max_connection=1);", "1:2: error: unknown attribute 'max_connection'"),
            ("(Timeout=1);", "1:2: error: unknown attribute 'Timeout'"),
            ("(heartbeat=1);", "1:2: error: attribute 'heartbeat' not allowed in the global block"),
            // Values.
            ("(timeout=5x);", "1:10: error: invalid value '5x' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=-5);", "1:10: error: invalid value '-5' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=+5);", "1:10: error: invalid value '+5' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=5k);", "1:10: error: invalid value '5k' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=5ms);", "1:10: error: invalid value '5ms' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=s);", "1:10: error: invalid value 's' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=0x10);", "1:10: error: invalid value '0x10' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=1.5);", "1:10: error: invalid value '1.5' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(timeout=-);", "1:10: error: invalid value '-' for 'timeout' (digits with optional suffix s, m or h)"),
            ("(max_ip=5s);", "1:9: error: invalid value '5s' for 'max_ip' (digits with optional suffix k or m)"),
            ("(max_ip=5h);", "1:9: error: invalid value '5h' for 'max_ip' (digits with optional suffix k or m)"),
            ("(max_ip=k);", "1:9: error: invalid value 'k' for 'max_ip' (digits with optional suffix k or m)"),
            ("(timeout=4294967296);", "1:10: error: value '4294967296' for 'timeout' exceeds 4294967295 seconds"),
            ("(moratorium=1193047h);", "1:13: error: value '1193047h' for 'moratorium' exceeds 4294967295 seconds"),
            ("(timeout=71582789m);", "1:10: error: value '71582789m' for 'timeout' exceeds 4294967295 seconds"),
            ("(max_ip=4294968k);", "1:9: error: value '4294968k' for 'max_ip' exceeds 4294967295"),
            ("(max_ip=4295m);", "1:9: error: value '4295m' for 'max_ip' exceeds 4294967295"),
            ("(max_ip=99999999999999999999999);", "1:9: error: value '99999999999999999999999' for 'max_ip' exceeds 4294967295"),
            // Rule structure.
            ("r1", "1:3: error: expected algorithm (G, MS, RR, LC, RT, RD or HS), found end of file"),
            ("r1 rr *:* - ;", "1:4: error: expected algorithm (G, MS, RR, LC, RT, RD or HS), found 'rr'"),
            ("r1 (max_ip=1) RR", "1:4: error: expected algorithm (G, MS, RR, LC, RT, RD or HS), found '('"),
            ("r1 RR *:*", "1:10: error: expected client pattern, '(' or '-', found end of file"),
            ("r1 RR *:* ;", "1:11: error: expected client pattern, '(' or '-', found ';'"),
            ("r1 RR *:* > 1.1.1.1:1 ;", "1:11: error: expected client pattern, '(' or '-', found '>'"),
            ("r1 RR foo - ;", "1:7: error: expected client pattern, '(' or '-', found 'foo'"),
            ("r1 RR *:* 1.1.1.1:80 > 2.2.2.2:80 ;", "1:22: error: expected client pattern, '(' or '-', found '>'"),
            ("r1 RR *:* - 1.2.3.4:80 ;", "1:24: error: expected listen address, '(' or '>', found ';'"),
            ("r1 RR *:* - - ;", "1:13: error: expected listen address, '(' or '>', found '-'"),
            ("r1 RR *:* - localhost > ;", "1:13: error: expected listen address, '(' or '>', found 'localhost'"),
            ("r1 G *:* - 1.2.3.4:80", "1:22: error: expected listen address, '(', '>' or ';', found end of file"),
            ("r1 RR *:* - 1.2.3.4:80 > 1.2.3.5:80", "1:36: error: expected server address, '(' or ';', found end of file"),
            ("r1 RR *:* - 1.2.3.4:80 > 1.2.3.5:80\nr2 G - ;", "2:1: error: expected server address, '(' or ';', found 'r2'"),
            ("r1 RR *:* - 1.2.3.4:80 > 1.2.3.5:80 > ;", "1:37: error: expected server address, '(' or ';', found '>'"),
            ("r1 RR *:* - 1.2.3.4:80 > 1.2.3.5:80 - ;", "1:37: error: expected server address, '(' or ';', found '-'"),
            ("r1 RR *:* (max_ip=1 - 1.2.3.4:80 > ;", "1:21: error: expected ',' or ')', found '-'"),
            ("r1 RR *:* - 1.2.3.4:80 > 1.2.3.5:80 (heartbeat=1", "1:49: error: expected ',' or ')', found end of file"),
            // Attributes at unmarked positions.
            ("r1 RR (timeout=5) *:* - ;", "1:8: error: attribute 'timeout' not allowed in the client list"),
            ("r1 RR *:* (heartbeat=5) - ;", "1:12: error: attribute 'heartbeat' not allowed in the client list"),
            ("r1 RR *:* (moratorium=5) - ;", "1:12: error: attribute 'moratorium' not allowed in the client list"),
            ("r1 RR *:* (connect_timeout=5) - ;", "1:12: error: attribute 'connect_timeout' not allowed in the client list"),
            ("r1 RR *:* - (max_ip=1) > ;", "1:14: error: attribute 'max_ip' not allowed in the listen list"),
            ("r1 RR *:* - 1.1.1.1:1 (heartbeat=1) > ;", "1:24: error: attribute 'heartbeat' not allowed in the listen list"),
            ("r1 RR *:* - 1.1.1.1:1 (max_connections_per_ip=1) > ;", "1:24: error: attribute 'max_connections_per_ip' not allowed in the listen list"),
            ("r1 RR *:* - > (timeout=5) 1.1.1.1:1 ;", "1:16: error: attribute 'timeout' not allowed in the server list"),
            ("r1 RR *:* - > 1.1.1.1:1 (moratorium=5) ;", "1:26: error: attribute 'moratorium' not allowed in the server list"),
            ("r1 RR *:* - > (bogus=5) ;", "1:16: error: unknown attribute 'bogus'"),
            // Duplicates.
            ("r1 G - ;\nr1 G - ;", "2:1: error: duplicate rule id 'r1' (first at 1:1)"),
            ("a G - 127.0.0.1:80 ;\nb RR - 1.2.3.4:1 127.0.0.1:80 > ;", "2:18: error: duplicate listen address 127.0.0.1:80 (first at 1:7)"),
            ("a G - 127.0.0.1:80 127.0.0.1:80 ;", "1:20: error: duplicate listen address 127.0.0.1:80 (first at 1:7)"),
            ("a G - [::1]:80 [0::1]:080 ;", "1:16: error: duplicate listen address [::1]:80 (first at 1:7)"),
            // Listen and server addresses.
            ("a G - 127.0.0.1:83601 ;", "1:7: error: invalid port '83601' (1..65535)"),
            ("a G - 127.0.0.1:0 ;", "1:7: error: invalid port '0' (1..65535)"),
            ("a G - 127.0.0.1:65536 ;", "1:7: error: invalid port '65536' (1..65535)"),
            ("a G - 127.0.0.1:80abc ;", "1:7: error: invalid port '80abc' (1..65535)"),
            ("a G - 127.0.0.1:+80 ;", "1:7: error: invalid port '+80' (1..65535)"),
            ("a G - 127.0.0.1: ;", "1:7: error: invalid port '' (1..65535)"),
            ("a G - 127.0.0.1:99999999999999999999999 ;", "1:7: error: invalid port '99999999999999999999999' (1..65535)"),
            ("a G - 127.0.0.256:80 ;", "1:7: error: invalid IPv4 address '127.0.0.256'"),
            ("a G - 01.2.3.4:80 ;", "1:7: error: invalid IPv4 address '01.2.3.4'"),
            ("a G - 1.2.3:80 ;", "1:7: error: invalid IPv4 address '1.2.3'"),
            ("a G - 1.2.3.4.5:80 ;", "1:7: error: invalid IPv4 address '1.2.3.4.5'"),
            ("a G - 1..3.4:80 ;", "1:7: error: invalid IPv4 address '1..3.4'"),
            ("a G - localhost:80 ;", "1:7: error: invalid IPv4 address 'localhost'"),
            ("a G - :80 ;", "1:7: error: invalid IPv4 address ''"),
            ("a G - [fe80::1%eth0]:80 ;", "1:7: error: invalid IPv6 address 'fe80::1%eth0'"),
            ("a G - [1.2.3.4]:80 ;", "1:7: error: invalid IPv6 address '1.2.3.4'"),
            ("a G - [::1]80 ;", "1:7: error: invalid listen address '[::1]80' (expected [IPV6]:PORT)"),
            ("a G - [::1 ;", "1:7: error: invalid listen address '[::1' (expected [IPV6]:PORT)"),
            ("a G - ::1:80 ;", "1:7: error: invalid listen address '::1:80' (IPv6 must be written [IPV6]:PORT)"),
            ("a G - [::1]:0 ;", "1:7: error: invalid port '0' (1..65535)"),
            ("a G - 127.0.0.*:80 ;", "1:7: error: wildcards not allowed in a listen address '127.0.0.*:80'"),
            ("a G - [::?]:80 ;", "1:7: error: wildcards not allowed in a listen address '[::?]:80'"),
            ("a RR - > 1.2.3.4:* ;", "1:10: error: wildcards not allowed in a server address '1.2.3.4:*'"),
            ("a RR - > 1.2.3.4:70000 ;", "1:10: error: invalid port '70000' (1..65535)"),
            ("a RR - > 1.2.3.4.5:7 ;", "1:10: error: invalid IPv4 address '1.2.3.4.5'"),
            ("a RR - > [::g]:7 ;", "1:10: error: invalid IPv6 address '::g'"),
            ("a RR - > 1::2:7 ;", "1:10: error: invalid server address '1::2:7' (IPv6 must be written [IPV6]:PORT)"),
            // Client patterns.
            ("a G 127.0.0.256:* - ;", "1:5: error: invalid IPv4 address '127.0.0.256'"),
            ("a G 127.0.0.01:* - ;", "1:5: error: invalid IPv4 address '127.0.0.01'"),
            ("a G *:0 - ;", "1:5: error: invalid port '0' (1..65535)"),
            ("a G *:65536 - ;", "1:5: error: invalid port '65536' (1..65535)"),
            ("a G *: - ;", "1:5: error: invalid client pattern '*:' (empty port part)"),
            ("a G :* - ;", "1:5: error: invalid client pattern ':*' (empty IP part)"),
            ("a G a.b.c.d:* - ;", "1:5: error: invalid client pattern 'a.b.c.d:*' (IP part allows only 0-9 . * ?)"),
            ("a G *:8x - ;", "1:5: error: invalid client pattern '*:8x' (port part allows only 0-9 * ?)"),
            ("a G *:~ - ;", "1:5: error: invalid client pattern '*:~' (port part allows only 0-9 * ?)"),
            ("a G fe80::1:* - ;", "1:5: error: invalid client pattern 'fe80::1:*' (IPv6 patterns must be written [IP6PAT]:PORTPAT)"),
            ("a G [fe80::g]:* - ;", "1:5: error: invalid client pattern '[fe80::g]:*' (IPv6 part allows only hex digits and : . * ?)"),
            ("a G [fe80::1] - ;", "1:5: error: invalid client pattern '[fe80::1]' (expected [IP6PAT]:PORTPAT)"),
            ("a G []:* - ;", "1:5: error: invalid client pattern '[]:*' (empty IP part)"),
            ("a G [::1]: - ;", "1:5: error: invalid client pattern '[::1]:' (empty port part)"),
            ("a G [fe80:::1]:* - ;", "1:5: error: invalid IPv6 address 'fe80:::1'"),
            ("a G [::1]:080x - ;", "1:5: error: invalid client pattern '[::1]:080x' (port part allows only 0-9 * ?)"),
        ];
        for (src, want) in cases {
            let got = err(src.as_bytes()).to_string();
            assert_eq!(got, format!("t.conf:{want}"), "input {src:?}");
        }
    }

    #[test]
    fn error_exposes_position_and_kind() {
        let e = err(b"a G - ;\n  a G - ;");
        assert_eq!((e.line(), e.col()), (Some(2), Some(3)));
        assert_eq!(
            e.kind(),
            Some(&ErrorKind::DuplicateRuleId {
                id: "a".into(),
                first: Pos { line: 1, col: 1 }
            })
        );
    }

    #[test]
    fn first_error_in_file_order_wins() {
        // The bad port comes before the unterminated comment and is reported.
        assert_eq!(err(b"a G - 1.1.1.1:0 ; /*").col(), Some(7));
        // The unterminated comment comes first here.
        assert_eq!(err(b"/* a G - 1.1.1.1:0 ;").col(), Some(1));
    }

    #[test]
    fn odd_bytes_in_diagnostics_stay_on_one_line() {
        let e = err(b"a \x01\xff G - ;").to_string();
        assert_eq!(
            e,
            "t.conf:1:3: error: expected algorithm (G, MS, RR, LC, RT, RD or HS), found '\\x01\u{fffd}'"
        );
    }

    #[test]
    fn grammar_elements() {
        let c = ok("// comment
            ( ) ;
            (timeout=5,) ;
            admin G 127.0.0.1:* - 127.0.0.1:8600 ;
            r1 MS *:* - 0.0.0.0:80 > 10.0.0.1:80 10.0.0.1:80 ;
            r2 RR ( ) *:* ( ) - ( ) 0.0.0.0:81 ( ) > ( ) 10.0.0.1:81 ( ) ;
            r3 LC *:* - 0.0.0.0:82 > ;
            r4 RT *:* - 0.0.0.0:83 > 10.0.0.1:1;r5 RD *:* - 0.0.0.0:84 > 10.0.0.1:1 ;
            r6 HS *:*/*x*/-/*y*/0.0.0.0:85/*z*/> 10.0.0.1:1;
            g2 G *:* - [::1]:8600 > 10.0.0.9:1 ;
            g3 G - ;");
        let algs: Vec<_> = c.rules.iter().map(|r| r.alg.as_str()).collect();
        assert_eq!(algs, ["G", "MS", "RR", "LC", "RT", "RD", "HS", "G", "G"]);
        let ids: Vec<_> = c.rules.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["admin", "r1", "r2", "r3", "r4", "r5", "r6", "g2", "g3"]
        );
        // An address may repeat within a server list: separate entries.
        assert_eq!(c.rules[1].servers.len(), 2);
        assert_eq!(c.rules[7].servers[0].addr, "10.0.0.9:1".parse().unwrap());
        assert_eq!(c.rules[0].pos, Pos { line: 4, col: 13 });
        assert_eq!(c.rules[1].listens[0].pos, Pos { line: 5, col: 25 });
        // A G rule's clients, listens and positions.
        assert_eq!(c.rules[0].clients[0].pattern.text, "127.0.0.1:*");
        assert_eq!(
            c.rules[0].listens[0].addr,
            "127.0.0.1:8600".parse().unwrap()
        );
        assert_eq!(c.listen_count(), 8);
        // Only r3 (a non-G rule without servers) and g3 (no clients) warn.
        let w: Vec<_> = c
            .warnings
            .iter()
            .map(|w| (w.pos.line, w.message.as_str()))
            .collect();
        assert_eq!(
            w,
            [
                (7, "rule 'r3' has no servers: its clients are refused"),
                (
                    11,
                    "rule 'g3' has no client patterns: its clients are refused"
                ),
            ]
        );
    }

    #[test]
    fn spaced_original_style() {
        let c = ok("( moratorium = 60 , timeout = 60 , max_ip = 1 , ) ;
            my_rule9_id RR
                ( max_connections = 100 )
                192.168.0.1:* ( max_connections = 10 )
                192.168.0.*:* ( max_connections = 1 )
                -
                ( timeout = 60 )
                192.168.0.50:8080 ( timeout = 10 )
                192.168.0.50:8081
                >
                ( max_connections = 100 , heartbeat = 60 )
                192.168.0.101:80 ( max_connections = 20 )
                192.168.0.105:80 ( heartbeat = 30 )
                ;");
        let r = &c.rules[0];
        assert_eq!(c.moratorium, 60);
        assert_eq!(r.clients[0].limits, lim(10, 1, 0));
        assert_eq!(r.clients[1].limits, lim(1, 1, 0));
        let l: Vec<_> = r.listens.iter().map(|l| l.timeout).collect();
        assert_eq!(l, [10, 60]);
        let s: Vec<_> = r.servers.iter().map(|s| (s.heartbeat, s.limits)).collect();
        assert_eq!(s, [(60, lim(20, 0, 0)), (30, lim(100, 0, 0))]);
    }

    #[test]
    fn units() {
        let time = [
            ("0", 0),
            ("5", 5),
            ("007", 7),
            ("5s", 5),
            ("5S", 5),
            ("2m", 120),
            ("2M", 120),
            ("1h", 3600),
            ("3H", 10800),
            ("4294967295", u32::MAX),
            ("4294967295s", u32::MAX),
            ("1193046h", 1_193_046 * 3600),
        ];
        for (text, want) in time {
            assert_eq!(
                parse_value(Attr::Timeout, text.as_bytes()),
                Ok(want),
                "{text}"
            );
        }
        let count = [
            ("0", 0),
            ("3k", 3000),
            ("3K", 3000),
            ("2m", 2_000_000),
            ("2M", 2_000_000),
            ("4294967k", 4_294_967_000),
            ("4294m", 4_294_000_000),
            ("4294967295", u32::MAX),
        ];
        for (text, want) in count {
            assert_eq!(
                parse_value(Attr::MaxIp, text.as_bytes()),
                Ok(want),
                "{text}"
            );
        }
        // Units reach the model, in seconds.
        let c = ok(
            "(moratorium=2m); r RR *:* - 1.1.1.1:1 (timeout=1h, connect_timeout=90s)
                    > (heartbeat=1M) 2.2.2.2:2 (max_connections=2k) ;",
        );
        assert_eq!(c.moratorium, 120);
        assert_eq!(
            (
                c.rules[0].listens[0].timeout,
                c.rules[0].listens[0].connect_timeout
            ),
            (3600, 90)
        );
        assert_eq!(c.rules[0].servers[0].heartbeat, 60);
        assert_eq!(c.rules[0].servers[0].limits.max_connections, 2000);
    }

    #[test]
    fn client_inheritance_global_list_address() {
        let c = ok("(max_ip=3, max_connections=10);
            r RR *:* 1.*:* (max_ip=1) 2.*:* (max_ip=0) - 1.1.1.1:1 > 2.2.2.2:2 ;");
        let l: Vec<_> = c.rules[0].clients.iter().map(|c| c.limits).collect();
        // Explicit 0 overrides the inherited value.
        assert_eq!(l, [lim(10, 3, 0), lim(10, 1, 0), lim(10, 0, 0)]);
        // Global max_* never reach servers.
        assert_eq!(c.rules[0].servers[0].limits, Limits::default());

        let c =
            ok("(max_ip=3); r RR (max_ip=2, max_connections_per_ip=4) *:* *:1 (max_ip=0) - > ;");
        let l: Vec<_> = c.rules[0].clients.iter().map(|c| c.limits).collect();
        assert_eq!(l, [lim(0, 2, 4), lim(0, 0, 4)]);
    }

    #[test]
    fn later_blocks_win() {
        let c = ok("r RR (max_ip=1) (max_ip=2, max_connections=7)
                    *:* (max_ip=5)(max_ip=6, max_connections_per_ip=5) ( ) (max_ip=3,)
                    - (timeout=1) (timeout=2) 1.1.1.1:1 (timeout=3) (timeout=4) > ;");
        assert_eq!(c.rules[0].clients[0].limits, lim(7, 3, 5));
        assert_eq!(c.rules[0].listens[0].timeout, 4);
        let c = ok("r RR *:* - (timeout=1) (timeout=2) 1.1.1.1:1 > ;");
        assert_eq!(c.rules[0].listens[0].timeout, 2);
        // Same attribute twice in one block: the later one.
        let c = ok("(timeout=1, timeout=9); r RR *:* - 1.1.1.1:1 > ;");
        assert_eq!(c.rules[0].listens[0].timeout, 9);
    }

    #[test]
    fn global_affects_only_later_rules() {
        let c = ok("a RR *:* - 1.1.1.1:1 > ;
            (timeout=9, max_ip=4, connect_timeout=8);
            b RR *:* - 1.1.1.1:2 > ;
            (timeout=3);
            c RR *:* - 1.1.1.1:3 > ;");
        let got: Vec<_> = c
            .rules
            .iter()
            .map(|r| {
                (
                    r.listens[0].timeout,
                    r.listens[0].connect_timeout,
                    r.clients[0].limits.max_ip,
                )
            })
            .collect();
        // A later global changes only what it sets; the rest stays in force.
        assert_eq!(got, [(0, 5, 0), (9, 8, 4), (3, 8, 4)]);
    }

    #[test]
    fn moratorium_is_process_wide_last_wins() {
        let c = ok("(moratorium=5); r RR *:* - > ; (moratorium=1m); (timeout=1);");
        assert_eq!(c.moratorium, 60);
        assert_eq!(ok("r G - ;").moratorium, 0);
        assert_eq!(ok("(moratorium=5);(moratorium=0);").moratorium, 0);
    }

    #[test]
    fn listen_inheritance() {
        let c = ok("(connect_timeout=7);
            r RR *:* - (timeout=10) 1.1.1.1:1 1.1.1.1:2 (timeout=0, connect_timeout=0)
                 1.1.1.1:3 (connect_timeout=1m) > ;
            s RR *:* - 1.1.1.1:4 > ;");
        let got: Vec<_> = c
            .rules
            .iter()
            .flat_map(|r| r.listens.iter().map(|l| (l.timeout, l.connect_timeout)))
            .collect();
        assert_eq!(got, [(10, 7), (0, 0), (10, 60), (0, 7)]);
        assert_eq!(
            ok("r G - 1.1.1.1:1 ;").rules[0].listens[0].connect_timeout,
            DEFAULT_CONNECT_TIMEOUT_SECS
        );
    }

    #[test]
    fn server_inheritance() {
        let c = ok("(connect_timeout=7, max_connections=9);
            r RR *:* - 1.1.1.1:1 (connect_timeout=4)
              > (heartbeat=30, max_connections=100)
                2.2.2.2:1 (max_connections=20)
                2.2.2.2:2 (heartbeat=0)
                2.2.2.2:3 (connect_timeout=2) ;
            s RR *:* - 1.1.1.1:2 > (connect_timeout=3) 2.2.2.2:4 2.2.2.2:5 (connect_timeout=0) ;");
        let got: Vec<_> = c
            .rules
            .iter()
            .flat_map(|r| {
                r.servers
                    .iter()
                    .map(|s| (s.heartbeat, s.limits.max_connections, s.connect_timeout))
            })
            .collect();
        assert_eq!(
            got,
            [
                (30, 20, None),
                (0, 100, None),
                (30, 100, Some(2)),
                (0, 0, Some(3)),
                (0, 0, Some(0))
            ]
        );
        // No server-side value: the listener's connect timeout applies.
        let r = &c.rules[0];
        assert_eq!(r.servers[0].connect_timeout_via(&r.listens[0]), 4);
        assert_eq!(r.servers[2].connect_timeout_via(&r.listens[0]), 2);
    }

    #[test]
    fn ipv6_addresses() {
        let c =
            ok("r RR [::1]:* - [::]:8080 [2001:DB8:0::1]:80 > [fe80::1]:81 [::ffff:10.0.0.1]:82 ;");
        let r = &c.rules[0];
        assert_eq!(r.listens[0].addr, "[::]:8080".parse().unwrap());
        assert_eq!(r.listens[1].addr.to_string(), "[2001:db8::1]:80");
        assert_eq!(r.servers[0].addr, "[fe80::1]:81".parse().unwrap());
        assert_eq!(r.servers[1].addr.to_string(), "[::ffff:10.0.0.1]:82");
    }

    #[test]
    fn client_patterns_and_matching() {
        let c = ok("r RR 127.0.0.?:1* [FE80::*]:* [0:0::1]:80 10.*:* *:* (max_ip=1) - > ;");
        let r = &c.rules[0];
        let texts: Vec<_> = r.clients.iter().map(|c| c.pattern.text.as_str()).collect();
        // Kept exactly as written.
        assert_eq!(
            texts,
            [
                "127.0.0.?:1*",
                "[FE80::*]:*",
                "[0:0::1]:80",
                "10.*:*",
                "*:*"
            ]
        );
        let m = |s: &str| r.match_client(s.parse().unwrap());
        assert_eq!(m("127.0.0.5:1234"), Some(0));
        assert_eq!(m("127.0.0.5:1"), Some(0));
        assert_eq!(m("127.0.0.10:1234"), Some(4));
        assert_eq!(m("127.0.0.5:2000"), Some(4));
        assert_eq!(m("[fe80::abcd]:5"), Some(1));
        assert_eq!(m("[::1]:80"), Some(2));
        assert_eq!(m("[::1]:81"), Some(4));
        assert_eq!(m("10.1.2.3:9"), Some(3));
        assert_eq!(m("[2001:db8::1]:9"), Some(4));

        let c = ok("r RR 127.0.0.1:8? [::1]:* - > ;");
        let m = |s: &str| c.rules[0].match_client(s.parse().unwrap());
        assert_eq!(m("127.0.0.1:80"), Some(0));
        assert_eq!(m("127.0.0.1:8"), None);
        assert_eq!(m("127.0.0.1:800"), None);
        assert_eq!(m("127.0.0.2:80"), None);
        assert_eq!(m("[::2]:80"), None);
        assert_eq!(m("[::1]:65535"), Some(1));
        // An IPv4 pattern never matches an IPv6 client's text.
        let c = ok("r RR 1.2.3.4:* - > ;");
        assert_eq!(
            c.rules[0].match_client("[::ffff:1.2.3.4]:1".parse().unwrap()),
            None
        );
        // Wildcard parts are not validated beyond their character set (SPEC.md §4.3).
        assert!(parse_client_pattern(b"1..*:*").is_ok());
        // A wildcard-free port is stored canonically.
        assert_eq!(
            parse_client_pattern(b"*:080").map(|p| p.port),
            Ok("80".to_string())
        );
    }

    #[test]
    fn ids_are_case_sensitive_any_word() {
        let c = ok("R G - ; r G - ; RR RR - > ; x/y G - ;");
        assert_eq!(c.rules.len(), 4);
        assert_eq!(c.rules[3].id, "x/y");
    }
}
