//! Configuration diagnostics (SPEC.md §4.5): one line each, `<file>:<line>:<col>: error: …`.

use std::fmt;

use thiserror::Error;

use super::model::Pos;

/// Longest token the language accepts, and the most of a token a diagnostic quotes.
pub const MAX_TOKEN_LEN: usize = 64;

/// A configuration that cannot be loaded. `Display` is the exact diagnostic line, without a
/// trailing newline.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{file}: error: cannot open: {reason}")]
    Open { file: String, reason: String },
    #[error("{file}:{pos}: error: {kind}")]
    At {
        file: String,
        pos: Pos,
        kind: ErrorKind,
    },
}

impl ConfigError {
    /// Position of the offending token; `None` for file-level errors.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            Self::Open { .. } => None,
            Self::At { pos, .. } => Some(*pos),
        }
    }

    pub fn line(&self) -> Option<u32> {
        self.pos().map(|p| p.line)
    }

    pub fn col(&self) -> Option<u32> {
        self.pos().map(|p| p.col)
    }

    /// What went wrong at `pos()`; `None` for file-level errors.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            Self::Open { .. } => None,
            Self::At { kind, .. } => Some(kind),
        }
    }
}

/// What a diagnostic says after `error: `. Token texts are stored already quoted-safe
/// (see [`show_token`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ErrorKind {
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: Found,
    },
    #[error("token longer than {MAX_TOKEN_LEN} bytes '{token}'")]
    TokenTooLong { token: String },
    #[error("unterminated comment (no closing '*/')")]
    UnterminatedComment,
    #[error("duplicate rule id '{id}' (first at {first})")]
    DuplicateRuleId { id: String, first: Pos },
    #[error("duplicate listen address {addr} (first at {first})")]
    DuplicateListen { addr: String, first: Pos },
    #[error("unknown attribute '{name}'")]
    UnknownAttribute { name: String },
    #[error("attribute '{name}' not allowed in the {place}")]
    AttributeNotAllowed { name: &'static str, place: Place },
    #[error("invalid value '{value}' for '{name}' ({})", unit.hint())]
    InvalidValue {
        name: &'static str,
        value: String,
        unit: Unit,
    },
    #[error("value '{value}' for '{name}' exceeds 4294967295{}", unit.out_of_range_suffix())]
    ValueOutOfRange {
        name: &'static str,
        value: String,
        unit: Unit,
    },
    #[error("invalid port '{port}' (1..65535)")]
    InvalidPort { port: String },
    #[error("invalid IPv4 address '{ip}'")]
    InvalidIpv4 { ip: String },
    #[error("invalid IPv6 address '{ip}'")]
    InvalidIpv6 { ip: String },
    #[error("invalid {list} address '{token}' ({reason})")]
    InvalidAddress {
        list: AddrList,
        token: String,
        reason: &'static str,
    },
    #[error("wildcards not allowed in a {list} address '{token}'")]
    WildcardInAddress { list: AddrList, token: String },
    #[error("invalid client pattern '{token}' ({reason})")]
    InvalidClientPattern { token: String, reason: &'static str },
}

/// The token a diagnostic reports: quoted text, or the end of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Token(String),
    EndOfFile,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(t) => write!(f, "'{t}'"),
            Self::EndOfFile => f.write_str("end of file"),
        }
    }
}

/// Where an attribute block stands (SPEC.md §4.4 columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Global,
    ClientList,
    ListenList,
    ServerList,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Global => "global block",
            Self::ClientList => "client list",
            Self::ListenList => "listen list",
            Self::ServerList => "server list",
        })
    }
}

/// Which address list an address belongs to (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrList {
    Listen,
    Server,
}

impl fmt::Display for AddrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Listen => "listen",
            Self::Server => "server",
        })
    }
}

/// The unit class of an attribute value (SPEC.md §4.4 "Values").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Time,
    Count,
}

impl Unit {
    fn hint(self) -> &'static str {
        match self {
            Self::Time => "digits with optional suffix s, m or h",
            Self::Count => "digits with optional suffix k or m",
        }
    }

    fn out_of_range_suffix(self) -> &'static str {
        match self {
            Self::Time => " seconds",
            Self::Count => "",
        }
    }
}

/// Renders raw token bytes for a diagnostic: at most [`MAX_TOKEN_LEN`] bytes, invalid UTF-8 as
/// U+FFFD, control characters as `\xNN` so the diagnostic stays one printable line.
pub fn show_token(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_TOKEN_LEN)];
    let mut out = String::with_capacity(cut.len());
    for c in String::from_utf8_lossy(cut).chars() {
        if c.is_control() {
            // Control characters (Cc) all lie below U+0100: two hex digits suffice.
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(kind: ErrorKind) -> String {
        ConfigError::At {
            file: "f.conf".into(),
            pos: Pos { line: 3, col: 7 },
            kind,
        }
        .to_string()
    }

    #[test]
    fn expected_formats() {
        assert_eq!(
            at(ErrorKind::Expected {
                expected: "';'",
                found: Found::Token("x".into())
            }),
            "f.conf:3:7: error: expected ';', found 'x'"
        );
        assert_eq!(
            at(ErrorKind::Expected {
                expected: "';'",
                found: Found::EndOfFile
            }),
            "f.conf:3:7: error: expected ';', found end of file"
        );
    }

    #[test]
    fn open_format_and_accessors() {
        let e = ConfigError::Open {
            file: "x.conf".into(),
            reason: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(
            e.to_string(),
            "x.conf: error: cannot open: No such file or directory (os error 2)"
        );
        assert_eq!(
            (e.pos(), e.line(), e.col(), e.kind()),
            (None, None, None, None)
        );
    }

    #[test]
    fn other_formats() {
        assert_eq!(
            at(ErrorKind::DuplicateRuleId {
                id: "r1".into(),
                first: Pos { line: 2, col: 1 }
            }),
            "f.conf:3:7: error: duplicate rule id 'r1' (first at 2:1)"
        );
        assert_eq!(
            at(ErrorKind::InvalidPort {
                port: "83601".into()
            }),
            "f.conf:3:7: error: invalid port '83601' (1..65535)"
        );
        assert_eq!(
            at(ErrorKind::ValueOutOfRange {
                name: "timeout",
                value: "5000000h".into(),
                unit: Unit::Time
            }),
            "f.conf:3:7: error: value '5000000h' for 'timeout' exceeds 4294967295 seconds"
        );
    }

    #[test]
    fn show_token_truncates_and_escapes() {
        assert_eq!(show_token(b"abc"), "abc");
        assert_eq!(show_token(&[b'a'; 100]).len(), MAX_TOKEN_LEN);
        assert_eq!(show_token(b"a\x01b\x7f"), "a\\x01b\\x7f");
        assert_eq!(show_token(b"a\xffb"), "a\u{fffd}b");
        // Cutting inside a multi-byte character yields U+FFFD, never a panic.
        let mut s = vec![b'a'; 63];
        s.extend_from_slice("é".as_bytes());
        assert_eq!(show_token(&s), format!("{}\u{fffd}", "a".repeat(63)));
    }
}
