//! End to end: admission (SPEC §5.1) — session slots, client filter, client limits — and
//! server limits (SPEC §5.2), with the access-log close reasons of refusals (SPEC §10).

mod e2e;
mod support;

use std::net::{SocketAddr, TcpStream};

use e2e::*;
use support::*;

/// The access line of a refused client (no server, no data).
fn refused_line(rule: &str, client: SocketAddr, listen: SocketAddr, close: &str) -> String {
    format!(
        "session rule={rule} client={client} listen={listen} server=- path=- bytes_in=0 bytes_out=0 close={close}"
    )
}

/// Connects from `ip`, expects a refusal and returns the client address used.
fn refused_from(ip: &str, to: SocketAddr) -> SocketAddr {
    let s = connect_from(ip, to);
    let me = s.local_addr().unwrap();
    check_stream_refused(s).unwrap_or_else(|e| panic!("from {me}: {e}"));
    me
}

/// Closes `s` and waits for its session's access line (written once its counts are free).
fn close_and_wait(g6: &G6Proc, s: TcpStream) {
    let me = s.local_addr().unwrap();
    drop(s);
    wait_access(g6, me);
}

/// g6 with an admin listener `a` and rule `c` (`c RR <clients> - <l> > <s1>`), after the
/// global block `global` (with its `;`, or empty).
struct ClientLimits {
    _s1: Backend,
    a: PreBound,
    l: PreBound,
    g6: G6Proc,
}

impl ClientLimits {
    fn start(global: &str, clients: &str) -> ClientLimits {
        let s1 = Backend::identify("s1");
        let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
        let conf = format!(
            "{global}admin G 127.0.0.1:* - {a} ;\nc RR {clients} - {l} > {} ;\n",
            s1.addr()
        );
        let g6 = G6Proc::start(&conf, &[&a, &l], COPY);
        ClientLimits { _s1: s1, a, l, g6 }
    }

    /// Admits a client from `ip` (the connection, held open).
    fn admit(&self, ip: &str) -> TcpStream {
        identify_from(ip, self.l.addr()).1
    }

    /// Closes `s` (waiting until its counts are free), then expects one client from
    /// `admitted` in and the next from `refused` out; returns the admitted connection.
    fn release_then_admit_one(&self, s: TcpStream, admitted: &str, refused: &str) -> TcpStream {
        close_and_wait(&self.g6, s);
        let c = self.admit(admitted);
        refused_from(refused, self.l.addr());
        c
    }

    /// Expects a client from `ip` refused for a client limit, logged as such.
    fn expect_client_limit(&self, ip: &str) {
        let me = refused_from(ip, self.l.addr());
        assert_eq!(
            wait_access(&self.g6, me),
            refused_line("c", me, self.l.addr(), "client_limit")
        );
    }
}

#[test]
fn client_max_connections_per_entry() {
    // Two entries with their own counters; the first matching one applies.
    let t = ClientLimits::start(
        "",
        "( max_connections = 2 ) 127.0.0.2:* 127.0.0.*:* ( max_connections = 1 )",
    );
    let (a, l) = (&t.a, &t.l);
    let c1 = t.admit("127.0.0.2");
    let c2 = t.admit("127.0.0.2");
    t.expect_client_limit("127.0.0.2");
    // The second entry counts for itself.
    let c3 = t.admit("127.0.0.3");
    refused_from("127.0.0.4", l.addr());
    let r = rule_stats(a.addr(), "c");
    assert_eq!(
        (
            r["active"].as_u64(),
            r["refused"].as_u64(),
            r["total"].as_u64()
        ),
        (Some(3), Some(2), Some(3)),
        "{r}"
    );

    // Releasing one connection admits exactly one more.
    let c4 = t.release_then_admit_one(c1, "127.0.0.2", "127.0.0.2");
    let _c5 = t.release_then_admit_one(c3, "127.0.0.4", "127.0.0.3");
    drop((c2, c4));
}

