//! End to end: server isolation (SPEC §7) and its timing (SPEC §8) — moratorium, heartbeat,
//! admin disable/enable with and without a duration — seen through `show rules` triples,
//! `show stats` states and where clients land.

mod e2e;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::*;
use support::*;

/// Polling bound for timed transitions (they are at most 3 s away). Timed states last 3 s,
/// not 1: what a test checks inside one (admin round trips, client sessions) must fit in it
/// on a loaded 2-core machine.
const TRANSITION_WAIT: Duration = Duration::from_secs(8);

fn ip_port(s: SocketAddr) -> String {
    format!("{} {}", s.ip(), s.port())
}

/// A displayed deadline (epoch seconds, truncated) set `secs` after some instant that lies
/// between the wall-clock readings `before_ms` and `after_ms`.
fn assert_deadline(d: u64, secs: u64, before_ms: u64, after_ms: u64) {
    let (lo, hi) = (
        (before_ms + secs * 1000) / 1000,
        (after_ms + secs * 1000) / 1000,
    );
    assert!(
        (lo..=hi).contains(&d),
        "deadline {d} not in [{lo}, {hi}] (now+{secs}s)"
    );
}

/// Waits for the triple to satisfy `pred` and checks when that happened. g6 set the timed
/// state at some instant within `set` (from just before the command or failure to just after
/// its reply), so the transition is due at `set + after`, within 100 ms either side (SPEC §8).
/// Checked so that a slow machine cannot fail it, only a wrong g6: a reply showing the new
/// state received before the due time − 100 ms, or one showing the old state for a query
/// sent after the due time + 100 ms (g6 computes the state when it handles the query).
fn expect_transition(
    a: SocketAddr,
    rule: &str,
    server: SocketAddr,
    set: (Instant, Instant),
    after: Duration,
    pred: impl Fn((u32, u32, u64)) -> bool,
) -> (u32, u32, u64) {
    let tol = Duration::from_millis(100);
    let mut last_old_sent = None;
    let found = wait_for(TRANSITION_WAIT, || {
        let sent = Instant::now();
        let t = triple(a, rule, server);
        if pred(t) {
            Some((t, Instant::now()))
        } else {
            last_old_sent = Some(sent);
            None
        }
    });
    let (t, seen) = found.unwrap_or_else(|| {
        panic!(
            "{rule} {server}: no transition within {TRANSITION_WAIT:?}; last {:?}",
            triple(a, rule, server)
        )
    });
    assert!(
        seen + tol >= set.0 + after,
        "{rule} {server}: {t:?} already {:?} after the change, expected {after:?}",
        seen - set.0
    );
    if let Some(old) = last_old_sent {
        assert!(
            old <= set.1 + after + tol,
            "{rule} {server}: old state still shown {:?} after the change, expected {after:?}",
            old - set.1
        );
    }
    t
}

#[test]
fn moratorium_isolates_a_failed_server_then_it_returns() {
    let s1 = Backend::identify("s1");
    let x = RefusedAddr::new();
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "( moratorium = 3 ) ;\nadmin G 127.0.0.1:* - {a} ;\nm RR *:* - {l} > {} {} ;\n",
        x.addr(),
        s1.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    assert_eq!(triple(a.addr(), "m", x.addr()), (0, 0, 0));

    let (w0, t0) = (epoch_ms(), Instant::now());
    assert_eq!(identify(l.addr()), "s1", "{}", g6.diagnostics());
    let (w1, t1) = (epoch_ms(), Instant::now());
    let (hb, unable, deadline) = triple(a.addr(), "m", x.addr());
    assert_eq!((hb, unable), (0, 1), "isolated");
    assert_deadline(deadline, 3, w0, w1);
    let sx = server_stats(a.addr(), "m", x.addr());
    assert_eq!(
        (sx["state"].as_str(), sx["failures"].as_u64()),
        (Some("moratorium"), Some(1))
    );
    // While isolated it is not tried at all.
    assert_eq!(identify(l.addr()), "s1");
    assert_eq!(server_stats(a.addr(), "m", x.addr())["failures"], 1);

    // Back after 3 s, on its own (no traffic needed), and logged when it happens.
    expect_transition(
        a.addr(),
        "m",
        x.addr(),
        (t0, t1),
        Duration::from_secs(3),
        |t| t == (0, 0, 0),
    );
    g6.expect_log("the transition logged", WAIT_TIMEOUT, |log| {
        log.contains(&format!("rule m: server {} is now up", x.addr()))
    });
    // Available again: tried (fails again, isolated again), the client still served.
    assert_eq!(identify(l.addr()), "s1");
    let sx = server_stats(a.addr(), "m", x.addr());
    assert_eq!(
        (sx["state"].as_str(), sx["failures"].as_u64()),
        (Some("moratorium"), Some(2))
    );
}

