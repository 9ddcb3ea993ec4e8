//! Reading the guest's frames far enough to decide what they are, and
//! writing the few frames the endpoint makes itself (resets for refused
//! connections, UDP replies, DNS answers). Every frame from the guest is
//! hostile: parsing checks lengths and checksums and never panics.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

use super::{GATEWAY_MAC, GUEST_IP};

/// Ethernet header length.
pub const ETH_HEADER: usize = 14;
/// IPv4 header length without options.
const IP_HEADER: usize = 20;
/// UDP header length.
const UDP_HEADER: usize = 8;
/// Hop limit of frames the endpoint makes.
const HOP_LIMIT: u8 = 64;

/// A TCP connection or UDP flow as the guest addresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// TCP or UDP.
    pub proto: Proto,
    /// The guest's port.
    pub guest_port: u16,
    /// Where the guest sends.
    pub remote: SocketAddrV4,
}

/// Transport protocols the endpoint carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// What a guest frame is, as far as the endpoint cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// ARP, or TCP that belongs to the TCP stack.
    Stack,
    /// A TCP SYN opening a connection (the stack sees it once the host
    /// socket is connected).
    Syn {
        /// The connection.
        key: FlowKey,
        /// Sequence number and payload length, to reset it.
        seq: u32,
        /// The guest's MAC, to answer it.
        mac: EthernetAddress,
    },
    /// A UDP datagram.
    Udp {
        /// The flow.
        key: FlowKey,
        /// Its payload.
        payload: &'a [u8],
        /// The guest's MAC, to answer it.
        mac: EthernetAddress,
    },
    /// Traffic a virtual link carries harmlessly (IPv6 neighbour discovery,
    /// multicast); dropped without complaint.
    Ignored,
    /// Dropped and counted: what is wrong with it.
    Bad(&'static str),
}

/// Classifies a frame from the guest.
pub fn classify(frame: &[u8]) -> Frame<'_> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Frame::Bad("runt Ethernet frame");
    };
    let dst = eth.dst_addr();
    if dst != GATEWAY_MAC && !dst.is_broadcast() {
        return if dst.is_multicast() {
            Frame::Ignored
        } else {
            Frame::Bad("frame for another MAC address")
        };
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => Frame::Stack,
        EthernetProtocol::Ipv6 => Frame::Ignored,
        EthernetProtocol::Ipv4 => classify_ipv4(eth.src_addr(), eth.payload()),
        EthernetProtocol::Unknown(_) => Frame::Bad("unknown EtherType"),
    }
}

fn classify_ipv4(mac: EthernetAddress, bytes: &[u8]) -> Frame<'_> {
    let Ok(packet) = Ipv4Packet::new_checked(bytes) else {
        return Frame::Bad("malformed IPv4 header");
    };
    let caps = ChecksumCapabilities::default();
    let Ok(ip) = Ipv4Repr::parse(&packet, &caps) else {
        return Frame::Bad("bad IPv4 header or checksum");
    };
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Frame::Bad("IPv4 fragment");
    }
    if ip.src_addr != GUEST_IP {
        return Frame::Bad("source address is not the guest's");
    }
    if ip.dst_addr.is_multicast() || ip.dst_addr.is_broadcast() {
        return Frame::Ignored;
    }
    let payload = packet.payload();
    match ip.next_header {
        IpProtocol::Tcp => classify_tcp(mac, &ip, payload),
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(payload) else {
                return Frame::Bad("malformed UDP header");
            };
            if UdpRepr::parse(&udp, &ip.src_addr.into(), &ip.dst_addr.into(), &caps).is_err() {
                return Frame::Bad("bad UDP header or checksum");
            }
            Frame::Udp {
                key: FlowKey {
                    proto: Proto::Udp,
                    guest_port: udp.src_port(),
                    remote: SocketAddrV4::new(ip.dst_addr, udp.dst_port()),
                },
                payload: udp.payload(),
                mac,
            }
        }
        _ => Frame::Bad("neither TCP nor UDP"),
    }
}

