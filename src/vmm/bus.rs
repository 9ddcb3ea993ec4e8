//! Port and MMIO accesses that are not the agent channel. The run loop hands
//! them here and knows nothing of devices. The one device is COM1 (Linux
//! guests' console, see [`SerialConsole`]); every other access gets what bare
//! hardware gives for an empty address: reads return all ones, writes vanish.
//! Those are counted, so a guest probing stray addresses is visible in its stats.

use super::VmmError;
use super::linux::COM1_PORT;
use super::serial::{ConsoleLog, IrqLine, SerialConsole, SerialRegs};

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
}

/// The devices of one VM.
#[derive(Debug, Default)]
pub struct Bus {
    stats: BusStats,
    serial: Option<SerialConsole>,
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
    pub fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        self.stats.stray_mmio += 1;
        data.fill(0xff);
    }

    /// Takes an MMIO write.
    pub fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {
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

    /// The devices' state.
    pub fn devices(&self) -> DeviceState {
        DeviceState {
            serial: self.serial.as_ref().map(SerialConsole::regs),
        }
    }

    /// Puts the devices into `state` and forgets the counters (a restored VM
    /// starts a new life). `irq` is COM1's interrupt line, if it has one.
    pub fn restore(
        &mut self,
        state: &DeviceState,
        irq: impl FnOnce() -> IrqLine,
    ) -> Result<(), VmmError> {
        self.serial = state
            .serial
            .as_ref()
            .map(|regs| SerialConsole::from_regs(regs, irq(), ConsoleLog::quiet()))
            .transpose()?;
        self.stats = BusStats::default();
        Ok(())
    }
}
