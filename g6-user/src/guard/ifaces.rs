//! Which interfaces carry the listen addresses: a wildcard listener (0.0.0.0, ::) every
//! interface that is up, a loopback address the loopback interface, any other address the
//! interfaces it is assigned to. Interfaces that appear later are not covered until a reload.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::{InterfaceFlags, if_nametoindex};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Iface {
    pub index: u32,
    pub name: String,
}

/// The interfaces to guard for `listeners`, by index.
pub fn for_listeners(listeners: &[SocketAddr]) -> io::Result<Vec<Iface>> {
    let mut found: BTreeMap<u32, String> = BTreeMap::new();
    for a in getifaddrs().map_err(io::Error::from)? {
        let up = a.flags.contains(InterfaceFlags::IFF_UP);
        let loopback = a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        let addr: Option<IpAddr> = a.address.as_ref().and_then(|s| {
            s.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        let wanted = listeners.iter().any(|l| {
            let ip = l.ip();
            (ip.is_unspecified() && up)
                || (ip.is_loopback() && loopback && up)
                || addr.is_some_and(|a| a == ip)
        });
        if wanted && !found.values().any(|n| *n == a.interface_name) {
            let index = if_nametoindex(a.interface_name.as_str()).map_err(io::Error::from)?;
            found.insert(index, a.interface_name);
        }
    }
    Ok(found
        .into_iter()
        .map(|(index, name)| Iface { index, name })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listener_is_on_lo() {
        let got = for_listeners(&["127.0.0.5:80".parse().unwrap()]).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].name, "lo");
        let any = for_listeners(&["0.0.0.0:80".parse().unwrap()]).unwrap();
        assert!(any.iter().any(|i| i.name == "lo"), "{any:?}");
        assert!(
            for_listeners(&["198.18.255.254:80".parse().unwrap()])
                .unwrap()
                .is_empty()
        );
    }
}
