//! Admin command parsing and the replies that need no runtime state (SPEC.md §9.2).
//!
//! Tokens are split on spaces and TABs (only those two bytes); commands are case-sensitive;
//! surplus tokens are ignored.

use std::net::{IpAddr, Ipv6Addr};

/// The `?` reply: five help lines.
const HELP: &str = "show (rules|sessions|stats) [json]\n\
                    disable (ip) (port) [disable_timeout]\n\
                    enable (ip) (port) [enable_timeout]\n\
                    heartbeat (ip) (port)\n\
                    quit\n";

/// The extension commands' help lines [ext], which the server appends to the `?` reply after
/// SPEC's five lines (README "Admin port").
const HELP_EXT: &str = "block (ip) [block_timeout]\n\
                        unblock (ip)\n\
                        show blocked [json]\n";

/// The reply to `show` alone or with an unknown word (as the original, without `stats`).
const SHOW_USAGE: &str = "USAGE : show (rules|sessions)\n";

/// Verb of `disable` match lines (sic, as the original protocol).
pub const VERB_DISABLE: &str = "unabled";
/// Verb of `enable` match lines.
pub const VERB_ENABLE: &str = "enabled";
/// Verb of `heartbeat` match lines.
pub const VERB_HEARTBEAT: &str = "heartbeat";

/// What `show` displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShowWhat {
    Rules,
    Sessions,
    Stats,
}

/// A server command whose arguments were missing or malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageOf {
    Disable,
    Enable,
    Heartbeat,
    /// `block` [ext]
    Block,
    /// `unblock` [ext]
    Unblock,
}

/// One parsed admin line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Empty line, or only spaces/TABs: no reply.
    Empty,
    /// `?`
    Help,
    /// `quit`: no reply, the connection is closed.
    Quit,
    /// `show rules|sessions|stats [json]`
    Show { what: ShowWhat, json: bool },
    /// `show` alone or with another word.
    ShowUsage,
    /// `disable IP PORT [T]`; `secs` is `None` when `T` is omitted or 0.
    Disable {
        ip: IpAddr,
        port: u16,
        secs: Option<u32>,
    },
    /// `enable IP PORT [T]`; `secs` is `None` when `T` is omitted or 0.
    Enable {
        ip: IpAddr,
        port: u16,
        secs: Option<u32>,
    },
    /// `heartbeat IP PORT`
    Heartbeat { ip: IpAddr, port: u16 },
    /// `block IP [T]` [ext]: refuse clients from IP, for T seconds (`None`: until unblocked).
    Block { ip: IpAddr, secs: Option<u32> },
    /// `unblock IP` [ext]
    Unblock { ip: IpAddr },
    /// `show blocked [json]` [ext]
    ShowBlocked { json: bool },
    /// A command with missing or malformed arguments; nothing changes.
    Usage(UsageOf),
    /// Anything else; holds the first token as received.
    Invalid(Vec<u8>),
}

impl Command {
    /// The complete reply of a command that needs no runtime state and leaves the connection
    /// open: `Empty` (empty reply), `Help`, `ShowUsage`, `Usage`, `Invalid`. For `Help` this
    /// is SPEC's five lines; the server appends [`help_ext_text`] after them.
    ///
    /// `None` for the commands the server must handle itself: `Quit` (close, no reply),
    /// `Show`, `Disable`, `Enable`, `Heartbeat`, `Block`, `Unblock`, `ShowBlocked`.
    pub fn fixed_reply(&self) -> Option<Vec<u8>> {
        match self {
            Self::Empty => Some(Vec::new()),
            Self::Help => Some(help_text().as_bytes().to_vec()),
            Self::ShowUsage => Some(show_usage_reply().as_bytes().to_vec()),
            Self::Usage(u) => Some(usage_reply(*u).as_bytes().to_vec()),
            Self::Invalid(tok) => Some(invalid_reply(tok)),
            Self::Quit
            | Self::Show { .. }
            | Self::Disable { .. }
            | Self::Enable { .. }
            | Self::Heartbeat { .. }
            | Self::Block { .. }
            | Self::Unblock { .. }
            | Self::ShowBlocked { .. } => None,
        }
    }
}

