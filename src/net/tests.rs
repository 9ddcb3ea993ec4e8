//! The endpoint driven by a made-up guest: a second smoltcp stack with the
//! guest's address, whose frames are handed to a real endpoint, which opens
//! real host sockets to servers these tests start on 127.0.0.1.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetFrame, HardwareAddress, IpAddress, IpCidr, Ipv4Packet, UdpPacket};

use super::dns::tests::{query, read_answer};
use super::packet::tests::udp;
use super::*;

/// Frames in flight between the made-up guest and the endpoint.
#[derive(Default)]
struct Wire {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: VecDeque<Vec<u8>>,
}

struct GuestRx(Vec<u8>);
struct GuestTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for GuestRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for GuestTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = GuestRx;
    type TxToken<'a> = GuestTx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(GuestRx, GuestTx<'_>)> {
        let frame = self.to_guest.pop_front()?;
        Some((GuestRx(frame), GuestTx(&mut self.from_guest)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<GuestTx<'_>> {
        Some(GuestTx(&mut self.from_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// A guest: its own TCP stack with the guest's MAC and address.
struct Guest {
    iface: Interface,
    sockets: SocketSet<'static>,
    wire: Wire,
    epoch: Instant,
}

impl Guest {
    fn new() -> Guest {
        let mut wire = Wire::default();
        let epoch = Instant::now();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(GUEST_MAC)),
            &mut wire,
            smoltcp::time::Instant::from_millis(0),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), PREFIX_LEN))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .unwrap();
        Guest {
            iface,
            sockets: SocketSet::new(Vec::new()),
            wire,
            epoch,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Moves frames both ways once.
    fn step(&mut self, ep: &Endpoint) {
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        let frames: Vec<_> = self.wire.from_guest.drain(..).collect();
        ep.guest_frames(frames.iter().map(Vec::as_slice));
        ep.take_frames(|f| {
            self.wire.to_guest.push_back(f.to_vec());
            true
        });
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
    }

    /// Steps until `done` holds, for at most 5 s.
    fn until(&mut self, ep: &Endpoint, mut done: impl FnMut(&mut Guest) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out");
            self.step(ep);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn connect(&mut self, remote: SocketAddrV4, local_port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 1 << 16]),
            tcp::SocketBuffer::new(vec![0; 1 << 16]),
        );
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(*remote.ip()), remote.port()),
            local_port,
        )
        .unwrap();
        self.sockets.add(s)
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// Connects, sends `request`, reads until the peer closes.
    fn fetch(&mut self, ep: &Endpoint, remote: SocketAddrV4, port: u16, request: &[u8]) -> Vec<u8> {
        let h = self.connect(remote, port);
        self.until(ep, |g| g.tcp(h).may_send() || !g.tcp(h).is_open());
        assert!(
            self.tcp(h).may_send(),
            "connection refused: {}",
            self.tcp(h).state()
        );
        self.tcp(h).send_slice(request).unwrap();
        let mut got = Vec::new();
        self.until(ep, |g| {
            let s = g.tcp(h);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            !s.may_recv() && s.state() != tcp::State::SynSent
        });
        self.tcp(h).close();
        self.until(ep, |g| !g.tcp(h).is_open());
        got
    }

    /// Sends a UDP datagram and waits for the first one back.
    fn udp_exchange(&mut self, ep: &Endpoint, to: SocketAddrV4, payload: &[u8]) -> Option<Vec<u8>> {
        ep.guest_frames([udp(40000, to, payload).as_slice()]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let mut reply = None;
            ep.take_frames(|f| {
                let eth = EthernetFrame::new_checked(f).unwrap();
                let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                let u = UdpPacket::new_checked(ip.payload()).unwrap();
                assert_eq!((ip.src_addr(), u.src_port()), (*to.ip(), to.port()));
                assert_eq!((ip.dst_addr(), u.dst_port()), (GUEST_IP, 40000));
                reply = Some(u.payload().to_vec());
                true
            });
            if reply.is_some() {
                return reply;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

fn endpoint(net: &Network, allow: &[&str], deny: &[&str], limits: Limits) -> Arc<Endpoint> {
    net.endpoint(EndpointConfig {
        policy: Policy::parse(allow, deny).unwrap(),
        limits,
        mtu: 1500,
        label: "test".into(),
    })
}

/// A server on 127.0.0.1 that answers each connection with `reply(n, request)`
/// (n counts connections) after reading `request_len` bytes, then closes.
fn server(
    request_len: usize,
    reply: impl Fn(usize, &[u8]) -> Vec<u8> + Send + Sync + 'static,
) -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let reply = Arc::new(reply);
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let reply = Arc::clone(&reply);
            std::thread::spawn(move || {
                let mut req = vec![0; request_len];
                if conn.read_exact(&mut req).is_ok() {
                    let _ = conn.write_all(&reply(n, &req));
                }
            });
        }
    });
    addr
}

