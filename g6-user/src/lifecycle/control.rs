//! Monitor ↔ worker control channel: a SOCK_SEQPACKET socketpair (message boundaries kept,
//! descriptors passed with SCM_RIGHTS). One byte of kind, then a payload. The monitor sends
//! orders; the worker sends one message back, `Serving`, once its accept loops run.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// Largest message: a config file plus headroom. Bigger configs are refused on reload.
pub const MAX_MESSAGE: usize = 4 << 20;
/// At most this many descriptors per message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 250;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Close the listeners, finish the sessions, exit 0.
    Drain,
    /// Close everything, exit 0.
    Stop,
    /// Reopen the log file.
    ReopenLog,
    /// Apply this config text; the descriptors are the listeners it adds, in config order.
    Reload(Vec<u8>),
    /// The XDP guard's attachment changed (reload): `XdpStatus::encode` text.
    XdpStatus(String),
    /// Worker → monitor: the accept loops run. Only then is a start announced as ready
    /// (pid file, `G6_READY_FD` byte, systemd READY).
    Serving,
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        match self {
            Message::Drain => b"D".to_vec(),
            Message::Stop => b"S".to_vec(),
            Message::ReopenLog => b"L".to_vec(),
            Message::Reload(text) => {
                let mut v = Vec::with_capacity(text.len() + 1);
                v.push(b'R');
                v.extend_from_slice(text);
                v
            }
            Message::XdpStatus(text) => {
                let mut v = b"X".to_vec();
                v.extend_from_slice(text.as_bytes());
                v
            }
            Message::Serving => b"A".to_vec(),
        }
    }

    fn decode(data: &[u8]) -> Option<Message> {
        Some(match data.first()? {
            b'D' => Message::Drain,
            b'S' => Message::Stop,
            b'L' => Message::ReopenLog,
            b'R' => Message::Reload(data[1..].to_vec()),
            b'X' => Message::XdpStatus(String::from_utf8(data[1..].to_vec()).ok()?),
            b'A' => Message::Serving,
            _ => return None,
        })
    }
}

/// Creates the (monitor end, worker end) pair; both close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Sends one message with descriptors (blocking).
pub fn send(sock: RawFd, msg: &Message, fds: &[RawFd]) -> io::Result<()> {
    let data = msg.encode();
    if data.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::other("control message too large"));
    }
    let iov = [IoSlice::new(&data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::empty(), None).map_err(io::Error::from)?;
    Ok(())
}

/// Receives one message (blocking unless the socket is non-blocking). `Ok(None)` = the other
/// end closed.
pub fn recv(sock: RawFd) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Ok(None);
    }
    match Message::decode(&buf[..len]) {
        Some(m) => Ok(Some((m, fds))),
        None => Err(io::Error::other("malformed control message")),
    }
}

/// Raw fd of an owned descriptor, for `send`.
pub fn raw(fds: &[impl AsRawFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross() {
        let (a, b) = pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        send(
            a.as_raw_fd(),
            &Message::Reload(b"conf".to_vec()),
            &[l.as_raw_fd()],
        )
        .unwrap();
        send(a.as_raw_fd(), &Message::Drain, &[]).unwrap();
        let xdp = Message::XdpStatus("generic lo,veth0".into());
        send(a.as_raw_fd(), &xdp, &[]).unwrap();
        let (m, fds) = recv(b.as_raw_fd()).unwrap().unwrap();
        assert_eq!(m, Message::Reload(b"conf".to_vec()));
        assert_eq!(fds.len(), 1);
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        assert_eq!(recv(b.as_raw_fd()).unwrap().unwrap().0, Message::Drain);
        assert_eq!(recv(b.as_raw_fd()).unwrap().unwrap().0, xdp);
        // The worker's report crosses the other way.
        send(b.as_raw_fd(), &Message::Serving, &[]).unwrap();
        assert_eq!(recv(a.as_raw_fd()).unwrap().unwrap().0, Message::Serving);
        drop(a);
        assert!(recv(b.as_raw_fd()).unwrap().is_none());
    }
}
