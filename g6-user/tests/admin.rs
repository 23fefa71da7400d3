//! End to end: the admin protocol (SPEC §9) — every command and its reply byte for byte,
//! framing (pipelining, segmentation, CRLF, final line at EOF, overlong lines, garbage), the
//! `show` documents (text and JSON with key order) and admission of admin clients.

mod e2e;
mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};

use e2e::*;
use serde_json::Value;
use support::*;

/// SPEC §9.2's five lines, byte for byte, then the three extension commands [ext].
const HELP: &str = "show (rules|sessions|stats) [json]\n\
                    disable (ip) (port) [disable_timeout]\n\
                    enable (ip) (port) [enable_timeout]\n\
                    heartbeat (ip) (port)\n\
                    quit\n\
                    block (ip) [block_timeout]\n\
                    unblock (ip)\n\
                    show blocked [json]\n";
const HELP_LINES: usize = 8;
const SHOW_USAGE: &str = "USAGE : show (rules|sessions)\n";
const DISABLE_USAGE: &str = "USAGE : disable (ip) (port) [disable_timeout]\n";
const ENABLE_USAGE: &str = "USAGE : enable (ip) (port) [enable_timeout]\n";
const HEARTBEAT_USAGE: &str = "USAGE : heartbeat (ip) (port)\n";

/// Sends raw bytes, half-closes and returns every byte of the reply (up to EOF).
fn admin_raw(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (data, end) = read_until_end(&mut s);
    assert_eq!(
        end,
        End::Eof,
        "reply so far: {:?}",
        String::from_utf8_lossy(&data)
    );
    data
}

/// A g6 with an admin port, two forwarding rules (one with an IPv6 listener and an IPv6 and
/// a heartbeat server) and the backends behind them.
struct Setup {
    g6: G6Proc,
    a: SocketAddr,
    l1: SocketAddr,
    l6: SocketAddr,
    l2: SocketAddr,
    s1: Backend,
    s2: Backend,
    s6: Backend,
}

fn setup() -> Setup {
    let (s1, s2) = (Backend::identify("s1"), Backend::identify("s2"));
    let s6 = Backend::identify_on("[::1]:0", "s6");
    let (a, l1, l6, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("[::1]:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n\
         r1 RR 127.0.0.*:* [::1]:* - {l1} {l6} > {s1} {s2} ( heartbeat = 30 ) {s6} ;\n\
         r2 MS 127.0.0.?:1* - {l2} > {s1} ;\n",
        s1 = s1.addr(),
        s2 = s2.addr(),
        s6 = s6.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l6, &l2], COPY);
    Setup {
        g6,
        a: a.addr(),
        l1: l1.addr(),
        l6: l6.addr(),
        l2: l2.addr(),
        s1,
        s2,
        s6,
    }
}

