//! The CPUID a Linux guest sees: what KVM supports, plus the few facts a VMM
//! must state itself. Each one is here because a kernel decision depends on it:
//!
//! - *hypervisor* bit (leaf 1 ECX[31]): the kernel looks for hypervisor leaves
//!   at 0x4000_0000, finds KVM's signature and uses **kvmclock**, which also
//!   tells it the TSC frequency — no calibration against a PIT we don't have.
//! - *TSC-deadline timer* (leaf 1 ECX[24]): KVM emulates it with its in-kernel
//!   LAPIC but leaves the bit to userspace. With it (and ARAT, leaf 6 EAX[2],
//!   which KVM reports) the kernel's `apic_needs_pit()` is false.
//! - no 5-level paging (leaf 7 ECX[16], LA57): a sandbox of at most 3 GiB gains
//!   nothing from a fifth level, while every guest process would own one more
//!   page-table page (copied on write in each fork) and every TLB miss would
//!   walk one more level, twice over with nested paging.
//! - no guest-side halt polling (KVM leaf 0x4000_0001 EAX[12], POLL_CONTROL):
//!   without it the kernel does not load cpuidle-haltpoll, so an idle sandbox
//!   halts at once instead of spinning on a host CPU first. Whether a halted
//!   vCPU is polled is then the host's policy (KVM's halt_poll_ns), not each
//!   of hundreds of guests'.
//! - one vCPU: APIC id 0 and one logical processor in leaf 1 EBX, x2APIC id 0
//!   in the topology leaves 0xB/0x1F, one core per package in leaf 4, instead
//!   of the host's counts.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF6_EAX_ARAT: u32 = 1 << 2;
const LEAF7_ECX_LA57: u32 = 1 << 16;
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
const KVM_FEATURE_POLL_CONTROL: u32 = 1 << 12;
/// Leaf 1 EBX: bits 31..24 initial APIC id, 23..16 logical processor count.
const LEAF1_EBX_TOPOLOGY: u32 = 0xffff_0000;
/// Leaf 4 EAX: bits 31..26 cores per package - 1, 25..14 threads sharing the cache - 1.
const LEAF4_EAX_SHARING: u32 = 0xffff_c000;

/// Adjusts KVM's supported CPUID (entries as returned by
/// KVM_GET_SUPPORTED_CPUID) for a one-vCPU Linux guest.
pub fn adjust(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries {
        match e.function {
            0x1 => {
                e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
                e.ebx = (e.ebx & !LEAF1_EBX_TOPOLOGY) | (1 << 16);
            }
            0x4 => e.eax &= !LEAF4_EAX_SHARING,
            0x6 => e.eax |= LEAF6_EAX_ARAT,
            0x7 if e.index == 0 => e.ecx &= !LEAF7_ECX_LA57,
            0xb | 0x1f => e.edx = 0,
            KVM_FEATURES_LEAF => e.eax &= !KVM_FEATURE_POLL_CONTROL,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0x0a08_0800,
            ecx: 0,
            edx: 0x0000_0007,
            ..Default::default()
        }
    }

    #[test]
    fn linux_sees_a_hypervisor_with_a_deadline_timer_one_cpu_and_four_level_paging() {
        let mut entries = vec![
            leaf(0x1, 0),
            leaf(0x4, 1),
            leaf(0x6, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0x1f, 0),
            leaf(0x4000_0001, 0),
            leaf(0x7, 0),
        ];
        entries[7].ecx = LEAF7_ECX_LA57 | 1;
        let kvm_features = entries[6].eax;
        adjust(&mut entries);
        let l1 = entries[0];
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ebx >> 24, 0, "APIC id 0");
        assert_eq!((l1.ebx >> 16) & 0xff, 1, "one logical processor");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_eq!(entries[1].eax & LEAF4_EAX_SHARING, 0);
        assert_eq!(entries[1].eax & 0x3fff, 0x3fff, "cache type and level kept");
        assert_ne!(entries[2].eax & LEAF6_EAX_ARAT, 0);
        assert!(entries[3..6].iter().all(|e| e.edx == 0), "x2APIC id 0");
        assert_eq!(
            entries[6].eax,
            kvm_features & !KVM_FEATURE_POLL_CONTROL,
            "only halt polling is taken from KVM's features"
        );
        assert_eq!(entries[7].ecx, 1, "no LA57, the rest kept");
    }
}
