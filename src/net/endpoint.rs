//! One sandbox's network endpoint: the host side of its virtual link.
//!
//! Frames from the guest ([`Endpoint::guest_frames`]) are classified first:
//! ARP and established TCP go to the smoltcp stack; a SYN opens a host
//! connection after the policy check ([`super::tcp`]); UDP to the gateway's
//! port 53 is a DNS query answered here ([`super::dns`], names checked
//! against the policy, addresses from the host's resolver on another
//! thread); other UDP opens a flow ([`super::udp`]); anything else is
//! dropped and counted. Frames for the guest wait in a bounded queue
//! ([`Endpoint::take_frames`]); a [`GuestLink`] is told when some arrive
//! while the guest is not the one asking.
//!
//! Three threads may drive an endpoint: the sandbox's vCPU thread (frames
//! from the guest), the reactor (host sockets ready, timers) and a resolver
//! thread (a lookup done). All of them take the endpoint's one lock; none
//! holds it while calling the link, which takes the device's lock and then
//! this one.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use mio::Interest;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp as stcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::dns::{self, Bad, Rcode};
use super::limits::{Bucket, Limits};
use super::packet::{self, FlowKey, Frame};
use super::policy::{Grant, Grants, Policy, Refusal, valid_name};
use super::port::Port;
use super::reactor::{Hub, Lookup, Readiness};
use super::{GATEWAY_IP, GATEWAY_MAC, PREFIX_LEN, tcp, udp};

/// How long a host connect may take before the guest gets a reset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// DNS lookups one sandbox may have in flight.
const MAX_DNS_IN_FLIGHT: usize = 4;
/// TTL of DNS answers, in seconds.
const DNS_TTL: u32 = 30;
/// Rounds of "stack, then flows" per service before the final egress.
const MAX_ROUNDS: usize = 8;
/// Bytes each frame queue holds at least.
const MIN_QUEUE: usize = 256 << 10;
/// Bytes each TCP socket buffers each way at least.
const MIN_TCP_BUFFER: usize = 64 << 10;

/// What moves frames into the guest.
pub trait GuestLink: Send + Sync {
    /// Frames are waiting for the guest ([`Endpoint::take_frames`]).
    fn frames_ready(&self);
}

/// Counters of one sandbox's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// Payload bytes the guest sent out (TCP and UDP, DNS excluded).
    pub bytes_sent: u64,
    /// Payload bytes that came in for the guest.
    pub bytes_received: u64,
    /// TCP connections established and UDP flows opened.
    pub connections: u64,
    /// Connections and flows open now (TCP connecting included).
    pub open_connections: u64,
    /// Connections, flows and DNS names the policy refused.
    pub refused: u64,
    /// Connections, datagrams and lookups refused by a cap.
    pub limited: u64,
    /// Host connects that failed or timed out.
    pub failed: u64,
    /// DNS queries answered.
    pub dns_queries: u64,
    /// Malformed or unsupported frames, and frames a full queue dropped.
    pub dropped_frames: u64,
}

/// How an endpoint is set up.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Who may be reached.
    pub policy: Policy,
    /// Caps.
    pub limits: Limits,
    /// Largest IP packet on the link.
    pub mtu: usize,
    /// Names the sandbox in logs.
    pub label: String,
}

/// A DNS query waiting for the host's resolver.
pub struct PendingDns {
    /// The query.
    pub query: dns::Query,
    /// The name, as the resolver gets it.
    pub name: String,
    key: FlowKey,
    mac: EthernetAddress,
    grant: Grant,
}

enum Flow {
    Connecting(tcp::Connecting),
    Tcp(tcp::Open),
    Udp(udp::Flow),
}

/// Flows by slot (the slot is in the host socket's mio token) and by key.
#[derive(Default)]
struct Flows {
    slots: Vec<Option<(FlowKey, Flow)>>,
    free: Vec<usize>,
    by_key: HashMap<FlowKey, usize>,
}