#[test]
fn fixed_replies_and_usage_byte_for_byte() {
    let st = setup();
    let s1 = st.s1.addr();
    let sv = format!("{} {}", s1.ip(), s1.port());
    let cases: Vec<(String, String)> = vec![
        ("?".into(), HELP.into()),
        ("\t?  surplus tokens".into(), HELP.into()),
        ("".into(), "".into()),
        (" \t ".into(), "".into()),
        ("show".into(), SHOW_USAGE.into()),
        ("show foo".into(), SHOW_USAGE.into()),
        ("show json".into(), SHOW_USAGE.into()),
        ("show Rules".into(), SHOW_USAGE.into()),
        ("foo bar".into(), "invalid command[foo]\n".into()),
        ("SHOW rules".into(), "invalid command[SHOW]\n".into()),
        (
            "beartbeat 1.2.3.4 5".into(),
            "invalid command[beartbeat]\n".into(),
        ),
        ("x".into(), "invalid command[x]\n".into()),
        ("disable".into(), DISABLE_USAGE.into()),
        ("disable 127.0.0.1".into(), DISABLE_USAGE.into()),
        ("disable 127.0.0.256 80".into(), DISABLE_USAGE.into()),
        ("disable localhost 80".into(), DISABLE_USAGE.into()),
        ("disable 127.0.0.1 0".into(), DISABLE_USAGE.into()),
        ("disable 127.0.0.1 65536".into(), DISABLE_USAGE.into()),
        ("disable 127.0.0.1 8x".into(), DISABLE_USAGE.into()),
        (format!("disable {sv} 5x"), DISABLE_USAGE.into()),
        (format!("disable {sv} -1"), DISABLE_USAGE.into()),
        (format!("disable {sv} 1d"), DISABLE_USAGE.into()),
        ("enable".into(), ENABLE_USAGE.into()),
        ("enable ::1".into(), ENABLE_USAGE.into()),
        (format!("enable {sv} 1.5"), ENABLE_USAGE.into()),
        ("heartbeat".into(), HEARTBEAT_USAGE.into()),
        ("heartbeat 127.0.0.1".into(), HEARTBEAT_USAGE.into()),
        ("heartbeat [::1 80".into(), HEARTBEAT_USAGE.into()),
        // Well-formed, no matching entry: empty reply.
        ("disable 127.0.0.9 80".into(), "".into()),
        ("enable 127.0.0.9 80 10".into(), "".into()),
        ("heartbeat 127.0.0.9 80".into(), "".into()),
        // A heartbeat for a server without heartbeat: ignored, no reply.
        (format!("heartbeat {sv}"), "".into()),
    ];
    // One per connection (final line without newline, executed at EOF) …
    for (line, want) in &cases {
        assert_eq!(&admin_cmd(st.a, line), want, "line {line:?}");
    }
    // … and all pipelined on one connection: replies in order.
    let input: String = cases.iter().map(|(l, _)| format!("{l}\n")).collect();
    let want: String = cases.iter().map(|(_, w)| w.as_str()).collect();
    assert_eq!(admin_cmd(st.a, &input), want);
    // Nothing changed.
    assert_eq!(triple(st.a, "r1", s1), (0, 0, 0));
    assert_eq!(triple(st.a, "r2", s1), (0, 0, 0));
}

#[test]
fn show_rules_and_server_commands_byte_for_byte() {
    let st = setup();
    let (a, s1, s2, s6) = (st.a, st.s1.addr(), st.s2.addr(), st.s6.addr());
    let rules = |t1: &str, t2: &str, t6: &str, t1b: &str| {
        format!(
            "admin | G | 127.0.0.1:* - {a} \n\
             r1 | RR | 127.0.0.*:* [::1]:* - {l1} {l6} > {s1}({t1}) {s2}({t2}) {s6}({t6}) \n\
             r2 | MS | 127.0.0.?:1* - {l2} > {s1}({t1b}) \n",
            l1 = st.l1,
            l6 = st.l6,
            l2 = st.l2
        )
    };
    assert_eq!(show(a, "rules"), rules("0|0|0", "30|1|0", "0|0|0", "0|0|0"));
    assert!(st.l6.to_string().starts_with("[::1]:") && s6.to_string().starts_with("[::1]:"));

    // disable / enable: one line per matching entry, rules then servers in config order.
    let (ip1, p1) = (s1.ip(), s1.port());
    assert_eq!(
        admin(a, &format!("disable {ip1} {p1}")),
        format!("r1 {ip1} {p1} unabled\nr2 {ip1} {p1} unabled\n")
    );
    assert_eq!(show(a, "rules"), rules("0|1|0", "30|1|0", "0|0|0", "0|1|0"));
    assert_eq!(
        admin(a, &format!("enable {ip1} {p1}")),
        format!("r1 {ip1} {p1} enabled\nr2 {ip1} {p1} enabled\n")
    );
    // IPv6 with and without brackets; the reply shows the address without brackets.
    let p6 = s6.port();
    assert_eq!(
        admin(a, &format!("disable ::1 {p6}")),
        format!("r1 ::1 {p6} unabled\n")
    );
    assert_eq!(
        admin(a, &format!("enable [::1] {p6}")),
        format!("r1 ::1 {p6} enabled\n")
    );
    assert_eq!(
        admin(a, &format!("disable [0:0::1] {p6} 0")),
        format!("r1 ::1 {p6} unabled\n")
    );
    assert_eq!(show(a, "rules"), rules("0|0|0", "30|1|0", "0|1|0", "0|0|0"));
    // heartbeat: only entries with a heartbeat reply (and change).
    let (ip2, p2) = (s2.ip(), s2.port());
    let w0 = epoch_ms();
    assert_eq!(
        admin(a, &format!("heartbeat {ip2} {p2}")),
        format!("r1 {ip2} {p2} heartbeat\n")
    );
    let (_, _, d) = triple(a, "r1", s2);
    assert!(d >= (w0 + 30_000) / 1000 && d <= (epoch_ms() + 30_000) / 1000);
    assert_eq!(
        show(a, "rules"),
        rules("0|0|0", &format!("30|0|{d}"), "0|1|0", "0|0|0")
    );
    // The IPv6 listener and server really work.
    admin(a, &format!("enable ::1 {p6}"));
    let mut names: Vec<String> = (0..3).map(|_| identify_from("::1", st.l6).0).collect();
    names.sort();
    assert_eq!(names, ["s1", "s2", "s6"], "{}", st.g6.diagnostics());
}