#[test]
fn moratorium_zero_only_skips_the_server_for_that_client() {
    let s1 = Backend::identify("s1");
    let x = RefusedAddr::new();
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    // No global block: moratorium defaults to 0 (SPEC §8).
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nz MS *:* - {l} > {} {} ;\nz2 RR *:* - > {} ;\n",
        x.addr(),
        s1.addr(),
        x.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    for round in 1..=3 {
        assert_eq!(identify(l.addr()), "s1", "{}", g6.diagnostics());
        assert_eq!(triple(a.addr(), "z", x.addr()), (0, 0, 0), "never isolated");
        let sx = server_stats(a.addr(), "z", x.addr());
        assert_eq!(
            (sx["state"].as_str(), sx["failures"].as_u64()),
            (Some("up"), Some(1)),
            "round {round}: MS moved its pointer after the failure, so x is not retried: {sx}"
        );
    }
    // Another rule sharing the address keeps its own entry state.
    assert_eq!(server_stats(a.addr(), "z2", x.addr())["failures"], 0);
    // Once the standby is out too, the failed server is eligible again (it was only skipped
    // for the client whose attempt failed).
    admin(a.addr(), &format!("disable {}", ip_port(s1.addr())));
    expect_refused(l.addr());
    assert_eq!(server_stats(a.addr(), "z", x.addr())["failures"], 2);
}

#[test]
fn heartbeat_servers_start_down_and_live_hb_seconds_after_each_heartbeat() {
    let (s1, s2, s3) = (
        Backend::identify("s1"),
        Backend::identify("s2"),
        Backend::identify("s3"),
    );
    let (a, l1, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    // A global idle timeout: it applies to proxied sessions, never to admin connections.
    let conf = format!(
        "( timeout = 1 ) ;\n\
         admin G 127.0.0.1:* - {a} ;\n\
         h RR *:* - {l1} > {} ( heartbeat = 2 ) {} ;\n\
         hb RR *:* - {l2} > ( heartbeat = 2 ) {} ;\n",
        s1.addr(),
        s2.addr(),
        s3.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2], COPY);
    let mut idle_admin = AdminConn::connect(a.addr());

    // Loaded DOWN, awaiting a heartbeat: skipped, or the client refused if nothing is left.
    assert_eq!(triple(a.addr(), "h", s1.addr()), (2, 1, 0));
    assert_eq!(triple(a.addr(), "h", s2.addr()), (0, 0, 0));
    assert_eq!(
        server_stats(a.addr(), "h", s1.addr())["state"],
        "no-heartbeat"
    );
    for _ in 0..3 {
        assert_eq!(identify(l1.addr()), "s2", "{}", g6.diagnostics());
    }
    let c = connect(l2.addr());
    let client = c.local_addr().unwrap();
    check_stream_refused(c).unwrap();
    assert_eq!(
        wait_access(&g6, client),
        format!(
            "session rule=hb client={client} listen={l2} server=- path=- bytes_in=0 bytes_out=0 close=no_server"
        )
    );

    // A heartbeat: UP until now + hb.
    let (w0, t0) = (epoch_ms(), Instant::now());
    let reply = admin(a.addr(), &format!("heartbeat {}", ip_port(s1.addr())));
    let (w1, t1) = (epoch_ms(), Instant::now());
    assert_eq!(
        reply,
        format!("h {} {} heartbeat\n", s1.addr().ip(), s1.addr().port())
    );
    let (hb, unable, deadline) = triple(a.addr(), "h", s1.addr());
    assert_eq!((hb, unable), (2, 0));
    assert_deadline(deadline, 2, w0, w1);
    let mut got = vec![identify(l1.addr()), identify(l1.addr())];
    got.sort();
    assert_eq!(got, ["s1", "s2"], "the heartbeat server takes traffic");
    // Ignored without reply on a server without heartbeat.
    assert_eq!(
        admin(a.addr(), &format!("heartbeat {}", ip_port(s2.addr()))),
        ""
    );

    // Expiry: DOWN again hb seconds after the heartbeat, independent of traffic.
    expect_transition(
        a.addr(),
        "h",
        s1.addr(),
        (t0, t1),
        Duration::from_secs(2),
        |t| t == (2, 1, 0),
    );
    for _ in 0..2 {
        assert_eq!(identify(l1.addr()), "s2");
    }
    // The all-heartbeat rule serves once its server reports.
    admin(a.addr(), &format!("heartbeat {}", ip_port(s3.addr())));
    assert_eq!(identify(l2.addr()), "s3");
    // Idle for over 2 s, the admin connection is still served (no idle timeout, SPEC §5.5).
    idle_admin.send("show\n");
    assert_eq!(idle_admin.read_lines(1), "USAGE : show (rules|sessions)\n");
}

