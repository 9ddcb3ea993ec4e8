//! The engine's one network thread, and the resolver threads beside it.
//!
//! The reactor waits (epoll, through mio) on every host socket of every
//! endpoint and on their timers, and hands readiness to the endpoint that
//! owns the socket: a socket's token carries its endpoint's id and its flow's
//! slot. Endpoints register sockets from whichever thread opens them; mio's
//! registry may be used from any thread while the reactor waits.
//!
//! Host name lookups block (getaddrinfo), so they run on a few resolver
//! threads fed by a bounded queue; a sandbox may have only a few in flight
//! (see the endpoint), so one sandbox's slow lookups hold at most that many
//! threads.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Events, Interest, Poll, Registry, Token, Waker};

use super::endpoint::{Endpoint, EndpointConfig, PendingDns};

/// Bits of a token that hold the flow's slot.
const SLOT_BITS: u32 = 20;
/// The token of the reactor's waker.
const WAKER: Token = Token(usize::MAX);
/// Lookups queued for the resolver threads at most.
const LOOKUP_QUEUE: usize = 256;
/// Resolver threads.
const RESOLVERS: usize = 4;

/// A host socket's readiness, for its endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Readiness {
    /// The flow's slot.
    pub slot: usize,
    /// Readable, closed for reading, or in error.
    pub readable: bool,
    /// Writable, closed for writing, or in error.
    pub writable: bool,
}

/// A name lookup for the resolver threads.
pub struct Lookup {
    /// Who asked (gone if the sandbox was killed meanwhile).
    pub endpoint: Weak<Endpoint>,
    /// The query to answer.
    pub pending: PendingDns,
}

/// What endpoints share with the reactor.
pub struct Hub {
    registry: Registry,
    waker: Waker,
    endpoints: Mutex<HashMap<u64, Weak<Endpoint>>>,
    timers: Mutex<BinaryHeap<Reverse<(Instant, u64)>>>,
    lookups: SyncSender<Lookup>,
    next_id: AtomicU64,
    stop: AtomicBool,
}

impl Hub {
    /// Watches `source`, a host socket of endpoint `id`'s flow in `slot`.
    pub fn register(
        &self,
        source: &mut impl Source,
        id: u64,
        slot: usize,
        interest: Interest,
    ) -> io::Result<()> {
        if slot >= 1 << SLOT_BITS {
            return Err(io::Error::other("too many flows"));
        }
        let token = Token((id as usize) << SLOT_BITS | slot);
        self.registry.register(source, token, interest)
    }

    /// Asks for endpoint `id` to be serviced at `at`.
    pub fn schedule(&self, id: u64, at: Instant) {
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = timers.peek().is_none_or(|Reverse((t, _))| at < *t);
        timers.push(Reverse((at, id)));
        drop(timers);
        if earliest {
            // The reactor sleeps until the old earliest timer; wake it to
            // recompute. A failed wake only delays the timer to the next event.
            let _ = self.waker.wake();
        }
    }

    /// Queues a lookup; hands it back when the queue is full.
    pub fn resolve(&self, lookup: Lookup) -> Result<(), Box<Lookup>> {
        self.lookups.try_send(lookup).map_err(|e| match e {
            TrySendError::Full(l) | TrySendError::Disconnected(l) => Box::new(l),
        })
    }

    /// Forgets a dropped endpoint.
    pub fn forget(&self, id: u64) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn endpoint(&self, id: u64) -> Option<Arc<Endpoint>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)?
            .upgrade()
    }

    /// How long the reactor may sleep.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        timers
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(now))
    }

    /// Endpoints whose timer is due.
    fn due(&self, now: Instant, out: &mut Vec<u64>) {
        let mut timers = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Reverse((t, id))) = timers.peek().copied()
            && t <= now
        {
            timers.pop();
            out.push(id);
        }
    }
}

/// The engine's network: reactor thread, resolver threads, endpoints.
pub struct Network {
    hub: Arc<Hub>,
    reactor: Option<JoinHandle<()>>,
}

