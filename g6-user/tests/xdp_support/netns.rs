//! The XDP tests' network: a server namespace (the agent) and a client namespace joined by
//! a veth pair, built on `support::netns` (removed by `Drop`, also when a test fails).

pub use crate::support::netns::NetNs;
use crate::support::netns::Veth;

/// Two namespaces joined by a veth pair: `server` (the agent) has `SERVER_IP`, `client` has
/// `CLIENT_IPS` on `client_if`.
pub struct Segment {
    pub server_if: String,
    pub client_if: String,
    // Before the namespaces: dropped (deleted) first.
    _veth: Veth,
    pub server: NetNs,
    pub client: NetNs,
}

pub const SERVER_IP: &str = "198.18.0.1";
/// Allowed, disallowed, blocked-then-allowed client addresses.
pub const CLIENT_IPS: [&str; 3] = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];

impl Segment {
    /// `tag` names the test in the namespace names.
    pub fn new(tag: &str) -> Segment {
        let server = NetNs::new(&format!("xdp{tag}s"));
        let client = NetNs::new(&format!("xdp{tag}c"));
        let veth = Veth::new(&server, &client);
        server.addr(&veth.a_dev, &format!("{SERVER_IP}/24"));
        for a in CLIENT_IPS {
            client.addr(&veth.b_dev, &format!("{a}/24"));
        }
        Segment {
            server_if: veth.a_dev.clone(),
            client_if: veth.b_dev.clone(),
            _veth: veth,
            server,
            client,
        }
    }

    /// Whether an XDP program is attached to the server's interface (`ip link` shows it).
    pub fn server_has_xdp(&self) -> bool {
        self.server
            .ip_out(&["-d", "link", "show", "dev", &self.server_if])
            .contains("prog/xdp")
    }

    pub fn lo_has_xdp(&self) -> bool {
        self.server
            .ip_out(&["-d", "link", "show", "dev", "lo"])
            .contains("prog/xdp")
    }
}