#[test]
fn disable_and_enable_every_matching_entry_with_and_without_duration() {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    let (a, l1, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    // s1 is an entry of three rules, the admin rule included (shown and managed only).
    let conf = format!(
        "admin G 127.0.0.1:* - {a} > {s1} ;\nd1 RR *:* - {l1} > {s1} {s2} ;\nd2 RR *:* - {l2} > {s1} ;\n",
        s1 = s1.addr(),
        s2 = s2.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2], COPY);
    let (ip, port) = (s1.addr().ip(), s1.addr().port());
    let all = |verb: &str| {
        format!("admin {ip} {port} {verb}\nd1 {ip} {port} {verb}\nd2 {ip} {port} {verb}\n")
    };
    let triples = || {
        ["admin", "d1", "d2"]
            .map(|r| triple(a.addr(), r, s1.addr()))
            .to_vec()
    };

    assert_eq!(
        admin(a.addr(), &format!("disable {ip} {port}")),
        all("unabled")
    );
    assert_eq!(triples(), vec![(0, 1, 0); 3]);
    assert_eq!(server_stats(a.addr(), "d1", s1.addr())["state"], "disabled");
    expect_refused(l2.addr());
    assert_eq!(identify(l1.addr()), "s2");
    assert_eq!(identify(l1.addr()), "s2");
    // `0` means no duration.
    assert_eq!(
        admin(a.addr(), &format!("disable {ip} {port} 0")),
        all("unabled")
    );
    assert_eq!(triples(), vec![(0, 1, 0); 3]);

    assert_eq!(
        admin(a.addr(), &format!("enable {ip} {port}")),
        all("enabled")
    );
    assert_eq!(triples(), vec![(0, 0, 0); 3]);
    assert_eq!(identify(l2.addr()), "s1", "{}", g6.diagnostics());

    // Timed disable: DOWN until now+T, then UP on its own.
    let (w0, t0) = (epoch_ms(), Instant::now());
    assert_eq!(
        admin(a.addr(), &format!("disable {ip} {port} 3s")),
        all("unabled")
    );
    let (w1, t1) = (epoch_ms(), Instant::now());
    for (hb, unable, deadline) in triples() {
        assert_eq!((hb, unable), (0, 1));
        assert_deadline(deadline, 3, w0, w1);
    }
    expect_refused(l2.addr());
    expect_transition(
        a.addr(),
        "d2",
        s1.addr(),
        (t0, t1),
        Duration::from_secs(3),
        |t| t == (0, 0, 0),
    );
    assert_eq!(triples(), vec![(0, 0, 0); 3]);
    assert_eq!(identify(l2.addr()), "s1");

    // `enable T` on a server without heartbeat: plain UP.
    admin(a.addr(), &format!("disable {ip} {port}"));
    assert_eq!(
        admin(a.addr(), &format!("enable {ip} {port} 1")),
        all("enabled")
    );
    assert_eq!(triples(), vec![(0, 0, 0); 3]);
    // No match: empty reply, nothing changes.
    assert_eq!(admin(a.addr(), &format!("disable {ip} 1")), "");
    assert_eq!(
        admin(a.addr(), "disable 127.0.0.9 80\n?"),
        help().to_string()
    );
    assert_eq!(triples(), vec![(0, 0, 0); 3]);
}