#[test]
fn show_stats_text_byte_for_byte() {
    let st = setup();
    let (s1, s2, s6) = (st.s1.addr(), st.s2.addr(), st.s6.addr());
    // One session with a request/response turn: 5 bytes in, "s1\n" + 5 bytes echoed out.
    let (name, mut c) = connect_identify(st.l1);
    assert_eq!(name, "s1");
    c.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    c.read_exact(&mut back).unwrap();
    drop(c);
    // One refused client (filter: r2 admits 127.0.0.? only).
    expect_refused_from("127.0.0.10", st.l2);

    let mut ac = AdminConn::connect(st.a);
    let mut last = String::new();
    let matched = wait_until(WAIT_TIMEOUT, || {
        ac.send("show stats\n");
        last = ac.read_lines(8);
        // rt_us of s1 is a measurement: checked for digits, then compared as `N`.
        let line = last.lines().nth(2).unwrap_or("");
        let normalized = match line.rsplit_once("rt_us=") {
            Some((head, rt)) if rt.bytes().all(|b| b.is_ascii_digit()) && !rt.is_empty() => {
                last.replace(line, &format!("{head}rt_us=N"))
            }
            _ => last.clone(),
        };
        normalized
            == format!(
                "rule admin G active=1 total=1 refused=0 bytes_in=0 bytes_out=0\n\
                 rule r1 RR active=0 total=1 refused=0 bytes_in=5 bytes_out=8\n\
                 \x20 server {s1} up active=0 total=1 failures=0 bytes_in=5 bytes_out=8 rt_us=N\n\
                 \x20 server {s2} no-heartbeat active=0 total=0 failures=0 bytes_in=0 bytes_out=0 rt_us=-\n\
                 \x20 server {s6} up active=0 total=0 failures=0 bytes_in=0 bytes_out=0 rt_us=-\n\
                 rule r2 MS active=0 total=0 refused=1 bytes_in=0 bytes_out=0\n\
                 \x20 server {s1} up active=0 total=0 failures=0 bytes_in=0 bytes_out=0 rt_us=-\n\
                 xdp off - dropped_blocked=0 dropped_not_allowed=0\n"
            )
    });
    assert!(matched, "show stats:\n{last}\n{}", st.g6.diagnostics());
}

