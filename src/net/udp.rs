//! UDP flows: each (guest port, destination) pair gets its own connected
//! host socket, so replies can only come from the destination the guest
//! wrote to, and the socket is never bound to a wildcard address. A flow
//! idle for [`UDP_IDLE`] is closed.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use smoltcp::wire::EthernetAddress;

/// How long a UDP flow lives without traffic.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

/// One flow.
pub struct Flow {
    /// The host socket, connected to the destination.
    pub socket: UdpSocket,
    /// The guest's MAC, to answer it.
    pub mac: EthernetAddress,
    /// The host socket may have datagrams.
    pub readable: bool,
    /// Last traffic either way.
    pub last: Instant,
}

impl Flow {
    /// A socket connected to `remote` (the kernel picks the local port on
    /// connect; nothing is bound before).
    pub fn open(remote: SocketAddr, mac: EthernetAddress, now: Instant) -> io::Result<Flow> {
        // socket2 sets close-on-exec on every socket it creates.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        socket.set_nonblocking(true)?;
        socket.connect(&remote.into())?;
        Ok(Flow {
            socket: UdpSocket::from_std(socket.into()),
            mac,
            readable: true,
            last: now,
        })
    }

    /// When the flow expires.
    pub fn expires(&self) -> Instant {
        self.last + UDP_IDLE
    }
}
