//! JSON replies: `show rules json`, `show sessions json`, `show stats json` (SPEC.md §9.6).
//!
//! Each is one JSON document on one line followed by `\n`. Key order is binding; it relies on
//! serde_json's `preserve_order` feature (insertion order = output order).

use serde_json::{Value, json};

use super::snapshot::{
    BlockedEntry, RuleStats, ServerStateView, SessionRow, XdpStats, fmt_sockaddr,
};
use crate::config::Config;

/// `show rules json`: `moratorium`, `rules[]` (`id alg clients[] listens[] servers[]`).
///
/// `state(rule_index, server_index)` gives the runtime state of each server entry; its `hb`
/// is printed as `heartbeat`. A server's `connect_timeout` is its own effective value, or
/// null when it inherits the listener's.
pub fn render_rules_json(cfg: &Config, state: &dyn Fn(usize, usize) -> ServerStateView) -> String {
    let rules: Vec<Value> = cfg
        .rules
        .iter()
        .enumerate()
        .map(|(ri, r)| {
            let clients: Vec<Value> = r
                .clients
                .iter()
                .map(|c| {
                    json!({
                        "pattern": c.pattern.text,
                        "max_connections": c.limits.max_connections,
                        "max_ip": c.limits.max_ip,
                        "max_connections_per_ip": c.limits.max_connections_per_ip,
                    })
                })
                .collect();
            let listens: Vec<Value> = r
                .listens
                .iter()
                .map(|l| {
                    json!({
                        "addr": fmt_sockaddr(&l.addr),
                        "timeout": l.timeout,
                        "connect_timeout": l.connect_timeout,
                    })
                })
                .collect();
            let servers: Vec<Value> = r
                .servers
                .iter()
                .enumerate()
                .map(|(si, s)| {
                    let st = state(ri, si);
                    json!({
                        "addr": fmt_sockaddr(&s.addr),
                        "heartbeat": st.hb,
                        "unable": st.unable,
                        "deadline": st.deadline,
                        "state": st.state,
                        "max_connections": s.limits.max_connections,
                        "max_ip": s.limits.max_ip,
                        "max_connections_per_ip": s.limits.max_connections_per_ip,
                        "connect_timeout": s.connect_timeout,
                    })
                })
                .collect();
            json!({
                "id": r.id,
                "alg": r.alg.as_str(),
                "clients": clients,
                "listens": listens,
                "servers": servers,
            })
        })
        .collect();
    document(json!({ "moratorium": cfg.moratorium, "rules": rules }))
}

/// `show sessions json`: `sessions[]`, each object keyed by its `type`.
pub fn render_sessions_json(rows: &[SessionRow]) -> String {
    let sessions: Vec<Value> = rows.iter().map(session_json).collect();
    document(json!({ "sessions": sessions }))
}

fn session_json(row: &SessionRow) -> Value {
    match row {
        SessionRow::Listen {
            rule,
            listen,
            listen_fd,
        } => json!({
            "type": "LISTEN",
            "rule": rule,
            "listen": fmt_sockaddr(listen),
            "listen_fd": listen_fd,
        }),
        SessionRow::Manager {
            rule,
            peer,
            fd,
            listen,
            listen_fd,
            age_ms,
            idle_ms,
        } => json!({
            "type": "MANAGER",
            "rule": rule,
            "peer": fmt_sockaddr(peer),
            "fd": fd,
            "listen": fmt_sockaddr(listen),
            "listen_fd": listen_fd,
            "age_ms": age_ms,
            "idle_ms": idle_ms,
        }),
        SessionRow::Proxy {
            connected,
            rule,
            client,
            client_fd,
            listen,
            listen_fd,
            server,
            server_fd,
            data_path,
            bytes_in,
            bytes_out,
            age_ms,
            idle_ms,
            client_eof,
            server_eof,
        } => {
            let (status, data_path) = if *connected {
                ("CONNECTED", *data_path)
            } else {
                ("CONNECTING", None)
            };
            json!({
                "type": "PROXY",
                "status": status,
                "rule": rule,
                "client": fmt_sockaddr(client),
                "client_fd": client_fd,
                "listen": fmt_sockaddr(listen),
                "listen_fd": listen_fd,
                "server": fmt_sockaddr(server),
                "server_fd": server_fd,
                "data_path": data_path,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "age_ms": age_ms,
                "idle_ms": idle_ms,
                "client_eof": client_eof,
                "server_eof": server_eof,
            })
        }
    }
}

/// `show stats json`: `rules[]` = `id alg active total refused bytes_in bytes_out servers[]`.
pub fn render_stats_json(rules: &[RuleStats]) -> String {
    document(json!({ "rules": stats_rules(rules) }))
}