impl Network {
    /// Starts the reactor and resolver threads.
    pub fn start() -> io::Result<Network> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let (lookups, queue) = std::sync::mpsc::sync_channel(LOOKUP_QUEUE);
        let hub = Arc::new(Hub {
            registry,
            waker,
            endpoints: Mutex::new(HashMap::new()),
            timers: Mutex::new(BinaryHeap::new()),
            lookups,
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
        });
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..RESOLVERS {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("net-resolve-{i}"))
                .spawn(move || resolve_loop(&queue))?;
        }
        let reactor = {
            let hub = Arc::clone(&hub);
            std::thread::Builder::new()
                .name("net-reactor".into())
                .spawn(move || run(poll, &hub))?
        };
        Ok(Network {
            hub,
            reactor: Some(reactor),
        })
    }

    /// A new endpoint.
    pub fn endpoint(&self, config: EndpointConfig) -> Arc<Endpoint> {
        let id = self.hub.next_id.fetch_add(1, Ordering::Relaxed);
        let ep = Endpoint::new(&self.hub, id, config);
        self.hub
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::downgrade(&ep));
        ep
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.hub.stop.store(true, Ordering::SeqCst);
        // If the wake fails the reactor still sees `stop` at its next event.
        let _ = self.hub.waker.wake();
        if let Some(r) = self.reactor.take() {
            let _ = r.join();
        }
    }
}

fn run(mut poll: Poll, hub: &Hub) {
    let mut events = Events::with_capacity(1024);
    let mut ready: Vec<(u64, Readiness)> = Vec::new();
    let mut due = Vec::new();
    while !hub.stop.load(Ordering::SeqCst) {
        if let Err(e) = poll.poll(&mut events, hub.timeout(Instant::now())) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "network reactor cannot wait for events");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        ready.clear();
        for ev in events.iter().filter(|ev| ev.token() != WAKER) {
            let t = ev.token().0;
            ready.push((
                (t >> SLOT_BITS) as u64,
                Readiness {
                    slot: t & ((1 << SLOT_BITS) - 1),
                    readable: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    writable: ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                },
            ));
        }
        ready.sort_by_key(|(id, _)| *id);
        let mut group = Vec::new();
        for chunk in ready.chunk_by(|a, b| a.0 == b.0) {
            if let Some(ep) = hub.endpoint(chunk[0].0) {
                group.clear();
                group.extend(chunk.iter().map(|(_, r)| *r));
                ep.host_events(&group);
            }
        }
        due.clear();
        hub.due(Instant::now(), &mut due);
        due.sort_unstable();
        due.dedup();
        for &id in &due {
            if let Some(ep) = hub.endpoint(id) {
                ep.timer();
            }
        }
    }
}

fn resolve_loop(queue: &Mutex<Receiver<Lookup>>) {
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(lookup) = next else { return };
        let addrs = lookup_v4(&lookup.pending.name);
        if let Some(ep) = lookup.endpoint.upgrade() {
            ep.resolved(lookup.pending, addrs);
        }
    }
}

/// The host's IPv4 addresses for `name`, in its resolver's order, once each.
/// `localhost` and names under it are the loopback address without asking
/// the host's resolver (RFC 6761 section 6.3), which may not know them (a
/// minimal host without /etc/hosts).
fn lookup_v4(name: &str) -> io::Result<Vec<Ipv4Addr>> {
    let name = name.trim_end_matches('.');
    let lower = name.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ok(vec![Ipv4Addr::LOCALHOST]);
    }
    let mut out = Vec::new();
    for addr in (name, 0).to_socket_addrs()? {
        if let std::net::SocketAddr::V4(v4) = addr
            && !out.contains(v4.ip())
        {
            out.push(*v4.ip());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names_are_loopback_without_the_hosts_resolver() {
        for name in ["localhost", "LocalHost.", "api.localhost"] {
            assert_eq!(lookup_v4(name).unwrap(), [Ipv4Addr::LOCALHOST], "{name}");
        }
    }
}
