//! Boot layout of the bare guest: what the host writes into guest memory and
//! the registers the vCPU starts with.
//!
//! The guest starts directly in 64-bit user mode (CPL3): under kvm-pvm, user
//! code runs natively while kernel-mode code is emulated instruction by
//! instruction. Paging is on with a 1 GiB identity map of 2 MiB pages whose
//! Accessed/Dirty bits are preset, so no fork copies a page-table page merely
//! because the CPU set a bit in it. Interrupts stay off and there is no IDT: any
//! exception becomes a triple fault, which is exactly what `crash` should cause.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use super::VmmError;
use super::memory::GuestRam;
use super::x86::{
    CR0_LONG_MODE, CR4_PAE, EFER_LMA, EFER_LME, PTE_ACCESSED, PTE_DIRTY, PTE_HUGE, PTE_PRESENT,
    PTE_USER, PTE_WRITE, RFLAGS_RESERVED, flat_segment,
};

/// Guest RAM of the bare template.
pub const BARE_MEMORY: usize = 32 << 20;
/// Where the flat guest image is loaded and entered.
pub const LOAD_ADDR: u64 = 0x10_0000;

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const GDT: u64 = 0x4000;
const TSS: u64 = 0x5000;
/// The TSS's I/O permission bitmap follows its 0x68 fixed bytes. kvm-pvm checks
/// user-mode port access against it (RFLAGS.IOPL alone is not enough there), so
/// every port is allowed: 8 KiB of zero bits plus the closing 0xff byte.
const IOMAP_OFFSET: u64 = 0x68;
const TSS_LIMIT: u64 = IOMAP_OFFSET + 8192;

const CODE_SELECTOR: u16 = 3 << 3 | 3;
const DATA_SELECTOR: u16 = 4 << 3 | 3;
const TSS_SELECTOR: u16 = 5 << 3;

const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// Writes page tables, GDT and the image into fresh guest memory.
pub fn write_bare_boot(ram: &GuestRam, image: &[u8]) -> Result<(), VmmError> {
    if LOAD_ADDR as usize + image.len() > ram.size() {
        return Err(VmmError::ImageTooLarge(image.len()));
    }
    let table = |entries: &mut dyn Iterator<Item = u64>| -> Vec<u8> {
        entries.flat_map(u64::to_le_bytes).collect()
    };
    let dir = PTE_PRESENT | PTE_WRITE | PTE_USER | PTE_ACCESSED;
    ram.write(PML4, &(PDPT | dir).to_le_bytes())?;
    ram.write(PDPT, &(PD | dir).to_le_bytes())?;
    let huge = dir | PTE_DIRTY | PTE_HUGE;
    ram.write(PD, &table(&mut (0..512u64).map(|i| (i << 21) | huge)))?;
    ram.write(GDT, &table(&mut gdt().into_iter()))?;
    ram.write(TSS + 0x66, &(IOMAP_OFFSET as u16).to_le_bytes())?;
    ram.write(TSS + TSS_LIMIT, &[0xff])?;
    ram.write(LOAD_ADDR, image)
}

/// GDT: null, kernel code/data (unused), user code, user data, 64-bit TSS.
fn gdt() -> [u64; 7] {
    let tss_low =
        TSS_LIMIT | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS >> 24) & 0xff) << 56);
    [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00af_fb00_0000_ffff,
        0x00cf_f300_0000_ffff,
        tss_low,
        TSS >> 32,
    ]
}

/// General registers at the entry point.
pub fn bare_entry_regs() -> kvm_regs {
    kvm_regs {
        rip: LOAD_ADDR,
        rflags: RFLAGS_RESERVED | RFLAGS_IOPL3,
        ..Default::default()
    }
}

/// Special registers for 64-bit user mode, starting from the vCPU's reset state.
pub fn bare_entry_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = flat_segment(CODE_SELECTOR, 0xb, 1, 0);
    let data = flat_segment(DATA_SELECTOR, 0x3, 0, 1);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.tr = kvm_segment {
        base: TSS,
        limit: TSS_LIMIT as u32,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        unusable: 1,
        type_: 0x2,
        ..Default::default()
    };
    s.gdt.base = GDT;
    s.gdt.limit = (7 * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = CR0_LONG_MODE;
    s.cr3 = PML4;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_user_segments_are_ring3_64bit() {
        let g = gdt();
        let code = g[(CODE_SELECTOR >> 3) as usize];
        assert_eq!((code >> 45) & 3, 3, "DPL 3");
        assert_eq!((code >> 53) & 1, 1, "long mode");
        let data = g[(DATA_SELECTOR >> 3) as usize];
        assert_eq!((data >> 45) & 3, 3);
    }

    #[test]
    fn entry_is_user_mode_with_io_privilege() {
        let s = bare_entry_sregs(kvm_sregs::default());
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.cs.selector & 3, 3);
        assert_eq!(bare_entry_regs().rflags & RFLAGS_IOPL3, RFLAGS_IOPL3);
        assert_eq!(s.efer & EFER_LMA, EFER_LMA);
    }
}
