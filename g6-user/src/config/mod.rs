//! The G6 configuration language (SPEC.md §4): lexer, parser/validator, typed model, and the
//! `show rules` text rendering.
//!
//! ```
//! let cfg = g6::config::parse("G6.conf", b"admin G 127.0.0.1:* - 127.0.0.1:8600 ;").unwrap();
//! assert_eq!(
//!     g6::config::check_summary("G6.conf", &cfg),
//!     "G6.conf: ok, 1 rules, 1 listen addresses, 0 server entries"
//! );
//! ```

pub mod error;
mod lexer;
pub mod model;
mod parser;
pub mod render;

use std::path::Path;

pub use error::{AddrList, ConfigError, ErrorKind, Found, MAX_TOKEN_LEN, Place, Unit};
pub use model::*;
pub use render::{ServerTriple, initial_triple, render_rules, render_rules_initial};

/// Parses and validates a configuration; `file_label` is the `<file>` of diagnostics.
pub fn parse(file_label: &str, src: &[u8]) -> Result<Config, ConfigError> {
    parser::parse(src).map_err(|(pos, kind)| ConfigError::At {
        file: file_label.to_owned(),
        pos,
        kind,
    })
}

/// Reads and parses the file at `path`; diagnostics name it as given.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let label = path.display().to_string();
    match std::fs::read(path) {
        Ok(src) => parse(&label, &src),
        Err(e) => Err(ConfigError::Open {
            file: label,
            reason: e.to_string(),
        }),
    }
}

/// `<file>:<line>:<col>: warning: <message>` (SPEC.md §4.5).
pub fn format_warning(file_label: &str, w: &Warning) -> String {
    format!("{file_label}:{}: warning: {}", w.pos, w.message)
}

