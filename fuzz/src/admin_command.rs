//! `admin_command`: a byte stream through `LineSplitter` in chunks chosen from the input, each
//! line through `parse_command` and `fixed_reply` (SPEC.md §9.1, §9.2).
//!
//! Input: byte 0 seeds the chunking, the rest is the stream an admin client sends.
//!
//! * Framing: the lines (and whether an overlong line closes the connection) do not depend on
//!   the segmentation and equal those of a direct reading of §9.1; the splitter never buffers
//!   more than `MAX_LINE + 1` bytes and stays failed after `LineTooLong`.
//! * Commands: `parse_command` agrees with a reading of §9.2 written here; fixed replies are the
//!   exact texts of §9.2; server commands survive a format → parse round trip.

use std::net::{IpAddr, Ipv6Addr};

use g6::admin::{Command, LineSplitter, MAX_LINE, ShowWhat, UsageOf, parse_command};

use super::common::{Rng, admin_tokens, digits};

pub fn check(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let (lines, too_long) = split_in_chunks(stream, seed);
    let (want_lines, want_too_long) = reference_lines(stream);
    assert_eq!(
        too_long, want_too_long,
        "overlong-line verdict differs from SPEC.md §9.1 (seed {seed})"
    );
    assert!(
        lines == want_lines,
        "lines differ from SPEC.md §9.1 (seed {seed}): got {} lines, want {}",
        lines.len(),
        want_lines.len()
    );
    for line in &lines {
        check_line(line);
    }
}

/// Feeds `stream` in chunks whose sizes come from `seed`; returns every line (the final
/// unterminated one included) and whether the splitter failed.
fn split_in_chunks(stream: &[u8], seed: u8) -> (Vec<Vec<u8>>, bool) {
    let mut rng = Rng::new(u64::from(seed));
    // Largest chunk: bytewise, small, medium, around the limit, or everything at once.
    let max = [1, 2, 7, 64, MAX_LINE as u64 + 1, u64::MAX][usize::from(seed % 6)];
    let mut sp = LineSplitter::new();
    let mut lines = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        // Sizes 0..=max: an empty segment must change nothing.
        let n = usize::try_from(rng.below(max.saturating_add(1)).min(rest.len() as u64))
            .expect("chunk fits usize");
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let before = lines.len();
        let r = sp.push(chunk, &mut lines);
        for l in &lines[before..] {
            assert!(l.len() <= MAX_LINE, "line of {} bytes accepted", l.len());
            assert!(!l.contains(&b'\n'), "line holds a \\n");
        }
        if r.is_err() {
            assert_eq!(sp.pending(), 0, "failed splitter keeps a buffer");
            let mut more = Vec::new();
            assert!(sp.push(b"quit\n", &mut more).is_err(), "splitter recovered");
            assert!(more.is_empty());
            assert_eq!(sp.finish(), None, "failed splitter yields a final line");
            return (lines, true);
        }
        assert!(
            sp.pending() <= MAX_LINE + 1,
            "splitter buffers {} bytes",
            sp.pending()
        );
    }
    lines.extend(sp.finish());
    (lines, false)
}

/// SPEC.md §9.1 read directly: lines end with `\n`, a preceding `\r` is dropped, a final
/// unterminated line counts (end of input acts as `\n`), a line over 4096 bytes closes.
fn reference_lines(stream: &[u8]) -> (Vec<Vec<u8>>, bool) {
    fn content(l: &[u8]) -> &[u8] {
        l.strip_suffix(b"\r").unwrap_or(l)
    }
    let mut lines = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => (&rest[..nl], &rest[nl + 1..]),
            None => (rest, &[][..]),
        };
        let line = content(line);
        if line.len() > MAX_LINE {
            return (lines, true);
        }
        lines.push(line.to_vec());
        rest = tail;
    }
    (lines, false)
}

const HELP: &str = "show (rules|sessions|stats) [json]\n\
                    disable (ip) (port) [disable_timeout]\n\
                    enable (ip) (port) [enable_timeout]\n\
                    heartbeat (ip) (port)\n\
                    quit\n";

/// The [ext] lines the server appends to the `?` reply (README "Admin port").
pub(crate) const HELP_EXT: &str = "block (ip) [block_timeout]\n\
                                   unblock (ip)\n\
                                   show blocked [json]\n";

/// The §9.2 reply of a command needing no runtime state, from the SPEC text.
pub(crate) fn spec_fixed_reply(c: &Command) -> Option<Vec<u8>> {
    let usage = |s: &str| Some(format!("USAGE : {s}\n").into_bytes());
    match c {
        Command::Empty => Some(Vec::new()),
        Command::Help => Some(HELP.as_bytes().to_vec()),
        Command::ShowUsage => usage("show (rules|sessions)"),
        Command::Usage(UsageOf::Disable) => usage("disable (ip) (port) [disable_timeout]"),
        Command::Usage(UsageOf::Enable) => usage("enable (ip) (port) [enable_timeout]"),
        Command::Usage(UsageOf::Heartbeat) => usage("heartbeat (ip) (port)"),
        Command::Usage(UsageOf::Block) => usage("block (ip) [block_timeout]"),
        Command::Usage(UsageOf::Unblock) => usage("unblock (ip)"),
        Command::Invalid(tok) => Some([&b"invalid command["[..], tok, b"]\n"].concat()),
        _ => None,
    }
}

