//! `config_parse`: any bytes through `g6::config::parse` (SPEC.md §4).
//!
//! * Never panics or hangs; an error is one printable diagnostic line whose position lies
//!   inside the input (SPEC.md §4.5).
//! * An accepted config is consistent: unique rule ids and listen addresses, the warnings of
//!   §4.5 exactly, `show rules` (§9.3) one line per rule ending with a space, `show rules json`
//!   (§9.6) valid with its keys in order, and a `Runtime` can be built from it.
//! * Round trip: the config written back as text (every effective value explicit) parses to
//!   the same model (positions aside) and the same `show rules` text.
//! * Whitespace: the input with spaces turned into TABs and LF into CRLF gives the identical
//!   result (same model and positions, or the same diagnostic).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use g6::admin::{ServerStateView, render_rules_json};
use g6::config::{
    self, Algorithm, Config, ConfigError, MAX_TOKEN_LEN, Pos, error::show_token, initial_triple,
    render_rules_initial,
};

use super::common::{array, json_document, keys_in_order};

const LABEL: &str = "fuzz.conf";

pub fn check(data: &[u8]) {
    let result = config::parse(LABEL, data);
    match &result {
        Err(e) => check_error(data, e),
        Ok(cfg) => {
            check_accepted(cfg);
            round_trip(cfg);
        }
    }
    // Whitespace is whitespace (SPEC.md §4.1): spaces as TABs and `\n` as `\r\n` change no
    // token, no line and no byte column, so the result is identical, diagnostics included.
    let mut respaced = Vec::with_capacity(data.len() + data.len() / 8);
    for &b in data {
        match b {
            b' ' => respaced.push(b'\t'),
            b'\n' => respaced.extend_from_slice(b"\r\n"),
            _ => respaced.push(b),
        }
    }
    assert_eq!(
        config::parse(LABEL, &respaced),
        result,
        "spaces -> TABs and LF -> CRLF changed the result"
    );
}

fn check_error(src: &[u8], e: &ConfigError) {
    let line = e.to_string();
    assert!(
        line.starts_with(&format!("{LABEL}:")) && line.contains(": error: "),
        "diagnostic prefix: {line:?}"
    );
    assert!(
        !line.chars().any(char::is_control),
        "diagnostic must be one printable line: {line:?}"
    );
    let pos = e
        .pos()
        .unwrap_or_else(|| panic!("parse error without position: {line:?}"));
    // 1-based line and byte column; at end of file the column is one past the last byte.
    let lines: Vec<&[u8]> = src.split(|&b| b == b'\n').collect();
    assert!(
        pos.line >= 1 && (pos.line as usize) <= lines.len(),
        "error line {} outside the input ({} lines): {line:?}",
        pos.line,
        lines.len()
    );
    let this = lines[pos.line as usize - 1];
    assert!(
        pos.col >= 1 && (pos.col as usize) <= this.len() + 1,
        "error column {} outside line {} ({} bytes): {line:?}",
        pos.col,
        pos.line,
        this.len()
    );
}