/// `show stats json` with the XDP guard as an extra last key [ext]:
/// `"xdp":{"mode","ifaces"[],"dropped_blocked","dropped_not_allowed"}`.
pub fn render_stats_json_with_xdp(rules: &[RuleStats], x: &XdpStats) -> String {
    document(json!({
        "rules": stats_rules(rules),
        "xdp": {
            "mode": x.mode,
            "ifaces": x.ifaces,
            "dropped_blocked": x.dropped_blocked,
            "dropped_not_allowed": x.dropped_not_allowed,
        },
    }))
}

/// `show blocked json` [ext]: `{"blocked":[{"ip","deadline"}]}`.
pub fn render_blocked_json(entries: &[BlockedEntry]) -> String {
    let blocked: Vec<Value> = entries
        .iter()
        .map(|e| json!({ "ip": e.ip.to_string(), "deadline": e.deadline }))
        .collect();
    document(json!({ "blocked": blocked }))
}

fn stats_rules(rules: &[RuleStats]) -> Vec<Value> {
    rules
        .iter()
        .map(|r| {
            let servers: Vec<Value> = r
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "addr": fmt_sockaddr(&s.addr),
                        "state": s.state,
                        "active": s.active,
                        "total": s.total,
                        "failures": s.failures,
                        "bytes_in": s.bytes_in,
                        "bytes_out": s.bytes_out,
                        "rt_us": s.rt_us,
                    })
                })
                .collect();
            json!({
                "id": r.id,
                "alg": r.alg,
                "active": r.active,
                "total": r.total,
                "refused": r.refused,
                "bytes_in": r.bytes_in,
                "bytes_out": r.bytes_out,
                "servers": servers,
            })
        })
        .collect()
}

