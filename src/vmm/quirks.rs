//! Workarounds for host hypervisors that differ from real CPUs, detected once
//! per process. Each one names the behaviour it works around; on real hardware
//! none applies and restores are exact.

/// Host behaviours the VMM compensates for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// QEMU's TCG emulation of AMD SVM (the host of the kvm-lane) allows a
    /// user-mode `in`/`out` through the TSS I/O bitmap only when TR's cached
    /// type is "available 64-bit TSS" (9), the value its own `ltr` leaves
    /// there. KVM's KVM_GET_SREGS always reports TR as busy (11), so a
    /// restored TR is busy and every port the guest's `ioperm` opened faults
    /// (#GP: the Linux agent's doorbell, killing PID 1). With this quirk TR is
    /// restored as available; on SVM the type of a loaded TR is checked by
    /// nothing in 64-bit mode, so this is what the guest had.
    pub tr_as_available: bool,
}

impl Quirks {
    /// Detects the quirks of the host this process runs on.
    pub fn detect() -> Quirks {
        Quirks {
            tr_as_available: host_hypervisor_signature() == *b"TCGTCGTCGTCG",
        }
    }

    /// Applies the quirks to special registers about to be restored.
    pub fn sregs(self, mut s: kvm_bindings::kvm_sregs) -> kvm_bindings::kvm_sregs {
        const TSS_BUSY: u8 = 0b10;
        if self.tr_as_available && s.tr.type_ == 0xb {
            s.tr.type_ &= !TSS_BUSY;
        }
        s
    }
}

/// The hypervisor signature of CPUID leaf 0x4000_0000 (EBX, ECX, EDX), or
/// zeros on bare metal.
fn host_hypervisor_signature() -> [u8; 12] {
    use std::arch::x86_64::__cpuid;
    const HYPERVISOR_BIT: u32 = 1 << 31;
    if __cpuid(1).ecx & HYPERVISOR_BIT == 0 {
        return [0; 12];
    }
    let leaf = __cpuid(0x4000_0000);
    let mut sig = [0u8; 12];
    for (chunk, reg) in sig.chunks_exact_mut(4).zip([leaf.ebx, leaf.ecx, leaf.edx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    sig
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_segment, kvm_sregs};

    fn with_tr(type_: u8) -> kvm_sregs {
        kvm_sregs {
            tr: kvm_segment {
                type_,
                present: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn tr_is_restored_available_only_under_the_quirk() {
        let lane = Quirks {
            tr_as_available: true,
        };
        assert_eq!(lane.sregs(with_tr(0xb)).tr.type_, 0x9);
        assert_eq!(
            lane.sregs(with_tr(0x3)).tr.type_,
            0x3,
            "16-bit TSS untouched"
        );
        assert_eq!(Quirks::default().sregs(with_tr(0xb)).tr.type_, 0xb);
    }
}