#[test]
fn client_max_ip_counts_distinct_addresses() {
    let t = ClientLimits::start("", "127.0.0.*:* ( max_ip = 2 )");
    let (l, g6) = (&t.l, &t.g6);
    let c2a = t.admit("127.0.0.2");
    let c3a = t.admit("127.0.0.3");
    let c3b = t.admit("127.0.0.3");
    t.expect_client_limit("127.0.0.4");
    // Known addresses are still admitted.
    let c2b = t.admit("127.0.0.2");
    // 127.0.0.3 keeps a connection: still two addresses.
    close_and_wait(g6, c3a);
    refused_from("127.0.0.4", l.addr());
    // Its last connection gone, a new address fits.
    let _c4 = t.release_then_admit_one(c3b, "127.0.0.4", "127.0.0.3");
    drop((c2a, c2b));
}

#[test]
fn client_max_connections_per_ip() {
    let t = ClientLimits::start("( max_connections_per_ip = 2 ) ;\n", "*:*");
    let (a, l) = (&t.a, &t.l);
    let c1 = t.admit("127.0.0.2");
    let c2 = t.admit("127.0.0.2");
    t.expect_client_limit("127.0.0.2");
    let others: Vec<_> = (0..2).map(|_| t.admit("127.0.0.3")).collect();
    refused_from("127.0.0.3", l.addr());
    let c3 = t.release_then_admit_one(c1, "127.0.0.2", "127.0.0.2");
    // (The global block is the client-list default of the admin rule too: 2 admin connections
    // per IP, plenty for this one.)
    assert_eq!(rule_stats(a.addr(), "c")["active"], 4);
    drop((c2, c3, others));
}

#[test]
fn full_servers_are_skipped_without_failure() {
    let (s1, s2, s3) = (
        Backend::identify("s1"),
        Backend::identify("s2"),
        Backend::identify("s3"),
    );
    let (a, l1, l2, l3, l4) = (
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
        PreBound::tcp("127.0.0.1:0"),
    );
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n\
         sf RR *:* - {l1} > {s1} ( max_connections = 1 ) {s2} ;\n\
         one RR *:* - {l2} > {s3} ( max_connections = 1 ) ;\n\
         sp RR *:* - {l3} > {s1} ( max_connections_per_ip = 1 ) {s2} ;\n\
         si MS *:* - {l4} > {s1} ( max_ip = 1 ) {s2} ;\n",
        s1 = s1.addr(),
        s2 = s2.addr(),
        s3 = s3.addr()
    );
    let g6 = G6Proc::start(&conf, &[&a, &l1, &l2, &l3, &l4], COPY);

    // RR would give s1 to the third client; s1 is full, so it is skipped.
    let held: Vec<_> = (0..3).map(|_| connect_identify(l1.addr())).collect();
    let got: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, ["s1", "s2", "s2"], "{}", g6.diagnostics());
    let st = server_stats(a.addr(), "sf", s1.addr());
    assert_eq!(
        (
            st["state"].as_str(),
            st["active"].as_u64(),
            st["failures"].as_u64()
        ),
        (Some("full"), Some(1), Some(0)),
        "{st}"
    );
    assert_eq!(
        triple(a.addr(), "sf", s1.addr()),
        (0, 0, 0),
        "no state change"
    );
    let text = show(a.addr(), "stats");
    assert!(
        text.contains(&format!(
            "  server {} full active=1 total=1 failures=0 bytes_in=0 bytes_out=3 rt_us=-\n",
            s1.addr()
        )),
        "{text}"
    );

    // The only server full: the client is refused (no server), still no failure.
    let (_, c) = connect_identify(l2.addr());
    let d = connect(l2.addr());
    let me = d.local_addr().unwrap();
    check_stream_refused(d).unwrap();
    assert_eq!(
        wait_access(&g6, me),
        refused_line("one", me, l2.addr(), "no_server")
    );
    let st = server_stats(a.addr(), "one", s3.addr());
    assert_eq!(
        (st["failures"].as_u64(), st["state"].as_str()),
        (Some(0), Some("full"))
    );
    drop(c);
    wait_server_stats(a.addr(), "one", s3.addr(), "active=0", |s| {
        s["active"] == 0 && s["state"] == "up"
    });
    assert_eq!(identify(l2.addr()), "s3");

    // Server max_ip: counts the client IPs of the sessions the entry carries.
    let (m1, _j1) = identify_from("127.0.0.2", l4.addr());
    let (m2, _j2) = identify_from("127.0.0.3", l4.addr());
    let (m3, _j3) = identify_from("127.0.0.2", l4.addr());
    assert_eq!([m1, m2, m3], ["s1", "s2", "s1"], "a known IP still fits");

    // Per-IP server limit: full for this client only.
    let (n1, _k1) = identify_from("127.0.0.2", l3.addr());
    let (n2, _k2) = identify_from("127.0.0.2", l3.addr());
    let (n3, _k3) = identify_from("127.0.0.3", l3.addr());
    assert_eq!([n1, n2, n3], ["s1", "s2", "s1"]);
    assert_eq!(server_stats(a.addr(), "sp", s1.addr())["failures"], 0);
    drop(held);
}

