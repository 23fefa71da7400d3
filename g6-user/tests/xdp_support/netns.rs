//! Network namespaces and a veth pair of our own, removed by `Drop` (also when a test
//! fails). Names carry the test's tag and our PID, so concurrent runs never collide.

use std::fs::File;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Netns {
        // A leftover from a killed earlier run with the same PID would make `add` fail.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`; panics with ip's message on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["-n", &self.name];
        v.extend_from_slice(args);
        ip(&v).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `ip -n <ns> <args>` stdout.
    pub fn ip_out(&self, args: &[&str]) -> String {
        let mut v = vec!["-n", &self.name];
        v.extend_from_slice(args);
        ip_out(&v)
    }

    /// Runs `f` on a new thread that has entered this namespace (setns is per thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Like [`Netns::run`] without waiting: the thread's handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            setns(fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth end inside it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Two namespaces joined by a veth pair: `server` (the agent) has `SERVER_IP`, `client` has
/// `CLIENT_IPS` on `client_if`.
pub struct Segment {
    pub server: Netns,
    pub client: Netns,
    pub server_if: String,
    pub client_if: String,
}

pub const SERVER_IP: &str = "198.18.0.1";
/// Allowed, disallowed, blocked-then-allowed client addresses.
pub const CLIENT_IPS: [&str; 3] = ["198.18.0.2", "198.18.0.3", "198.18.0.4"];

impl Segment {
    /// `tag`: one or two letters naming the test (names must stay within 15 bytes).
    pub fn new(tag: &str) -> Segment {
        let pid = std::process::id();
        let server = Netns::create(format!("g6x{tag}s{pid}"));
        let client = Netns::create(format!("g6x{tag}c{pid}"));
        let (server_if, client_if) = (format!("g6x{tag}s{pid}"), format!("g6x{tag}c{pid}"));
        let _ = ip(&["link", "del", &server_if]);
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            &server.name,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &client.name,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let seg = Segment {
            server,
            client,
            server_if,
            client_if,
        };
        seg.server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &seg.server_if,
        ]);
        seg.server.ip(&["link", "set", &seg.server_if, "up"]);
        for a in CLIENT_IPS {
            seg.client
                .ip(&["addr", "add", &format!("{a}/24"), "dev", &seg.client_if]);
        }
        seg.client.ip(&["link", "set", &seg.client_if, "up"]);
        seg
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