impl Flows {
    fn insert(&mut self, key: FlowKey, flow: Flow) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.slots[slot] = Some((key, flow));
        self.by_key.insert(key, slot);
        slot
    }

    fn remove(&mut self, slot: usize) -> Option<(FlowKey, Flow)> {
        let (key, flow) = self.slots.get_mut(slot)?.take()?;
        self.by_key.remove(&key);
        self.free.push(slot);
        Some((key, flow))
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The slot the next [`Flows::insert`] will use (a host socket is
    /// registered under its slot before the flow is inserted).
    fn next_slot(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }
}

/// Everything behind the endpoint's lock.
struct State {
    iface: Interface,
    sockets: SocketSet<'static>,
    port: Port,
    flows: Flows,
    policy: Policy,
    grants: Grants,
    limits: Limits,
    up: Bucket,
    down: Bucket,
    throttled: bool,
    stats: NetStats,
    epoch: Instant,
    dns_in_flight: usize,
    /// When the reactor will next service this endpoint.
    timer: Option<Instant>,
    tcp_buffer: usize,
    udp_scratch: Box<[u8]>,
}

/// One sandbox's endpoint.
pub struct Endpoint {
    id: u64,
    label: String,
    me: Weak<Endpoint>,
    hub: Arc<Hub>,
    state: Mutex<State>,
    link: Mutex<Option<Arc<dyn GuestLink>>>,
}

fn stack_now(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.saturating_duration_since(epoch).as_micros() as i64)
}

/// Whether `ip` is on the guest's own (virtual) subnet.
fn on_link(ip: Ipv4Addr) -> bool {
    ip.to_bits() >> (32 - PREFIX_LEN) == GATEWAY_IP.to_bits() >> (32 - PREFIX_LEN)
}

/// Where the host connects for a guest flow to `remote`: the gateway's
/// address stands for the host's loopback (the guest's own 127.0.0.1 is its
/// own), as slirp's 10.0.2.2 and passt's mapped loopback do. The policy
/// judges the host-side address, so this needs an explicit loopback rule.
fn host_side(remote: SocketAddrV4) -> SocketAddrV4 {
    match *remote.ip() {
        GATEWAY_IP => SocketAddrV4::new(Ipv4Addr::LOCALHOST, remote.port()),
        _ => remote,
    }
}

