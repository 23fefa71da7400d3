//! Text replies of `show sessions` (SPEC.md §9.4) and `show stats` (SPEC.md §9.5).

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::snapshot::{BlockedEntry, RuleStats, SessionRow, XdpStats, push_sockaddr};

/// `show sessions`: rows in the given order (listeners in config order, then admin and
/// proxied connections oldest first — the caller orders them). A proxied session gives two
/// lines, SERVER then CLIENT; while its server connect is in progress they show `READY` and
/// `CONNECTING`, else `CONNECTED`.
pub fn render_sessions_text(rows: &[SessionRow]) -> String {
    let mut out = String::with_capacity(rows.len() * 96);
    for row in rows {
        match row {
            SessionRow::Listen {
                listen, listen_fd, ..
            } => {
                head(&mut out, "LISTEN", "LISTEN");
                out.push_str("- ");
                endpoint(&mut out, listen, *listen_fd);
                out.push('\n');
            }
            SessionRow::Manager {
                peer,
                fd,
                listen,
                listen_fd,
                ..
            } => {
                head(&mut out, "MANAGER", "COMMAND");
                endpoint(&mut out, peer, *fd);
                out.push_str(" - ");
                endpoint(&mut out, listen, *listen_fd);
                out.push('\n');
            }
            SessionRow::Proxy {
                connected,
                client,
                client_fd,
                listen,
                listen_fd,
                server,
                server_fd,
                ..
            } => {
                let (server_status, client_status) = if *connected {
                    ("CONNECTED", "CONNECTED")
                } else {
                    ("READY", "CONNECTING")
                };
                head(&mut out, "SERVER", server_status);
                endpoint(&mut out, client, *client_fd);
                out.push_str(" - ");
                endpoint(&mut out, listen, *listen_fd);
                out.push_str(" > ");
                endpoint(&mut out, server, *server_fd);
                out.push('\n');

                head(&mut out, "CLIENT", client_status);
                endpoint(&mut out, server, *server_fd);
                out.push_str(" - ");
                endpoint(&mut out, listen, *listen_fd);
                out.push_str(" > ");
                endpoint(&mut out, client, *client_fd);
                out.push('\n');
            }
        }
    }
    out
}

/// `show stats`: per rule its line, then its server lines indented by two spaces.
pub fn render_stats_text(rules: &[RuleStats]) -> String {
    let mut out = String::with_capacity(rules.len() * 256);
    for r in rules {
        let _ = writeln!(
            out,
            "rule {} {} active={} total={} refused={} bytes_in={} bytes_out={}",
            r.id, r.alg, r.active, r.total, r.refused, r.bytes_in, r.bytes_out
        );
        for s in &r.servers {
            out.push_str("  server ");
            push_sockaddr(&mut out, &s.addr);
            let _ = write!(
                out,
                " {} active={} total={} failures={} bytes_in={} bytes_out={} rt_us=",
                s.state, s.active, s.total, s.failures, s.bytes_in, s.bytes_out
            );
            match s.rt_us {
                Some(rt) => {
                    let _ = writeln!(out, "{rt}");
                }
                None => out.push_str("-\n"),
            }
        }
    }
    out
}

/// The line `show stats` adds after SPEC's lines [ext]:
/// `xdp <mode> <iface,…|-> dropped_blocked=<n> dropped_not_allowed=<n>`.
pub fn render_xdp_text(x: &XdpStats) -> String {
    let ifaces = if x.ifaces.is_empty() {
        "-".to_string()
    } else {
        x.ifaces.join(",")
    };
    format!(
        "xdp {} {ifaces} dropped_blocked={} dropped_not_allowed={}\n",
        x.mode, x.dropped_blocked, x.dropped_not_allowed
    )
}

/// `show blocked` [ext]: `<ip> <deadline>` per entry (deadline in epoch seconds, 0 = none).
pub fn render_blocked_text(entries: &[BlockedEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(out, "{} {}", e.ip, e.deadline);
    }
    out
}

/// `%8s | %11s | ` (right-aligned, as the original's printf).
fn head(out: &mut String, kind: &str, status: &str) {
    let _ = write!(out, "{kind:>8} | {status:>11} | ");
}