fn ip(tok: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(tok).ok()?;
    match s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(inner) => inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => s.parse().ok(),
    }
}

fn port(tok: &[u8]) -> Option<u16> {
    digits(tok)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&p| p > 0)
}

/// `T`: seconds with an optional `s`/`m`/`h` (G6 also takes upper case, as config values).
fn secs(tok: &[u8]) -> Option<u32> {
    let (num, mult) = match tok.last()? {
        b's' | b'S' => (&tok[..tok.len() - 1], 1),
        b'm' | b'M' => (&tok[..tok.len() - 1], 60),
        b'h' | b'H' => (&tok[..tok.len() - 1], 3600),
        _ => (tok, 1),
    };
    u32::try_from(digits(num)?.checked_mul(mult)?).ok()
}

/// SPEC.md §9.2 read directly, plus README's [ext] commands.
fn reference_command(line: &[u8]) -> Command {
    let toks = admin_tokens(line);
    let Some(&first) = toks.first() else {
        return Command::Empty;
    };
    let arg = |i: usize| toks.get(i).copied();
    let server = |usage: UsageOf| -> Result<(IpAddr, u16, Option<u32>), Command> {
        let bad = || Command::Usage(usage);
        let ip = arg(1).and_then(ip).ok_or_else(bad)?;
        let port = arg(2).and_then(port).ok_or_else(bad)?;
        let t = match arg(3) {
            None => None,
            Some(t) => Some(secs(t).ok_or_else(bad)?).filter(|&t| t > 0),
        };
        Ok((ip, port, t))
    };
    match first {
        b"?" => Command::Help,
        b"quit" => Command::Quit,
        b"show" => {
            let what = match arg(1) {
                Some(b"rules") => ShowWhat::Rules,
                Some(b"sessions") => ShowWhat::Sessions,
                Some(b"stats") => ShowWhat::Stats,
                Some(b"blocked") => {
                    return Command::ShowBlocked {
                        json: arg(2) == Some(b"json"),
                    };
                }
                _ => return Command::ShowUsage,
            };
            Command::Show {
                what,
                json: arg(2) == Some(b"json"),
            }
        }
        b"disable" => match server(UsageOf::Disable) {
            Ok((ip, port, secs)) => Command::Disable { ip, port, secs },
            Err(c) => c,
        },
        b"enable" => match server(UsageOf::Enable) {
            Ok((ip, port, secs)) => Command::Enable { ip, port, secs },
            Err(c) => c,
        },
        // `heartbeat` takes no T: a third token is surplus.
        b"heartbeat" => match (arg(1).and_then(ip), arg(2).and_then(port)) {
            (Some(ip), Some(port)) => Command::Heartbeat { ip, port },
            _ => Command::Usage(UsageOf::Heartbeat),
        },
        // `block IP [T]`: T as for `disable`, 0 = until unblocked.
        b"block" => match (arg(1).and_then(ip), arg(2)) {
            (None, _) => Command::Usage(UsageOf::Block),
            (Some(ip), None) => Command::Block { ip, secs: None },
            (Some(ip), Some(t)) => match secs(t) {
                Some(t) => Command::Block {
                    ip,
                    secs: Some(t).filter(|&t| t > 0),
                },
                None => Command::Usage(UsageOf::Block),
            },
        },
        b"unblock" => match arg(1).and_then(ip) {
            Some(ip) => Command::Unblock { ip },
            None => Command::Usage(UsageOf::Unblock),
        },
        other => Command::Invalid(other.to_vec()),
    }
}

fn check_line(line: &[u8]) {
    let cmd = parse_command(line);
    assert_eq!(
        cmd,
        reference_command(line),
        "parse_command disagrees with SPEC.md §9.2 on {:?}",
        String::from_utf8_lossy(line)
    );
    assert_eq!(
        cmd.fixed_reply(),
        spec_fixed_reply(&cmd),
        "fixed reply of {cmd:?}"
    );
    if let Command::Invalid(tok) = &cmd {
        assert!(!tok.is_empty() && tok.len() <= line.len());
    }
    // Server commands written back in canonical form parse to the same command.
    let again = match &cmd {
        Command::Disable { ip, port, secs } | Command::Enable { ip, port, secs } => {
            let verb = if matches!(cmd, Command::Disable { .. }) {
                "disable"
            } else {
                "enable"
            };
            let ip = match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            };
            Some(match secs {
                Some(t) => format!("{verb}\t{ip} {port} {t}s"),
                None => format!("{verb} {ip} {port}"),
            })
        }
        Command::Heartbeat { ip, port } => Some(format!(" heartbeat {ip} {port} extra")),
        Command::Block { ip, secs } => Some(match (secs, ip) {
            (Some(t), IpAddr::V6(v6)) => format!("block [{v6}] {t}"),
            (Some(t), IpAddr::V4(v4)) => format!("block {v4} {t}s"),
            (None, _) => format!("block\t{ip} 0s"),
        }),
        Command::Unblock { ip } => Some(format!("unblock {ip} extra")),
        Command::ShowBlocked { json: true } => Some("show\tblocked json x".into()),
        _ => None,
    };
    if let Some(text) = again {
        assert_eq!(
            parse_command(text.as_bytes()),
            cmd,
            "round trip via {text:?}"
        );
    }
}
