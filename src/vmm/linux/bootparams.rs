//! The zero page (`struct boot_params`) for the 64-bit boot protocol: the
//! bzImage's own setup header with the loader's fields filled in, the memory
//! map, and where the ACPI tables are.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::LinuxError;
use super::layout::E820Entry;

/// `setup_header.header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// Boot protocol 2.12 introduced `xloadflags`, which says whether there is a
/// 64-bit entry point.
const MIN_PROTOCOL: u16 = 0x020c;
/// `xloadflags`: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// `type_of_loader`: "undefined" boot loader.
const LOADER_UNDEFINED: u8 = 0xff;

/// What the loader decided, for the zero page.
pub struct Placement<'a> {
    /// Command line address.
    pub cmdline: u64,
    /// Initramfs address and size.
    pub initrd: (u64, u64),
    /// RSDP address.
    pub rsdp: u64,
    /// The memory map.
    pub e820: &'a [E820Entry],
}

/// Checks that `hdr` belongs to a kernel this loader can start in 64-bit mode.
pub fn check_header(hdr: &setup_header) -> Result<(), LinuxError> {
    let (magic, version, xloadflags) = (hdr.header, hdr.version, hdr.xloadflags);
    if magic != HDR_MAGIC {
        return Err(LinuxError::NotBzImage("no HdrS signature".into()));
    }
    if version < MIN_PROTOCOL || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::NotBzImage(format!(
            "boot protocol {}.{:02} without a 64-bit entry point (need 2.12 and XLF_KERNEL_64)",
            version >> 8,
            version & 0xff
        )));
    }
    Ok(())
}

/// Builds the zero page from the kernel's setup header.
pub fn build(hdr: setup_header, at: &Placement<'_>) -> Result<boot_params, LinuxError> {
    let mut p = boot_params {
        hdr,
        ..Default::default()
    };
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.cmd_line_ptr = at.cmdline as u32;
    p.hdr.ramdisk_image = at.initrd.0 as u32;
    p.hdr.ramdisk_size = at.initrd.1 as u32;
    p.acpi_rsdp_addr = at.rsdp;
    if at.e820.len() > p.e820_table.len() {
        return Err(LinuxError::Layout("memory map has too many entries"));
    }
    for (slot, e) in p.e820_table.iter_mut().zip(at.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    p.e820_entries = at.e820.len() as u8;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::super::layout;
    use super::*;

    fn header() -> setup_header {
        setup_header {
            header: HDR_MAGIC,
            version: 0x020f,
            xloadflags: XLF_KERNEL_64 | 2,
            boot_flag: 0xaa55,
            cmdline_size: 2047,
            ..Default::default()
        }
    }

    #[test]
    fn only_64_bit_capable_bzimages_are_accepted() {
        assert!(check_header(&header()).is_ok());
        let old = setup_header {
            version: 0x020a,
            ..header()
        };
        assert!(matches!(check_header(&old), Err(LinuxError::NotBzImage(_))));
        let no64 = setup_header {
            xloadflags: 0,
            ..header()
        };
        assert!(check_header(&no64).is_err());
        let junk = setup_header::default();
        assert!(check_header(&junk).is_err());
    }

    #[test]
    fn zero_page_carries_loader_fields_memory_map_and_rsdp() {
        let e820 = layout::e820_map(512 << 20);
        let p = build(
            header(),
            &Placement {
                cmdline: layout::CMDLINE_ADDR,
                initrd: (0x1e00_0000, 17_592_308),
                rsdp: layout::ACPI_ADDR,
                e820: &e820,
            },
        )
        .unwrap();
        let (loader, cmdline, ramdisk, size, flag) = (
            p.hdr.type_of_loader,
            p.hdr.cmd_line_ptr,
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.hdr.boot_flag,
        );
        assert_eq!(loader, 0xff);
        assert_eq!(u64::from(cmdline), layout::CMDLINE_ADDR);
        assert_eq!((ramdisk, size), (0x1e00_0000, 17_592_308));
        assert_eq!(flag, 0xaa55, "the kernel's own header is kept");
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, layout::ACPI_ADDR);
        assert_eq!(usize::from(p.e820_entries), e820.len());
        let last = p.e820_table[e820.len() - 1];
        let (addr, len, kind) = (last.addr, last.size, last.r#type);
        assert_eq!((addr + len, kind), (512 << 20, layout::E820_RAM));
    }
}
