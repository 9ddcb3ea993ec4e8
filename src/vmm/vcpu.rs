//! The vCPU run loop. It knows two ports (the agent's doorbell and mailbox
//! registration) and hands every other access to the [`Bus`]. It returns on the
//! first event the caller must act on.

use kvm_bindings::KVM_EXIT_DIRTY_RING_FULL;
use kvm_ioctls::{VcpuExit, VcpuFd};
use zeroboot_proto::{DOORBELL_PORT, MAILBOX_PORT};

use super::{Bus, VmmError};

/// Why the run loop returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest rang the doorbell: a frame is in its mailbox.
    Doorbell,
    /// The guest registered its mailbox; the value is the page-list frame number.
    Mailbox(u32),
    /// KVM_RUN was interrupted by a kick (deadline, cancel, shutdown).
    Interrupted,
    /// The guest is dead: triple fault, failed entry, emulation failure, halt.
    Crashed(String),
    /// KVM's dirty ring is full; [`super::Vm::run`] counts it and goes on,
    /// or stops with [`Stop::MemoryLimit`].
    DirtyRingFull,
    /// The guest holds more private pages than its limit allows; it stays
    /// stopped (every further run stops here too) until the VM is reset.
    MemoryLimit(super::DirtyOverLimit),
}

/// Runs the vCPU until something needs the caller. `exits` counts exits to
/// userspace.
pub fn run_until_stop(vcpu: &mut VcpuFd, bus: &mut Bus, exits: &mut u64) -> Result<Stop, VmmError> {
    loop {
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(Stop::Interrupted);
            }
            Err(e) => return Err(VmmError::Run(e)),
        };
        *exits += 1;
        match handle_exit(exit, bus) {
            None => {}
            Some(Stop::Crashed(why)) => return Ok(Stop::Crashed(with_location(vcpu, why))),
            Some(stop) => return Ok(stop),
        }
    }
}

/// Appends where the vCPU was to a crash reason.
fn with_location(vcpu: &VcpuFd, why: String) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "{why} at rip={:#x} rsp={:#x} rflags={:#x} cr2={:#x}",
            r.rip, r.rsp, r.rflags, s.cr2
        ),
        _ => why,
    }
}

/// Decides what one exit means; `None` means "keep running".
fn handle_exit(exit: VcpuExit<'_>, bus: &mut Bus) -> Option<Stop> {
    match exit {
        VcpuExit::IoOut(DOORBELL_PORT, _) => Some(Stop::Doorbell),
        VcpuExit::IoOut(MAILBOX_PORT, data) if data.len() == 4 => {
            Some(Stop::Mailbox(u32::from_le_bytes(data.try_into().ok()?)))
        }
        VcpuExit::IoOut(port, data) => {
            bus.pio_write(port, data);
            None
        }
        VcpuExit::IoIn(port, data) => {
            bus.pio_read(port, data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            bus.mmio_read(addr, data);
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            bus.mmio_write(addr, data);
            None
        }
        VcpuExit::Shutdown => Some(Stop::Crashed("triple fault (shutdown)".into())),
        VcpuExit::Hlt => Some(Stop::Crashed("halted with interrupts off".into())),
        VcpuExit::FailEntry(reason, cpu) => Some(Stop::Crashed(format!(
            "VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::InternalError => Some(Stop::Crashed(
            "KVM internal error (emulation failed)".into(),
        )),
        VcpuExit::SystemEvent(kind, _) => Some(Stop::Crashed(format!("system event {kind}"))),
        VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL) => Some(Stop::DirtyRingFull),
        other => Some(Stop::Crashed(format!("unexpected exit: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbell_and_mailbox_stop_the_loop() {
        let mut bus = Bus::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(DOORBELL_PORT, &[0]), &mut bus),
            Some(Stop::Doorbell)
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(MAILBOX_PORT, &7u32.to_le_bytes()), &mut bus),
            Some(Stop::Mailbox(7))
        );
    }

    #[test]
    fn a_one_byte_mailbox_write_is_just_stray_io() {
        let mut bus = Bus::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(MAILBOX_PORT, &[1]), &mut bus),
            None
        );
        assert_eq!(bus.stats().stray_pio, 1);
    }

    #[test]
    fn stray_reads_see_all_ones_and_are_counted() {
        let mut bus = Bus::default();
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x6e0, &mut data), &mut bus),
            None
        );
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0x3000_0000, &mut data), &mut bus),
            None
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0x3000_0000, &data), &mut bus),
            None
        );
        assert_eq!(bus.stats().stray_mmio, 2);
    }

    #[test]
    fn a_full_dirty_ring_stops_the_loop() {
        assert_eq!(
            handle_exit(
                VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL),
                &mut Bus::default()
            ),
            Some(Stop::DirtyRingFull)
        );
    }

    #[test]
    fn fatal_exits_are_crashes() {
        let mut bus = Bus::default();
        for exit in [
            VcpuExit::Shutdown,
            VcpuExit::Hlt,
            VcpuExit::InternalError,
            VcpuExit::FailEntry(1, 0),
        ] {
            assert!(matches!(
                handle_exit(exit, &mut bus),
                Some(Stop::Crashed(_))
            ));
        }
    }
}
