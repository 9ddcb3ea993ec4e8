//! Virtio devices on virtio-mmio: the network card of sandboxes with
//! network. The ACPI tables describe it (`LNRO0005`, [`NET_MMIO_BASE`],
//! interrupt [`NET_IRQ`]) in every Linux guest, but no driver binds to it
//! until the guest agent loads `virtio_mmio` for a sandbox that asks for
//! network, so a template has no network device and forks without network
//! never see one. Until a backend is attached the device answers as absent
//! (the bus counts the accesses as stray).

mod mmio;
mod net;

use std::sync::{Arc, Mutex, Weak};

pub use net::{NetState, VirtioNet};

use super::irq::IrqLine;

/// Where the network device's registers are (above the largest RAM, below
/// the IOAPIC).
pub const NET_MMIO_BASE: u64 = 0xd000_0000;
/// Size of its register window.
pub const NET_MMIO_SIZE: u64 = 0x1000;
/// Its interrupt (ISA IRQ = IOAPIC pin = GSI; COM1 has 4).
pub const NET_IRQ: u8 = 5;

/// Where a network device's frames go and come from.
pub trait NetBackend: Send + Sync {
    /// Takes frames the guest sent.
    fn transmitted(&self, frames: &mut dyn Iterator<Item = &[u8]>);
    /// Hands frames waiting for the guest to `put` until it refuses one.
    fn receive(&self, put: &mut dyn FnMut(&[u8]) -> bool);
}

/// The device of one VM, shared by its vCPU thread and whoever delivers frames.
pub type SharedNet = Arc<Mutex<VirtioNet<IrqLine>>>;

/// A handle the network threads use to deliver frames into a VM's device;
/// it does nothing once the device is gone (VM recycled or torn down).
#[derive(Clone)]
pub struct NetHandle(pub(crate) Weak<Mutex<VirtioNet<IrqLine>>>);

impl NetHandle {
    /// Fills the guest's receive buffers with what the backend has.
    pub fn deliver(&self) {
        if let Some(dev) = self.0.upgrade() {
            dev.lock().unwrap_or_else(|e| e.into_inner()).deliver();
        }
    }
}