/// Keys of a JSON object, in document order.
fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn json_documents_have_the_keys_in_spec_order() {
    let s1 = Backend::identify("s1");
    let na = NeverAccept::new();
    let (a, l1, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "( moratorium = 7 , max_ip = 9 ) ;\n\
         admin G 127.0.0.1:* - {a} ;\n\
         r1 RR 127.0.0.1:* ( max_connections = 3 ) - ( timeout = 40 ) {l1} > {s1} ( connect_timeout = 2 , max_connections_per_ip = 4 ) ;\n\
         r2 RR *:* - {l2} > {na} ( connect_timeout = 60 ) ;\n",
        s1 = s1.addr(),
        na = na.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2], COPY);
    let (_, _held) = connect_identify(l1.addr());
    let _connecting = connect(l2.addr());

    // rules
    let doc = show_json(a.addr(), "rules");
    assert_eq!(keys(&doc), ["moratorium", "rules"]);
    assert_eq!(doc["moratorium"], 7);
    let rules = doc["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    for r in rules {
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
    let r1 = &rules[1];
    assert_eq!(
        (r1["id"].as_str(), r1["alg"].as_str()),
        (Some("r1"), Some("RR"))
    );
    assert_eq!(
        r1["clients"][0],
        serde_json::json!({"pattern": "127.0.0.1:*", "max_connections": 3, "max_ip": 9, "max_connections_per_ip": 0})
    );
    assert_eq!(
        r1["listens"][0],
        serde_json::json!({"addr": l1.to_string(), "timeout": 40, "connect_timeout": 5})
    );
    assert_eq!(
        r1["servers"][0],
        serde_json::json!({"addr": s1.addr().to_string(), "heartbeat": 0, "unable": 0, "deadline": 0,
            "state": "up", "max_connections": 0, "max_ip": 0, "max_connections_per_ip": 4,
            "connect_timeout": 2})
    );
    assert_eq!(rules[0]["servers"], serde_json::json!([]));

    // sessions: wait for the connecting session to show its server.
    let doc = wait_for(WAIT_TIMEOUT, || {
        let d = show_json(a.addr(), "sessions");
        let rows = d["sessions"].as_array().unwrap();
        // Earlier admin connections may still be closing: wait until only this one is listed.
        let ready = rows
            .iter()
            .any(|s| s["status"] == "CONNECTING" && s["server"] == na.addr().to_string())
            && rows.iter().filter(|s| s["type"] == "MANAGER").count() == 1;
        ready.then_some(d)
    })
    .unwrap_or_else(|| panic!("no CONNECTING session {}", g6.diagnostics()));
    assert_eq!(keys(&doc), ["sessions"]);
    let sessions = doc["sessions"].as_array().unwrap();
    let types: Vec<&str> = sessions
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["LISTEN", "LISTEN", "LISTEN", "PROXY", "PROXY", "MANAGER"]
    );
    for s in sessions {
        let want: &[&str] = match s["type"].as_str().unwrap() {
            "LISTEN" => &["type", "rule", "listen", "listen_fd"],
            "MANAGER" => &[
                "type",
                "rule",
                "peer",
                "fd",
                "listen",
                "listen_fd",
                "age_ms",
                "idle_ms",
            ],
            _ => &[
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
                "server_eof",
            ],
        };
        assert_eq!(keys(s), want, "{s}");
    }
    let listens: Vec<&str> = sessions[..3]
        .iter()
        .map(|s| s["listen"].as_str().unwrap())
        .collect();
    assert_eq!(listens, [a.to_string(), l1.to_string(), l2.to_string()]);
    let (p, q) = (&sessions[3], &sessions[4]);
    assert_eq!(
        (
            p["status"].as_str(),
            p["data_path"].as_str(),
            p["rule"].as_str()
        ),
        (Some("CONNECTED"), Some("copy"), Some("r1"))
    );
    assert_eq!(
        (p["bytes_in"].as_u64(), p["bytes_out"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(
        (p["client_eof"].as_bool(), p["server_eof"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(
        (
            q["status"].as_str(),
            q["rule"].as_str(),
            q["server"].as_str()
        ),
        (
            Some("CONNECTING"),
            Some("r2"),
            Some(na.addr().to_string().as_str())
        )
    );
    assert!(
        q["data_path"].is_null(),
        "data_path null while connecting: {q}"
    );
    for k in ["client_fd", "listen_fd", "server_fd", "age_ms", "idle_ms"] {
        assert!(p[k].is_u64() && q[k].is_u64(), "{k}: {p} {q}");
    }
    assert!(sessions[5]["age_ms"].is_u64() && sessions[5]["fd"].is_u64());

    // stats
    let doc = show_json(a.addr(), "stats");
    // SPEC's key, then the XDP guard [ext].
    assert_eq!(keys(&doc), ["rules", "xdp"]);
    assert_eq!(
        doc["xdp"].to_string(),
        r#"{"mode":"off","ifaces":[],"dropped_blocked":0,"dropped_not_allowed":0}"#
    );
    for r in doc["rules"].as_array().unwrap() {
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
    let r1 = &doc["rules"][1];
    assert_eq!(
        r1["servers"][0],
        serde_json::json!({"addr": s1.addr().to_string(), "state": "up", "active": 1, "total": 1,
            "failures": 0, "bytes_in": 0, "bytes_out": 3, "rt_us": null})
    );
    assert_eq!(
        doc["rules"][2]["servers"][0]["active"], 1,
        "connecting counts as active"
    );
}

/// Replaces each `(#n#)` by `(#N#)`; returns the text and the numbers in order.
fn split_fds(text: &str) -> (String, Vec<i32>) {
    let mut out = String::new();
    let mut fds = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("(#") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after.find("#)").expect("closing #)");
        fds.push(after[..j].parse().expect("descriptor number"));
        out.push_str("(#N#)");
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    (out, fds)
}

#[test]
fn show_sessions_rows_and_descriptors() {
    let s1 = Backend::identify("s1");
    let na = NeverAccept::new();
    let (a, l1, l2) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nr1 RR *:* - {l1} > {} ;\nslow RR *:* - {l2} > {} ( connect_timeout = 60 ) ;\n",
        s1.addr(),
        na.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2], COPY);
    let (_, c1) = connect_identify(l1.addr());
    let c2 = connect(l2.addr());
    let (c1a, c2a) = (c1.local_addr().unwrap(), c2.local_addr().unwrap());

    // Poll until the slow connect shows its server (the pair is listed from admission on)
    // and only this admin connection is listed (earlier ones may still be closing). Each
    // polling connection stays open until its descriptor has been checked.
    let (text, me, _ac) = wait_for(WAIT_TIMEOUT, || {
        let mut ac = AdminConn::connect(a.addr());
        let addr = ac.stream().local_addr().unwrap();
        ac.send("show sessions\n?\n");
        let t = ac.read_until(IO_TIMEOUT, |t| t.ends_with(HELP));
        let t = t[..t.len() - HELP.len()].to_string();
        let ready = t.contains(&format!("> {}(#", na.addr())) && t.matches("MANAGER").count() == 1;
        ready.then_some((t, addr, ac))
    })
    .unwrap_or_else(|| panic!("no connecting session {}", g6.diagnostics()));
    let (normalized, fds) = split_fds(&text);
    assert_eq!(
        normalized,
        format!(
            "  LISTEN |      LISTEN | - {a}(#N#)\n\
             \x20 LISTEN |      LISTEN | - {l1}(#N#)\n\
             \x20 LISTEN |      LISTEN | - {l2}(#N#)\n\
             \x20 SERVER |   CONNECTED | {c1a}(#N#) - {l1}(#N#) > {s1}(#N#)\n\
             \x20 CLIENT |   CONNECTED | {s1}(#N#) - {l1}(#N#) > {c1a}(#N#)\n\
             \x20 SERVER |       READY | {c2a}(#N#) - {l2}(#N#) > {na}(#N#)\n\
             \x20 CLIENT |  CONNECTING | {na}(#N#) - {l2}(#N#) > {c2a}(#N#)\n\
             \x20MANAGER |     COMMAND | {me}(#N#) - {a}(#N#)\n",
            s1 = s1.addr(),
            na = na.addr()
        ),
        "{text}"
    );
    // The descriptor numbers are g6's own sockets for those connections.
    let pid = worker_pid(&g6);
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let (fa, fl1, fl2) = (fds[0], fds[1], fds[2]);
    for (fd, addr) in [(fa, a.addr()), (fl1, l1.addr()), (fl2, l2.addr())] {
        assert!(
            fd_is_socket(pid, fd, Some(addr), Some(any)),
            "listen fd {fd} of {addr}"
        );
    }
    let [x, xl, y] = fds[3..6] else {
        unreachable!()
    };
    assert_eq!(fds[6..9], [y, xl, x], "CLIENT row mirrors the SERVER row");
    assert_eq!(xl, fl1);
    assert!(
        fd_is_socket(pid, x, Some(l1.addr()), Some(c1a)),
        "client fd {x}"
    );
    assert!(fd_is_socket(pid, y, None, Some(s1.addr())), "server fd {y}");
    let [u, ul, v] = fds[9..12] else {
        unreachable!()
    };
    assert_eq!(fds[12..15], [v, ul, u]);
    assert_eq!(ul, fl2);
    assert!(
        fd_is_socket(pid, u, Some(l2.addr()), Some(c2a)),
        "client fd {u}"
    );
    assert!(
        fd_is_socket(pid, v, None, Some(na.addr())),
        "connecting server fd {v}"
    );
    assert_eq!(fds[16], fa);
    assert!(
        fd_is_socket(pid, fds[15], Some(a.addr()), Some(me)),
        "manager fd {}",
        fds[15]
    );
    drop((c1, c2));
}

#[test]
fn framing_pipelining_segmentation_crlf_and_eof() {
    let st = setup();
    let a = st.a;
    let want = format!("{HELP}{SHOW_USAGE}invalid command[foo]\n");
    // One segment, several lines.
    let mut c = AdminConn::connect(a);
    c.send("?\nshow\nfoo\n");
    assert_eq!(c.read_lines(HELP_LINES + 2), want);
    // Byte by byte, each byte its own write (TCP_NODELAY): same replies, same order.
    for b in "?\nshow\nfoo\n".bytes() {
        c.send_bytes(&[b]);
    }
    assert_eq!(c.read_lines(HELP_LINES + 2), want);
    // CRLF, empty lines, TABs.
    c.send("\r\n\n?\r\nshow\t\r\nfoo\r\n");
    assert_eq!(c.read_lines(HELP_LINES + 2), want);
    // A `\r` not before the `\n` is part of the line.
    c.send("foo\rbar\n");
    assert_eq!(c.read_lines(1), "invalid command[foo\rbar]\n");
    // A final line without newline runs at end of input, then the connection closes.
    c.send("?\nshow");
    c.shutdown_write();
    assert_eq!(c.read_to_eof(), format!("{HELP}{SHOW_USAGE}"));
    assert_eq!(admin_cmd(a, "foo\r"), "invalid command[foo]\n");

    // quit: nothing more runs, the connection closes without waiting for the client.
    let mut c = AdminConn::connect(a);
    c.send("?\nquit\n?\n");
    assert_eq!(c.read_lines(HELP_LINES), HELP);
    assert!(c.is_closed_within(IO_TIMEOUT), "closed after quit");
    let mut c = AdminConn::connect(a);
    c.send("quit extra\n");
    assert!(
        c.is_closed_within(IO_TIMEOUT),
        "closed after quit, surplus tokens ignored"
    );
}

#[test]
fn long_lines_and_garbage() {
    let st = setup();
    let a = st.a;
    let mut other = AdminConn::connect(a);
    other.send("?\n");
    assert_eq!(other.read_lines(HELP_LINES), HELP);

    // Exactly 4096 bytes is a line.
    let line = "y".repeat(4096);
    assert_eq!(
        admin_cmd(a, &format!("{line}\r\n?\n")),
        format!("invalid command[{line}]\n{HELP}")
    );
    // Over 4096: earlier lines run, then the connection closes. (The input ends with the
    // byte that makes the line too long, so g6 has read everything: a clean FIN.)
    let mut s = connect(a);
    let mut input = b"?\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 4097));
    s.write_all(&input).unwrap();
    let (data, end) = read_until_end(&mut s);
    assert_eq!(
        (String::from_utf8_lossy(&data).as_ref(), end),
        (HELP, End::Eof)
    );
    // A partial line of 4096 bytes + `\r` may still be a line; one more byte is not.
    let mut s = connect(a);
    let mut input = vec![b'z'; 4096];
    input.extend_from_slice(b"\r");
    input.push(b'z');
    s.write_all(&input).unwrap();
    let (data, end) = read_until_end(&mut s);
    assert_eq!((data.len(), end), (0, End::Eof));
    // The other admin client is unharmed.
    other.send("?\n");
    assert_eq!(other.read_lines(HELP_LINES), HELP);

    // Binary garbage: the first token echoed as received, byte for byte.
    assert_eq!(
        admin_raw(a, b"\x00\xff\xfe\x01 junk\n\x80\n"),
        b"invalid command[\x00\xff\xfe\x01]\ninvalid command[\x80]\n".to_vec()
    );
    let mut all: Vec<u8> = (0u8..=255).filter(|b| !b" \t\n\r".contains(b)).collect();
    all.push(b'\n');
    let mut want = b"invalid command[".to_vec();
    want.extend_from_slice(&all[..all.len() - 1]);
    want.extend_from_slice(b"]\n");
    assert_eq!(admin_raw(a, &all), want);
    other.send("show\n");
    assert_eq!(other.read_lines(1), SHOW_USAGE);
}

#[test]
fn admin_clients_are_filtered_and_limited() {
    let a = PreBound::tcp("127.0.0.1:0");
    let s1 = Backend::identify("s1");
    // Admin clients only from 127.0.0.2, at most 2 at once; its servers are only managed.
    let conf = format!(
        "admin G 127.0.0.2:* ( max_connections = 2 ) - {a} > {} ;\n",
        s1.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a], COPY);
    let me = connect(a.addr());
    let me_addr = me.local_addr().unwrap();
    check_stream_refused(me).unwrap_or_else(|e| panic!("{e} {}", g6.diagnostics()));
    assert_eq!(
        wait_access(&g6, me_addr),
        format!(
            "session rule=admin client={me_addr} listen={a} server=- path=- bytes_in=0 bytes_out=0 close=filter"
        )
    );
    let mut c1 = connect_from("127.0.0.2", a.addr());
    let mut c2 = connect_from("127.0.0.2", a.addr());
    for c in [&mut c1, &mut c2] {
        c.write_all(b"?\n").unwrap();
        let mut buf = vec![0u8; HELP.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, HELP.as_bytes());
    }
    expect_refused_from("127.0.0.2", a.addr());
    // A G rule's servers are shown and reachable by admin commands, never connected to.
    let (ip, port) = (s1.addr().ip(), s1.addr().port());
    c1.write_all(format!("disable {ip} {port}\nshow rules\n").as_bytes())
        .unwrap();
    let want = format!(
        "admin {ip} {port} unabled\nadmin | G | 127.0.0.2:* - {a} > {}(0|1|0) \n",
        s1.addr()
    );
    let mut buf = vec![0u8; want.len()];
    c1.read_exact(&mut buf).unwrap();
    assert_eq!(String::from_utf8_lossy(&buf), want);
    assert_eq!(s1.accepted(), 0);
    drop(c2);
    // The slot is free again once that connection is gone (its access line written).
    let gone = wait_until(WAIT_TIMEOUT, || {
        g6.log_contents()
            .lines()
            .filter(|l| l.contains("session rule=admin ") && l.ends_with("close=client_close"))
            .count()
            == 1
    });
    assert!(gone, "{}", g6.diagnostics());
    let mut c3 = connect_from("127.0.0.2", a.addr());
    c3.write_all(b"show\n").unwrap();
    assert_eq!(read_line(&mut c3), SHOW_USAGE.trim_end());
    drop(c1);
}

/// `block`, `unblock`, `show blocked [json]` [ext], byte for byte; a blocked client is
/// refused at admission (here without XDP: `--xdp off`) with its own close reason, and a
/// timed block ends by itself.
#[test]
fn block_unblock_and_show_blocked_byte_for_byte() {
    let st = setup();
    let a = st.a;
    assert_eq!(
        admin_cmd(a, "show blocked\nshow blocked json\n"),
        "{\"blocked\":[]}\n"
    );
    assert_eq!(
        admin_cmd(
            a,
            "block\nblock 127.0.0.300\nblock 127.0.0.3 5d\nunblock\nunblock x\n"
        ),
        "USAGE : block (ip) [block_timeout]\n\
         USAGE : block (ip) [block_timeout]\n\
         USAGE : block (ip) [block_timeout]\n\
         USAGE : unblock (ip)\n\
         USAGE : unblock (ip)\n"
    );
    let before = epoch_ms() / 1000;
    assert_eq!(
        admin_cmd(a, "block 127.0.0.3\nblock [::1] 1h\nblock 127.0.0.4 0\n"),
        "127.0.0.3 blocked\n::1 blocked\n127.0.0.4 blocked\n"
    );
    let after = epoch_ms() / 1000;
    let listed = admin_cmd(a, "show blocked\n");
    let deadline = (before..=after)
        .map(|t| t + 3600)
        .find(|d| listed == format!("127.0.0.3 0\n127.0.0.4 0\n::1 {d}\n"));
    assert!(deadline.is_some(), "{listed:?}");
    let json = admin_cmd(a, "show blocked json\n");
    assert_eq!(
        json,
        format!(
            "{{\"blocked\":[{{\"ip\":\"127.0.0.3\",\"deadline\":0}},{{\"ip\":\"127.0.0.4\",\
             \"deadline\":0}},{{\"ip\":\"::1\",\"deadline\":{}}}]}}\n",
            deadline.unwrap()
        )
    );
    // Blocked clients are refused at once (SPEC §5.1 "refused"), access line close=blocked;
    // the same rule still serves others.
    let me = connect_from("127.0.0.3", st.l1);
    let me_addr = me.local_addr().unwrap();
    check_stream_refused(me).unwrap_or_else(|e| panic!("{e} {}", st.g6.diagnostics()));
    assert!(
        wait_access(&st.g6, me_addr).ends_with("close=blocked"),
        "{}",
        st.g6.diagnostics()
    );
    expect_refused_from("::1", st.l6);
    assert!(served(&st, "127.0.0.5"));
    // unblock: a reply line only if it was blocked.
    assert_eq!(
        admin_cmd(a, "unblock 127.0.0.3\nunblock 127.0.0.3\nunblock 0:0::1\n"),
        "127.0.0.3 unblocked\n::1 unblocked\n"
    );
    assert!(served(&st, "127.0.0.3"));
    // A timed block ends on time, by itself.
    // Long enough for the refusal below to land inside it on a loaded machine.
    assert_eq!(admin_cmd(a, "block 127.0.0.6 3s\n"), "127.0.0.6 blocked\n");
    expect_refused_from("127.0.0.6", st.l1);
    let ended = wait_until(WAIT_TIMEOUT, || {
        admin_cmd(a, "show blocked\n") == "127.0.0.4 0\n"
    });
    assert!(ended, "{}", admin_cmd(a, "show blocked\n"));
    assert!(served(&st, "127.0.0.6"));
}

/// r1 balances over s1 and s6 (s2 awaits a heartbeat).
fn served(st: &Setup, from: &str) -> bool {
    ["s1", "s6"].contains(&identify_from(from, st.l1).0.as_str())
}
