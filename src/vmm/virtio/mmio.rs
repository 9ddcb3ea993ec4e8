//! The virtio-mmio transport's registers (virtio 1.x, section 4.2.2, version
//! 2 layout): a pure state machine. The device decodes each guest access
//! here; what needs the device (a queue notified, a reset, the driver done
//! with setup) comes back as an [`Action`]. Everything the guest writes is
//! hostile: a bad access reads as zero or is ignored, never a panic.

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern register layout.
const VERSION: u32 = 2;
/// "ZB".
const VENDOR: u32 = 0x5a42;

/// What a register access asks of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// The driver notified queue `n`.
    Notify(u32),
    /// The driver wrote 0 to the status: reset everything.
    Reset,
    /// The driver finished setting up (DRIVER_OK).
    DriverOk,
}

/// The transport's own registers (the queues' live in their [`Queue`]s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    /// Device status bits as the driver set them.
    pub status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    queue_sel: u32,
    /// Pending interrupt causes ([`VIRTIO_MMIO_INT_VRING`], ...).
    pub interrupt_status: u32,
    config_generation: u32,
}

impl Regs {
    /// Whether the driver finished setting up and nothing failed since.
    pub fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
    }

    /// Marks the device broken: the driver must reset it.
    pub fn needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    }

    /// Answers a read of `data.len()` bytes at `offset`; `features` are the
    /// device's, `config` its configuration space.
    pub fn read(
        &self,
        offset: u64,
        data: &mut [u8],
        features: u64,
        queues: &[Queue],
        config: &[u8],
    ) {
        data.fill(0);
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let at = (offset - u64::from(VIRTIO_MMIO_CONFIG)) as usize;
            if let Some(src) = config.get(at..at + data.len()) {
                data.copy_from_slice(src);
            }
            return;
        }
        if data.len() != 4 {
            return;
        }
        let queue = queues.get(self.queue_sel as usize);
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => virtio_bindings::virtio_ids::VIRTIO_ID_NET,
            VIRTIO_MMIO_VENDOR_ID => VENDOR,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Takes a write of `data` at `offset`; `features` are the device's.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        features: u64,
        queues: &mut [Queue],
    ) -> Action {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return Action::None; // config space is read-only; registers are 32-bit
        };
        let v = u32::from_le_bytes(bytes);
        // Queue setup is frozen once the driver said it is done.
        let setup = self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
        let queue = queues.get_mut(self.queue_sel as usize).filter(|_| setup);
        match (offset as u32, queue) {
            (VIRTIO_MMIO_DEVICE_FEATURES_SEL, _) => self.device_features_sel = v,
            (VIRTIO_MMIO_DRIVER_FEATURES_SEL, _) => self.driver_features_sel = v,
            (VIRTIO_MMIO_DRIVER_FEATURES, _) if setup => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            (VIRTIO_MMIO_QUEUE_SEL, _) => self.queue_sel = v,
            (VIRTIO_MMIO_QUEUE_NUM, Some(q)) => q.set_size(v as u16),
            (VIRTIO_MMIO_QUEUE_READY, Some(q)) => q.set_ready(v == 1),
            (VIRTIO_MMIO_QUEUE_DESC_LOW, Some(q)) => q.set_desc_table_address(Some(v), None),
            (VIRTIO_MMIO_QUEUE_DESC_HIGH, Some(q)) => q.set_desc_table_address(None, Some(v)),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, Some(q)) => q.set_avail_ring_address(Some(v), None),
            (VIRTIO_MMIO_QUEUE_AVAIL_HIGH, Some(q)) => q.set_avail_ring_address(None, Some(v)),
            (VIRTIO_MMIO_QUEUE_USED_LOW, Some(q)) => q.set_used_ring_address(Some(v), None),
            (VIRTIO_MMIO_QUEUE_USED_HIGH, Some(q)) => q.set_used_ring_address(None, Some(v)),
            (VIRTIO_MMIO_QUEUE_NOTIFY, _) if self.driver_ok() => return Action::Notify(v),
            (VIRTIO_MMIO_INTERRUPT_ACK, _) => self.interrupt_status &= !v,
            (VIRTIO_MMIO_STATUS, _) => return self.set_status(v, features),
            _ => {}
        }
        Action::None
    }

    fn set_status(&mut self, v: u32, features: u64) -> Action {
        if v == 0 {
            return Action::Reset;
        }
        let mut v = v;
        // Features the device never offered cannot be accepted.
        if v & VIRTIO_CONFIG_S_FEATURES_OK != 0 && self.driver_features & !features != 0 {
            v &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        // Reaching DRIVER_OK needs FEATURES_OK first.
        if v & VIRTIO_CONFIG_S_DRIVER_OK != 0 && v & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            v &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        let was_ok = self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        // The driver may set bits, never clear NEEDS_RESET (only a reset does).
        self.status = v | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        if !was_ok && self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            Action::DriverOk
        } else {
            Action::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEATURES: u64 = 1 << 32 | 1 << 5;

    fn read(r: &Regs, queues: &[Queue], offset: u32) -> u32 {
        let mut d = [0u8; 4];
        r.read(
            u64::from(offset),
            &mut d,
            FEATURES,
            queues,
            &[1, 2, 3, 4, 5, 6],
        );
        u32::from_le_bytes(d)
    }

    fn write(r: &mut Regs, queues: &mut [Queue], offset: u32, v: u32) -> Action {
        r.write(u64::from(offset), &v.to_le_bytes(), FEATURES, queues)
    }

    #[test]
    fn a_driver_sets_the_device_up_as_linux_does() {
        let mut q = [Queue::new(256).unwrap(), Queue::new(256).unwrap()];
        let mut r = Regs::default();
        assert_eq!(read(&r, &q, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_DEVICE_ID), 1);
        write(&mut r, &mut q, VIRTIO_MMIO_STATUS, 1 | 2);
        write(&mut r, &mut q, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        write(&mut r, &mut q, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        write(&mut r, &mut q, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(&mut r, &mut q, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        write(&mut r, &mut q, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        write(&mut r, &mut q, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        write(&mut r, &mut q, VIRTIO_MMIO_STATUS, 1 | 2 | 8);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_STATUS) & 8, 8, "features accepted");
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_NUM, 128);
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0x2);
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_READY, 1);
        assert_eq!(q[1].size(), 128);
        assert_eq!(q[1].desc_table(), 0x2_0000_1000);
        assert!(q[1].ready() && !q[0].ready());
        assert_eq!(
            write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_NOTIFY, 1),
            Action::None,
            "no notifications before DRIVER_OK"
        );
        assert_eq!(
            write(&mut r, &mut q, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4),
            Action::DriverOk
        );
        assert_eq!(
            write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_NOTIFY, 1),
            Action::Notify(1)
        );
        // Setup is frozen now.
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_NUM, 16);
        assert_eq!(q[1].size(), 128);
        r.interrupt_status = 3;
        write(&mut r, &mut q, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        assert_eq!(write(&mut r, &mut q, VIRTIO_MMIO_STATUS, 0), Action::Reset);
    }

    #[test]
    fn hostile_accesses_are_harmless() {
        let mut q = [Queue::new(256).unwrap(), Queue::new(256).unwrap()];
        let mut r = Regs::default();
        // Unoffered features: FEATURES_OK does not stick, nor does DRIVER_OK.
        write(&mut r, &mut q, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 7);
        write(&mut r, &mut q, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_STATUS), 1 | 2);
        // A queue that does not exist, odd widths, the config space's end.
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_SEL, 9);
        write(&mut r, &mut q, VIRTIO_MMIO_QUEUE_NUM, 7);
        assert_eq!(read(&r, &q, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        assert_eq!(r.write(0x70, &[1, 2], FEATURES, &mut q), Action::None);
        let mut d = [9u8; 8];
        r.read(
            u64::from(VIRTIO_MMIO_CONFIG) + 4,
            &mut d,
            FEATURES,
            &q,
            &[1, 2, 3, 4, 5, 6],
        );
        assert_eq!(d, [0; 8], "a read past the config space sees zeros");
        let mut d = [0u8; 2];
        r.read(
            u64::from(VIRTIO_MMIO_CONFIG) + 4,
            &mut d,
            FEATURES,
            &q,
            &[1, 2, 3, 4, 5, 6],
        );
        assert_eq!(d, [5, 6]);
        r.read(0x2, &mut d, FEATURES, &q, &[]);
        assert_eq!(d, [0, 0]);
        // NEEDS_RESET stays until a reset.
        r.needs_reset();
        write(&mut r, &mut q, VIRTIO_MMIO_STATUS, 1);
        assert_ne!(read(&r, &q, VIRTIO_MMIO_STATUS) & 0x40, 0);
        assert!(!r.driver_ok());
    }
}