/// `ip:port(#fd#)`
fn endpoint(out: &mut String, addr: &SocketAddr, fd: i32) {
    push_sockaddr(out, addr);
    let _ = write!(out, "(#{fd}#)");
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::ServerStats;
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxy(connected: bool) -> SessionRow {
        SessionRow::Proxy {
            connected,
            rule: "r1".into(),
            client: sa("127.0.0.1:40000"),
            client_fd: 12,
            listen: sa("127.0.0.1:18601"),
            listen_fd: 5,
            server: sa("127.0.0.1:18701"),
            server_fd: 13,
            data_path: Some("copy"),
            bytes_in: 1,
            bytes_out: 2,
            age_ms: 3,
            idle_ms: 4,
            client_eof: false,
            server_eof: false,
        }
    }

    #[test]
    fn sessions_text_matches_spec_layout() {
        let rows = vec![
            SessionRow::Listen {
                rule: "admin".into(),
                listen: sa("127.0.0.1:8600"),
                listen_fd: 4,
            },
            SessionRow::Listen {
                rule: "r1".into(),
                listen: sa("127.0.0.1:18601"),
                listen_fd: 5,
            },
            SessionRow::Manager {
                rule: "admin".into(),
                peer: sa("127.0.0.1:51234"),
                fd: 9,
                listen: sa("127.0.0.1:8600"),
                listen_fd: 4,
                age_ms: 10,
                idle_ms: 0,
            },
            proxy(true),
            proxy(false),
        ];
        // Built by hand from SPEC.md §9.4 (`%8s | %11s | `).
        let expected = concat!(
            "  LISTEN |      LISTEN | - 127.0.0.1:8600(#4#)\n",
            "  LISTEN |      LISTEN | - 127.0.0.1:18601(#5#)\n",
            " MANAGER |     COMMAND | 127.0.0.1:51234(#9#) - 127.0.0.1:8600(#4#)\n",
            "  SERVER |   CONNECTED | 127.0.0.1:40000(#12#) - 127.0.0.1:18601(#5#) > 127.0.0.1:18701(#13#)\n",
            "  CLIENT |   CONNECTED | 127.0.0.1:18701(#13#) - 127.0.0.1:18601(#5#) > 127.0.0.1:40000(#12#)\n",
            "  SERVER |       READY | 127.0.0.1:40000(#12#) - 127.0.0.1:18601(#5#) > 127.0.0.1:18701(#13#)\n",
            "  CLIENT |  CONNECTING | 127.0.0.1:18701(#13#) - 127.0.0.1:18601(#5#) > 127.0.0.1:40000(#12#)\n",
        );
        assert_eq!(render_sessions_text(&rows), expected);
        assert_eq!(render_sessions_text(&[]), "");
    }

    #[test]
    fn sessions_text_ipv6() {
        let rows = vec![
            SessionRow::Listen {
                rule: "r6".into(),
                listen: sa("[::]:8080"),
                listen_fd: 3,
            },
            SessionRow::Proxy {
                connected: true,
                rule: "r6".into(),
                client: sa("[2001:db8::5]:50000"),
                client_fd: 7,
                listen: sa("[::]:8080"),
                listen_fd: 3,
                server: sa("[::1]:9000"),
                server_fd: 8,
                data_path: Some("sockmap"),
                bytes_in: 0,
                bytes_out: 0,
                age_ms: 0,
                idle_ms: 0,
                client_eof: true,
                server_eof: false,
            },
        ];
        let expected = concat!(
            "  LISTEN |      LISTEN | - [::]:8080(#3#)\n",
            "  SERVER |   CONNECTED | [2001:db8::5]:50000(#7#) - [::]:8080(#3#) > [::1]:9000(#8#)\n",
            "  CLIENT |   CONNECTED | [::1]:9000(#8#) - [::]:8080(#3#) > [2001:db8::5]:50000(#7#)\n",
        );
        assert_eq!(render_sessions_text(&rows), expected);
    }

    #[test]
    fn stats_text_matches_spec_layout() {
        let rules = vec![
            RuleStats {
                id: "admin".into(),
                alg: "G",
                active: 1,
                total: 3,
                refused: 0,
                bytes_in: 0,
                bytes_out: 0,
                servers: vec![],
            },
            RuleStats {
                id: "r1".into(),
                alg: "RR",
                active: 2,
                total: 10,
                refused: 1,
                bytes_in: 1234,
                bytes_out: 5678,
                servers: vec![
                    ServerStats {
                        addr: sa("127.0.0.1:18701"),
                        state: "up",
                        active: 2,
                        total: 9,
                        failures: 0,
                        bytes_in: 1234,
                        bytes_out: 5678,
                        rt_us: Some(250),
                    },
                    ServerStats {
                        addr: sa("[::1]:18702"),
                        state: "moratorium",
                        active: 0,
                        total: 0,
                        failures: 4,
                        bytes_in: 0,
                        bytes_out: 0,
                        rt_us: None,
                    },
                ],
            },
        ];
        let expected = concat!(
            "rule admin G active=1 total=3 refused=0 bytes_in=0 bytes_out=0\n",
            "rule r1 RR active=2 total=10 refused=1 bytes_in=1234 bytes_out=5678\n",
            "  server 127.0.0.1:18701 up active=2 total=9 failures=0 bytes_in=1234 bytes_out=5678 rt_us=250\n",
            "  server [::1]:18702 moratorium active=0 total=0 failures=4 bytes_in=0 bytes_out=0 rt_us=-\n",
        );
        assert_eq!(render_stats_text(&rules), expected);
        assert_eq!(render_stats_text(&[]), "");
    }
}
