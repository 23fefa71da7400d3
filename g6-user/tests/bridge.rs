//! G6 bridging two network segments through a dual-NIC host (the manual's §3.3 use case),
//! on real virtual NICs: three network namespaces joined by veth pairs.
//!
//! ```text
//!  segment A (clients)              bridge host (g6)                segment B (servers)
//!  198.18.0.10 allowed  ──veth──  198.18.0.51 │ 198.18.1.51  ──veth──  198.18.1.101, .102
//!  198.18.0.20 not allowed                     ip_forward = 0
//! ```
//!
//! The rule is the manual's dual-NIC example with 198.18.0.0/15 addresses:
//! `bridge RR 198.18.0.1?:* - 198.18.0.51:<port> > 198.18.1.101:<port> 198.18.1.102:<port> ;`
//! Segments A and B have routes to each other through the bridge host, which does not
//! forward: so the only way across is G6.

mod e2e;
mod support;

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use support::netns::{NetNs, Veth};
use support::*;

const ALLOWED: &str = "198.18.0.10";
const NOT_ALLOWED: &str = "198.18.0.20";
const BRIDGE_A: &str = "198.18.0.51";
const BRIDGE_B: &str = "198.18.1.51";
const SERVERS: [&str; 2] = ["198.18.1.101", "198.18.1.102"];
/// A connect across an unrouted gap has nothing to wait for but its own timeout.
const NO_ROUTE_WAIT: Duration = Duration::from_millis(1500);

/// The three namespaces, wired and addressed; dropped (deleted) when the test ends.
struct Segments {
    // Veths first: they are deleted before their namespaces.
    _nic_a: Veth,
    _nic_b: Veth,
    a: NetNs,
    bridge: NetNs,
    b: NetNs,
}

impl Segments {
    fn new() -> Segments {
        let (a, bridge, b) = (NetNs::new("segA"), NetNs::new("brg"), NetNs::new("segB"));
        let nic_a = Veth::new(&a, &bridge);
        let nic_b = Veth::new(&bridge, &b);
        a.addr(&nic_a.a_dev, &format!("{ALLOWED}/24"));
        a.addr(&nic_a.a_dev, &format!("{NOT_ALLOWED}/24"));
        bridge.addr(&nic_a.b_dev, &format!("{BRIDGE_A}/24"));
        bridge.addr(&nic_b.a_dev, &format!("{BRIDGE_B}/24"));
        for server in SERVERS {
            b.addr(&nic_b.b_dev, &format!("{server}/24"));
        }
        let s = Segments {
            _nic_a: nic_a,
            _nic_b: nic_b,
            a,
            bridge,
            b,
        };
        // Each segment knows the other is behind the bridge host, as on a real network.
        s.a.route("198.18.1.0/24", BRIDGE_A);
        s.b.route("198.18.0.0/24", BRIDGE_B);
        s
    }
}

/// Starts one `Identify` backend per server address, inside segment B.
fn servers_in(b: &NetNs) -> Vec<Backend> {
    b.run(|| {
        SERVERS
            .iter()
            .map(|ip| Backend::identify_on(&format!("{ip}:0"), ip))
            .collect()
    })
}

/// A connection from `src` (an address of segment A's NIC) to `to`, made inside segment A.
fn connect_from_a(seg: &Segments, src: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    connect_from_a_within(seg, src, to, IO_TIMEOUT)
}

fn connect_from_a_within(
    seg: &Segments,
    src: &str,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    seg.a.run(|| {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(src.parse().unwrap(), 0).into())?;
        sock.connect_timeout(&to.into(), timeout)?;
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    })
}

/// g6 on the bridge host with the manual's dual-NIC rule, on data path `path`.
fn bridge_g6(seg: &Segments, servers: &[Backend], path: &str) -> (G6Proc, SocketAddr) {
    let listen = seg.bridge.run(|| PreBound::tcp(&format!("{BRIDGE_A}:0")));
    let targets: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let conf = format!(
        "bridge RR 198.18.0.1?:* - {listen} > {} ;\n",
        targets.join(" ")
    );
    let addr = listen.addr();
    let g6 = G6Proc::start_in_netns(
        seg.bridge.name(),
        &conf,
        &[&listen],
        &["--data-path", path, "-t", "2"],
    );
    (g6, addr)
}

