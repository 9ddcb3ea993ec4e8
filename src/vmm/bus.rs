//! Port and MMIO accesses that are not the agent channel. The run loop hands
//! them here and knows nothing of devices. The devices are COM1 (Linux
//! guests' console, see [`SerialConsole`]) and, in sandboxes with network,
//! a virtio-net device (see [`super::virtio`]); every other access gets what
//! bare hardware gives for an empty address: reads return all ones, writes
//! vanish. Those are counted, so a guest probing stray addresses is visible
//! in its stats.

use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::VmmError;
use super::irq::IrqLine;
use super::linux::COM1_PORT;
use super::serial::{ConsoleLog, SerialConsole, SerialRegs};
use super::virtio::{NET_MMIO_BASE, NET_MMIO_SIZE, NetState, SharedNet, VirtioNet};

/// Counters of accesses nothing answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStats {
    /// Port reads and writes.
    pub stray_pio: u64,
    /// MMIO reads and writes.
    pub stray_mmio: u64,
}

/// The devices' state in a snapshot. Absent devices stay absent in forks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceState {
    /// COM1's registers, when the VM has COM1.
    pub serial: Option<SerialRegs>,
    /// The network device, when the snapshot was taken with one (absent in
    /// older files).
    #[serde(default)]
    pub net: Option<NetState>,
}

/// The devices of one VM.
#[derive(Default)]
pub struct Bus {
    stats: BusStats,
    serial: Option<SerialConsole>,
    net: Option<SharedNet>,
}

/// The network device's register offset for `addr`, if it is in its window.
fn net_offset(addr: u64) -> Option<u64> {
    addr.checked_sub(NET_MMIO_BASE)
        .filter(|o| *o < NET_MMIO_SIZE)
}

fn lock(net: &SharedNet) -> std::sync::MutexGuard<'_, VirtioNet<IrqLine>> {
    net.lock().unwrap_or_else(|e| e.into_inner())
}

/// COM1's register offset for `port`, if the port is COM1's.
fn com1_offset(port: u16) -> Option<u8> {
    port.checked_sub(COM1_PORT)
        .filter(|o| *o < 8)
        .map(|o| o as u8)
}

impl Bus {
    /// Answers a port read.
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        if let (Some(uart), Some(offset)) = (self.serial.as_mut(), com1_offset(port)) {
            data.fill(0);
            data[0] = uart.read(offset);
            return;
        }
        self.stats.stray_pio += 1;
        data.fill(0xff);
    }

    /// Takes a port write.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        if let (Some(uart), Some(offset), Some(&value)) =
            (self.serial.as_mut(), com1_offset(port), data.first())
        {
            uart.write(offset, value);
            return;
        }
        self.stats.stray_pio += 1;
    }

    /// Answers an MMIO read.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if let (Some(net), Some(offset)) = (&self.net, net_offset(addr)) {
            lock(net).read(offset, data);
            return;
        }
        self.stats.stray_mmio += 1;
        data.fill(0xff);
    }

    /// Takes an MMIO write.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if let (Some(net), Some(offset)) = (&self.net, net_offset(addr)) {
            lock(net).write(offset, data);
            return;
        }
        self.stats.stray_mmio += 1;
    }

    /// Counters so far.
    pub fn stats(&self) -> BusStats {
        self.stats
    }

    /// Plugs COM1 in.
    pub fn attach_serial(&mut self, uart: SerialConsole) {
        self.serial = Some(uart);
    }

    /// The network device, plugging a fresh one in first if there is none.
    pub fn net_or_insert(&mut self, make: impl FnOnce() -> VirtioNet<IrqLine>) -> &SharedNet {
        self.net.get_or_insert_with(|| Arc::new(Mutex::new(make())))
    }

    /// The network device, if any.
    pub fn net(&self) -> Option<&SharedNet> {
        self.net.as_ref()
    }

    /// The devices' state.
    pub fn devices(&self) -> DeviceState {
        DeviceState {
            serial: self.serial.as_ref().map(SerialConsole::regs),
            net: self.net.as_ref().map(|n| lock(n).state()),
        }
    }

    /// Puts the devices into `state` and forgets the counters (a restored VM
    /// starts a new life). `irq` makes the interrupt line of a GSI; `mem` is
    /// the VM's memory, which the network device reads and writes.
    pub fn restore(
        &mut self,
        state: &DeviceState,
        irq: impl Fn(u8) -> IrqLine,
        mem: &GuestMemoryMmap,
    ) -> Result<(), VmmError> {
        self.serial = state
            .serial
            .as_ref()
            .map(|regs| {
                SerialConsole::from_regs(regs, irq(super::linux::COM1_IRQ), ConsoleLog::quiet())
            })
            .transpose()?;
        if let Some(old) = self.net.take() {
            lock(&old).attach(None);
        }
        self.net = state
            .net
            .as_ref()
            .map(|s| {
                VirtioNet::from_state(s, mem.clone(), irq(super::virtio::NET_IRQ))
                    .map(|dev| Arc::new(Mutex::new(dev)))
                    .map_err(|detail| VmmError::DeviceState {
                        device: "virtio-net",
                        detail,
                    })
            })
            .transpose()?;
        self.stats = BusStats::default();
        Ok(())
    }
}