#[test]
fn session_slots_listener_1_admin_1_proxied_2() {
    let s1 = Backend::identify("s1");
    let (a, l) = (PreBound::tcp("127.0.0.1:0"), PreBound::tcp("127.0.0.1:0"));
    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\nr RR *:* - {l} > {} ;\n",
        s1.addr()
    );
    // 2 listeners + 1 proxied (2) + 2 admin = 6.
    let g6 = G6Proc::start(&conf, &[&a, &l], &["--data-path", "copy", "-s", "6"]);
    let help_ok = |c: &mut AdminConn| {
        c.send("?\n");
        // SPEC's five help lines and the three extension commands.
        assert_eq!(c.read_lines(8).lines().count(), 8);
    };

    let (_, c1) = connect_identify(l.addr()); // 4 used
    let mut a1 = AdminConn::connect(a.addr()); // 5
    help_ok(&mut a1);
    let me = connect(l.addr());
    let me_addr = me.local_addr().unwrap();
    check_stream_refused(me).unwrap_or_else(|e| panic!("{e} {}", g6.diagnostics()));
    assert_eq!(
        wait_access(&g6, me_addr),
        refused_line("r", me_addr, l.addr(), "slots")
    );
    let mut a2 = AdminConn::connect(a.addr()); // 6
    help_ok(&mut a2);
    let me = connect(a.addr());
    let me_addr = me.local_addr().unwrap();
    check_stream_refused(me).unwrap();
    assert_eq!(
        wait_access(&g6, me_addr),
        refused_line("admin", me_addr, a.addr(), "slots")
    );

    // One admin slot back: an admin fits, a proxied connection (2) does not.
    let a1_addr = a1.stream().local_addr().unwrap();
    drop(a1);
    wait_access(&g6, a1_addr); // 5
    expect_refused(l.addr());
    let mut a3 = AdminConn::connect(a.addr()); // 6
    help_ok(&mut a3);
    let a3_addr = a3.stream().local_addr().unwrap();
    drop(a3);
    wait_access(&g6, a3_addr); // 5
    // The proxied session gone: 2 slots for the next one.
    close_and_wait(&g6, c1); // 3
    let (name, _c2) = connect_identify(l.addr()); // 5
    assert_eq!(name, "s1");
    help_ok(&mut a2);
    expect_refused(l.addr());
}