/// A UDP peer on 127.0.0.1 that answers each datagram with "echo " and it.
fn udp_echo_peer() -> SocketAddrV4 {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let std::net::SocketAddr::V4(addr) = peer.local_addr().unwrap() else {
        unreachable!()
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = peer.recv_from(&mut buf) {
            let _ = peer.send_to(&[b"echo ", &buf[..n]].concat(), from);
        }
    });
    addr
}

/// Where the guest reaches the host's 127.0.0.1:`port`: the gateway.
fn host(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(GATEWAY_IP, port)
}

#[test]
fn an_allowed_connection_carries_a_request_and_its_reply() {
    let net = Network::start().unwrap();
    let srv = server(3, |_, req| [b"you said ", req].concat());
    let ep = endpoint(
        &net,
        &[&format!("127.0.0.1:{}", srv.port())],
        &[],
        Limits::DEFAULT,
    );
    let mut g = Guest::new();
    assert_eq!(
        g.fetch(&ep, host(srv.port()), 40001, b"hi!"),
        b"you said hi!"
    );
    let s = ep.stats();
    assert_eq!((s.connections, s.refused, s.failed), (1, 0, 0));
    assert_eq!((s.bytes_sent, s.bytes_received), (3, 12));
    g.until(&ep, |_| ep.stats().open_connections == 0);
}

#[test]
fn refused_destinations_are_reset_at_once_and_counted() {
    let net = Network::start().unwrap();
    let srv = server(1, |_, _| b"x".to_vec());
    // Everything but special addresses, except one port denied.
    let ep = endpoint(
        &net,
        &["0.0.0.0/0"],
        &["203.0.113.0/24:443"],
        Limits::DEFAULT,
    );
    let mut g = Guest::new();
    let targets = [
        host(srv.port()), // the host's loopback, not explicitly allowed
        srv,              // the same, addressed directly
        SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80), // metadata
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 80), // the virtual link
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 5), 443), // denied
    ];
    for (i, t) in targets.iter().enumerate() {
        let h = g.connect(*t, 41000 + i as u16);
        g.until(&ep, |g| !g.tcp(h).is_open());
        assert_eq!(g.tcp(h).state(), tcp::State::Closed, "{t}");
    }
    let s = ep.stats();
    assert_eq!((s.refused, s.connections, s.open_connections), (5, 0, 0));
}

#[test]
fn a_failed_host_connect_resets_the_guest() {
    let net = Network::start().unwrap();
    // A port nothing listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = endpoint(&net, &["127.0.0.0/8"], &[], Limits::DEFAULT);
    let mut g = Guest::new();
    let h = g.connect(host(port), 40002);
    g.until(&ep, |g| !g.tcp(h).is_open());
    let s = ep.stats();
    assert_eq!((s.failed, s.connections, s.refused), (1, 0, 0));
}

