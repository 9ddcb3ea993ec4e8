//! The vCPU at the kernel's 64-bit entry point, as the boot protocol
//! (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol") demands: long
//! mode with paging on and an identity map, a GDT whose `__BOOT_CS` (0x10) and
//! `__BOOT_DS` (0x18) are flat, those selectors loaded, interrupts off, and
//! RSI holding the zero page's address. Plus the MSRs a BIOS would leave set.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs};

use crate::vmm::x86::{CR0_LONG_MODE, CR4_PAE, EFER_LMA, EFER_LME, RFLAGS_RESERVED, flat_segment};

use super::layout::{BOOT_CS, BOOT_DS, BOOT_STACK, GDT_ADDR, PML4_ADDR, ZERO_PAGE};

/// Offset of the 64-bit entry point (`startup_64`) from the load address.
const ENTRY_64_OFFSET: u64 = 0x200;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default memory type write-back: without it the kernel
/// sees MTRRs off and treats memory as uncached until PAT says otherwise.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// General registers at `startup_64` of a kernel loaded at `load_addr`.
pub fn regs(load_addr: u64) -> kvm_regs {
    kvm_regs {
        rip: load_addr + ENTRY_64_OFFSET,
        rsi: ZERO_PAGE,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// Special registers for 64-bit kernel mode, starting from the vCPU's reset
/// state (which keeps a valid TR and LDT for VM entry checks).
pub fn sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = flat_segment(BOOT_CS, 0xb, 1, 0);
    let data = flat_segment(BOOT_DS, 0x3, 0, 1);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (4 * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    // Caches on (no CD/NW from the reset value), paging and protection on.
    s.cr0 = CR0_LONG_MODE;
    s.cr3 = PML4_ADDR;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// MSRs set before the first instruction.
pub fn msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::x86::{CR0_PE, CR0_PG};

    #[test]
    fn entry_follows_the_64_bit_boot_protocol() {
        let r = regs(0x10_0000);
        assert_eq!(r.rip, 0x10_0200);
        assert_eq!(r.rsi, ZERO_PAGE);
        assert_eq!(r.rflags & (1 << 9), 0, "interrupts off");
        let s = sregs(kvm_sregs::default());
        assert_eq!((s.cs.selector, s.cs.l, s.cs.dpl), (0x10, 1, 0));
        for d in [s.ds, s.es, s.ss] {
            assert_eq!((d.selector, d.type_ & 2), (0x18, 2), "writable __BOOT_DS");
        }
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr0 & (CR0_PG | CR0_PE), CR0_PG | CR0_PE);
        assert_eq!(s.cr0 & (3 << 29), 0, "caches enabled (CD and NW clear)");
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.cr3, PML4_ADDR);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs() {
        let m = msrs();
        assert!(
            m.iter()
                .any(|e| e.index == MSR_MTRR_DEF_TYPE && e.data == MTRR_ENABLE_WB)
        );
        assert!(
            m.iter()
                .any(|e| e.index == MSR_IA32_MISC_ENABLE && e.data & 1 == 1)
        );
    }
}
