//! A virtio-net device (virtio 1.x, section 5.1): one receive and one
//! transmit queue of [`QUEUE_SIZE`] entries, a MAC and an MTU in its
//! configuration space, no offloads. Its frames go to and come from a
//! [`NetBackend`] (the sandbox's network endpoint).
//!
//! Transmit runs on the vCPU thread, in the exit of the guest's notify: the
//! chains the guest queued are read (bounds-checked by virtio-queue and
//! vm-memory), passed to the backend in one batch, and returned. Receive runs
//! wherever frames become ready: after a transmit, when the guest adds
//! receive buffers, and from the network threads when a host socket has data
//! ([`super::NetHandle`]); it fills receive buffers and pulses the
//! interrupt. The device sits behind a mutex, so both paths see one state.
//!
//! Everything in the queues is the guest's: a chain that is malformed or too
//! large is dropped and counted, and an unusable queue marks the device as
//! needing a reset; the host is never at risk.

use std::io::{Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;

use super::NetBackend;
use super::mmio::{Action, Regs};

/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// `struct virtio_net_hdr_v1`, which precedes every frame both ways.
const HDR: usize = 12;
/// Ethernet header.
const ETH: usize = 14;
/// Bytes of transmitted frames handed to the backend at once.
const BATCH_BYTES: usize = 256 << 10;
/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;

/// A queue's state in a snapshot (virtio-queue's own has no serde).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnap {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<QueueState> for QueueSnap {
    fn from(s: QueueState) -> Self {
        QueueSnap {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueSnap> for QueueState {
    fn from(s: QueueSnap) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// The device in a snapshot: what the guest driver set up, and where the
/// queues stand. A fork restores it, so a snapshot taken with the driver
/// running forks into guests whose driver carries on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    regs: Regs,
    queues: [QueueSnap; 2],
    mac: [u8; 6],
    mtu: u16,
}

/// Counters of what the device refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetDeviceStats {
    /// Transmitted chains dropped (malformed, too short or too long).
    pub tx_dropped: u64,
    /// Received frames that did not fit the guest's buffer.
    pub rx_dropped: u64,
}

/// The device.
pub struct VirtioNet<I: Trigger> {
    regs: Regs,
    queues: [Queue; 2],
    mac: [u8; 6],
    mtu: u16,
    mem: GuestMemoryMmap,
    irq: I,
    backend: Option<Arc<dyn NetBackend>>,
    /// No receive while a snapshot is taken (its memory and queue state
    /// must agree).
    paused: bool,
    batch: Vec<u8>,
    spans: Vec<(usize, usize)>,
    stats: NetDeviceStats,
}

fn queue() -> Queue {
    Queue::new(QUEUE_SIZE).expect("QUEUE_SIZE is a power of two")
}

impl<I: Trigger> VirtioNet<I> {
    /// A device in its reset state.
    pub fn new(mem: GuestMemoryMmap, irq: I, mac: [u8; 6], mtu: u16) -> Self {
        VirtioNet {
            regs: Regs::default(),
            queues: [queue(), queue()],
            mac,
            mtu,
            mem,
            irq,
            backend: None,
            paused: false,
            batch: Vec::new(),
            spans: Vec::new(),
            stats: NetDeviceStats::default(),
        }
    }

    /// A device as `state` says (the backend is attached separately).
    pub fn from_state(state: &NetState, mem: GuestMemoryMmap, irq: I) -> Result<Self, String> {
        let q = |s: QueueSnap| Queue::try_from(QueueState::from(s)).map_err(|e| e.to_string());
        let mut dev = VirtioNet::new(mem, irq, state.mac, state.mtu);
        dev.regs = state.regs.clone();
        dev.queues = [q(state.queues[0])?, q(state.queues[1])?];
        Ok(dev)
    }

    /// The device's state, for a snapshot.
    pub fn state(&self) -> NetState {
        NetState {
            regs: self.regs.clone(),
            queues: [self.queues[0].state().into(), self.queues[1].state().into()],
            mac: self.mac,
            mtu: self.mtu,
        }
    }

    /// Plugs the device into a backend (`None`: frames the guest sends
    /// vanish, none arrive).
    pub fn attach(&mut self, backend: Option<Arc<dyn NetBackend>>) {
        self.backend = backend;
    }

    /// Stops or resumes receiving.
    pub fn pause(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.deliver();
        }
    }

    /// What the device refused so far.
    pub fn stats(&self) -> NetDeviceStats {
        self.stats
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if self.mtu != 1500 {
            f |= 1 << VIRTIO_NET_F_MTU;
        }
        f
    }

    /// `struct virtio_net_config`: MAC, status, queue pairs, MTU.
    fn config(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    /// A guest read at `offset` in the device's MMIO window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        self.regs
            .read(offset, data, self.features(), &self.queues, &self.config());
    }

    /// A guest write at `offset` in the device's MMIO window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        match self
            .regs
            .write(offset, data, self.features(), &mut self.queues)
        {
            Action::None => {}
            Action::Notify(q) if q as usize == RX => self.deliver(),
            Action::Notify(q) if q as usize == TX => {
                self.transmit();
                self.deliver();
            }
            Action::Notify(_) => {}
            Action::Reset => {
                self.regs = Regs::default();
                self.queues = [queue(), queue()];
            }
            Action::DriverOk => {
                let event_idx = self.regs.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
                for q in &mut self.queues {
                    q.set_event_idx(event_idx);
                }
                if !self.queues.iter().all(|q| q.is_valid(&self.mem)) {
                    tracing::debug!("virtio-net: the driver set up invalid queues");
                    self.regs.needs_reset();
                }
            }
        }
    }

    /// Tells the guest that buffers were used.
    fn signal(&mut self) {
        self.regs.interrupt_status |= VIRTIO_MMIO_INT_VRING;
        if let Err(e) = self.irq.trigger() {
            tracing::warn!(error = ?e, "virtio-net: cannot raise the interrupt");
        }
    }

    /// Moves the chains the guest queued for sending to the backend.
    fn transmit(&mut self) {
        let mem = &self.mem;
        let q = &mut self.queues[TX];
        let mut used = false;
        loop {
            // Ask for no notifications while draining (event index).
            if q.disable_notification(mem).is_err() {
                break;
            }
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                match chain.reader(mem) {
                    Ok(mut reader) => {
                        let len = reader.available_bytes();
                        if !(HDR + ETH..=HDR + ETH + usize::from(self.mtu)).contains(&len) {
                            self.stats.tx_dropped += 1;
                        } else {
                            let at = self.batch.len();
                            self.batch.resize(at + len, 0);
                            match reader.read_exact(&mut self.batch[at..]) {
                                Ok(()) => self.spans.push((at + HDR, at + len)),
                                Err(_) => {
                                    self.batch.truncate(at);
                                    self.stats.tx_dropped += 1;
                                }
                            }
                        }
                    }
                    Err(_) => self.stats.tx_dropped += 1,
                }
                if q.add_used(mem, head, 0).is_err() {
                    self.regs.needs_reset();
                    break;
                }
                used = true;
                if self.batch.len() >= BATCH_BYTES {
                    flush(&self.backend, &mut self.batch, &mut self.spans);
                }
            }
            match q.enable_notification(mem) {
                Ok(true) => continue, // more arrived meanwhile
                _ => break,
            }
        }
        flush(&self.backend, &mut self.batch, &mut self.spans);
        if used
            && self.queues[TX]
                .needs_notification(&self.mem)
                .unwrap_or(true)
        {
            self.signal();
        }
    }

    /// Fills the guest's receive buffers with the frames waiting for it.
    pub fn deliver(&mut self) {
        if self.paused || !self.regs.driver_ok() {
            return;
        }
        let Some(backend) = self.backend.clone() else {
            return;
        };
        let mem = &self.mem;
        let q = &mut self.queues[RX];
        let (mut used, mut starved) = (false, false);
        loop {
            backend.receive(&mut |frame| {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    starved = true;
                    return false;
                };
                let head = chain.head_index();
                let written = chain
                    .writer(mem)
                    .ok()
                    .filter(|w| w.available_bytes() >= HDR + frame.len())
                    .and_then(|mut w| {
                        // flags, gso_type, hdr_len, gso_size, csum_start,
                        // csum_offset: none; num_buffers: 1.
                        let mut hdr = [0u8; HDR];
                        hdr[10] = 1;
                        w.write_all(&hdr).ok()?;
                        w.write_all(frame).ok()?;
                        Some(HDR + frame.len())
                    });
                if written.is_none() {
                    self.stats.rx_dropped += 1;
                }
                // A buffer given back empty is a runt the driver drops.
                let _ = q.add_used(mem, head, written.unwrap_or(0) as u32);
                used = true;
                true
            });
            // Out of buffers with frames left: have the driver notify us
            // when it adds some, unless it already did meanwhile.
            if !std::mem::take(&mut starved) || !matches!(q.enable_notification(mem), Ok(true)) {
                break;
            }
        }
        if used
            && self.queues[RX]
                .needs_notification(&self.mem)
                .unwrap_or(true)
        {
            self.signal();
        }
    }
}