fn classify_tcp<'a>(mac: EthernetAddress, ip: &Ipv4Repr, payload: &'a [u8]) -> Frame<'a> {
    let Ok(tcp) = TcpPacket::new_checked(payload) else {
        return Frame::Bad("malformed TCP header");
    };
    if !tcp.verify_checksum(&ip.src_addr.into(), &ip.dst_addr.into()) {
        return Frame::Bad("bad TCP checksum");
    }
    if tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin() {
        return Frame::Syn {
            key: FlowKey {
                proto: Proto::Tcp,
                guest_port: tcp.src_port(),
                remote: SocketAddrV4::new(ip.dst_addr, tcp.dst_port()),
            },
            seq: tcp.seq_number().0 as u32,
            mac,
        };
    }
    Frame::Stack
}

/// Writes an Ethernet + IPv4 header for a `payload_len`-byte `proto` payload
/// from `src` to the guest; returns where the payload starts.
fn ip_header(
    buf: &mut [u8],
    mac: EthernetAddress,
    src: Ipv4Addr,
    proto: IpProtocol,
    payload_len: usize,
) -> usize {
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    EthernetRepr {
        src_addr: GATEWAY_MAC,
        dst_addr: mac,
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: GUEST_IP,
        next_header: proto,
        payload_len,
        hop_limit: HOP_LIMIT,
    };
    ip.emit(
        &mut Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER..]),
        &ChecksumCapabilities::default(),
    );
    ETH_HEADER + IP_HEADER
}

/// Length of the reset [`write_reset`] makes.
pub const RESET_LEN: usize = ETH_HEADER + IP_HEADER + 20;

/// Writes the reset refusing the guest's SYN `seq` for `key` into `buf`
/// ([`RESET_LEN`] bytes): the guest's connect fails at once with
/// "connection refused".
pub fn write_reset(buf: &mut [u8], mac: EthernetAddress, key: &FlowKey, seq: u32) {
    let repr = TcpRepr {
        src_port: key.remote.port(),
        dst_port: key.guest_port,
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(TcpSeqNumber(seq.wrapping_add(1) as i32)),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let at = ip_header(
        buf,
        mac,
        *key.remote.ip(),
        IpProtocol::Tcp,
        repr.buffer_len(),
    );
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[at..RESET_LEN]),
        &IpAddress::Ipv4(*key.remote.ip()),
        &IpAddress::Ipv4(GUEST_IP),
        &ChecksumCapabilities::default(),
    );
}

/// Length of the UDP frame [`write_udp`] makes for `payload_len` bytes.
pub fn udp_len(payload_len: usize) -> usize {
    ETH_HEADER + IP_HEADER + UDP_HEADER + payload_len
}