#[test]
fn forks_with_equal_addresses_have_independent_flows() {
    let net = Network::start().unwrap();
    let srv = server(1, |n, req| {
        format!("conn {n} got {}", req[0] as char).into_bytes()
    });
    let rule = format!("127.0.0.1:{}", srv.port());
    let (ea, eb) = (
        endpoint(&net, &[&rule], &[], Limits::DEFAULT),
        endpoint(&net, &[&rule], &[], Limits::DEFAULT),
    );
    let (mut a, mut b) = (Guest::new(), Guest::new());
    // Same guest address, same port, same destination, at the same time.
    let (ha, hb) = (
        a.connect(host(srv.port()), 40003),
        b.connect(host(srv.port()), 40003),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(a.tcp(ha).may_send() && b.tcp(hb).may_send()) {
        assert!(Instant::now() < deadline);
        a.step(&ea);
        b.step(&eb);
    }
    a.tcp(ha).send_slice(b"A").unwrap();
    b.tcp(hb).send_slice(b"B").unwrap();
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    while a.tcp(ha).may_recv() || b.tcp(hb).may_recv() {
        assert!(Instant::now() < deadline);
        for (g, h, e, r) in [(&mut a, ha, &ea, &mut ra), (&mut b, hb, &eb, &mut rb)] {
            g.step(e);
            while g.tcp(h).can_recv() {
                g.tcp(h)
                    .recv(|d| (d.len(), r.extend_from_slice(d)))
                    .unwrap();
            }
        }
    }
    let (ra, rb) = (
        String::from_utf8(ra).unwrap(),
        String::from_utf8(rb).unwrap(),
    );
    assert!(
        ra.ends_with("got A") && rb.ends_with("got B"),
        "{ra} / {rb}"
    );
    assert_ne!(ra, rb);
}

#[test]
fn a_fork_sees_its_templates_connections_reset() {
    let net = Network::start().unwrap();
    let srv = server(1, |_, _| b"late".to_vec());
    let rule = format!("127.0.0.1:{}", srv.port());
    let parent = endpoint(&net, &[&rule], &[], Limits::DEFAULT);
    let mut g = Guest::new();
    let h = g.connect(host(srv.port()), 40004);
    g.until(&parent, |g| g.tcp(h).may_send());
    // The snapshot is forked: the guest's socket lives on, its endpoint is new.
    let child = endpoint(&net, &[&rule], &[], Limits::DEFAULT);
    g.tcp(h).send_slice(b"x").unwrap();
    g.until(&child, |g| !g.tcp(h).is_open());
    assert_eq!(g.tcp(h).state(), tcp::State::Closed);
    assert_eq!(child.stats().connections, 0);
}

#[test]
fn the_connection_cap_refuses_the_next_one() {
    let net = Network::start().unwrap();
    let srv = server(1, |_, _| Vec::new());
    let limits = Limits {
        max_connections: 2,
        ..Limits::DEFAULT
    };
    let ep = endpoint(&net, &[&format!("127.0.0.1:{}", srv.port())], &[], limits);
    let mut g = Guest::new();
    let open: Vec<_> = (0..2)
        .map(|i| g.connect(host(srv.port()), 40010 + i))
        .collect();
    g.until(&ep, |g| open.iter().all(|&h| g.tcp(h).may_send()));
    let third = g.connect(host(srv.port()), 40012);
    g.until(&ep, |g| !g.tcp(third).is_open());
    let s = ep.stats();
    assert_eq!((s.limited, s.connections, s.open_connections), (1, 2, 2));
}

#[test]
fn the_bandwidth_cap_holds_a_download_back() {
    let net = Network::start().unwrap();
    const SIZE: usize = 600 << 10;
    let srv = server(1, |_, _| vec![7u8; SIZE]);
    let limits = Limits {
        bytes_per_sec: 256 << 10,
        ..Limits::DEFAULT
    };
    let ep = endpoint(&net, &[&format!("127.0.0.1:{}", srv.port())], &[], limits);
    let mut g = Guest::new();
    let started = Instant::now();
    let got = g.fetch(&ep, host(srv.port()), 40005, b"g");
    let took = started.elapsed();
    assert_eq!(got.len(), SIZE);
    // The first 64 KiB pass at once (the bucket's burst), the rest at the rate.
    let floor = Duration::from_secs_f64((SIZE - (64 << 10)) as f64 / (256 << 10) as f64);
    assert!(took >= floor.mul_f64(0.9), "{took:?} < {floor:?}");
}

#[test]
fn dns_answers_allowed_names_only() {
    let net = Network::start().unwrap();
    let ep = endpoint(&net, &["localhost", "127.0.0.0/8"], &[], Limits::DEFAULT);
    let mut g = Guest::new();
    let dns = SocketAddrV4::new(GATEWAY_IP, 53);
    let ask = |g: &mut Guest, id, name, qtype| {
        read_answer(
            &g.udp_exchange(&ep, dns, &query(id, name, qtype))
                .expect("an answer"),
        )
    };
    assert_eq!(
        ask(&mut g, 1, "localhost", 1),
        (1, 0, vec![Ipv4Addr::LOCALHOST])
    );
    assert_eq!(ask(&mut g, 2, "example.com", 1), (2, 3, vec![]));
    assert_eq!(ask(&mut g, 3, "localhost", 28), (3, 0, vec![]));
    let s = ep.stats();
    assert_eq!((s.dns_queries, s.refused), (3, 1));
    // Without an explicit CIDR, the loopback answer is withheld.
    let ep = endpoint(&net, &["localhost"], &[], Limits::DEFAULT);
    let answer = g.udp_exchange(&ep, dns, &query(4, "localhost", 1)).unwrap();
    assert_eq!(read_answer(&answer), (4, 0, vec![]));
}

#[test]
fn udp_flows_reach_allowed_peers_and_bring_replies_back() {
    let net = Network::start().unwrap();
    let addr = udp_echo_peer();
    let ep = endpoint(
        &net,
        &[&format!("127.0.0.1:{}", addr.port())],
        &[],
        Limits::DEFAULT,
    );
    let mut g = Guest::new();
    assert_eq!(
        g.udp_exchange(&ep, host(addr.port()), b"ping").unwrap(),
        b"echo ping"
    );
    let blocked = host(addr.port() ^ 1);
    assert_eq!(g.udp_exchange(&ep, blocked, b"ping"), None);
    let s = ep.stats();
    assert_eq!(
        (s.connections, s.refused, s.bytes_sent, s.bytes_received),
        (1, 1, 4, 9)
    );
}

#[test]
fn garbage_is_dropped_and_counted_and_the_endpoint_keeps_working() {
    let net = Network::start().unwrap();
    let srv = server(1, |_, _| b"ok".to_vec());
    let ep = endpoint(
        &net,
        &[&format!("127.0.0.1:{}", srv.port())],
        &[],
        Limits::DEFAULT,
    );
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut junk = Vec::new();
    for len in 0..2000usize {
        let mut f = vec![0u8; len % 1600];
        for b in f.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Some of it addressed properly, so it gets past the Ethernet check.
        if len % 2 == 0 && f.len() >= 14 {
            f[..6].copy_from_slice(&GATEWAY_MAC.0);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        junk.push(f);
    }
    ep.guest_frames(junk.iter().map(Vec::as_slice));
    assert!(ep.stats().dropped_frames > 1000);
    let mut g = Guest::new();
    assert_eq!(g.fetch(&ep, host(srv.port()), 40006, b"?"), b"ok");
}

#[test]
fn a_syn_flood_is_capped_and_other_sandboxes_carry_on() {
    let net = Network::start().unwrap();
    let srv = server(1, |_, _| b"ok".to_vec());
    let rule = format!("127.0.0.1:{}", srv.port());
    let flooded = endpoint(&net, &[&rule], &[], Limits::DEFAULT);
    let calm = endpoint(&net, &[&rule], &[], Limits::DEFAULT);
    // A thousand connection attempts at once, from a guest that never
    // answers: the first 256 connect, the rest are refused at the cap.
    let syns: Vec<Vec<u8>> = (0..1000u16)
        .map(|i| super::packet::tests::syn(10_000 + i, host(srv.port()), u32::from(i)))
        .collect();
    flooded.guest_frames(syns.iter().map(Vec::as_slice));
    let s = flooded.stats();
    assert_eq!((s.limited, s.open_connections), (744, 256), "{s:?}");
    // Its queue for the guest is bounded however much piles up.
    for _ in 0..20 {
        flooded.guest_frames(syns.iter().map(Vec::as_slice));
    }
    // Meanwhile another sandbox fetches as usual.
    let started = Instant::now();
    let mut g = Guest::new();
    assert_eq!(g.fetch(&calm, host(srv.port()), 40020, b"?"), b"ok");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let s = flooded.stats();
    assert_eq!(s.open_connections, 256, "{s:?}");
}

/// The guest's frames reach the endpoint on the VM's own thread (the
/// device's queue is served there), which opens host sockets for them: that
/// must work under the worker's and the vCPU's seccomp filters together, as
/// in `zeroboot serve` (the lane's Linux guests found it refused).
#[test]
fn flows_work_on_a_thread_under_the_vcpu_filter() {
    use crate::confine::{Filter, install};
    let net = Network::start().unwrap();
    let srv = server(3, |_, req| [b"you said ", req].concat());
    let udp = udp_echo_peer();
    let ep = endpoint(
        &net,
        &[
            &format!("127.0.0.1:{}", srv.port()),
            &format!("127.0.0.1:{}", udp.port()),
        ],
        &[],
        Limits::DEFAULT,
    );
    std::thread::spawn(move || {
        install(Filter::Worker).unwrap();
        install(Filter::Vcpu).unwrap();
        let mut g = Guest::new();
        let reply = g.fetch(&ep, host(srv.port()), 40001, b"hi!");
        let echo = g.udp_exchange(&ep, host(udp.port()), b"ping");
        (reply, echo, ep.stats().failed)
    })
    .join()
    .map(|(reply, echo, failed)| {
        assert_eq!(reply, b"you said hi!");
        assert_eq!(echo.as_deref(), Some(&b"echo ping"[..]));
        assert_eq!(failed, 0);
    })
    .unwrap();
}