/// Compact (single-line: control characters are escaped) serialisation + `\n`.
fn document(v: Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::ServerStats;
    use super::*;
    use crate::config::{
        Algorithm, ClientEntry, ClientPattern, Limits, ListenEntry, Pos, Rule, ServerEntry,
    };
    use std::net::SocketAddr;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Parses `s` (must be one line + `\n`) and returns the document.
    fn parse_doc(s: &str) -> Value {
        assert!(s.ends_with('\n'), "{s:?}");
        assert_eq!(s.matches('\n').count(), 1, "{s:?}");
        serde_json::from_str(s.trim_end_matches('\n')).unwrap()
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn sample_config() -> Config {
        let pos = Pos::default();
        let pattern = |text: &str| {
            let (ip, port) = text.rsplit_once(':').unwrap();
            ClientPattern {
                text: text.into(),
                ip: ip.trim_matches(|c| c == '[' || c == ']').into(),
                port: port.into(),
            }
        };
        Config {
            moratorium: 60,
            rules: vec![
                Rule {
                    id: "admin".into(),
                    alg: Algorithm::Admin,
                    clients: vec![ClientEntry {
                        pattern: pattern("127.0.0.1:*"),
                        limits: Limits::default(),
                        pos,
                    }],
                    listens: vec![ListenEntry {
                        addr: sa("127.0.0.1:8600"),
                        timeout: 0,
                        connect_timeout: 5,
                        pos,
                    }],
                    servers: vec![],
                    pos,
                },
                Rule {
                    id: "r\u{fffd}1 \"q\"".into(),
                    alg: Algorithm::RoundRobin,
                    clients: vec![
                        ClientEntry {
                            pattern: pattern("127.0.0.*:*"),
                            limits: Limits {
                                max_connections: 100,
                                max_ip: 10,
                                max_connections_per_ip: 2,
                            },
                            pos,
                        },
                        ClientEntry {
                            pattern: pattern("[::1]:1*"),
                            limits: Limits::default(),
                            pos,
                        },
                    ],
                    listens: vec![ListenEntry {
                        addr: sa("[::]:18601"),
                        timeout: 120,
                        connect_timeout: 3,
                        pos,
                    }],
                    servers: vec![
                        ServerEntry {
                            addr: sa("127.0.0.1:18701"),
                            heartbeat: 0,
                            limits: Limits::default(),
                            connect_timeout: None,
                            pos,
                        },
                        ServerEntry {
                            addr: sa("[2001:db8::1]:18702"),
                            heartbeat: 30,
                            limits: Limits {
                                max_connections: 5,
                                max_ip: 0,
                                max_connections_per_ip: 1,
                            },
                            connect_timeout: Some(0),
                            pos,
                        },
                    ],
                    pos,
                },
            ],
            warnings: vec![],
        }
    }

    fn sample_state(ri: usize, si: usize) -> ServerStateView {
        match (ri, si) {
            (1, 0) => ServerStateView {
                hb: 0,
                unable: 0,
                deadline: 0,
                state: "up",
            },
            (1, 1) => ServerStateView {
                hb: 30,
                unable: 1,
                deadline: 1795235153,
                state: "no-heartbeat",
            },
            _ => unreachable!("no server {ri}/{si}"),
        }
    }

    #[test]
    fn rules_json_exact() {
        let out = render_rules_json(&sample_config(), &sample_state);
        let expected = concat!(
            r#"{"moratorium":60,"rules":["#,
            r#"{"id":"admin","alg":"G","clients":[{"pattern":"127.0.0.1:*","max_connections":0,"max_ip":0,"max_connections_per_ip":0}],"#,
            r#""listens":[{"addr":"127.0.0.1:8600","timeout":0,"connect_timeout":5}],"servers":[]},"#,
            r#"{"id":"r"#,
            "\u{fffd}",
            r#"1 \"q\"","alg":"RR","clients":["#,
            r#"{"pattern":"127.0.0.*:*","max_connections":100,"max_ip":10,"max_connections_per_ip":2},"#,
            r#"{"pattern":"[::1]:1*","max_connections":0,"max_ip":0,"max_connections_per_ip":0}],"#,
            r#""listens":[{"addr":"[::]:18601","timeout":120,"connect_timeout":3}],"#,
            r#""servers":["#,
            r#"{"addr":"127.0.0.1:18701","heartbeat":0,"unable":0,"deadline":0,"state":"up","max_connections":0,"max_ip":0,"max_connections_per_ip":0,"connect_timeout":null},"#,
            r#"{"addr":"[2001:db8::1]:18702","heartbeat":30,"unable":1,"deadline":1795235153,"state":"no-heartbeat","max_connections":5,"max_ip":0,"max_connections_per_ip":1,"connect_timeout":0}"#,
            "]}]}\n",
        );
        assert_eq!(out, expected);

        let doc = parse_doc(&out);
        assert_eq!(keys(&doc), ["moratorium", "rules"]);
        for r in doc["rules"].as_array().unwrap() {
            assert_eq!(keys(r), ["id", "alg", "clients", "listens", "servers"]);
            for c in r["clients"].as_array().unwrap() {
                assert_eq!(
                    keys(c),
                    [
                        "pattern",
                        "max_connections",
                        "max_ip",
                        "max_connections_per_ip"
                    ]
                );
            }
            for l in r["listens"].as_array().unwrap() {
                assert_eq!(keys(l), ["addr", "timeout", "connect_timeout"]);
            }
            for s in r["servers"].as_array().unwrap() {
                assert_eq!(
                    keys(s),
                    [
                        "addr",
                        "heartbeat",
                        "unable",
                        "deadline",
                        "state",
                        "max_connections",
                        "max_ip",
                        "max_connections_per_ip",
                        "connect_timeout"
                    ]
                );
            }
        }
        assert_eq!(doc["rules"][1]["id"], "r\u{fffd}1 \"q\"");
    }

    #[test]
    fn empty_documents() {
        assert_eq!(
            render_rules_json(&Config::default(), &|_, _| unreachable!()),
            "{\"moratorium\":0,\"rules\":[]}\n"
        );
        assert_eq!(render_sessions_json(&[]), "{\"sessions\":[]}\n");
        assert_eq!(render_stats_json(&[]), "{\"rules\":[]}\n");
    }

    #[test]
    fn sessions_json_exact() {
        let rows = vec![
            SessionRow::Listen {
                rule: "admin".into(),
                listen: sa("127.0.0.1:8600"),
                listen_fd: 4,
            },
            SessionRow::Manager {
                rule: "admin".into(),
                peer: sa("127.0.0.1:51234"),
                fd: 9,
                listen: sa("127.0.0.1:8600"),
                listen_fd: 4,
                age_ms: 1500,
                idle_ms: 20,
            },
            SessionRow::Proxy {
                connected: true,
                rule: "r1".into(),
                client: sa("127.0.0.1:40000"),
                client_fd: 12,
                listen: sa("[::]:18601"),
                listen_fd: 5,
                server: sa("[::1]:18701"),
                server_fd: 13,
                data_path: Some("splice"),
                bytes_in: 100,
                bytes_out: 2000,
                age_ms: 30000,
                idle_ms: 5,
                client_eof: true,
                server_eof: false,
            },
            SessionRow::Proxy {
                connected: false,
                rule: "r1".into(),
                client: sa("127.0.0.1:40001"),
                client_fd: 14,
                listen: sa("[::]:18601"),
                listen_fd: 5,
                server: sa("127.0.0.1:18702"),
                server_fd: 15,
                // Forced to null while connecting.
                data_path: Some("copy"),
                bytes_in: 0,
                bytes_out: 0,
                age_ms: 7,
                idle_ms: 7,
                client_eof: false,
                server_eof: false,
            },
        ];
        let out = render_sessions_json(&rows);
        let expected = concat!(
            r#"{"sessions":["#,
            r#"{"type":"LISTEN","rule":"admin","listen":"127.0.0.1:8600","listen_fd":4},"#,
            r#"{"type":"MANAGER","rule":"admin","peer":"127.0.0.1:51234","fd":9,"listen":"127.0.0.1:8600","listen_fd":4,"age_ms":1500,"idle_ms":20},"#,
            r#"{"type":"PROXY","status":"CONNECTED","rule":"r1","client":"127.0.0.1:40000","client_fd":12,"listen":"[::]:18601","listen_fd":5,"server":"[::1]:18701","server_fd":13,"data_path":"splice","bytes_in":100,"bytes_out":2000,"age_ms":30000,"idle_ms":5,"client_eof":true,"server_eof":false},"#,
            r#"{"type":"PROXY","status":"CONNECTING","rule":"r1","client":"127.0.0.1:40001","client_fd":14,"listen":"[::]:18601","listen_fd":5,"server":"127.0.0.1:18702","server_fd":15,"data_path":null,"bytes_in":0,"bytes_out":0,"age_ms":7,"idle_ms":7,"client_eof":false,"server_eof":false}"#,
            "]}\n",
        );
        assert_eq!(out, expected);

        let doc = parse_doc(&out);
        assert_eq!(keys(&doc), ["sessions"]);
        let s = doc["sessions"].as_array().unwrap();
        assert_eq!(keys(&s[0]), ["type", "rule", "listen", "listen_fd"]);
        assert_eq!(
            keys(&s[1]),
            [
                "type",
                "rule",
                "peer",
                "fd",
                "listen",
                "listen_fd",
                "age_ms",
                "idle_ms"
            ]
        );
        for p in &s[2..] {
            assert_eq!(
                keys(p),
                [
                    "type",
                    "status",
                    "rule",
                    "client",
                    "client_fd",
                    "listen",
                    "listen_fd",
                    "server",
                    "server_fd",
                    "data_path",
                    "bytes_in",
                    "bytes_out",
                    "age_ms",
                    "idle_ms",
                    "client_eof",
                    "server_eof"
                ]
            );
        }
        assert!(s[3]["data_path"].is_null());
    }

    #[test]
    fn stats_json_exact() {
        let rules = vec![RuleStats {
            id: "r1".into(),
            alg: "LC",
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
                    state: "disabled",
                    active: 0,
                    total: 0,
                    failures: 4,
                    bytes_in: 0,
                    bytes_out: u64::MAX,
                    rt_us: None,
                },
            ],
        }];
        let out = render_stats_json(&rules);
        let expected = concat!(
            r#"{"rules":[{"id":"r1","alg":"LC","active":2,"total":10,"refused":1,"bytes_in":1234,"bytes_out":5678,"servers":["#,
            r#"{"addr":"127.0.0.1:18701","state":"up","active":2,"total":9,"failures":0,"bytes_in":1234,"bytes_out":5678,"rt_us":250},"#,
            r#"{"addr":"[::1]:18702","state":"disabled","active":0,"total":0,"failures":4,"bytes_in":0,"bytes_out":18446744073709551615,"rt_us":null}"#,
            "]}]}\n",
        );
        assert_eq!(out, expected);

        let doc = parse_doc(&out);
        assert_eq!(keys(&doc), ["rules"]);
        let r = &doc["rules"][0];
        assert_eq!(
            keys(r),
            [
                "id",
                "alg",
                "active",
                "total",
                "refused",
                "bytes_in",
                "bytes_out",
                "servers"
            ]
        );
        for s in r["servers"].as_array().unwrap() {
            assert_eq!(
                keys(s),
                [
                    "addr",
                    "state",
                    "active",
                    "total",
                    "failures",
                    "bytes_in",
                    "bytes_out",
                    "rt_us"
                ]
            );
        }
    }

    #[test]
    fn control_characters_stay_on_one_line() {
        let rules = vec![RuleStats {
            id: "a\nb\r\tc\u{0}".into(),
            alg: "RR",
            active: 0,
            total: 0,
            refused: 0,
            bytes_in: 0,
            bytes_out: 0,
            servers: vec![],
        }];
        let out = render_stats_json(&rules);
        let doc = parse_doc(&out);
        assert_eq!(doc["rules"][0]["id"], "a\nb\r\tc\u{0}");
    }
}
