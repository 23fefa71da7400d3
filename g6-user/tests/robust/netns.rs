//! Network namespaces created by a test (`ip netns`), removed on Drop, and entering one from
//! the current thread: a socket keeps the namespace it was created in, so a test thread can
//! make clients, servers and listen sockets in namespaces and use them from anywhere.
//!
//! Names include the test process's PID and a counter (others run tests concurrently);
//! addresses are in 198.18.0.0/15 only.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Runs `ip args…`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A unique name `<prefix><pid>x<n>` (interface names must stay within 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    assert!(name.len() <= 15, "name too long: {name}");
    name
}

/// A network namespace of ours with its loopback up; deleted on Drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> NetNs {
        let name = unique_name(prefix);
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `cmd…` inside the namespace (`ip netns exec`); panics on failure.
    pub fn exec(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ip(&args);
    }

    /// Writes a sysctl of this namespace (`/proc/sys/<path>`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` with the current thread inside the namespace, then moves it back.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("open netns {}: {e}", self.name));
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {}: {e}", self.name));
        struct Back(File);
        impl Drop for Back {
            fn drop(&mut self) {
                setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns back home");
            }
        }
        let _back = Back(home);
        f()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair between two namespaces, `a_ip`/`b_ip` (/24) on each end, both up.
/// Deleting either end (`cut`) removes the pair: packets stop without a FIN or RST.
pub struct Veth {
    ns_a: String,
    dev_a: String,
    cut: bool,
}

impl Veth {
    pub fn new(a: &NetNs, a_ip: &str, b: &NetNs, b_ip: &str) -> Veth {
        for ipa in [a_ip, b_ip] {
            assert!(
                ipa.starts_with("198.18.") || ipa.starts_with("198.19."),
                "{ipa}"
            );
        }
        let (dev_a, dev_b) = (unique_name("g6a"), unique_name("g6b"));
        ip(&[
            "link", "add", &dev_a, "netns", &a.name, "type", "veth", "peer", "name", &dev_b,
            "netns", &b.name,
        ]);
        let v = Veth {
            ns_a: a.name.clone(),
            dev_a: dev_a.clone(),
            cut: false,
        };
        for (ns, dev, addr) in [(a, &dev_a, a_ip), (b, &dev_b, b_ip)] {
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        v
    }

    /// Deletes the pair: both ends vanish at once, nothing more crosses.
    pub fn cut(&mut self) {
        ip(&["-n", &self.ns_a, "link", "del", &self.dev_a]);
        self.cut = true;
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if !self.cut {
            let _ = Command::new("ip")
                .args(["-n", &self.ns_a, "link", "del", &self.dev_a])
                .status();
        }
    }
}