/// Writes a datagram from `key.remote` to the guest's `key.guest_port`
/// into `buf` ([`udp_len`] bytes); `fill` writes the payload.
pub fn write_udp(
    buf: &mut [u8],
    mac: EthernetAddress,
    key: &FlowKey,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    let at = ip_header(
        buf,
        mac,
        *key.remote.ip(),
        IpProtocol::Udp,
        UDP_HEADER + payload_len,
    );
    UdpRepr {
        src_port: key.remote.port(),
        dst_port: key.guest_port,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut buf[at..]),
        &IpAddress::Ipv4(*key.remote.ip()),
        &IpAddress::Ipv4(GUEST_IP),
        payload_len,
        fill,
        &ChecksumCapabilities::default(),
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::net::GUEST_MAC;

    /// A frame from the guest: `proto` header bytes built by `transport`.
    pub fn guest_ip_frame(
        dst: Ipv4Addr,
        proto: IpProtocol,
        transport_len: usize,
        transport: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; ETH_HEADER + IP_HEADER + transport_len];
        EthernetRepr {
            src_addr: GUEST_MAC,
            dst_addr: GATEWAY_MAC,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: dst,
            next_header: proto,
            payload_len: transport_len,
            hop_limit: 64,
        }
        .emit(
            &mut Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER..]),
            &ChecksumCapabilities::default(),
        );
        transport(&mut buf[ETH_HEADER + IP_HEADER..]);
        buf
    }

    /// A SYN from the guest's `port` to `dst`.
    pub fn syn(port: u16, dst: SocketAddrV4, seq: u32) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: port,
            dst_port: dst.port(),
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: None,
            window_len: 64240,
            window_scale: Some(7),
            max_seg_size: Some(1460),
            sack_permitted: true,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        guest_ip_frame(*dst.ip(), IpProtocol::Tcp, repr.buffer_len(), |b| {
            repr.emit(
                &mut TcpPacket::new_unchecked(b),
                &IpAddress::Ipv4(GUEST_IP),
                &IpAddress::Ipv4(*dst.ip()),
                &ChecksumCapabilities::default(),
            )
        })
    }

    /// A UDP datagram from the guest's `port` to `dst`.
    pub fn udp(port: u16, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        guest_ip_frame(
            *dst.ip(),
            IpProtocol::Udp,
            UDP_HEADER + payload.len(),
            |b| {
                UdpRepr {
                    src_port: port,
                    dst_port: dst.port(),
                }
                .emit(
                    &mut UdpPacket::new_unchecked(b),
                    &IpAddress::Ipv4(GUEST_IP),
                    &IpAddress::Ipv4(*dst.ip()),
                    payload.len(),
                    |p| p.copy_from_slice(payload),
                    &ChecksumCapabilities::default(),
                )
            },
        )
    }

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn syns_and_datagrams_are_recognised() {
        let key = FlowKey {
            proto: Proto::Tcp,
            guest_port: 40000,
            remote: addr("203.0.113.9:443"),
        };
        assert_eq!(
            classify(&syn(40000, key.remote, 77)),
            Frame::Syn {
                key,
                seq: 77,
                mac: GUEST_MAC
            }
        );
        let frame = udp(5353, addr("192.0.2.1:53"), b"query");
        match classify(&frame) {
            Frame::Udp { key, payload, .. } => {
                assert_eq!(key.remote, addr("192.0.2.1:53"));
                assert_eq!((key.guest_port, payload), (5353, &b"query"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_or_spoofed_frames_are_bad() {
        let good = syn(1, addr("203.0.113.9:443"), 1);
        assert!(matches!(classify(&good[..10]), Frame::Bad(_)));
        assert!(matches!(classify(&good[..30]), Frame::Bad(_)));
        for (at, what) in [
            (ETH_HEADER + 12, "source address"),
            (ETH_HEADER + 10, "IP checksum"),
            (good.len() - 1, "TCP checksum"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(matches!(classify(&bad), Frame::Bad(_)), "{what}");
        }
        let mut other_mac = good.clone();
        other_mac[5] ^= 0xff;
        assert!(matches!(classify(&other_mac), Frame::Bad(_)));
        let mut fragment = good.clone();
        fragment[ETH_HEADER + 6] = 0x20; // more fragments
        assert!(matches!(classify(&fragment), Frame::Bad(_)));
        let mut ipv6 = good.clone();
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(classify(&ipv6), Frame::Ignored);
    }

    #[test]
    fn a_reset_answers_the_syn_it_refuses() {
        let key = FlowKey {
            proto: Proto::Tcp,
            guest_port: 40000,
            remote: addr("203.0.113.9:443"),
        };
        let mut buf = [0u8; RESET_LEN];
        write_reset(&mut buf, GUEST_MAC, &key, 1000);
        let eth = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(eth.dst_addr(), GUEST_MAC);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (*key.remote.ip(), GUEST_IP));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(tcp.rst() && tcp.ack());
        assert_eq!(tcp.ack_number(), TcpSeqNumber(1001));
        assert_eq!((tcp.src_port(), tcp.dst_port()), (443, 40000));
        assert!(tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    }
}