#[test]
fn client_filter_patterns() {
    let s1 = Backend::identify("s1");
    let a = PreBound::tcp("127.0.0.1:0");
    let ls: Vec<PreBound> = (0..4).map(|_| PreBound::tcp("127.0.0.1:0")).collect();
    let (l6, l6v4) = (PreBound::tcp("[::1]:0"), PreBound::tcp("[::1]:0"));

    // Client sockets bound before the config is written, so port patterns can name them.
    let p_sock = bound_client("127.0.0.1:0");
    let p = p_sock.local_addr().unwrap().as_socket().unwrap().port();
    let q_sock = bound_client("127.0.0.1:0");
    let q = q_sock
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap()
        .port()
        .to_string();
    let q_pat = format!("{}?", &q[..q.len() - 1]);
    let mut spare = Vec::new();
    let r_sock = loop {
        let s = bound_client("127.0.0.1:0");
        let r = s
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap()
            .port()
            .to_string();
        if r != p.to_string() && !(r.len() == q.len() && r[..r.len() - 1] == q[..q.len() - 1]) {
            break s;
        }
        spare.push(s); // keep it bound so the next one differs
    };
    let r_addr = r_sock.local_addr().unwrap().as_socket().unwrap();

    let conf = format!(
        "admin G 127.0.0.1:* - {a} ;\n\
         exact RR 127.0.0.2:* - {l0} > {s} ;\n\
         qm RR 127.0.0.?:* - {l1} > {s} ;\n\
         ports RR 127.0.0.1:{p} 127.0.0.1:{q_pat} - {l2} > {s} ;\n\
         star RR *:* - {l3} > {s} ;\n\
         v6 RR [::1]:* - {l6} > {s} ;\n\
         v4only RR 127.0.0.1:* [::2]:* [fe80::*]:* - {l6v4} > {s} ;\n",
        l0 = ls[0],
        l1 = ls[1],
        l2 = ls[2],
        l3 = ls[3],
        s = s1.addr()
    );
    let listeners: Vec<&PreBound> = [&a]
        .into_iter()
        .chain(ls.iter())
        .chain([&l6, &l6v4])
        .collect();
    let g6 = G6Proc::start(&conf, &listeners, COPY);

    // Whole-string match of the address text.
    assert_eq!(identify_from("127.0.0.2", ls[0].addr()).0, "s1");
    let me = refused_from("127.0.0.1", ls[0].addr());
    assert_eq!(
        wait_access(&g6, me),
        refused_line("exact", me, ls[0].addr(), "filter")
    );
    refused_from("127.0.0.20", ls[0].addr());
    // `?` is exactly one character.
    assert_eq!(identify_from("127.0.0.5", ls[1].addr()).0, "s1");
    refused_from("127.0.0.15", ls[1].addr());
    // Port patterns: exact port, `?` in the port, and a port matching neither.
    let mut c = connect_socket(p_sock, ls[2].addr());
    assert_eq!(read_line(&mut c), "s1", "port {p} {}", g6.diagnostics());
    let mut c = connect_socket(q_sock, ls[2].addr());
    assert_eq!(read_line(&mut c), "s1", "port {q} vs {q_pat}");
    check_stream_refused(connect_socket(r_sock, ls[2].addr()))
        .unwrap_or_else(|e| panic!("port {r_addr} matches neither {p} nor {q_pat}: {e}"));
    assert_eq!(
        wait_access(&g6, r_addr),
        refused_line("ports", r_addr, ls[2].addr(), "filter")
    );
    assert_eq!(identify_from("127.0.0.9", ls[3].addr()).0, "s1");
    // IPv6: matched against the RFC 5952 text; IPv4 patterns never match IPv6 clients.
    assert_eq!(identify_from("::1", l6.addr()).0, "s1");
    let me = refused_from("::1", l6v4.addr());
    assert_eq!(
        wait_access(&g6, me),
        refused_line("v4only", me, l6v4.addr(), "filter")
    );
    let st = rule_stats(a.addr(), "exact");
    assert_eq!(
        (st["refused"].as_u64(), st["total"].as_u64()),
        (Some(2), Some(1)),
        "{st}"
    );
    drop(spare);
}

/// SPEC §5.1: descriptor exhaustion never spins — the client is accepted through a reserve
/// descriptor and refused (connect succeeds, then EOF), with an access line — and service
/// comes back once descriptors are free again.
#[test]
fn descriptor_exhaustion_refuses_then_recovers() {
    let s1 = Backend::identify("s1");
    let l = PreBound::tcp("127.0.0.1:0");
    let g6 = G6Proc::start(
        &format!("fd RR *:* - {l} > {} ;\n", s1.addr()),
        &[&l],
        &["--data-path", "copy"],
    );
    let (name, warm_up) = connect_identify(l.addr());
    assert_eq!(name, "s1");
    let warm_peer = warm_up.local_addr().unwrap();
    drop(warm_up);
    // Its sockets close before its access line is written (`end_served`): until then they
    // would leave holes below the limit set next, and the refused client would get served.
    wait_access(&g6, warm_peer);
    let worker = worker_pid(&g6);
    // No descriptor left for an accept: only the reserve can take one.
    let old = set_nofile_soft(worker, lowest_free_fd(worker));
    let client = connect(l.addr());
    let peer = client.local_addr().unwrap();
    check_stream_refused(client).unwrap_or_else(|e| panic!("not refused: {e}"));
    let line = wait_access(&g6, peer);
    assert!(line.contains("close=error"), "{line}");
    // The worker keeps running and does not spin.
    assert!(g6.is_running());
    set_nofile_soft(worker, old);
    assert!(
        wait_until(WAIT_TIMEOUT, || identify(l.addr()) == "s1"),
        "no recovery after descriptors came back"
    );
}
