//! Where everything of a Linux boot lives in guest-physical memory, and the
//! memory map the kernel is told about. Pure: addresses in, bytes and tables
//! out, so every rule here is unit-tested without a VM.
//!
//! ```text
//! 0x0000_1000  GDT (null, null, __BOOT_CS = 0x10, __BOOT_DS = 0x18)
//! 0x0000_7000  boot_params (the "zero page"); RSI points here at entry
//! 0x0000_8ff0  initial stack (the decompressor switches to its own at once)
//! 0x0000_9000  PML4, then PDPT, then 4 page directories: 4 GiB identity map
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  reserved (where a PC's EBDA would be)
//! 0x000e_0000  ACPI tables (RSDP first), reserved
//! 0x0010_0000  the bzImage's protected-mode kernel (its code32_start)
//! top of RAM   the initramfs, page-aligned, below the kernel's initrd_addr_max
//! ```

use super::LinuxError;
use crate::vmm::x86::{PTE_ACCESSED, PTE_DIRTY, PTE_HUGE, PTE_PRESENT, PTE_WRITE};

/// GDT with the two descriptors the 64-bit boot protocol names.
pub const GDT_ADDR: u64 = 0x1000;
/// The zero page.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial RSP/RBP.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = PML4_ADDR + 0x1000;
const PD_ADDR: u64 = PDPT_ADDR + 0x1000;
/// Gigabytes identity-mapped at entry: all of RAM (at most [`MAX_RAM`]) plus
/// the APIC pages below 4 GiB, so the kernel's first accesses need no fault.
const MAPPED_GIB: u64 = 4;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line the layout has room for (the kernel may allow less).
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of what a PC reserves below 1 MiB (EBDA, VGA, ROMs).
const EBDA_START: u64 = 0x9_fc00;
const LEGACY_HOLE_END: u64 = 0xa_0000;
/// ACPI tables (the kernel also finds the RSDP by scanning 0xe0000..0xfffff).
pub const ACPI_ADDR: u64 = 0xe_0000;
/// Where the protected-mode kernel is loaded; RAM above it is "high memory".
pub const HIMEM_START: u64 = 0x10_0000;
/// Smallest guest memory accepted: a kernel, its decompression buffer and an
/// initramfs do not fit in less.
pub const MIN_RAM: u64 = 64 << 20;
/// Largest guest memory accepted: RAM stays below the 32-bit device hole
/// (IOAPIC at 0xfec0_0000, LAPIC at 0xfee0_0000), so one RAM range suffices.
pub const MAX_RAM: u64 = 3 << 30;

/// Kinds of [`E820Entry`], as the kernel numbers them.
pub const E820_RAM: u32 = 1;
/// Reserved: neither RAM nor anything the kernel may use.
pub const E820_RESERVED: u32 = 2;

/// One range of the memory map handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Checks a guest memory size against what this layout supports.
pub fn check_ram(size: u64) -> Result<(), LinuxError> {
    if !(MIN_RAM..=MAX_RAM).contains(&size) || !size.is_multiple_of(2 << 20) {
        return Err(LinuxError::MemorySize {
            mib: size >> 20,
            min_mib: MIN_RAM >> 20,
            max_mib: MAX_RAM >> 20,
        });
    }
    Ok(())
}

/// The memory map: low RAM, the legacy hole (reserved where the ACPI tables
/// are), and high RAM up to `ram_size`.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: LEGACY_HOLE_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_ADDR,
            size: HIMEM_START - ACPI_ADDR,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: ram_size - HIMEM_START,
            kind: E820_RAM,
        },
    ]
}

/// Page tables identity-mapping the first [`MAPPED_GIB`] GiB with 2 MiB
/// pages, as `(guest address, bytes)` pieces. Accessed and Dirty are preset,
/// so no fork ever copies one of these pages just because the CPU set a bit.
pub fn page_tables() -> Vec<(u64, Vec<u8>)> {
    let table = |entries: &mut dyn Iterator<Item = u64>| -> Vec<u8> {
        entries.flat_map(u64::to_le_bytes).collect()
    };
    let dir = PTE_PRESENT | PTE_WRITE | PTE_ACCESSED;
    let mut out = vec![
        (PML4_ADDR, (PDPT_ADDR | dir).to_le_bytes().to_vec()),
        (
            PDPT_ADDR,
            table(&mut (0..MAPPED_GIB).map(|g| (PD_ADDR + g * 0x1000) | dir)),
        ),
    ];
    for g in 0..MAPPED_GIB {
        let huge = dir | PTE_DIRTY | PTE_HUGE;
        let first = g * 512;
        out.push((
            PD_ADDR + g * 0x1000,
            table(&mut (first..first + 512).map(|i| (i << 21) | huge)),
        ));
    }
    out
}