impl Endpoint {
    pub(super) fn new(hub: &Arc<Hub>, id: u64, config: EndpointConfig) -> Arc<Endpoint> {
        let now = Instant::now();
        let frame = packet::ETH_HEADER + config.mtu;
        let queue = MIN_QUEUE.max(8 * (frame + 4));
        let mut port = Port::new(config.mtu, queue, queue);
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random source is available");
        let mut iface_config = Config::new(HardwareAddress::Ethernet(GATEWAY_MAC));
        iface_config.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(iface_config, &mut port, stack_now(now, now));
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), PREFIX_LEN))
                .expect("room for one address");
        });
        // Accept traffic for every address: the stack stands in for the
        // whole network behind the gateway.
        iface.set_any_ip(true);
        let state = State {
            iface,
            sockets: SocketSet::new(Vec::new()),
            port,
            flows: Flows::default(),
            policy: config.policy,
            grants: Grants::default(),
            limits: config.limits,
            up: Bucket::new(config.limits.bytes_per_sec, now),
            down: Bucket::new(config.limits.bytes_per_sec, now),
            throttled: false,
            stats: NetStats::default(),
            epoch: now,
            dns_in_flight: 0,
            timer: None,
            tcp_buffer: MIN_TCP_BUFFER.max(4 * config.mtu),
            udp_scratch: vec![0; config.mtu - 28].into_boxed_slice(),
        };
        Arc::new_cyclic(|me| Endpoint {
            id,
            label: config.label,
            me: me.clone(),
            hub: Arc::clone(hub),
            state: Mutex::new(state),
            link: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who is told when frames wait for the guest.
    pub fn set_link(&self, link: Option<Arc<dyn GuestLink>>) {
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link;
    }

    /// Takes frames the guest sent (each hostile), then lets the stack and
    /// the flows act on them. The caller, being the guest's side, collects
    /// any answer with [`Endpoint::take_frames`] itself.
    pub fn guest_frames<'a>(&self, frames: impl IntoIterator<Item = &'a [u8]>) {
        let now = Instant::now();
        let mut st = self.lock();
        for frame in frames {
            self.guest_frame(&mut st, frame, now);
        }
        self.service(&mut st, now);
    }

    /// Hands waiting frames to `put`, oldest first, until it refuses one
    /// (no room in the guest); returns how many it took. The stack may send
    /// more once the queue drains, so this services it as it goes.
    pub fn take_frames(&self, mut put: impl FnMut(&[u8]) -> bool) -> usize {
        let mut st = self.lock();
        let mut taken = 0;
        for _ in 0..MAX_ROUNDS {
            let before = taken;
            while let Some(frame) = st.port.tx.front() {
                if !put(frame) {
                    return taken;
                }
                st.port.tx.pop();
                taken += 1;
            }
            if taken == before {
                break;
            }
            self.service(&mut st, Instant::now());
        }
        taken
    }

    /// Whether frames may come for the guest without it sending any:
    /// frames wait, flows are open or lookups pending.
    pub fn is_busy(&self) -> bool {
        let st = self.lock();
        !st.port.tx.is_empty() || st.flows.len() > 0 || st.dns_in_flight > 0
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        let st = self.lock();
        NetStats {
            open_connections: st.flows.len() as u64,
            dropped_frames: st.stats.dropped_frames + st.port.tx_dropped,
            ..st.stats
        }
    }

    /// Releases the lock, then tells the link if frames wait.
    fn notify(&self, st: MutexGuard<'_, State>) {
        let waiting = !st.port.tx.is_empty();
        drop(st);
        if !waiting {
            return;
        }
        let link = self.link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(link) = link {
            link.frames_ready();
        }
    }

    /// Host sockets of these slots are ready (the reactor's call).
    pub(super) fn host_events(&self, ready: &[Readiness]) {
        let now = Instant::now();
        let mut st = self.lock();
        for r in ready {
            let outcome = match st.flows.slots.get_mut(r.slot) {
                Some(Some((_, Flow::Connecting(c)))) => c.outcome(),
                Some(Some((_, Flow::Tcp(o)))) => {
                    o.readable |= r.readable;
                    o.writable |= r.writable;
                    None
                }
                Some(Some((_, Flow::Udp(u)))) => {
                    u.readable |= r.readable;
                    None
                }
                _ => None,
            };
            match outcome {
                Some(Ok(())) => self.established(&mut st, r.slot),
                Some(Err(e)) => self.connect_failed(&mut st, r.slot, &e.to_string()),
                None => {}
            }
        }
        self.service(&mut st, now);
        self.notify(st);
    }

    /// A timer this endpoint asked for is due (the reactor's call).
    pub(super) fn timer(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        st.timer = None;
        self.service(&mut st, now);
        self.notify(st);
    }

    /// The host's resolver answered (a resolver thread's call).
    pub(super) fn resolved(&self, p: PendingDns, addrs: io::Result<Vec<Ipv4Addr>>) {
        let mut st = self.lock();
        st.dns_in_flight -= 1;
        let (rcode, addrs) = match addrs {
            Ok(addrs) => {
                let st = &mut *st;
                let addrs: Vec<_> = addrs
                    .into_iter()
                    .filter(|a| st.policy.may_answer(*a))
                    .take(dns::MAX_ANSWERS)
                    .collect();
                for a in &addrs {
                    st.grants.add(*a, &p.grant);
                }
                (Rcode::NoError, addrs)
            }
            Err(e) => {
                tracing::debug!(sandbox = %self.label, name = %p.name, error = %e, "DNS lookup failed");
                (Rcode::NxDomain, Vec::new())
            }
        };
        let mut buf = [0u8; dns::MAX_ANSWER_LEN];
        let n = dns::answer(&mut buf, &p.query, rcode, &addrs, DNS_TTL);
        send_udp(&mut st, &p.key, p.mac, &buf[..n]);
        self.service(&mut st, Instant::now());
        self.notify(st);
    }

    fn guest_frame(&self, st: &mut State, frame: &[u8], now: Instant) {
        match packet::classify(frame) {
            Frame::Stack => {
                if !st.port.rx.push(frame) {
                    st.stats.dropped_frames += 1;
                }
            }
            Frame::Syn { key, seq, mac } => self.syn(st, key, seq, mac, frame, now),
            Frame::Udp { key, payload, mac } if key.remote == SocketAddrV4::new(GATEWAY_IP, 53) => {
                self.dns(st, key, payload, mac)
            }
            Frame::Udp { key, payload, mac } => self.udp(st, key, payload, mac, now),
            Frame::Ignored => {}
            Frame::Bad(why) => {
                st.stats.dropped_frames += 1;
                tracing::debug!(sandbox = %self.label, why, "dropped a guest frame");
            }
        }
    }

    /// Why the guest may not reach `remote` (the address it used), if it may not.
    fn refusal(&self, st: &State, remote: &SocketAddrV4) -> Option<Refusal> {
        if *remote.ip() != GATEWAY_IP && on_link(*remote.ip()) {
            return Some(Refusal::Special("an address of the virtual link"));
        }
        let host = host_side(*remote);
        st.policy.connect(*host.ip(), host.port(), &st.grants).err()
    }

    fn syn(
        &self,
        st: &mut State,
        key: FlowKey,
        seq: u32,
        mac: EthernetAddress,
        frame: &[u8],
        now: Instant,
    ) {
        if let Some(&slot) = st.flows.by_key.get(&key) {
            // A retransmitted SYN waits for the connect in progress; on an
            // open connection the stack decides.
            if let Some(Some((_, Flow::Tcp(_)))) = st.flows.slots.get(slot)
                && !st.port.rx.push(frame)
            {
                st.stats.dropped_frames += 1;
            }
            return;
        }
        if let Some(r) = self.refusal(st, &key.remote) {
            st.stats.refused += 1;
            tracing::debug!(sandbox = %self.label, remote = %key.remote, reason = %r, "TCP connection refused");
            return reset(st, &key, seq, mac);
        }
        if st.flows.len() >= st.limits.max_connections {
            st.stats.limited += 1;
            tracing::debug!(sandbox = %self.label, remote = %key.remote, "TCP connection over the cap");
            return reset(st, &key, seq, mac);
        }
        let mut connecting = match tcp::Connecting::start(
            host_side(key.remote),
            frame,
            seq,
            mac,
            now + CONNECT_TIMEOUT,
        ) {
            None => {
                st.stats.dropped_frames += 1;
                return;
            }
            Some(Err(e)) => {
                st.stats.failed += 1;
                tracing::debug!(sandbox = %self.label, remote = %key.remote, error = %e, "host connect failed");
                return reset(st, &key, seq, mac);
            }
            Some(Ok(c)) => c,
        };
        let slot = st.flows.next_slot();
        if let Err(e) = self.hub.register(
            &mut connecting.stream,
            self.id,
            slot,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            st.stats.failed += 1;
            tracing::warn!(sandbox = %self.label, error = %e, "cannot watch a host socket");
            return reset(st, &key, seq, mac);
        }
        st.flows.insert(key, Flow::Connecting(connecting));
    }

    /// The host socket of a connecting flow connected: the flow becomes
    /// open in the same slot (its socket stays registered under it), and the
    /// guest's SYN goes to the stack, which answers it.
    fn established(&self, st: &mut State, slot: usize) {
        let Some((key, Flow::Connecting(c))) = st.flows.slots[slot].take() else {
            unreachable!("only a connecting flow has a connect outcome");
        };
        let open = tcp::Open::accept(c.stream, &key, &mut st.sockets, st.tcp_buffer);
        st.flows.slots[slot] = Some((key, Flow::Tcp(open)));
        if !st.port.rx.push(&c.syn[..c.syn_len]) {
            st.stats.dropped_frames += 1; // the guest retransmits its SYN
        }
        st.stats.connections += 1;
        tracing::debug!(sandbox = %self.label, remote = %key.remote, "TCP connection open");
    }

    fn connect_failed(&self, st: &mut State, slot: usize, why: &str) {
        let Some((key, Flow::Connecting(c))) = st.flows.remove(slot) else {
            return;
        };
        st.stats.failed += 1;
        tracing::debug!(sandbox = %self.label, remote = %key.remote, why, "host connect failed");
        reset(st, &key, c.seq, c.mac);
    }

    fn udp(
        &self,
        st: &mut State,
        key: FlowKey,
        payload: &[u8],
        mac: EthernetAddress,
        now: Instant,
    ) {
        let slot = match st.flows.by_key.get(&key) {
            Some(&slot) => slot,
            None => match self.open_udp(st, key, mac, now) {
                Some(slot) => slot,
                None => return,
            },
        };
        if st.up.available(payload.len(), now) < payload.len() {
            st.stats.limited += 1;
            st.throttled = true;
            return;
        }
        let Some(Some((_, Flow::Udp(flow)))) = st.flows.slots.get_mut(slot) else {
            return;
        };
        match flow.socket.send(payload) {
            Ok(n) => {
                flow.last = now;
                st.up.take(n);
                st.stats.bytes_sent += n as u64;
            }
            Err(e) => {
                st.stats.dropped_frames += 1;
                tracing::debug!(sandbox = %self.label, remote = %key.remote, error = %e, "UDP send failed");
            }
        }
    }

    fn open_udp(
        &self,
        st: &mut State,
        key: FlowKey,
        mac: EthernetAddress,
        now: Instant,
    ) -> Option<usize> {
        if let Some(r) = self.refusal(st, &key.remote) {
            st.stats.refused += 1;
            tracing::debug!(sandbox = %self.label, remote = %key.remote, reason = %r, "UDP flow refused");
            return None;
        }
        if st.flows.len() >= st.limits.max_connections {
            st.stats.limited += 1;
            return None;
        }
        let mut flow = match udp::Flow::open(SocketAddr::V4(host_side(key.remote)), mac, now) {
            Ok(f) => f,
            Err(e) => {
                st.stats.failed += 1;
                tracing::debug!(sandbox = %self.label, remote = %key.remote, error = %e, "UDP socket failed");
                return None;
            }
        };
        let slot = st.flows.next_slot();
        if let Err(e) = self
            .hub
            .register(&mut flow.socket, self.id, slot, Interest::READABLE)
        {
            st.stats.failed += 1;
            tracing::warn!(sandbox = %self.label, error = %e, "cannot watch a host socket");
            return None;
        }
        st.stats.connections += 1;
        Some(st.flows.insert(key, Flow::Udp(flow)))
    }

    fn dns(&self, st: &mut State, key: FlowKey, payload: &[u8], mac: EthernetAddress) {
        st.stats.dns_queries += 1;
        let mut buf = [0u8; dns::MAX_ANSWER_LEN];
        let n = match dns::parse_query(payload) {
            Err(Bad::Drop) => {
                st.stats.dropped_frames += 1;
                return;
            }
            Err(Bad::Answer { id, rcode }) => dns::error_answer(&mut buf, id, rcode),
            Ok(query) => match self.ask(st, query, key, mac) {
                Ok(()) => return,
                Err((query, rcode)) => dns::answer(&mut buf, &query, rcode, &[], DNS_TTL),
            },
        };
        send_udp(st, &key, mac, &buf[..n]);
    }

    /// Sends an allowed A query to the resolver; otherwise the code to
    /// answer at once.
    fn ask(
        &self,
        st: &mut State,
        query: dns::Query,
        key: FlowKey,
        mac: EthernetAddress,
    ) -> Result<(), (dns::Query, Rcode)> {
        let name = query.name.clone();
        if valid_name(&name).is_err() {
            return Err((query, Rcode::NxDomain));
        }
        let grant = match st.policy.resolve(&name) {
            Ok(g) => g,
            Err(r) => {
                st.stats.refused += 1;
                tracing::debug!(sandbox = %self.label, name, reason = %r, "DNS name refused");
                return Err((query, Rcode::NxDomain));
            }
        };
        if query.qtype != dns::TYPE_A {
            // The name exists, but the guest only has IPv4.
            return Err((query, Rcode::NoError));
        }
        if st.dns_in_flight >= MAX_DNS_IN_FLIGHT {
            st.stats.limited += 1;
            return Err((query, Rcode::ServFail));
        }
        let lookup = Lookup {
            endpoint: self.me.clone(),
            pending: PendingDns {
                query,
                name,
                key,
                mac,
                grant,
            },
        };
        match self.hub.resolve(lookup) {
            Ok(()) => {
                st.dns_in_flight += 1;
                Ok(())
            }
            Err(l) => {
                st.stats.limited += 1;
                Err((l.pending.query, Rcode::ServFail))
            }
        }
    }

    /// Lets the stack and the flows run until nothing moves, reaps finished
    /// flows and asks the reactor to come back when a timer is due.
    fn service(&self, st: &mut State, now: Instant) {
        let stack_now = stack_now(st.epoch, now);
        for _ in 0..MAX_ROUNDS {
            st.iface.poll(stack_now, &mut st.port, &mut st.sockets);
            if !self.pump(st, now) {
                break;
            }
        }
        st.iface.poll(stack_now, &mut st.port, &mut st.sockets);
        self.reap(st, now);
        if let Some(at) = self.next_timer(st, now)
            && st.timer.is_none_or(|t| at < t)
        {
            st.timer = Some(at);
            self.hub.schedule(self.id, at);
        }
    }

    /// One pass over the flows; true if bytes moved.
    fn pump(&self, st: &mut State, now: Instant) -> bool {
        let State {
            flows,
            sockets,
            port,
            up,
            down,
            stats,
            throttled,
            udp_scratch,
            ..
        } = st;
        let mut moved = false;
        for entry in flows.slots.iter_mut().flatten() {
            match &mut entry.1 {
                Flow::Tcp(open) => {
                    let sock = sockets.get_mut::<stcp::Socket>(open.handle);
                    let p = open.pump(sock, up, down, now);
                    stats.bytes_sent += p.sent as u64;
                    stats.bytes_received += p.received as u64;
                    *throttled |= p.throttled;
                    moved |= p.sent + p.received > 0;
                }
                Flow::Udp(flow) => {
                    let key = entry.0;
                    while flow.readable && port.tx.has_room(packet::udp_len(udp_scratch.len())) {
                        match flow.socket.recv(udp_scratch) {
                            Ok(n) if down.available(n, now) < n => {
                                stats.limited += 1;
                                *throttled = true;
                            }
                            Ok(n) => {
                                down.take(n);
                                flow.last = now;
                                stats.bytes_received += n as u64;
                                let data = &udp_scratch[..n];
                                port.tx.push_with(packet::udp_len(n), |b| {
                                    packet::write_udp(b, flow.mac, &key, n, |p| {
                                        p.copy_from_slice(data)
                                    })
                                });
                                moved = true;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                flow.readable = false
                            }
                            // An ICMP error from the peer: reported once, then gone.
                            Err(_) => {}
                        }
                    }
                }
                Flow::Connecting(_) => {}
            }
        }
        moved
    }

    /// Removes closed TCP flows, expired UDP flows and connects past their deadline.
    fn reap(&self, st: &mut State, now: Instant) {
        for slot in 0..st.flows.slots.len() {
            let (closed, timed_out) = match &st.flows.slots[slot] {
                Some((_, Flow::Tcp(open))) => {
                    let state = st.sockets.get::<stcp::Socket>(open.handle).state();
                    (
                        matches!(state, stcp::State::Closed | stcp::State::TimeWait),
                        false,
                    )
                }
                Some((_, Flow::Udp(flow))) => (flow.expires() <= now, false),
                Some((_, Flow::Connecting(c))) => (false, c.deadline <= now),
                None => (false, false),
            };
            if timed_out {
                self.connect_failed(st, slot, "connect timed out");
            } else if closed && let Some((_, Flow::Tcp(open))) = st.flows.remove(slot) {
                st.sockets.remove(open.handle);
            } else if closed {
                st.flows.remove(slot);
            }
        }
    }

    /// The earliest of: the stack's next timer, a connect deadline, a UDP
    /// expiry, the bandwidth bucket's refill (when it ran dry).
    fn next_timer(&self, st: &mut State, now: Instant) -> Option<Instant> {
        let stack = st
            .iface
            .poll_delay(stack_now(st.epoch, now), &st.sockets)
            // The stack wants to send but the guest's queue is full: the
            // guest draining it services the endpoint again.
            .filter(|d| d.total_micros() > 0 || st.port.tx_has_room())
            .map(|d| now + Duration::from_micros(d.total_micros()).max(Duration::from_millis(1)));
        let flows = st
            .flows
            .slots
            .iter()
            .flatten()
            .filter_map(|(_, f)| match f {
                Flow::Connecting(c) => Some(c.deadline),
                Flow::Udp(u) => Some(u.expires()),
                Flow::Tcp(_) => None,
            });
        let refill = std::mem::take(&mut st.throttled)
            .then(|| {
                st.up
                    .refill_at()
                    .into_iter()
                    .chain(st.down.refill_at())
                    .min()
            })
            .flatten();
        stack.into_iter().chain(flows).chain(refill).min()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.hub.forget(self.id);
    }
}

/// Queues a reset refusing the guest's SYN.
fn reset(st: &mut State, key: &FlowKey, seq: u32, mac: EthernetAddress) {
    let queued = st
        .port
        .tx
        .push_with(packet::RESET_LEN, |b| packet::write_reset(b, mac, key, seq));
    if queued.is_none() {
        st.port.tx_dropped += 1;
    }
}

/// Queues a datagram from `key.remote` to the guest.
fn send_udp(st: &mut State, key: &FlowKey, mac: EthernetAddress, payload: &[u8]) {
    let n = payload.len();
    let queued = st.port.tx.push_with(packet::udp_len(n), |b| {
        packet::write_udp(b, mac, key, n, |p| p.copy_from_slice(payload))
    });
    if queued.is_none() {
        st.port.tx_dropped += 1;
    }
}
