//! Booting a stock Linux kernel (a bzImage, e.g. Debian's cloud kernel) with
//! an initramfs, straight into its 64-bit entry point: no firmware, no
//! real-mode setup code. The steps, in dependency order:
//!
//! 1. guest memory size checked against the board's layout ([`layout`]);
//! 2. identity-mapping page tables and the boot GDT written;
//! 3. the kernel's protected-mode part loaded at 1 MiB by linux-loader, its
//!    setup header checked for a 64-bit entry point ([`bootparams`]);
//! 4. the command line validated and written ([`cmdline`]);
//! 5. the initramfs placed at the top of RAM, clear of the range the kernel
//!    decompresses into;
//! 6. ACPI tables that describe the APICs and COM1 ([`acpi`]);
//! 7. the zero page: setup header, memory map, initramfs, RSDP;
//! 8. entry registers and boot MSRs returned for the vCPU ([`entry`]); the
//!    CPUID it needs comes from [`adjust_cpuid`].
//!
//! The console is the 16550 UART at 0x3f8 ([`crate::vmm::SerialConsole`]).
//! This module only writes guest memory: it runs, and is tested, on any host.

mod acpi;
mod bootparams;
mod cmdline;
mod cpuid;
mod entry;
mod layout;

use std::fs::File;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_msr_entry, kvm_regs};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{KernelLoader, bzimage::BzImage, load_cmdline};
use vm_memory::{Bytes, GuestAddress};

use super::VmmError;
use super::memory::GuestRam;

pub use acpi::{COM1_IRQ, COM1_PORT};
pub use cpuid::adjust as adjust_cpuid;
pub use entry::sregs as entry_sregs;
pub use layout::{MAX_RAM, MIN_RAM};

/// Why a kernel could not be set up in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    /// The guest memory size does not fit the board layout.
    #[error("guest memory of {mib} MiB is outside {min_mib}..={max_mib} MiB (in 2 MiB steps)")]
    MemorySize {
        /// Requested size.
        mib: u64,
        /// Smallest size.
        min_mib: u64,
        /// Largest size.
        max_mib: u64,
    },
    /// The kernel or initramfs file cannot be opened or read.
    #[error("cannot read the {what} {path}")]
    Read {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a bzImage this loader can enter in 64-bit mode.
    #[error("not a usable bzImage: {0}")]
    NotBzImage(String),
    /// linux-loader refused the kernel.
    #[error("cannot load the kernel")]
    Kernel(#[source] linux_loader::loader::Error),
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The initramfs does not fit between the kernel and the top of RAM.
    #[error("initramfs of {size} bytes does not fit: {room} bytes free above the kernel")]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
        /// Room available.
        room: u64,
    },
    /// An internal layout rule was broken.
    #[error("boot layout: {0}")]
    Layout(&'static str),
    /// The zero page could not be written.
    #[error("cannot write the zero page")]
    ZeroPage(#[source] linux_loader::configurator::Error),
    /// Writing guest memory failed.
    #[error(transparent)]
    Guest(#[from] VmmError),
}

/// What the vCPU needs to start the loaded kernel.
#[derive(Debug)]
pub struct LinuxBoot {
    /// General registers at the 64-bit entry point.
    pub regs: kvm_regs,
    /// MSRs to set before running.
    pub msrs: Vec<kvm_msr_entry>,
}

fn open(what: &'static str, path: &Path) -> Result<(File, u64), LinuxError> {
    let err = |source| LinuxError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    Ok((file, len))
}

/// Writes the kernel, initramfs, command line and firmware tables into
/// `ram` (fresh, all zero) and returns the entry state.
pub fn load(
    ram: &GuestRam,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxError> {
    let ram_size = ram.size() as u64;
    layout::check_ram(ram_size)?;
    for (addr, bytes) in layout::page_tables() {
        ram.write(addr, &bytes)?;
    }
    let gdt: Vec<u8> = layout::gdt().iter().flat_map(|d| d.to_le_bytes()).collect();
    ram.write(layout::GDT_ADDR, &gdt)?;

    let (mut kernel_file, _) = open("kernel", kernel)?;
    let loaded = BzImage::load(
        ram.guest_memory(),
        None,
        &mut kernel_file,
        Some(GuestAddress(layout::HIMEM_START)),
    )
    .map_err(|e| match e {
        linux_loader::loader::Error::Bzimage(b) => LinuxError::NotBzImage(b.to_string()),
        other => LinuxError::Kernel(other),
    })?;
    let hdr = loaded
        .setup_header
        .ok_or(LinuxError::Layout("bzImage without a setup header"))?;
    bootparams::check_header(&hdr)?;

    let capacity = (hdr.cmdline_size as usize + 1).min(layout::CMDLINE_MAX);
    let cmdline = cmdline::build(cmdline, capacity)?;
    load_cmdline(
        ram.guest_memory(),
        GuestAddress(layout::CMDLINE_ADDR),
        &cmdline,
    )
    .map_err(LinuxError::Kernel)?;

    let (mut initrd_file, initrd_size) = open("initramfs", initramfs)?;
    let kernel_end = loaded.kernel_load.0 + u64::from(hdr.init_size);
    let initrd_at = layout::initrd_addr(ram_size, initrd_size, hdr.initrd_addr_max, kernel_end)?;
    ram.guest_memory()
        .read_exact_volatile_from(
            GuestAddress(initrd_at),
            &mut initrd_file,
            initrd_size as usize,
        )
        .map_err(|e| LinuxError::Read {
            what: "initramfs",
            path: initramfs.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;

    let acpi = acpi::tables(layout::ACPI_ADDR);
    ram.write(layout::ACPI_ADDR, &acpi.bytes)?;

    let e820 = layout::e820_map(ram_size);
    let zero_page = bootparams::build(
        hdr,
        &bootparams::Placement {
            cmdline: layout::CMDLINE_ADDR,
            initrd: (initrd_at, initrd_size),
            rsdp: acpi.rsdp,
            e820: &e820,
        },
    )?;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&zero_page, GuestAddress(layout::ZERO_PAGE)),
        ram.guest_memory(),
    )
    .map_err(LinuxError::ZeroPage)?;

    Ok(LinuxBoot {
        regs: entry::regs(loaded.kernel_load.0),
        msrs: entry::msrs(),
    })
}