/// Code segment selector of the 64-bit boot protocol (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Data segment selector of the 64-bit boot protocol (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;

/// GDT entries: null, unused, flat 64-bit code at [`BOOT_CS`], flat data at
/// [`BOOT_DS`].
pub fn gdt() -> [u64; 4] {
    [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
}

/// Where the initramfs goes: as high as RAM and the kernel's `initrd_addr_max`
/// allow, page-aligned, and never over the range the kernel decompresses into
/// (`kernel_load .. kernel_load + init_size`).
pub fn initrd_addr(
    ram_size: u64,
    initrd_size: u64,
    initrd_addr_max: u32,
    kernel_end: u64,
) -> Result<u64, LinuxError> {
    let limit = ram_size.min(u64::from(initrd_addr_max) + 1);
    let start = limit
        .checked_sub(initrd_size)
        .map(|s| s & !0xfff)
        .filter(|&s| s >= kernel_end)
        .ok_or(LinuxError::InitramfsTooLarge {
            size: initrd_size,
            room: limit.saturating_sub(kernel_end),
        })?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_keeps_the_legacy_hole_out() {
        let map = e820_map(512 << 20);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (512 << 20) - (HIMEM_START - EBDA_START));
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
        }
        let acpi = map
            .iter()
            .find(|e| e.addr <= ACPI_ADDR && ACPI_ADDR < e.addr + e.size);
        assert_eq!(acpi.map(|e| e.kind), Some(E820_RESERVED));
        assert_eq!(map.last().map(|e| e.addr + e.size), Some(512 << 20));
    }

    #[test]
    fn memory_sizes_outside_the_layout_are_refused() {
        assert!(check_ram(512 << 20).is_ok());
        assert!(check_ram(MAX_RAM).is_ok());
        assert!(check_ram(32 << 20).is_err());
        assert!(check_ram(MAX_RAM + (2 << 20)).is_err());
        assert!(check_ram((512 << 20) + 4096).is_err());
    }

    #[test]
    fn page_tables_identity_map_four_gib_with_preset_bits() {
        let tables = page_tables();
        assert_eq!(tables.len(), 2 + MAPPED_GIB as usize);
        let entry = |addr: u64, i: usize| {
            let (_, bytes) = tables.iter().find(|(a, _)| *a == addr).unwrap();
            u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
        };
        assert_eq!(entry(PML4_ADDR, 0) & !0xfff, PDPT_ADDR);
        // The PD entry for guest address 3 GiB + 6 MiB maps exactly that address.
        let pd = entry(PDPT_ADDR, 3) & !0xfff;
        let e = entry(pd, 3);
        assert_eq!(e & !0x1fffff, (3 << 30) + (6 << 20));
        assert_eq!(
            e & (PTE_HUGE | PTE_DIRTY | PTE_ACCESSED),
            PTE_HUGE | PTE_DIRTY | PTE_ACCESSED
        );
        // Nothing overlaps the zero page, the stack or the command line.
        for (addr, bytes) in &tables {
            let end = addr + bytes.len() as u64;
            for fixed in [GDT_ADDR, ZERO_PAGE, BOOT_STACK, CMDLINE_ADDR] {
                assert!(!(*addr..end).contains(&fixed), "{addr:#x}");
            }
        }
    }

    #[test]
    fn gdt_has_the_boot_protocol_selectors() {
        let g = gdt();
        let code = g[(BOOT_CS >> 3) as usize];
        assert_eq!((code >> 53) & 1, 1, "64-bit code");
        assert_eq!((code >> 47) & 1, 1, "present");
        assert_eq!((code >> 45) & 3, 0, "ring 0");
        let data = g[(BOOT_DS >> 3) as usize];
        assert_eq!((data >> 41) & 1, 1, "writable");
    }

    #[test]
    fn initrd_goes_high_and_never_over_the_kernel() {
        let at = initrd_addr(512 << 20, 17_592_308, u32::MAX, 0x100_0000).unwrap();
        assert_eq!(at % 4096, 0);
        assert!(at + 17_592_308 <= 512 << 20);
        assert!((512 << 20) - (at + 17_592_308) < 4096);
        // initrd_addr_max below the top of RAM wins.
        let at = initrd_addr(512 << 20, 4096, 0x0fff_ffff, 0x100_0000).unwrap();
        assert_eq!(at, 0x1000_0000 - 4096);
        // Too large: it would reach into the kernel's decompression range.
        assert!(matches!(
            initrd_addr(64 << 20, 60 << 20, u32::MAX, 0x500_0000),
            Err(LinuxError::InitramfsTooLarge { .. })
        ));
    }
}