/// Isolation only steers new clients (SPEC §7 "available"): a session in flight on a server
/// that is disabled carries on, still counted as the server's, while new clients go elsewhere.
#[test]
fn disabling_a_server_keeps_its_sessions_in_flight() {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nd RR *:* - {l} > {} {} ;\n",
        s1.addr(),
        s2.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    // Round robin starts with s1; hold that session.
    let (name, held) = connect_identify(l.addr());
    assert_eq!(name, "s1", "{}", g6.diagnostics());
    let (ip, port) = (s1.addr().ip(), s1.addr().port());
    assert_eq!(
        admin(a.addr(), &format!("disable {ip} {port}")),
        format!("d {ip} {port} unabled\n")
    );
    let sx = server_stats(a.addr(), "d", s1.addr());
    assert_eq!(
        (sx["state"].as_str(), sx["active"].as_u64()),
        (Some("disabled"), Some(1)),
        "{sx}"
    );
    for _ in 0..3 {
        assert_eq!(
            identify(l.addr()),
            "s2",
            "new clients avoid the disabled server"
        );
    }
    // The held session still relays both ways, to the end.
    echo_checked_on(held, 1 << 20);
    wait_server_stats(
        a.addr(),
        "d",
        s1.addr(),
        "active=0 once the session ended",
        |s| s["active"] == 0,
    );
}

fn help() -> &'static str {
    "show (rules|sessions|stats) [json]\n\
     disable (ip) (port) [disable_timeout]\n\
     enable (ip) (port) [enable_timeout]\n\
     heartbeat (ip) (port)\n\
     quit\n\
     block (ip) [block_timeout]\n\
     unblock (ip)\n\
     show blocked [json]\n"
}

#[test]
fn timed_enable_and_disable_of_a_heartbeat_server() {
    let s1 = Backend::identify("s1");
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\ne RR *:* - {l} > {} ( heartbeat = 30 ) ;\n",
        s1.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
    let (ip, port) = (s1.addr().ip(), s1.addr().port());
    assert_eq!(triple(a.addr(), "e", s1.addr()), (30, 1, 0));
    expect_refused(l.addr());

    // enable T: UP until now+T, then DOWN (awaiting a heartbeat).
    let (w0, t0) = (epoch_ms(), Instant::now());
    assert_eq!(
        admin(a.addr(), &format!("enable {ip} {port} 3")),
        format!("e {ip} {port} enabled\n")
    );
    let (w1, t1) = (epoch_ms(), Instant::now());
    let (hb, unable, deadline) = triple(a.addr(), "e", s1.addr());
    assert_eq!((hb, unable), (30, 0));
    assert_deadline(deadline, 3, w0, w1);
    assert_eq!(identify(l.addr()), "s1", "{}", g6.diagnostics());
    expect_transition(
        a.addr(),
        "e",
        s1.addr(),
        (t0, t1),
        Duration::from_secs(3),
        |t| t == (30, 1, 0),
    );
    assert_eq!(
        server_stats(a.addr(), "e", s1.addr())["state"],
        "no-heartbeat"
    );
    expect_refused(l.addr());

    // enable without T: UP with no deadline until the next heartbeat.
    admin(a.addr(), &format!("enable {ip} {port}"));
    assert_eq!(triple(a.addr(), "e", s1.addr()), (30, 0, 0));
    assert_eq!(identify(l.addr()), "s1");

    // disable T on a heartbeat server: DOWN until t, then UP until t + hb.
    let (w0, t0) = (epoch_ms(), Instant::now());
    admin(a.addr(), &format!("disable {ip} {port} 3"));
    let (w1, t1) = (epoch_ms(), Instant::now());
    let (hb, unable, t) = triple(a.addr(), "e", s1.addr());
    assert_eq!((hb, unable), (30, 1));
    assert_deadline(t, 3, w0, w1);
    expect_refused(l.addr());
    let back = expect_transition(
        a.addr(),
        "e",
        s1.addr(),
        (t0, t1),
        Duration::from_secs(3),
        |t| t.1 == 0,
    );
    assert_eq!(back, (30, 0, t + 30), "UP until t + hb");
    assert_eq!(identify(l.addr()), "s1");

    // heartbeat from any state: UP until now + hb.
    admin(a.addr(), &format!("disable {ip} {port}"));
    let w0 = epoch_ms();
    assert_eq!(
        admin(a.addr(), &format!("heartbeat {ip} {port}")),
        format!("e {ip} {port} heartbeat\n")
    );
    let (hb, unable, deadline) = triple(a.addr(), "e", s1.addr());
    assert_eq!((hb, unable), (30, 0));
    assert_deadline(deadline, 30, w0, epoch_ms());
}
