//! An edge-triggered interrupt line of the in-kernel irqchip, pulsed with
//! KVM_IRQ_LINE: COM1's (from the vCPU thread during the exit that raised
//! it) and the network device's (also from the network threads when frames
//! arrive for the guest; KVM_IRQ_LINE is a VM ioctl, safe from any thread).
//! No eventfd and no irqfd registration, so a fork pays nothing for a line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::VmFd;
use vm_superio::Trigger;

/// A line of a VM's irqchip.
pub struct IrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
    armed: AtomicBool,
}

impl IrqLine {
    /// Line `gsi` of `vm`'s irqchip.
    pub fn new(vm: Arc<VmFd>, gsi: u32) -> IrqLine {
        IrqLine {
            vm,
            gsi,
            armed: AtomicBool::new(true),
        }
    }

    /// Whether [`Trigger::trigger`] pulses the line (a device restored from
    /// a snapshot disarms it while its saved state is loaded: an interrupt
    /// that state had pending was already delivered to the saved irqchip).
    pub fn arm(&self, armed: bool) {
        self.armed.store(armed, Ordering::SeqCst);
    }
}

impl Trigger for IrqLine {
    type E = kvm_ioctls::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.vm.set_irq_line(self.gsi, true)?;
        self.vm.set_irq_line(self.gsi, false)
    }
}
