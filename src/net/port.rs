//! The TCP stack's side of the link: a smoltcp device over two bounded
//! frame queues, one from the guest, one to it. Nothing here copies a frame
//! more than once or allocates per frame.

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use super::frames::FrameQueue;
use super::packet::ETH_HEADER;

/// Both queues of one endpoint.
pub struct Port {
    /// Frames from the guest waiting for the stack.
    pub rx: FrameQueue,
    /// Frames waiting for the guest.
    pub tx: FrameQueue,
    mtu: usize,
    /// Where a frame goes when `tx` is full while the stack answers an
    /// incoming one (the stack retransmits what matters).
    scratch: Box<[u8]>,
    /// Frames dropped because `tx` was full.
    pub tx_dropped: u64,
}

impl Port {
    /// Queues of `rx_bytes` and `tx_bytes` for frames of IP packets up to `mtu` bytes.
    pub fn new(mtu: usize, rx_bytes: usize, tx_bytes: usize) -> Port {
        Port {
            rx: FrameQueue::new(rx_bytes),
            tx: FrameQueue::new(tx_bytes),
            mtu,
            scratch: vec![0; ETH_HEADER + mtu].into_boxed_slice(),
            tx_dropped: 0,
        }
    }

    /// Whether a frame of the largest size fits in `tx`.
    pub fn tx_has_room(&self) -> bool {
        self.tx.has_room(ETH_HEADER + self.mtu)
    }
}

/// A frame from the guest.
pub struct Rx<'a>(&'a mut FrameQueue);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self
            .0
            .front()
            .expect("a token is only made for a queued frame"));
        self.0.pop();
        r
    }
}

/// Room for a frame to the guest.
pub struct Tx<'a> {
    queue: &'a mut FrameQueue,
    scratch: &'a mut [u8],
    dropped: &'a mut u64,
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        if let Some(r) = self
            .queue
            .push_with(len, |b| (f.take().expect("called once"))(b))
        {
            return r;
        }
        *self.dropped += 1;
        let len = len.min(self.scratch.len());
        (f.take().expect("not called yet"))(&mut self.scratch[..len])
    }
}

impl Device for Port {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        if self.rx.is_empty() {
            return None;
        }
        Some((
            Rx(&mut self.rx),
            Tx {
                queue: &mut self.tx,
                scratch: &mut self.scratch,
                dropped: &mut self.tx_dropped,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        if !self.tx.has_room(ETH_HEADER + self.mtu) {
            return None;
        }
        Some(Tx {
            queue: &mut self.tx,
            scratch: &mut self.scratch,
            dropped: &mut self.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETH_HEADER + self.mtu;
        caps
    }
}
