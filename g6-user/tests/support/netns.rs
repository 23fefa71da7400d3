//! Network namespaces the tests create (iproute2), for scenarios that cross real (virtual)
//! NICs. Addresses are in 198.18.0.0/15 only. Names carry the test process's pid and a
//! counter, so parallel test processes never collide; `Drop` deletes the namespace (and with
//! it its veth ends), also when the test panics.
//!
//! Code runs inside a namespace through [`NetNs::run`]: a scoped thread that `setns`es
//! into it. A socket keeps the namespace it was created in, so sockets made inside `run`
//! (listeners, clients, `PreBound`) can be used from any thread afterwards.

use std::fs::File;
use std::io;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use nix::sched::{CloneFlags, setns};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace owned by the test.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `g6t<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> NetNs {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("g6t{}-{n}-{tag}", std::process::id());
        run_ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <name> <args>`, panicking with its stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// Adds `cidr` (e.g. "198.18.1.1/24") to `dev` and sets it up.
    pub fn addr(&self, dev: &str, cidr: &str) {
        assert_benchmark_range(cidr);
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Adds a route to `net` via `gateway`.
    pub fn route(&self, net: &str, gateway: &str) {
        assert_benchmark_range(net);
        assert_benchmark_range(gateway);
        self.ip(&["route", "add", net, "via", gateway]);
    }

    /// Reads a sysctl of this namespace (`net.ipv4.ip_forward` → "0").
    pub fn sysctl(&self, key: &str) -> String {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("read {path} in {}: {e}", self.name))
            .trim()
            .to_string()
    }

    /// Writes a sysctl of this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("write {value} to {path} in {}: {e}", self.name));
    }

    /// Runs `f` on a thread inside this namespace and returns its result (a panic in `f`
    /// is re-raised here).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|s| {
            let h = s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                setns(&ns, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns({path}): {e}"));
                f()
            });
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Best effort: a failing delete must not hide the test's own panic.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// A veth pair with one end in each namespace, named `<tag>a` / `<tag>b` (names are per
/// namespace, so tags only need to be unique within one test). Deleting either namespace
/// deletes both ends.
pub fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) {
    run_ip(&[
        "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
        &b.name,
    ]);
}

fn run_ip(args: &[&str]) {
    let out: io::Result<Output> = Command::new("ip").args(args).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("ip {}: {e} (is iproute2 installed?)", args.join(" ")),
    }
}

/// Test networks use 198.18.0.0/15 (RFC 2544) and nothing else.
fn assert_benchmark_range(addr: &str) {
    let ip = addr.split('/').next().unwrap_or(addr);
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .unwrap_or_else(|e| panic!("not an IPv4 address: {addr}: {e}"));
    assert!(
        is_benchmark_range(ip),
        "test networks use 198.18.0.0/15 only, got {addr}"
    );
}

/// 198.18.0.0/15.
pub fn is_benchmark_range(ip: std::net::Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 198 && (o[1] == 18 || o[1] == 19)
}