/// Hands the batched frames to the backend (or drops them, with none).
fn flush(
    backend: &Option<Arc<dyn NetBackend>>,
    batch: &mut Vec<u8>,
    spans: &mut Vec<(usize, usize)>,
) {
    if let Some(b) = backend
        && !spans.is_empty()
    {
        b.transmitted(&mut spans.iter().map(|&(s, e)| &batch[s..e]));
    }
    batch.clear();
    spans.clear();
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use virtio_bindings::virtio_mmio::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    /// An interrupt line that counts its pulses.
    #[derive(Clone, Default)]
    struct Count(Arc<AtomicUsize>);

    impl Trigger for Count {
        type E = std::io::Error;
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Backend {
        sent: Mutex<Vec<Vec<u8>>>,
        waiting: Mutex<VecDeque<Vec<u8>>>,
    }

    impl NetBackend for Backend {
        fn transmitted(&self, frames: &mut dyn Iterator<Item = &[u8]>) {
            self.sent.lock().unwrap().extend(frames.map(<[u8]>::to_vec));
        }
        fn receive(&self, put: &mut dyn FnMut(&[u8]) -> bool) {
            let mut w = self.waiting.lock().unwrap();
            while let Some(f) = w.front() {
                if !put(f) {
                    return;
                }
                w.pop_front();
            }
        }
    }

    const RXQ: u64 = 0x1_0000;
    const TXQ: u64 = 0x2_0000;
    const DATA: u64 = 0x4_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn reg(dev: &mut VirtioNet<Count>, offset: u32, v: u32) {
        dev.write(u64::from(offset), &v.to_le_bytes());
    }

    /// The Linux driver's setup: features, both queues, DRIVER_OK.
    fn set_up(dev: &mut VirtioNet<Count>, queues: [&MockSplitQueue<'_, GuestMemoryMmap>; 2]) {
        reg(dev, VIRTIO_MMIO_STATUS, 1 | 2);
        reg(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        reg(dev, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
        reg(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        reg(dev, VIRTIO_MMIO_DRIVER_FEATURES, 1 << VIRTIO_NET_F_MAC);
        reg(dev, VIRTIO_MMIO_STATUS, 1 | 2 | 8);
        for (i, q) in queues.iter().enumerate() {
            reg(dev, VIRTIO_MMIO_QUEUE_SEL, i as u32);
            reg(dev, VIRTIO_MMIO_QUEUE_NUM, u32::from(QUEUE_SIZE));
            reg(
                dev,
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                q.desc_table_addr().0 as u32,
            );
            reg(dev, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr().0 as u32);
            reg(dev, VIRTIO_MMIO_QUEUE_USED_LOW, q.used_addr().0 as u32);
            reg(dev, VIRTIO_MMIO_QUEUE_READY, 1);
        }
        reg(dev, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
        assert!(dev.regs.driver_ok());
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
    }

    /// (head, len) of the `i`-th used element.
    fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>, i: u16) -> (u32, u32) {
        let e = q.used().ring().ref_at(i as usize).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn frames_go_out_and_come_in_through_the_queues() {
        let m = mem();
        let (rxq, txq) = (
            MockSplitQueue::create(&m, GuestAddress(RXQ), QUEUE_SIZE),
            MockSplitQueue::create(&m, GuestAddress(TXQ), QUEUE_SIZE),
        );
        let irq = Count::default();
        let mut dev = VirtioNet::new(m.clone(), irq.clone(), [2, 0, 0, 0, 0, 9], 1500);
        let backend = Arc::new(Backend::default());
        dev.attach(Some(backend.clone()));
        set_up(&mut dev, [&rxq, &txq]);
        let mut cfg = [0u8; 6];
        dev.read(u64::from(VIRTIO_MMIO_CONFIG), &mut cfg);
        assert_eq!(cfg, [2, 0, 0, 0, 0, 9]);

        // Out: a header and a frame, split over two descriptors.
        let frame: Vec<u8> = (0..60u8).collect();
        m.write_slice(&[0u8; HDR], GuestAddress(DATA)).unwrap();
        m.write_slice(&frame, GuestAddress(DATA + 0x100)).unwrap();
        txq.add_desc_chains(&[desc(DATA, HDR as u32, 1), desc(DATA + 0x100, 60, 0)], 0)
            .unwrap();
        // add_desc_chains links descriptors only with NEXT set: fix the link.
        txq.desc_table()
            .store(
                0,
                RawDescriptor::from(Descriptor::new(DATA, HDR as u32, 1, 1)),
            )
            .unwrap();
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(*backend.sent.lock().unwrap(), vec![frame.clone()]);
        assert_eq!(txq.used().idx().load(), 1);

        // In: two frames wait, the guest posts one buffer, then another.
        backend
            .waiting
            .lock()
            .unwrap()
            .extend([vec![7u8; 100], vec![8u8; 200]]);
        let w = VRING_DESC_F_WRITE;
        rxq.add_desc_chains(&[desc(DATA + 0x1000, 2048, w)], 0)
            .unwrap();
        let before = irq.0.load(Ordering::SeqCst);
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(used(&rxq, 0), (0, (HDR + 100) as u32));
        let mut got = vec![0u8; HDR + 100];
        m.read_slice(&mut got, GuestAddress(DATA + 0x1000)).unwrap();
        assert_eq!(got[10], 1, "num_buffers");
        assert_eq!(&got[HDR..], &[7u8; 100][..]);
        assert!(irq.0.load(Ordering::SeqCst) > before);
        assert_eq!(
            backend.waiting.lock().unwrap().len(),
            1,
            "no buffer for the second"
        );
        rxq.add_desc_chains(&[desc(DATA + 0x2000, 2048, w)], 1)
            .unwrap();
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(used(&rxq, 1), (1, (HDR + 200) as u32));
        assert!(backend.waiting.lock().unwrap().is_empty());
        assert_eq!(dev.stats(), NetDeviceStats::default());
    }

    #[test]
    fn hostile_chains_are_dropped_and_counted() {
        let m = mem();
        let (rxq, txq) = (
            MockSplitQueue::create(&m, GuestAddress(RXQ), QUEUE_SIZE),
            MockSplitQueue::create(&m, GuestAddress(TXQ), QUEUE_SIZE),
        );
        let mut dev = VirtioNet::new(m.clone(), Count::default(), [2, 0, 0, 0, 0, 9], 1500);
        let backend = Arc::new(Backend::default());
        dev.attach(Some(backend.clone()));
        set_up(&mut dev, [&rxq, &txq]);
        txq.add_desc_chains(
            &[
                desc(0xfff_0000, 100, 0), // outside guest memory
                desc(DATA, 4, 0),         // shorter than a header and a frame
                desc(DATA, 9000, 0),      // longer than the MTU allows
            ],
            0,
        )
        .unwrap();
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert!(backend.sent.lock().unwrap().is_empty());
        assert_eq!(dev.stats().tx_dropped, 3);
        assert_eq!(txq.used().idx().load(), 3, "every chain is given back");
        // A receive buffer too small for the frame comes back empty.
        backend.waiting.lock().unwrap().push_back(vec![1u8; 1000]);
        rxq.add_desc_chains(&[desc(DATA, 64, VRING_DESC_F_WRITE)], 0)
            .unwrap();
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(used(&rxq, 0), (0, 0));
        assert_eq!(dev.stats().rx_dropped, 1);
        // Notifications of queues that do not exist do nothing.
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    }

    #[test]
    fn a_restored_device_carries_on_where_the_snapshot_stood() {
        let m = mem();
        let (rxq, txq) = (
            MockSplitQueue::create(&m, GuestAddress(RXQ), QUEUE_SIZE),
            MockSplitQueue::create(&m, GuestAddress(TXQ), QUEUE_SIZE),
        );
        let mut dev = VirtioNet::new(m.clone(), Count::default(), [2, 0, 0, 0, 0, 9], 1500);
        set_up(&mut dev, [&rxq, &txq]);
        // Without a backend, sent frames vanish but are given back.
        m.write_slice(&[0u8; HDR + 60], GuestAddress(DATA)).unwrap();
        txq.add_desc_chains(&[desc(DATA, (HDR + 60) as u32, 0)], 0)
            .unwrap();
        reg(&mut dev, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        let state = dev.state();
        let mut fork = VirtioNet::from_state(&state, m.clone(), Count::default()).unwrap();
        assert_eq!(fork.state(), state);
        let backend = Arc::new(Backend::default());
        fork.attach(Some(backend.clone()));
        txq.add_desc_chains(&[desc(DATA, (HDR + 60) as u32, 0)], 1)
            .unwrap();
        reg(&mut fork, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(backend.sent.lock().unwrap().len(), 1, "only the new chain");
        assert_eq!(txq.used().idx().load(), 2);
        // A state with an impossible queue is refused.
        let mut bad = state.clone();
        bad.queues[0].size = 3;
        assert!(VirtioNet::from_state(&bad, m, Count::default()).is_err());
    }

    #[test]
    fn a_reset_forgets_the_setup() {
        let m = mem();
        let (rxq, txq) = (
            MockSplitQueue::create(&m, GuestAddress(RXQ), QUEUE_SIZE),
            MockSplitQueue::create(&m, GuestAddress(TXQ), QUEUE_SIZE),
        );
        let mut dev = VirtioNet::new(m.clone(), Count::default(), [2, 0, 0, 0, 0, 9], 1500);
        set_up(&mut dev, [&rxq, &txq]);
        reg(&mut dev, VIRTIO_MMIO_STATUS, 0);
        assert!(!dev.regs.driver_ok());
        assert!(!dev.queues[0].ready());
    }
}