/// The `?` reply (five lines, each ending `\n`).
pub fn help_text() -> &'static str {
    HELP
}

/// The three extension lines the server appends to the `?` reply [ext].
pub fn help_ext_text() -> &'static str {
    HELP_EXT
}

/// `USAGE : show (rules|sessions)\n`
pub fn show_usage_reply() -> &'static str {
    SHOW_USAGE
}

/// `USAGE : ` + the command's help line + `\n`.
pub fn usage_reply(u: UsageOf) -> &'static str {
    match u {
        UsageOf::Disable => "USAGE : disable (ip) (port) [disable_timeout]\n",
        UsageOf::Enable => "USAGE : enable (ip) (port) [enable_timeout]\n",
        UsageOf::Heartbeat => "USAGE : heartbeat (ip) (port)\n",
        UsageOf::Block => "USAGE : block (ip) [block_timeout]\n",
        UsageOf::Unblock => "USAGE : unblock (ip)\n",
    }
}

/// `invalid command[<first token>]\n`, the token bytes as received.
pub fn invalid_reply(first_token: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(first_token.len() + 18);
    r.extend_from_slice(b"invalid command[");
    r.extend_from_slice(first_token);
    r.extend_from_slice(b"]\n");
    r
}

/// One match line of `disable`/`enable`/`heartbeat`: `<rule_id> <ip> <port> <verb>\n`, the IP
/// without brackets. `verb` is [`VERB_DISABLE`], [`VERB_ENABLE`] or [`VERB_HEARTBEAT`].
pub fn reply_matches(rule_id: &str, ip: IpAddr, port: u16, verb: &str) -> String {
    format!("{rule_id} {ip} {port} {verb}\n")
}

/// Parses one line (without its `\n` / `\r\n`). Never panics.
pub fn parse_command(line: &[u8]) -> Command {
    let mut toks = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|t| !t.is_empty());
    let Some(cmd) = toks.next() else {
        return Command::Empty;
    };
    match cmd {
        b"?" => Command::Help,
        b"quit" => Command::Quit,
        b"show" => {
            let what = match toks.next() {
                Some(b"rules") => ShowWhat::Rules,
                Some(b"sessions") => ShowWhat::Sessions,
                Some(b"stats") => ShowWhat::Stats,
                Some(b"blocked") => {
                    return Command::ShowBlocked {
                        json: toks.next() == Some(b"json"),
                    };
                }
                _ => return Command::ShowUsage,
            };
            let json = toks.next() == Some(b"json");
            Command::Show { what, json }
        }
        b"disable" | b"enable" => {
            let usage = if cmd == b"disable" {
                UsageOf::Disable
            } else {
                UsageOf::Enable
            };
            let Some((ip, port)) = ip_port(toks.next(), toks.next()) else {
                return Command::Usage(usage);
            };
            let secs = match toks.next() {
                None => None,
                Some(t) => match parse_secs(t) {
                    Some(0) => None,
                    Some(s) => Some(s),
                    None => return Command::Usage(usage),
                },
            };
            if usage == UsageOf::Disable {
                Command::Disable { ip, port, secs }
            } else {
                Command::Enable { ip, port, secs }
            }
        }
        b"heartbeat" => match ip_port(toks.next(), toks.next()) {
            Some((ip, port)) => Command::Heartbeat { ip, port },
            None => Command::Usage(UsageOf::Heartbeat),
        },
        b"block" => {
            let Some(ip) = toks.next().and_then(parse_ip) else {
                return Command::Usage(UsageOf::Block);
            };
            match toks.next().map(parse_secs) {
                None | Some(Some(0)) => Command::Block { ip, secs: None },
                Some(Some(s)) => Command::Block { ip, secs: Some(s) },
                Some(None) => Command::Usage(UsageOf::Block),
            }
        }
        b"unblock" => match toks.next().and_then(parse_ip) {
            Some(ip) => Command::Unblock { ip },
            None => Command::Usage(UsageOf::Unblock),
        },
        other => Command::Invalid(other.to_vec()),
    }
}

/// `<ip> blocked\n` [ext]
pub fn reply_blocked(ip: IpAddr) -> String {
    format!("{ip} blocked\n")
}

