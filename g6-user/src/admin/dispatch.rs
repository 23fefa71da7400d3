//! Runs one admin line against the agent's state (SPEC.md §9.2 and the [ext] commands), with
//! no socket and no clock of its own: the server (`proxy::admin_conn`) and the fuzz target
//! `admin_dispatch` call this same code, the latter on a simulated clock.
//!
//! What needs the live process comes in through [`AdminState`]: the runtime, the block list,
//! and providers for the `show sessions` rows (fd numbers) and the XDP counters. Closing the
//! connection on `quit` is left to the caller, reported as [`Effect::Close`].

use std::net::IpAddr;

use super::{
    BlockedEntry, Command, SessionRow, ShowWhat, VERB_DISABLE, VERB_ENABLE, VERB_HEARTBEAT,
    XdpStats,
};
use crate::config::render_rules;
use crate::guard::BlockList;
use crate::isolation::{Isolation, Now};
use crate::runtime::{Runtime, lock};

/// What the socket layer must do after a line, besides sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Continue,
    /// `quit`: send nothing more, close the connection.
    Close,
}

/// The state a command reads or changes.
pub struct AdminState<'a> {
    pub runtime: &'a Runtime,
    pub blocklist: &'a BlockList,
    /// `show sessions` rows, asked for only by that command.
    pub sessions: &'a dyn Fn() -> Vec<SessionRow>,
    /// The `xdp` line / key of `show stats`.
    pub xdp: &'a dyn Fn() -> XdpStats,
}

/// One reading of the clocks a command uses: wall + monotonic for server isolation, and
/// CLOCK_MONOTONIC in ns for block deadlines (the XDP guard's clock).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Now,
    pub mono_ns: u64,
}

impl Clock {
    /// The real clocks.
    pub fn read() -> Self {
        Self {
            now: Now::now(),
            mono_ns: crate::guard::blocklist::mono_ns(),
        }
    }
}

/// Parses and runs `line`, appending its reply to `out`.
pub fn execute_line(state: &AdminState, line: &[u8], clock: Clock, out: &mut Vec<u8>) -> Effect {
    execute(state, &super::parse_command(line), clock, out)
}

/// Runs `command`, appending its reply to `out`.
pub fn execute(state: &AdminState, command: &Command, clock: Clock, out: &mut Vec<u8>) -> Effect {
    if let Some(fixed) = command.fixed_reply() {
        out.extend_from_slice(&fixed);
        if *command == Command::Help {
            out.extend_from_slice(super::help_ext_text().as_bytes());
        }
        return Effect::Continue;
    }
    let rt = state.runtime;
    let now = clock.now;
    let reply = match *command {
        Command::Quit => return Effect::Close,
        Command::Show { what, json } => show(state, what, json, now),
        Command::Block { .. } | Command::Unblock { .. } | Command::ShowBlocked { .. } => {
            block_command(state.blocklist, command, clock)
        }
        Command::Disable { ip, port, secs } => {
            for_servers(rt, ip, port, VERB_DISABLE, now, |iso, now| {
                iso.disable(secs, now);
                true
            })
        }
        Command::Enable { ip, port, secs } => {
            for_servers(rt, ip, port, VERB_ENABLE, now, |iso, now| {
                iso.enable(secs, now);
                true
            })
        }
        Command::Heartbeat { ip, port } => {
            for_servers(rt, ip, port, VERB_HEARTBEAT, now, |iso, now| {
                iso.heartbeat(now)
            })
        }
        // Handled by `fixed_reply` above.
        Command::Empty
        | Command::Help
        | Command::ShowUsage
        | Command::Usage(_)
        | Command::Invalid(_) => String::new(),
    };
    out.extend_from_slice(reply.as_bytes());
    Effect::Continue
}

fn show(state: &AdminState, what: ShowWhat, json: bool, now: Now) -> String {
    let rt = state.runtime;
    match (what, json) {
        (ShowWhat::Rules, false) => {
            render_rules(&rt.config, &|ri, si| rt.rules[ri].servers[si].triple(now))
        }
        (ShowWhat::Rules, true) => {
            super::render_rules_json(&rt.config, &|ri, si| rt.server_state_view(ri, si, now))
        }
        (ShowWhat::Sessions, false) => super::render_sessions_text(&(state.sessions)()),
        (ShowWhat::Sessions, true) => super::render_sessions_json(&(state.sessions)()),
        (ShowWhat::Stats, false) => {
            let mut text = super::render_stats_text(&rt.stats(now));
            text.push_str(&super::render_xdp_text(&(state.xdp)()));
            text
        }
        (ShowWhat::Stats, true) => {
            super::render_stats_json_with_xdp(&rt.stats(now), &(state.xdp)())
        }
    }
}

