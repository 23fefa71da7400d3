//! The `show rules` text (SPEC.md §9.3), byte for byte.

use std::fmt;

use super::model::{Config, ServerEntry, fmt_addr};

/// A server entry's isolation state as `show rules` prints it: `(hb|unable|deadline)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerTriple {
    /// Effective heartbeat period, seconds.
    pub hb: u32,
    /// 1 = not available now.
    pub unable: u32,
    /// Wall-clock epoch seconds of the next transition; 0 = none.
    pub deadline: u64,
}

impl fmt::Display for ServerTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}|{}|{})", self.hb, self.unable, self.deadline)
    }
}

/// Load-time state (SPEC.md §7): UP without heartbeat, DOWN awaiting the first heartbeat.
pub fn initial_triple(s: &ServerEntry) -> ServerTriple {
    ServerTriple {
        hb: s.heartbeat,
        unable: u32::from(s.heartbeat > 0),
        deadline: 0,
    }
}

/// One line per rule: `<id> | <ALG> | {<client> }- {<listen> }[> {<server>(<triple>) }]\n`.
/// `state(rule_index, server_index)` supplies each server's current triple.
pub fn render_rules(cfg: &Config, state: &dyn Fn(usize, usize) -> ServerTriple) -> String {
    let mut out = String::new();
    for (ri, rule) in cfg.rules.iter().enumerate() {
        out.push_str(&format!("{} | {} | ", rule.id, rule.alg));
        for c in &rule.clients {
            out.push_str(&c.pattern.text);
            out.push(' ');
        }
        out.push_str("- ");
        for l in &rule.listens {
            out.push_str(&fmt_addr(&l.addr));
            out.push(' ');
        }
        if !rule.servers.is_empty() {
            out.push_str("> ");
            for (si, s) in rule.servers.iter().enumerate() {
                out.push_str(&format!("{}{} ", fmt_addr(&s.addr), state(ri, si)));
            }
        }
        out.push('\n');
    }
    out
}

/// `show rules` right after loading `cfg`.
pub fn render_rules_initial(cfg: &Config) -> String {
    render_rules(cfg, &|ri, si| initial_triple(&cfg.rules[ri].servers[si]))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn cfg(src: &str) -> Config {
        parse("t.conf", src.as_bytes()).expect("valid config")
    }

    #[test]
    fn spec_9_3_examples() {
        let c = cfg("admin G 127.0.0.1:* - 127.0.0.1:8600 ;
             r1 RR 127.0.0.*:* 127.0.0.1:* - 127.0.0.1:18601 127.0.0.1:18602
                > 127.0.0.1:18701 127.0.0.1:18702 ;
             r2 MS 127.0.0.?:1* - 127.0.0.1:18603 > (heartbeat=30) 127.0.0.1:18701 ;");
        let state = |ri: usize, si: usize| match (ri, si) {
            (1, 1) => ServerTriple {
                hb: 0,
                unable: 1,
                deadline: 1_795_235_153,
            },
            _ => initial_triple(&c.rules[ri].servers[si]),
        };
        assert_eq!(
            render_rules(&c, &state),
            "admin | G | 127.0.0.1:* - 127.0.0.1:8600 \n\
             r1 | RR | 127.0.0.*:* 127.0.0.1:* - 127.0.0.1:18601 127.0.0.1:18602 > 127.0.0.1:18701(0|0|0) 127.0.0.1:18702(0|1|1795235153) \n\
             r2 | MS | 127.0.0.?:1* - 127.0.0.1:18603 > 127.0.0.1:18701(30|1|0) \n"
        );
    }

    #[test]
    fn initial_state_and_ipv6() {
        let c = cfg("v6 RD [FE80::*]:* [::1]:8? - [::]:8080 [0:0::1]:8081
                     > [2001:DB8::1]:80 (heartbeat=1m) 10.0.0.1:80 ;");
        assert_eq!(
            render_rules_initial(&c),
            "v6 | RD | [FE80::*]:* [::1]:8? - [::]:8080 [::1]:8081 > [2001:db8::1]:80(60|1|0) 10.0.0.1:80(0|0|0) \n"
        );
    }

    #[test]
    fn empty_lists_and_g_rule_servers() {
        let c = cfg("a G - ; b RR - > ; c G *:* - 127.0.0.1:1 > 10.0.0.1:2 ;");
        assert_eq!(
            render_rules_initial(&c),
            "a | G | - \nb | RR | - \nc | G | *:* - 127.0.0.1:1 > 10.0.0.1:2(0|0|0) \n"
        );
        assert_eq!(render_rules_initial(&Config::default()), "");
    }
}