/// `<ip> unblocked\n` [ext]
pub fn reply_unblocked(ip: IpAddr) -> String {
    format!("{ip} unblocked\n")
}

/// `<ip> not blocked: list full\n` [ext]
pub fn reply_block_full(ip: IpAddr) -> String {
    format!("{ip} not blocked: list full\n")
}

fn ip_port(ip: Option<&[u8]>, port: Option<&[u8]>) -> Option<(IpAddr, u16)> {
    Some((parse_ip(ip?)?, parse_port(port?)?))
}

/// IPv4 dotted (no leading zeros) or IPv6 text without zone, the latter optionally in
/// brackets. A bracketed IPv4 address is rejected.
pub fn parse_ip(tok: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(tok).ok()?;
    if let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    s.parse::<IpAddr>().ok()
}

/// Digits only (leading zeros allowed), 1..=65535.
pub fn parse_port(tok: &[u8]) -> Option<u16> {
    let n = parse_digits(tok)?;
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Time value in seconds: digits with an optional suffix `s` ×1, `m` ×60, `h` ×3600 (also
/// upper case, as config values, SPEC.md §4.4); results above `u32::MAX` are rejected.
pub fn parse_secs(tok: &[u8]) -> Option<u32> {
    let (digits, mult) = match tok.split_last()? {
        (b's' | b'S', rest) => (rest, 1),
        (b'm' | b'M', rest) => (rest, 60),
        (b'h' | b'H', rest) => (rest, 3600),
        _ => (tok, 1),
    };
    let n = parse_digits(digits)?.checked_mul(mult)?;
    u32::try_from(n).ok()
}

/// Non-empty ASCII digits as u64; `None` on any other byte or overflow.
fn parse_digits(tok: &[u8]) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    fn p(s: &str) -> Command {
        parse_command(s.as_bytes())
    }

    fn reply(s: &str) -> Option<Vec<u8>> {
        p(s).fixed_reply()
    }

    #[test]
    fn help_is_five_exact_lines() {
        let expected = "show (rules|sessions|stats) [json]\n\
                        disable (ip) (port) [disable_timeout]\n\
                        enable (ip) (port) [enable_timeout]\n\
                        heartbeat (ip) (port)\n\
                        quit\n";
        assert_eq!(help_text(), expected);
        assert_eq!(help_text().lines().count(), 5);
        assert_eq!(p("?"), Command::Help);
        assert_eq!(p(" \t? extra"), Command::Help);
        assert_eq!(reply("?"), Some(expected.as_bytes().to_vec()));
    }

    #[test]
    fn block_commands() {
        let ip = v4(198, 18, 0, 7);
        assert_eq!(p("block 198.18.0.7"), Command::Block { ip, secs: None });
        assert_eq!(p("block 198.18.0.7 0"), Command::Block { ip, secs: None });
        assert_eq!(
            p("block\t198.18.0.7\t2m extra"),
            Command::Block {
                ip,
                secs: Some(120)
            }
        );
        assert_eq!(
            p("block [::1] 5"),
            Command::Block {
                ip: v6("::1"),
                secs: Some(5)
            }
        );
        assert_eq!(p("unblock 198.18.0.7 x"), Command::Unblock { ip });
        for bad in ["block", "block x", "block 1.2.3.4 5d", "block 1.2.3.4:80"] {
            assert_eq!(p(bad), Command::Usage(UsageOf::Block), "{bad}");
        }
        assert_eq!(
            reply("block 1.2.3"),
            Some(b"USAGE : block (ip) [block_timeout]\n".to_vec())
        );
        assert_eq!(reply("unblock"), Some(b"USAGE : unblock (ip)\n".to_vec()));
        assert_eq!(p("show blocked"), Command::ShowBlocked { json: false });
        assert_eq!(p("show blocked json"), Command::ShowBlocked { json: true });
        assert_eq!(reply("show blocked"), None);
        assert_eq!(p("Block 1.2.3.4"), Command::Invalid(b"Block".to_vec()));
        assert_eq!(reply_blocked(ip), "198.18.0.7 blocked\n");
        assert_eq!(reply_unblocked(v6("::1")), "::1 unblocked\n");
        assert_eq!(
            help_ext_text(),
            "block (ip) [block_timeout]\nunblock (ip)\nshow blocked [json]\n"
        );
    }

    #[test]
    fn empty_and_blank_lines() {
        for l in ["", " ", "\t", " \t  \t"] {
            assert_eq!(p(l), Command::Empty, "{l:?}");
            assert_eq!(reply(l), Some(Vec::new()));
        }
    }

    #[test]
    fn quit() {
        assert_eq!(p("quit"), Command::Quit);
        assert_eq!(p("\tquit now"), Command::Quit);
        assert_eq!(reply("quit"), None);
        assert_eq!(p("QUIT"), Command::Invalid(b"QUIT".to_vec()));
        assert_eq!(p("exit"), Command::Invalid(b"exit".to_vec()));
    }

    #[test]
    fn show_forms() {
        use ShowWhat::*;
        let cases = [
            ("show rules", Rules, false),
            ("show sessions", Sessions, false),
            ("show stats", Stats, false),
            ("show rules json", Rules, true),
            ("show\tsessions\tjson", Sessions, true),
            ("  show  stats   json  ", Stats, true),
            ("show rules json extra", Rules, true),
            ("show rules xml", Rules, false),
            ("show rules JSON", Rules, false),
            ("show stats extra json", Stats, false),
        ];
        for (l, what, json) in cases {
            assert_eq!(p(l), Command::Show { what, json }, "{l:?}");
            assert_eq!(reply(l), None);
        }
    }

    #[test]
    fn show_usage() {
        for l in [
            "show",
            "show ",
            "show\t",
            "show rule",
            "show Rules",
            "show json",
            "show ?",
        ] {
            assert_eq!(p(l), Command::ShowUsage, "{l:?}");
            assert_eq!(reply(l), Some(b"USAGE : show (rules|sessions)\n".to_vec()));
        }
        assert_eq!(show_usage_reply(), "USAGE : show (rules|sessions)\n");
    }

    #[test]
    fn invalid_commands_echo_first_token() {
        assert_eq!(reply("foo bar"), Some(b"invalid command[foo]\n".to_vec()));
        assert_eq!(
            reply("Show rules"),
            Some(b"invalid command[Show]\n".to_vec())
        );
        assert_eq!(
            reply("beartbeat 1.2.3.4 80"),
            Some(b"invalid command[beartbeat]\n".to_vec())
        );
        // A `\r` not right before the `\n` is part of the token (framing drops the other one).
        assert_eq!(reply("quit\r"), Some(b"invalid command[quit\r]\n".to_vec()));
        // Bytes as received, invalid UTF-8 included.
        assert_eq!(
            parse_command(b"\xff\xfe x").fixed_reply(),
            Some(b"invalid command[\xff\xfe]\n".to_vec())
        );
        assert_eq!(invalid_reply(b"??"), b"invalid command[??]\n".to_vec());
    }

    #[test]
    fn disable_and_enable_forms() {
        let ip = v4(127, 0, 0, 1);
        assert_eq!(
            p("disable 127.0.0.1 18701"),
            Command::Disable {
                ip,
                port: 18701,
                secs: None
            }
        );
        assert_eq!(
            p("enable 127.0.0.1 18701"),
            Command::Enable {
                ip,
                port: 18701,
                secs: None
            }
        );
        let timed = [
            ("30", 30),
            ("30s", 30),
            ("30S", 30),
            ("2m", 120),
            ("2M", 120),
            ("1h", 3600),
            ("1H", 3600),
            ("007", 7),
            ("4294967295", u32::MAX),
            ("4294967295s", u32::MAX),
            ("71582788m", 71_582_788 * 60),
            ("1193046h", 1_193_046 * 3600),
        ];
        for (t, secs) in timed {
            assert_eq!(
                p(&format!("disable\t127.0.0.1\t18701\t{t}")),
                Command::Disable {
                    ip,
                    port: 18701,
                    secs: Some(secs)
                },
                "{t}"
            );
            assert_eq!(
                p(&format!("enable 127.0.0.1 18701 {t} surplus")),
                Command::Enable {
                    ip,
                    port: 18701,
                    secs: Some(secs)
                },
                "{t}"
            );
        }
        for zero in ["0", "0s", "0m", "0h", "000"] {
            assert_eq!(
                p(&format!("disable 127.0.0.1 18701 {zero}")),
                Command::Disable {
                    ip,
                    port: 18701,
                    secs: None
                }
            );
            assert_eq!(
                p(&format!("enable 127.0.0.1 18701 {zero}")),
                Command::Enable {
                    ip,
                    port: 18701,
                    secs: None
                }
            );
        }
        for (l, _) in [
            ("disable 127.0.0.1 18701 5", 0),
            ("enable 127.0.0.1 18701", 0),
        ] {
            assert_eq!(reply(l), None);
        }
    }

    #[test]
    fn bad_timeouts_are_usage() {
        for t in [
            "-1",
            "+1",
            "1d",
            "1ms",
            "s",
            "m",
            "h",
            "1.5",
            "5x",
            "x",
            "4294967296",
            "71582789m",
            "1193047h",
            "99999999999999999999999",
            "1s1",
        ] {
            let l = format!("disable 127.0.0.1 80 {t}");
            assert_eq!(p(&l), Command::Usage(UsageOf::Disable), "{l:?}");
            let l = format!("enable 127.0.0.1 80 {t}");
            assert_eq!(p(&l), Command::Usage(UsageOf::Enable), "{l:?}");
        }
        // `1` is T, `h` a surplus token.
        assert!(matches!(
            p("disable 127.0.0.1 80 1 h"),
            Command::Disable { secs: Some(1), .. }
        ));
    }

    #[test]
    fn usage_replies_exact() {
        assert_eq!(
            reply("disable"),
            Some(b"USAGE : disable (ip) (port) [disable_timeout]\n".to_vec())
        );
        assert_eq!(
            reply("enable 127.0.0.1"),
            Some(b"USAGE : enable (ip) (port) [enable_timeout]\n".to_vec())
        );
        assert_eq!(
            reply("heartbeat"),
            Some(b"USAGE : heartbeat (ip) (port)\n".to_vec())
        );
        assert_eq!(
            usage_reply(UsageOf::Disable),
            "USAGE : disable (ip) (port) [disable_timeout]\n"
        );
        assert_eq!(
            usage_reply(UsageOf::Enable),
            "USAGE : enable (ip) (port) [enable_timeout]\n"
        );
        assert_eq!(
            usage_reply(UsageOf::Heartbeat),
            "USAGE : heartbeat (ip) (port)\n"
        );
    }

    #[test]
    fn bad_ports_and_ips_are_usage() {
        let bad = [
            "1.2.3.4",
            "1.2.3.4 0",
            "1.2.3.4 65536",
            "1.2.3.4 80x",
            "1.2.3.4 x80",
            "1.2.3.4 -80",
            "1.2.3.4 +80",
            "1.2.3.4 99999999999999999999999",
            "256.1.1.1 80",
            "1.2.3 80",
            "01.2.3.4 80",
            "localhost 80",
            "1.2.3.4:80",
            "1.2.3.4:80 80x",
            "[1.2.3.4] 80",
            "[::1 80",
            "::1] 80",
            "[[::1]] 80",
            "fe80::1%eth0 80",
            "[fe80::1%1] 80",
            ":::1 80",
            "* 80",
        ];
        for args in bad {
            let (d, e, h) = (
                format!("disable {args}"),
                format!("enable {args}"),
                format!("heartbeat {args}"),
            );
            assert_eq!(p(&d), Command::Usage(UsageOf::Disable), "{d:?}");
            assert_eq!(p(&e), Command::Usage(UsageOf::Enable), "{e:?}");
            assert_eq!(p(&h), Command::Usage(UsageOf::Heartbeat), "{h:?}");
        }
        assert_eq!(
            parse_command(b"disable \xff 80"),
            Command::Usage(UsageOf::Disable)
        );
    }

    #[test]
    fn ports_edges() {
        for (t, port) in [("1", 1), ("65535", 65535), ("080", 80), ("00001", 1)] {
            assert_eq!(
                p(&format!("heartbeat 10.0.0.1 {t}")),
                Command::Heartbeat {
                    ip: v4(10, 0, 0, 1),
                    port
                }
            );
        }
    }

    #[test]
    fn ipv6_with_and_without_brackets() {
        for (tok, ip) in [
            ("::1", v6("::1")),
            ("[::1]", v6("::1")),
            ("[2001:DB8::1]", v6("2001:db8::1")),
            ("2001:0db8:0000:0000:0000:0000:0000:0001", v6("2001:db8::1")),
            ("::ffff:1.2.3.4", v6("::ffff:1.2.3.4")),
            ("[::]", v6("::")),
        ] {
            assert_eq!(
                p(&format!("heartbeat {tok} 8080")),
                Command::Heartbeat { ip, port: 8080 },
                "{tok}"
            );
            assert_eq!(
                p(&format!("disable {tok} 8080 1m")),
                Command::Disable {
                    ip,
                    port: 8080,
                    secs: Some(60)
                }
            );
            assert_eq!(
                p(&format!("enable {tok} 8080")),
                Command::Enable {
                    ip,
                    port: 8080,
                    secs: None
                }
            );
        }
    }

    #[test]
    fn heartbeat_surplus_ignored() {
        assert_eq!(
            p("heartbeat 127.0.0.1 18701 30 more"),
            Command::Heartbeat {
                ip: v4(127, 0, 0, 1),
                port: 18701
            }
        );
        assert_eq!(reply("heartbeat 127.0.0.1 18701"), None);
    }

    #[test]
    fn case_sensitive() {
        for l in [
            "Disable 1.2.3.4 80",
            "ENABLE 1.2.3.4 80",
            "Heartbeat 1.2.3.4 80",
            "SHOW rules",
        ] {
            assert!(matches!(p(l), Command::Invalid(_)), "{l:?}");
        }
    }

    #[test]
    fn match_lines() {
        assert_eq!(
            reply_matches("r1", v4(127, 0, 0, 1), 18701, VERB_DISABLE),
            "r1 127.0.0.1 18701 unabled\n"
        );
        assert_eq!(
            reply_matches("r2", v6("::1"), 80, VERB_ENABLE),
            "r2 ::1 80 enabled\n"
        );
        assert_eq!(
            reply_matches("r3", v6("2001:DB8::A"), 443, VERB_HEARTBEAT),
            "r3 2001:db8::a 443 heartbeat\n"
        );
    }

    proptest! {
        #[test]
        fn never_panics(line in prop::collection::vec(any::<u8>(), 0..64)) {
            let c = parse_command(&line);
            let _ = c.fixed_reply();
        }

        #[test]
        fn never_panics_on_command_like_input(
            cmd in prop::sample::select(vec!["disable", "enable", "heartbeat", "show", "?", "quit"]),
            rest in prop::collection::vec(
                prop_oneof![Just(b' '), Just(b'\t'), Just(b'['), Just(b']'), Just(b':'),
                            Just(b'.'), b'0'..=b'9', Just(b's'), Just(b'h'), any::<u8>()],
                0..40),
        ) {
            let mut line = cmd.as_bytes().to_vec();
            line.push(b' ');
            line.extend_from_slice(&rest);
            let _ = parse_command(&line).fixed_reply();
        }

        #[test]
        fn addresses_round_trip(addr in any::<SocketAddr>(), secs in any::<u32>(), bracket in any::<bool>()) {
            prop_assume!(addr.port() != 0);
            let ip = addr.ip();
            let port = addr.port();
            let ip_txt = match ip {
                IpAddr::V6(v) if bracket => format!("[{v}]"),
                other => other.to_string(),
            };
            prop_assert_eq!(
                p(&format!("heartbeat {ip_txt} {port}")),
                Command::Heartbeat { ip, port }
            );
            prop_assert_eq!(
                p(&format!("disable {ip_txt} {port} {secs}")),
                Command::Disable { ip, port, secs: (secs != 0).then_some(secs) }
            );
            prop_assert_eq!(
                p(&format!("enable\t{ip_txt}\t{port}\t{secs}s")),
                Command::Enable { ip, port, secs: (secs != 0).then_some(secs) }
            );
        }
    }
}
