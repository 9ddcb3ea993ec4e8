//! Port and MMIO accesses that are not the agent channel. The run loop hands
//! them here and knows nothing of devices. Nothing is attached yet (the bare
//! guest needs no device), so every access gets what bare hardware gives for
//! an empty address: reads return all ones, writes vanish. They are counted, so
//! a guest probing stray addresses is visible in its stats.

/// Counters of accesses nothing answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStats {
    /// Port reads and writes.
    pub stray_pio: u64,
    /// MMIO reads and writes.
    pub stray_mmio: u64,
}

/// The devices of one VM.
#[derive(Debug, Default)]
pub struct Bus {
    stats: BusStats,
}

impl Bus {
    /// Answers a port read.
    pub fn pio_read(&mut self, _port: u16, data: &mut [u8]) {
        self.stats.stray_pio += 1;
        data.fill(0xff);
    }

    /// Takes a port write.
    pub fn pio_write(&mut self, _port: u16, _data: &[u8]) {
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

    /// Forgets the counters (a recycled VM starts a new life).
    pub fn reset(&mut self) {
        self.stats = BusStats::default();
    }
}
