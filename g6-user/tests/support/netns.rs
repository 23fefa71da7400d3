//! Network namespaces the tests create (iproute2), for scenarios that cross real (virtual)
//! NICs. Addresses are in 198.18.0.0/15 only. Names carry the test process's pid and a
//! counter, so parallel test processes never collide; `Drop` deletes the namespace (and with
//! it its veth ends), also when the test panics.
//!
//! Code runs inside a namespace through [`NetNs::run`] (a scoped thread that `setns`es into
//! it), [`NetNs::spawn`] (the same, not waited for) or [`NetNs::enter`] (the current thread,
//! moved back afterwards). A socket keeps the namespace it was created in, so sockets made
//! there (listeners, clients, `PreBound`) can be used from any thread afterwards. g6 itself
//! runs in a namespace with `G6Proc::start_in_netns`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
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

    /// `ip -n <name> <args>`: its stdout, whatever its status.
    pub fn ip_out(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        let out = Command::new("ip")
            .args(&all)
            .output()
            .unwrap_or_else(|e| panic!("ip {}: {e}", all.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        let path = self.path();
        thread::scope(|s| {
            let h = s.spawn(|| {
                enter_path(&path);
                f()
            });
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Like [`NetNs::run`] without waiting: the thread's handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            enter_path(&path);
            f()
        })
    }

    /// Runs `f` with the current thread inside this namespace, then moves it back (also
    /// when `f` panics).
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = File::open("/proc/thread-self/ns/net").expect("open own netns");
        enter_path(&self.path());
        struct Back(File);
        impl Drop for Back {
            fn drop(&mut self) {
                setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns back home");
            }
        }
        let _back = Back(home);
        f()
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
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

fn enter_path(path: &str) {
    let ns = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns({path}): {e}"));
}

/// A veth pair with end `a_dev` in namespace `a` and `b_dev` in `b`, both down and without
/// addresses (see [`NetNs::addr`]). Names are unique (`g6a<pid>x<n>`, within the 15-byte
/// limit) so they may appear in logs and `show stats`. Deleting either namespace deletes the
/// pair; so do [`Veth::cut`] and `Drop`.
pub struct Veth {
    a_ns: String,
    pub a_dev: String,
    pub b_dev: String,
    cut: bool,
}

impl Veth {
    pub fn new(a: &NetNs, b: &NetNs) -> Veth {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (a_dev, b_dev) = (format!("g6a{pid}x{n}"), format!("g6b{pid}x{n}"));
        assert!(a_dev.len() <= 15, "interface name too long: {a_dev}");
        run_ip(&[
            "link", "add", &a_dev, "netns", &a.name, "type", "veth", "peer", "name", &b_dev,
            "netns", &b.name,
        ]);
        Veth {
            a_ns: a.name.clone(),
            a_dev,
            b_dev,
            cut: false,
        }
    }

    /// Deletes the pair: both ends vanish at once and nothing more crosses (no FIN, no RST).
    pub fn cut(&mut self) {
        run_ip(&["-n", &self.a_ns, "link", "del", &self.a_dev]);
        self.cut = true;
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if !self.cut {
            // Gone already if its namespace was dropped first: nothing to report.
            let _ = Command::new("ip")
                .args(["-n", &self.a_ns, "link", "del", &self.a_dev])
                .output();
        }
    }
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