fn check_accepted(cfg: &Config) {
    let mut ids = HashSet::new();
    let mut listens = HashSet::new();
    let mut expected_warnings = Vec::new();
    for r in &cfg.rules {
        assert!(
            ids.insert(r.id.as_str()),
            "duplicate rule id {:?} accepted",
            r.id
        );
        assert!(
            !r.id.is_empty() && r.id != "-" && r.id != ">",
            "bad id {:?}",
            r.id
        );
        for l in &r.listens {
            assert!(
                listens.insert(l.addr),
                "duplicate listen {} accepted",
                l.addr
            );
            assert_ne!(l.addr.port(), 0, "listen port 0 accepted");
        }
        for s in &r.servers {
            assert_ne!(s.addr.port(), 0, "server port 0 accepted");
        }
        for c in &r.clients {
            let p = &c.pattern;
            assert!(
                p.text.contains(':') && !p.ip.is_empty() && !p.port.is_empty(),
                "{p:?}"
            );
            assert!(
                p.text.len() <= MAX_TOKEN_LEN,
                "pattern longer than a token: {p:?}"
            );
        }
        // Exercise the glob matcher on the accepted patterns.
        for client in [
            "127.0.0.1:80",
            "10.1.2.3:65535",
            "[::1]:8080",
            "[fe80::1:2]:1",
        ] {
            let client: SocketAddr = client.parse().expect("sample address");
            if let Some(i) = r.match_client(client) {
                assert!(r.clients[i].pattern.matches(client));
            }
        }
        let id = show_token(r.id.as_bytes());
        if r.clients.is_empty() {
            expected_warnings.push(format!(
                "rule '{id}' has no client patterns: its clients are refused"
            ));
        }
        if r.alg != Algorithm::Admin && r.servers.is_empty() {
            expected_warnings.push(format!(
                "rule '{id}' has no servers: its clients are refused"
            ));
        }
    }
    let warnings: Vec<&str> = cfg.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(warnings, expected_warnings, "warnings (SPEC.md §4.5)");
    for w in &cfg.warnings {
        let line = config::format_warning(LABEL, w);
        assert!(!line.contains('\n'), "{line:?}");
    }
    let _ = config::check_summary(LABEL, cfg);

    // `show rules`: one line per rule, `<id> | <ALG> | …`, every item followed by a space.
    let text = render_rules_initial(cfg);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), cfg.rules.len(), "show rules: {text:?}");
    assert!(text.is_empty() || text.ends_with(" \n"), "{text:?}");
    for (line, r) in lines.iter().zip(&cfg.rules) {
        assert!(
            line.starts_with(&format!("{} | {} | ", r.id, r.alg)),
            "{line:?}"
        );
        assert!(line.ends_with(' '), "{line:?}");
        assert_eq!(line.contains(" > "), !r.servers.is_empty(), "{line:?}");
    }

    // `show rules json` with the load-time states.
    let json = render_rules_json(cfg, &|ri, si| {
        let s = &cfg.rules[ri].servers[si];
        let t = initial_triple(s);
        ServerStateView {
            hb: t.hb,
            unable: t.unable,
            deadline: t.deadline,
            state: if s.heartbeat > 0 {
                "no-heartbeat"
            } else {
                "up"
            },
        }
    });
    let doc = json_document(&json);
    let top = keys_in_order(&doc, &["moratorium", "rules"], "rules json");
    assert_eq!(top["moratorium"], u64::from(cfg.moratorium));
    let rules = array(&top["rules"], "rules");
    assert_eq!(rules.len(), cfg.rules.len());
    for (jr, r) in rules.iter().zip(&cfg.rules) {
        let o = keys_in_order(jr, &["id", "alg", "clients", "listens", "servers"], "rule");
        assert_eq!(o["id"], r.id.as_str());
        assert_eq!(o["alg"], r.alg.as_str());
        let keys = [
            "pattern",
            "max_connections",
            "max_ip",
            "max_connections_per_ip",
        ];
        for (jc, c) in array(&o["clients"], "clients").iter().zip(&r.clients) {
            let jc = keys_in_order(jc, &keys, "client");
            assert_eq!(jc["pattern"], c.pattern.text.as_str());
            assert_eq!(jc["max_ip"], u64::from(c.limits.max_ip));
        }
        for (jl, l) in array(&o["listens"], "listens").iter().zip(&r.listens) {
            let jl = keys_in_order(jl, &["addr", "timeout", "connect_timeout"], "listen");
            assert_eq!(jl["addr"], l.addr.to_string());
            assert_eq!(jl["timeout"], u64::from(l.timeout));
            assert_eq!(jl["connect_timeout"], u64::from(l.connect_timeout));
        }
        let keys = [
            "addr",
            "heartbeat",
            "unable",
            "deadline",
            "state",
            "max_connections",
            "max_ip",
            "max_connections_per_ip",
            "connect_timeout",
        ];
        let servers = array(&o["servers"], "servers");
        assert_eq!(servers.len(), r.servers.len());
        for (js, s) in servers.iter().zip(&r.servers) {
            let js = keys_in_order(js, &keys, "server");
            assert_eq!(js["addr"], s.addr.to_string());
            assert_eq!(js["heartbeat"], u64::from(s.heartbeat));
            assert_eq!(js["unable"], u64::from(s.heartbeat > 0));
        }
    }

    // The runtime the proxy would build from it.
    let rt = g6::runtime::Runtime::new(Arc::new(cfg.clone()));
    assert_eq!(rt.by_listen.len(), cfg.listen_count());
    assert_eq!(rt.next_isolation_deadline(), None);
}

/// The config written back as text with every effective value explicit, or `None` when an
/// id cannot be written back (an invalid UTF-8 byte became U+FFFD, 3 bytes, and the id now
/// exceeds the 64-byte token limit).
fn to_config_text(cfg: &Config) -> Option<String> {
    let mut out = String::new();
    let _ = writeln!(out, "(moratorium={});", cfg.moratorium);
    for r in &cfg.rules {
        if r.id.len() > MAX_TOKEN_LEN {
            return None;
        }
        let _ = writeln!(out, "{} {}", r.id, r.alg);
        for c in &r.clients {
            let l = c.limits;
            let _ = writeln!(
                out,
                "  {} (max_connections={}, max_ip={}, max_connections_per_ip={})",
                c.pattern.text, l.max_connections, l.max_ip, l.max_connections_per_ip
            );
        }
        out.push_str("-\n");
        for l in &r.listens {
            let _ = writeln!(
                out,
                "  {}(timeout={},connect_timeout={})",
                l.addr, l.timeout, l.connect_timeout
            );
        }
        if !r.servers.is_empty() || r.alg != Algorithm::Admin {
            out.push_str(">\n");
        }
        for s in &r.servers {
            let l = s.limits;
            let _ = write!(
                out,
                "  {} ( heartbeat = {} , max_connections = {}, max_ip={}, max_connections_per_ip={}",
                s.addr, s.heartbeat, l.max_connections, l.max_ip, l.max_connections_per_ip
            );
            if let Some(ct) = s.connect_timeout {
                let _ = write!(out, ", connect_timeout={ct}");
            }
            out.push_str(" )\n");
        }
        out.push_str(";\n");
    }
    Some(out)
}

/// The model without source positions (they differ between the two texts).
fn without_positions(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    for r in &mut c.rules {
        r.pos = Pos::default();
        r.clients.iter_mut().for_each(|e| e.pos = Pos::default());
        r.listens.iter_mut().for_each(|e| e.pos = Pos::default());
        r.servers.iter_mut().for_each(|e| e.pos = Pos::default());
    }
    c.warnings.iter_mut().for_each(|w| w.pos = Pos::default());
    c
}

fn round_trip(cfg: &Config) {
    let Some(text) = to_config_text(cfg) else {
        return;
    };
    let again = config::parse("again.conf", text.as_bytes())
        .unwrap_or_else(|e| panic!("written-back config rejected: {e}\n--- text ---\n{text}"));
    assert_eq!(
        without_positions(&again),
        without_positions(cfg),
        "written-back config parses differently\n--- text ---\n{text}"
    );
    assert_eq!(render_rules_initial(&again), render_rules_initial(cfg));
}