/// Applies `op` to every server entry at `ip:port`; one reply line per entry it reports.
fn for_servers(
    rt: &Runtime,
    ip: IpAddr,
    port: u16,
    verb: &str,
    now: Now,
    op: impl Fn(&mut Isolation, Now) -> bool,
) -> String {
    let mut reply = String::new();
    for (rule, server) in rt.servers_at(ip, port) {
        let mut iso = lock(&server.isolation);
        if op(&mut iso, now) {
            tracing::warn!(
                "rule {}: server {} {verb} by admin; now {}",
                rule.id,
                server.text,
                iso.state_name(now)
            );
            reply.push_str(&super::reply_matches(&rule.id, ip, port, verb));
        }
    }
    reply
}

/// `block`, `unblock`, `show blocked` [ext]; unblocking a source not blocked replies nothing.
fn block_command(list: &BlockList, command: &Command, clock: Clock) -> String {
    match *command {
        Command::Block { ip, secs } => match list.block_at(ip, secs, clock.now, clock.mono_ns) {
            Ok(_) => {
                tracing::warn!(
                    "{ip} blocked by admin{}",
                    secs.map_or(String::new(), |s| format!(" for {s} s"))
                );
                super::reply_blocked(ip)
            }
            Err(e) => {
                tracing::warn!("block {ip}: {e}");
                super::reply_block_full(ip)
            }
        },
        Command::Unblock { ip } if list.unblock_at(ip, clock.mono_ns) => {
            tracing::warn!("{ip} unblocked by admin");
            super::reply_unblocked(ip)
        }
        Command::ShowBlocked { json } => {
            let entries: Vec<BlockedEntry> = list
                .list_at(clock.mono_ns)
                .into_iter()
                .map(|(ip, b)| BlockedEntry {
                    ip,
                    deadline: b.epoch_deadline,
                })
                .collect();
            if json {
                super::render_blocked_json(&entries)
            } else {
                super::render_blocked_text(&entries)
            }
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn run(state: &AdminState, line: &str, clock: Clock) -> (String, Effect) {
        let mut out = Vec::new();
        let effect = execute_line(state, line.as_bytes(), clock, &mut out);
        (String::from_utf8(out).expect("ASCII reply"), effect)
    }

    /// The block list follows the clock passed in, not the real one.
    #[test]
    fn block_commands_on_a_given_clock() {
        let cfg =
            crate::config::parse("t", b"a RR *:* - 127.0.0.1:1 > 127.0.0.1:2 ;").expect("config");
        let rt = Runtime::new(Arc::new(cfg));
        let blocklist = BlockList::default();
        let state = AdminState {
            runtime: &rt,
            blocklist: &blocklist,
            sessions: &Vec::new,
            xdp: &|| XdpStats {
                mode: "off",
                ifaces: Vec::new(),
                dropped_blocked: 0,
                dropped_not_allowed: 0,
            },
        };
        let t0 = Clock {
            now: Now::now(),
            mono_ns: 5_000_000_000,
        };
        let later = |ms: u64| Clock {
            now: t0.now.plus_ms(ms),
            mono_ns: t0.mono_ns + ms * 1_000_000,
        };
        let epoch = t0.now.epoch_ms / 1000;
        assert_eq!(run(&state, "block ::1 10", t0).0, "::1 blocked\n");
        assert_eq!(
            run(&state, "block 198.18.0.1", t0).0,
            "198.18.0.1 blocked\n"
        );
        let listed = format!("198.18.0.1 0\n::1 {}\n", epoch + 10);
        assert_eq!(run(&state, "show blocked", later(9_999)).0, listed);
        assert_eq!(
            run(&state, "show blocked", later(10_000)).0,
            "198.18.0.1 0\n"
        );
        assert_eq!(run(&state, "unblock ::1", later(10_000)).0, "");
        assert_eq!(
            run(&state, "unblock 198.18.0.1", t0).0,
            "198.18.0.1 unblocked\n"
        );
        assert_eq!(run(&state, "show blocked json", t0).0, "{\"blocked\":[]}\n");
        assert_eq!(run(&state, "quit", t0), (String::new(), Effect::Close));
        let (help, effect) = run(&state, "?", t0);
        assert!(help.ends_with("show blocked [json]\n") && effect == Effect::Continue);
    }
}
