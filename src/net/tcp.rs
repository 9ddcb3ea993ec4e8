//! TCP flows: a guest connection terminated by the endpoint's TCP stack on
//! one side, an ordinary host socket on the other.
//!
//! A guest SYN is held back until the host socket has connected, so the
//! guest's connect succeeds only when the real one did, and fails with a
//! reset (connection refused) when it did not — the connect latency the
//! guest sees is the host's. Data moves straight between the stack's socket
//! buffers and the host socket (no copy in between), as far as the buffers
//! and the bandwidth cap allow: a slow side fills its buffer and the TCP
//! window closes on the other, so memory stays bounded.

use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::time::Instant;

use mio::net::TcpStream;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, IpListenEndpoint};

use super::limits::Bucket;
use super::packet::FlowKey;

/// The largest SYN frame kept while the host connects (with every IP and
/// TCP option it is 134 bytes).
pub const MAX_SYN: usize = 160;

/// A connection whose host socket is still connecting.
pub struct Connecting {
    /// The host socket.
    pub stream: TcpStream,
    /// The guest's SYN, replayed into the stack once connected.
    pub syn: [u8; MAX_SYN],
    /// Its length.
    pub syn_len: usize,
    /// The guest's SYN sequence number and MAC, to reset it on failure.
    pub seq: u32,
    /// The guest's MAC.
    pub mac: EthernetAddress,
    /// When to give up.
    pub deadline: Instant,
}

impl Connecting {
    /// Starts connecting to `host`; `None` if the SYN frame is too large.
    pub fn start(
        host: SocketAddrV4,
        syn: &[u8],
        seq: u32,
        mac: EthernetAddress,
        deadline: Instant,
    ) -> Option<io::Result<Connecting>> {
        let mut copy = [0u8; MAX_SYN];
        copy.get_mut(..syn.len())?.copy_from_slice(syn);
        Some(TcpStream::connect(host.into()).map(|stream| Connecting {
            stream,
            syn: copy,
            syn_len: syn.len(),
            seq,
            mac,
            deadline,
        }))
    }

    /// `Some(Ok)` once connected, `Some(Err)` once failed, `None` while
    /// still connecting (the way mio says to tell, after a writable event).
    pub fn outcome(&self) -> Option<io::Result<()>> {
        match self.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Some(Err(e)),
            Ok(None) => {}
        }
        match self.stream.peer_addr() {
            Ok(_) => Some(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// A connected flow.
pub struct Open {
    /// The host socket.
    pub stream: TcpStream,
    /// The stack's socket facing the guest.
    pub handle: SocketHandle,
    /// The host socket may have data (mio is edge-triggered: set by an
    /// event, cleared by `WouldBlock`).
    pub readable: bool,
    /// The host socket may take data.
    pub writable: bool,
    host_eof: bool,
    shut_write: bool,
}

/// What one pump of a flow did.
#[derive(Default)]
pub struct Pumped {
    /// Bytes guest to host.
    pub sent: usize,
    /// Bytes host to guest.
    pub received: usize,
    /// A bandwidth cap stopped it.
    pub throttled: bool,
    /// The flow is over; remove it.
    pub done: bool,
}

impl Open {
    /// Puts a stack socket listening on the address the guest called into
    /// `sockets`; the caller then replays the SYN into the stack.
    pub fn accept(
        stream: TcpStream,
        key: &FlowKey,
        sockets: &mut SocketSet<'static>,
        buffer: usize,
    ) -> Open {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        socket.set_nagle_enabled(false);
        socket
            .listen(IpListenEndpoint {
                addr: Some((*key.remote.ip()).into()),
                port: key.remote.port(),
            })
            .expect("a fresh socket listens on a non-zero port");
        Open {
            stream,
            handle: sockets.add(socket),
            readable: true,
            writable: true,
            host_eof: false,
            shut_write: false,
        }
    }

    /// Moves what can move between the host socket and the stack's socket.
    pub fn pump(
        &mut self,
        sock: &mut tcp::Socket<'_>,
        up: &mut Bucket,
        down: &mut Bucket,
        now: Instant,
    ) -> Pumped {
        let mut p = Pumped::default();
        while self.writable && sock.can_recv() {
            let allowed = up.available(usize::MAX, now);
            if allowed == 0 {
                p.throttled = true;
                break;
            }
            let stream = &mut self.stream;
            match sock.recv(|buf| {
                let n = buf.len().min(allowed);
                match stream.write(&buf[..n]) {
                    Ok(k) => (k, Ok(k)),
                    Err(e) => (0, Err(e)),
                }
            }) {
                Ok(Ok(k)) => {
                    up.take(k);
                    p.sent += k;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    sock.abort();
                    break;
                }
            }
        }
        // The guest closed its half and everything it sent has gone out.
        if !self.shut_write && guest_finished(sock) {
            self.shut_write = true;
            // A peer that already went away makes this fail; nothing to do.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        while self.readable && !self.host_eof && sock.can_send() {
            let allowed = down.available(usize::MAX, now);
            if allowed == 0 {
                p.throttled = true;
                break;
            }
            let stream = &mut self.stream;
            match sock.send(|buf| {
                let n = buf.len().min(allowed);
                match stream.read(&mut buf[..n]) {
                    Ok(k) => (k, Ok(k)),
                    Err(e) => (0, Err(e)),
                }
            }) {
                Ok(Ok(0)) => {
                    self.host_eof = true;
                    sock.close();
                }
                Ok(Ok(k)) => {
                    down.take(k);
                    p.received += k;
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) | Err(_) => {
                    sock.abort();
                    break;
                }
            }
        }
        p.done = matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait);
        p
    }
}

/// The guest sent its FIN and the stack has handed over every byte before it.
fn guest_finished(sock: &tcp::Socket<'_>) -> bool {
    use tcp::State::*;
    matches!(
        sock.state(),
        CloseWait | LastAck | Closing | TimeWait | Closed
    ) && sock.recv_queue() == 0
}