#[test]
fn clients_of_segment_a_reach_servers_of_segment_b_through_g6_on_every_data_path() {
    for path in G6Proc::data_paths() {
        let seg = Segments::new();
        let servers = servers_in(&seg.b);
        let (g6, listen) = bridge_g6(&seg, &servers, &path);

        // Round robin across both servers of segment B.
        let mut names = Vec::new();
        for _ in 0..2 {
            let mut s = connect_from_a(&seg, ALLOWED, listen)
                .unwrap_or_else(|e| panic!("[{path}] connect to {listen}: {e}"));
            names.push(read_line(&mut s));
            s.shutdown(Shutdown::Write).unwrap();
        }
        names.sort();
        assert_eq!(names, SERVERS, "[{path}] round robin over segment B");

        // The servers see the bridge host's B-side address, never the client's: every
        // connection went through G6.
        for server in &servers {
            server.wait_ended(1, WAIT_TIMEOUT);
            for r in server.records() {
                assert_eq!(
                    r.peer.ip().to_string(),
                    BRIDGE_B,
                    "[{path}] {} was reached from {} instead of via G6",
                    server.label(),
                    r.peer
                );
            }
        }

        // Bytes cross intact both ways: after its name, a server echoes what it reads.
        let mut s = connect_from_a(&seg, ALLOWED, listen).expect("connect for the echo");
        let name = read_line(&mut s);
        assert!(
            SERVERS.contains(&name.as_str()),
            "[{path}] echo served by {name}"
        );
        echo_checked_on(s, 4 << 20);

        // Written once g6 has closed a session, which can be after the client saw its end.
        let with_path = format!("path={path}");
        g6.expect_log(
            &format!("an access line with {with_path}"),
            WAIT_TIMEOUT,
            |t| {
                t.lines()
                    .any(|l| l.contains("| session rule=bridge") && l.contains(&with_path))
            },
        );
    }
}

#[test]
fn a_client_of_segment_a_outside_the_pattern_is_refused() {
    let seg = Segments::new();
    let servers = servers_in(&seg.b);
    let (g6, listen) = bridge_g6(&seg, &servers, "copy");

    let s = connect_from_a(&seg, NOT_ALLOWED, listen)
        .unwrap_or_else(|e| panic!("connect from {NOT_ALLOWED}: {e}"));
    let client = s.local_addr().unwrap();
    e2e::check_stream_refused(s).unwrap_or_else(|e| panic!("{NOT_ALLOWED} should be refused: {e}"));
    let line = wait_for(WAIT_TIMEOUT, || {
        g6.log_contents()
            .lines()
            .find(|l| l.contains(&format!(" client={client} ")))
            .map(String::from)
    })
    .unwrap_or_else(|| panic!("no access line for {client} {}", g6.diagnostics()));
    assert!(
        line.contains("close=filter"),
        "refused by the filter: {line}"
    );
    assert!(
        servers.iter().all(|s| s.accepted() == 0),
        "a refused client must not reach segment B"
    );

    // The allowed neighbour on the same NIC is served meanwhile.
    let mut ok = connect_from_a(&seg, ALLOWED, listen).expect("allowed client connects");
    let name = read_line(&mut ok);
    assert!(SERVERS.contains(&name.as_str()), "served by {name}");
}

#[test]
fn the_segments_are_not_routed_to_each_other_without_g6() {
    let seg = Segments::new();
    let servers = servers_in(&seg.b);
    assert_eq!(
        seg.bridge.sysctl("net.ipv4.ip_forward"),
        "0",
        "the bridge host needs no IP forwarding"
    );
    let target = servers[0].addr();

    // The routes exist, but the bridge host does not forward: a direct connection fails.
    let direct = connect_from_a_within(&seg, ALLOWED, target, NO_ROUTE_WAIT);
    assert!(
        direct.is_err(),
        "segment A reached {target} directly without G6"
    );
    assert_eq!(servers[0].accepted(), 0);

    // Control: the same connection works once the bridge host forwards, so the failure
    // above was the missing forwarding, not a broken topology.
    seg.bridge.set_sysctl("net.ipv4.ip_forward", "1");
    let mut routed = connect_from_a(&seg, ALLOWED, target).expect("routed connection");
    assert_eq!(read_line(&mut routed), SERVERS[0]);
    let peer = wait_for(WAIT_TIMEOUT, || {
        servers[0].records().first().map(|r| r.peer)
    })
    .expect("server recorded the routed connection");
    assert_eq!(peer.ip().to_string(), ALLOWED, "routed, not proxied");
}