/// The `--check` line (SPEC.md §2).
pub fn check_summary(conf_label: &str, cfg: &Config) -> String {
    format!(
        "{conf_label}: ok, {} rules, {} listen addresses, {} server entries",
        cfg.rules.len(),
        cfg.listen_count(),
        cfg.server_count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    fn sample_conf() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/G6.conf");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn sample_config_is_clean() {
        let cfg = parse("G6.conf", &sample_conf()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.warnings, []);
        assert_eq!(cfg.moratorium, 0);
        assert_eq!(
            render_rules_initial(&cfg),
            "admin | G | 127.0.0.1:* - 127.0.0.1:8600 \n\
             demo | RR | 127.0.0.1:* - 127.0.0.1:8080 > 127.0.0.1:8081(0|0|0) 127.0.0.1:8082(0|0|0) \n"
        );
    }

    /// Every commented-out example of the sample config is itself a clean config.
    #[test]
    fn sample_config_examples_are_valid() {
        let text = String::from_utf8(sample_conf()).expect("sample is UTF-8");
        let mut count = 0;
        for (at, _) in text.match_indices("/* example:") {
            let body = &text[at + "/* example:".len()..];
            let body = &body[..body.find("*/").expect("example closed")];
            let cfg = parse("example", body.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{body}"));
            assert_eq!(cfg.warnings, [], "{body}");
            assert!(!cfg.rules.is_empty());
            count += 1;
        }
        assert!(count >= 10, "only {count} examples");
    }

    #[test]
    fn summary_and_warning_lines() {
        let cfg = parse(
            "x.conf",
            b"a G - 1.1.1.1:1 ;\nb RR *:* - 1.1.1.1:2 1.1.1.1:3 > 2.2.2.2:1 2.2.2.2:2 ;\n  c RR *:* - > ;",
        )
        .expect("valid");
        assert_eq!(
            check_summary("x.conf", &cfg),
            "x.conf: ok, 3 rules, 3 listen addresses, 2 server entries"
        );
        let w: Vec<_> = cfg
            .warnings
            .iter()
            .map(|w| format_warning("x.conf", w))
            .collect();
        assert_eq!(
            w,
            [
                "x.conf:1:1: warning: rule 'a' has no client patterns: its clients are refused",
                "x.conf:3:3: warning: rule 'c' has no servers: its clients are refused",
            ]
        );
    }

    // ---- Random valid configurations: model → text → parse → compare. ----

    /// An attribute with its written text and value in base units.
    #[derive(Debug, Clone)]
    struct GenAttr {
        name: &'static str,
        text: String,
        value: u32,
    }

    type GenBlock = (Vec<GenAttr>, bool /* trailing comma */);

    #[derive(Debug, Clone)]
    struct GenAddr {
        /// Client pattern (or server address) as written; listen addresses get theirs later.
        text: String,
        /// For client patterns: the expected globs.
        globs: (String, String),
        v6: bool,
        blocks: Vec<GenBlock>,
    }

    #[derive(Debug, Clone)]
    struct GenRule {
        alg: &'static str,
        /// G rules may omit `>`; other rules always have it.
        gt: bool,
        /// client, listen, server: (list default blocks, addresses).
        lists: [(Vec<GenBlock>, Vec<GenAddr>); 3],
    }

    #[derive(Debug, Clone)]
    enum Stmt {
        Global(GenBlock),
        Rule(GenRule),
    }

    const TIME: &[&str] = &["moratorium", "timeout", "connect_timeout", "heartbeat"];
    const GLOBAL: &[&str] = &[
        "moratorium",
        "timeout",
        "connect_timeout",
        "max_connections",
        "max_ip",
        "max_connections_per_ip",
    ];
    const CLIENT: &[&str] = &["max_connections", "max_ip", "max_connections_per_ip"];
    const LISTEN: &[&str] = &["timeout", "connect_timeout"];
    const SERVER: &[&str] = &[
        "connect_timeout",
        "heartbeat",
        "max_connections",
        "max_ip",
        "max_connections_per_ip",
    ];

    fn attr(names: &'static [&'static str]) -> impl Strategy<Value = GenAttr> {
        (prop::sample::select(names), 0u32..4000, 0usize..7).prop_map(|(name, n, s)| {
            let (suffixes, mults): (&[&str], &[u32]) = if TIME.contains(&name) {
                (
                    &["", "s", "S", "m", "M", "h", "H"],
                    &[1, 1, 1, 60, 60, 3600, 3600],
                )
            } else {
                (
                    &["", "k", "K", "m", "M"],
                    &[1, 1000, 1000, 1_000_000, 1_000_000],
                )
            };
            let s = s % suffixes.len();
            GenAttr {
                name,
                text: format!("{n}{}", suffixes[s]),
                value: n * mults[s],
            }
        })
    }

    fn block(names: &'static [&'static str]) -> impl Strategy<Value = GenBlock> {
        (prop::collection::vec(attr(names), 0..3), any::<bool>())
    }

    fn blocks(names: &'static [&'static str]) -> impl Strategy<Value = Vec<GenBlock>> {
        prop::collection::vec(block(names), 0..3)
    }

    /// A client pattern text with its expected (ip, port) globs.
    fn client_pattern() -> impl Strategy<Value = (String, (String, String), bool)> {
        let octet = prop_oneof![
            (0u8..=255).prop_map(|o| o.to_string()),
            Just("*".to_string()),
            Just("?".to_string()),
            (1u8..=25).prop_map(|o| format!("{o}?")),
        ];
        let port = prop_oneof![
            Just("*".to_string()),
            (1u16..=65535).prop_map(|p| p.to_string()),
            (1u16..=6553).prop_map(|p| format!("{p}?")),
            (1u16..=999).prop_map(|p| format!("{p}*")),
        ];
        let v4 = (prop::array::uniform4(octet), port.clone()).prop_map(|(o, port)| {
            let ip = o.join(".");
            (format!("{ip}:{port}"), (ip, port), false)
        });
        let v6 = (any::<u128>(), any::<bool>(), port).prop_map(|(bits, wild, port)| {
            let full = Ipv6Addr::from(bits).to_string();
            let ip = if wild {
                format!("{}*", &full[..full.len() / 2])
            } else {
                full
            };
            (format!("[{ip}]:{port}"), (ip, port), true)
        });
        prop_oneof![4 => v4, 1 => v6]
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((Ipv4Addr::from(ip), p))),
            (any::<u128>(), 1u16..).prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
        ]
    }

    fn addr_with_blocks(
        names: &'static [&'static str],
        addr: impl Strategy<Value = (String, (String, String), bool)>,
    ) -> impl Strategy<Value = GenAddr> {
        (addr, blocks(names)).prop_map(|((text, globs, v6), blocks)| GenAddr {
            text,
            globs,
            v6,
            blocks,
        })
    }

    fn list(
        names: &'static [&'static str],
        addr: impl Strategy<Value = (String, (String, String), bool)>,
    ) -> impl Strategy<Value = (Vec<GenBlock>, Vec<GenAddr>)> {
        (
            blocks(names),
            prop::collection::vec(addr_with_blocks(names, addr), 0..4),
        )
    }

    fn rule() -> impl Strategy<Value = GenRule> {
        let listen =
            any::<bool>().prop_map(|v6| (String::new(), (String::new(), String::new()), v6));
        let server =
            socket_addr().prop_map(|a| (a.to_string(), (String::new(), String::new()), false));
        (
            prop::sample::select(&["G", "MS", "RR", "LC", "RT", "RD", "HS"][..]),
            any::<bool>(),
            list(CLIENT, client_pattern()),
            list(LISTEN, listen),
            list(SERVER, server),
        )
            .prop_map(|(alg, gt, c, l, s)| {
                let gt = gt || alg != "G";
                let s = if gt { s } else { (Vec::new(), Vec::new()) };
                GenRule {
                    alg,
                    gt,
                    lists: [c, l, s],
                }
            })
    }

    fn stmts() -> impl Strategy<Value = Vec<Stmt>> {
        prop::collection::vec(
            prop_oneof![1 => block(GLOBAL).prop_map(Stmt::Global), 3 => rule().prop_map(Stmt::Rule)],
            0..6,
        )
    }

    /// Writes tokens with chosen separators, tracking each token's position.
    struct Writer {
        out: String,
        line: u32,
        col: u32,
        seps: Vec<usize>,
        n: usize,
        prev_punct: bool,
    }

    const SEPS: &[&str] = &[
        " ",
        "\n",
        "\t",
        "  ",
        " /* c ; */ ",
        "/*c*/",
        "//c ( x\n",
        "\r\n",
    ];

    impl Writer {
        fn raw(&mut self, s: &str) {
            for b in s.bytes() {
                if b == b'\n' {
                    self.line += 1;
                    self.col = 1;
                } else {
                    self.col += 1;
                }
            }
            self.out.push_str(s);
        }

        fn tok(&mut self, t: &str) -> Pos {
            let punct = matches!(t, "(" | ")" | "=" | "," | ";");
            let k = self.seps[self.n % self.seps.len()];
            self.n += 1;
            // Punctuation needs no separator; words do (comments count as separators).
            let sep = if (punct || self.prev_punct) && k.is_multiple_of(3) {
                ""
            } else {
                SEPS[k % SEPS.len()]
            };
            self.raw(sep);
            let pos = Pos {
                line: self.line,
                col: self.col,
            };
            self.raw(t);
            self.prev_punct = punct;
            pos
        }

        fn block(&mut self, (attrs, comma): &GenBlock) {
            self.tok("(");
            for (i, a) in attrs.iter().enumerate() {
                if i > 0 {
                    self.tok(",");
                }
                self.tok(a.name);
                self.tok("=");
                self.tok(&a.text);
            }
            if *comma && !attrs.is_empty() {
                self.tok(",");
            }
            self.tok(")");
        }
    }

    /// Last value of `name` set in `blocks` (later blocks and later attributes win).
    fn lookup(blocks: &[GenBlock], name: &str) -> Option<u32> {
        blocks
            .iter()
            .flat_map(|(attrs, _)| attrs)
            .rfind(|a| a.name == name)
            .map(|a| a.value)
    }

    /// Renders the statements and builds, independently of the parser, the expected model.
    fn build(stmts: &[Stmt], seps: Vec<usize>) -> (String, Config) {
        let mut w = Writer {
            out: String::new(),
            line: 1,
            col: 1,
            seps,
            n: 0,
            prev_punct: true,
        };
        let mut cfg = Config::default();
        let mut global: HashMap<&str, u32> = HashMap::new();
        let mut listen_port = 10000u16;
        for (ri, stmt) in stmts.iter().enumerate() {
            match stmt {
                Stmt::Global(b) => {
                    w.block(b);
                    w.tok(";");
                    for a in &b.0 {
                        global.insert(a.name, a.value);
                        if a.name == "moratorium" {
                            cfg.moratorium = a.value;
                        }
                    }
                }
                Stmt::Rule(r) => {
                    let id = format!("r{ri}");
                    let pos = w.tok(&id);
                    w.tok(r.alg);
                    let [(cd, ca), (ld, la), (sd, sa)] = &r.lists;
                    let eff = |own: &[GenBlock], def: &[GenBlock], name: &str, inherit: bool| {
                        lookup(own, name)
                            .or_else(|| lookup(def, name))
                            .or_else(|| inherit.then(|| global.get(name).copied()).flatten())
                    };
                    let mut rule = Rule {
                        id: id.clone(),
                        alg: Algorithm::from_token(r.alg.as_bytes()).expect("alg"),
                        clients: Vec::new(),
                        listens: Vec::new(),
                        servers: Vec::new(),
                        pos,
                    };
                    cd.iter().for_each(|b| w.block(b));
                    for a in ca {
                        let pos = w.tok(&a.text);
                        a.blocks.iter().for_each(|b| w.block(b));
                        let lim = |n| eff(&a.blocks, cd, n, true).unwrap_or(0);
                        rule.clients.push(ClientEntry {
                            pattern: ClientPattern {
                                text: a.text.clone(),
                                ip: a.globs.0.clone(),
                                port: a.globs.1.clone(),
                            },
                            limits: Limits {
                                max_connections: lim("max_connections"),
                                max_ip: lim("max_ip"),
                                max_connections_per_ip: lim("max_connections_per_ip"),
                            },
                            pos,
                        });
                    }
                    w.tok("-");
                    ld.iter().for_each(|b| w.block(b));
                    for a in la {
                        listen_port += 1;
                        let addr: SocketAddr = if a.v6 {
                            (Ipv6Addr::LOCALHOST, listen_port).into()
                        } else {
                            (Ipv4Addr::LOCALHOST, listen_port).into()
                        };
                        let pos = w.tok(&addr.to_string());
                        a.blocks.iter().for_each(|b| w.block(b));
                        rule.listens.push(ListenEntry {
                            addr,
                            timeout: eff(&a.blocks, ld, "timeout", true).unwrap_or(0),
                            connect_timeout: eff(&a.blocks, ld, "connect_timeout", true)
                                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
                            pos,
                        });
                    }
                    if r.gt {
                        w.tok(">");
                        sd.iter().for_each(|b| w.block(b));
                        for a in sa {
                            let pos = w.tok(&a.text);
                            a.blocks.iter().for_each(|b| w.block(b));
                            let lim = |n| eff(&a.blocks, sd, n, false).unwrap_or(0);
                            rule.servers.push(ServerEntry {
                                addr: a.text.parse().expect("generated address"),
                                heartbeat: lim("heartbeat"),
                                limits: Limits {
                                    max_connections: lim("max_connections"),
                                    max_ip: lim("max_ip"),
                                    max_connections_per_ip: lim("max_connections_per_ip"),
                                },
                                connect_timeout: eff(&a.blocks, sd, "connect_timeout", false),
                                pos,
                            });
                        }
                    }
                    w.tok(";");
                    let mut warn = |what: &str| {
                        cfg.warnings.push(Warning {
                            pos,
                            message: format!("rule '{id}' has no {what}: its clients are refused"),
                        })
                    };
                    if rule.clients.is_empty() {
                        warn("client patterns");
                    }
                    if r.alg != "G" && rule.servers.is_empty() {
                        warn("servers");
                    }
                    cfg.rules.push(rule);
                }
            }
        }
        (w.out, cfg)
    }

    /// Expected `show rules` text, from the generated statements.
    fn expected_show_rules(cfg: &Config) -> String {
        cfg.rules
            .iter()
            .map(|r| {
                let clients: String = r
                    .clients
                    .iter()
                    .map(|c| format!("{} ", c.pattern.text))
                    .collect();
                let listens: String = r.listens.iter().map(|l| format!("{} ", l.addr)).collect();
                let servers: String = r
                    .servers
                    .iter()
                    .map(|s| {
                        format!(
                            "{}({}|{}|0) ",
                            s.addr,
                            s.heartbeat,
                            u8::from(s.heartbeat > 0)
                        )
                    })
                    .collect();
                let gt = if r.servers.is_empty() { "" } else { "> " };
                format!("{} | {} | {clients}- {listens}{gt}{servers}\n", r.id, r.alg)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn generated_configs_round_trip(
            stmts in stmts(),
            seps in prop::collection::vec(0usize..1000, 1..50),
        ) {
            let (text, want) = build(&stmts, seps);
            let got = parse("gen", text.as_bytes());
            prop_assert_eq!(got.as_ref(), Ok(&want), "text:\n{}", text);
            prop_assert_eq!(render_rules_initial(&want), expected_show_rules(&want));
        }

        #[test]
        fn random_bytes_never_panic(src in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse("fuzz", &src);
        }

        #[test]
        fn token_soup_never_panics(
            toks in prop::collection::vec(prop::sample::select(&[
                "(", ")", "=", ",", ";", "-", ">", "G", "RR", "HS", "r", "r", "*:*", "127.0.0.1:80",
                "127.0.0.1:81", "[::1]:80", "[::", "]:", "timeout", "heartbeat", "max_ip", "5m",
                "0", "/*", "*/", "//", "\n", "1.2.3.4:*", "?", "[fe80::*]:1?", "99999999999k",
            ][..]), 0..40),
            glue in prop::collection::vec(any::<bool>(), 40),
        ) {
            let mut src = String::new();
            for (t, g) in toks.iter().zip(&glue) {
                src.push_str(t);
                if !g {
                    src.push(' ');
                }
            }
            if let Ok(cfg) = parse("soup", src.as_bytes()) {
                // Whatever was accepted is consistent.
                let mut seen = std::collections::HashSet::new();
                prop_assert!(cfg.listeners().all(|(_, _, l)| seen.insert(l.addr)));
                let _ = render_rules_initial(&cfg);
            }
        }

        /// A port is accepted exactly when it is 1..65535.
        #[test]
        fn ports_accepted_iff_in_range(n in 0u64..200_000) {
            let r = parse("p", format!("a G - 1.1.1.1:{n} ;").as_bytes());
            prop_assert_eq!(r.is_ok(), (1..=65535).contains(&n));
        }

        /// An octet is accepted exactly when it is 0..255 written without leading zeros.
        #[test]
        fn octets_accepted_iff_valid(n in 0u32..400, zero in any::<bool>()) {
            let o = if zero { format!("0{n}") } else { n.to_string() };
            let r = parse("p", format!("a G 1.{o}.1.1:* - 1.1.{o}.1:1 ;").as_bytes());
            prop_assert_eq!(r.is_ok(), n <= 255 && !zero);
        }

        /// Values are accepted exactly when value × unit fits in 32 bits.
        #[test]
        fn values_accepted_iff_no_overflow(n in 0u64..10_000_000_000, s in 0usize..4) {
            let (suffix, mult) = [("", 1u64), ("s", 1), ("m", 60), ("h", 3600)][s];
            let r = parse("v", format!("(timeout={n}{suffix});").as_bytes());
            prop_assert_eq!(r.is_ok(), n * mult <= u64::from(u32::MAX));
        }

        /// A pattern derived from a client's own address text by wildcards matches it.
        #[test]
        fn derived_patterns_match(
            ip in prop_oneof![
                any::<u32>().prop_map(|b| std::net::IpAddr::from(Ipv4Addr::from(b))),
                any::<u128>().prop_map(|b| std::net::IpAddr::from(Ipv6Addr::from(b))),
            ],
            port in 1u16..,
            qmarks in prop::collection::vec(any::<bool>(), 40),
            star in (0usize..40, 0usize..40),
        ) {
            let text = ip.to_string();
            let mut pat: Vec<u8> = text
                .bytes()
                .zip(&qmarks)
                .map(|(b, &q)| if q && b != b':' && b != b'.' { b'?' } else { b })
                .collect();
            let (a, b) = (star.0.min(pat.len()), star.1.min(pat.len()));
            let (a, b) = (a.min(b), a.max(b));
            pat.splice(a..b, *b"*");
            let pat = String::from_utf8(pat).expect("ascii");
            let pat = if ip.is_ipv6() { format!("[{pat}]:{port}") } else { format!("{pat}:{port}") };
            let cfg = parse("m", format!("r RR {pat} - > ;").as_bytes());
            let cfg = cfg.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let rule = &cfg.rules[0];
            prop_assert_eq!(rule.match_client(SocketAddr::new(ip, port)), Some(0));
            let other = if port == 1 { 2 } else { port - 1 };
            prop_assert_eq!(rule.match_client(SocketAddr::new(ip, other)), None);
        }
    }
}
