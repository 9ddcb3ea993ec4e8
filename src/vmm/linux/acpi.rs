//! ACPI tables: how the kernel finds the local APIC, the IOAPIC and the
//! serial port's interrupt on this board.
//!
//! Why ACPI and not an MP table: Debian's cloud kernel (the image zeroboot
//! builds) has `CONFIG_X86_MPPARSE` off, so it never reads an MP table.
//! Without an MADT it runs the APIC in "virtual wire, no configuration" mode,
//! which requires a PIT for its timer, and zeroboot creates no PIT (15 ms and a
//! kernel thread per VM). With the MADT below, the kernel uses the IOAPIC and
//! the LAPIC's TSC-deadline timer and needs no PIT at all.
//!
//! The FADT declares a *hardware-reduced* ACPI platform (no PM timer, no SCI,
//! no fixed-feature registers, no legacy PIC, no 8042, no CMOS RTC), like
//! Firecracker's and QEMU microvm's. On such a platform the kernel maps no ISA
//! interrupt by default, so the DSDT describes the one legacy device there is,
//! COM1 (`PNP0501`, ports 0x3f8-0x3ff, IRQ 4): the kernel's PnP-ACPI layer
//! gives the 8250 driver its interrupt through the IOAPIC.
//!
//! Layout from [`super::layout::ACPI_ADDR`]: RSDP, XSDT, FADT, MADT, DSDT,
//! each 16-byte aligned. Every table's checksum makes its bytes sum to zero.

use crate::vmm::{NET_IRQ, NET_MMIO_BASE, NET_MMIO_SIZE};

const OEM_ID: &[u8; 6] = b"ZEROBT";
const OEM_TABLE_ID: &[u8; 8] = b"ZEROBOOT";
const CREATOR_ID: &[u8; 4] = b"ZBVM";
const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;

/// Local APIC MMIO base (the architectural default, where KVM's LAPIC sits).
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IOAPIC MMIO base and id (KVM's in-kernel IOAPIC resets to id 0).
const IOAPIC_ADDR: u32 = 0xfec0_0000;
const IOAPIC_ID: u8 = 0;

/// FADT flags: power and sleep buttons are not fixed features, and the
/// platform is hardware-reduced.
const FADT_PWR_BUTTON: u32 = 1 << 4;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// IA-PC boot architecture flags: no VGA, no MSI, no CMOS RTC (and, by the
/// absence of bit 1, no 8042 keyboard controller).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// ACPI 6.0 FADT: 276 bytes.
const FADT_LEN: usize = 276;

/// COM1 as the serial device model answers it.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's ISA interrupt (= IOAPIC pin, = GSI).
pub const COM1_IRQ: u8 = 4;

/// The tables, ready to be copied to their base address.
pub struct AcpiTables {
    /// Bytes from the base address on.
    pub bytes: Vec<u8>,
    /// Guest address of the RSDP (the base address).
    pub rsdp: u64,
}

/// Sum-to-zero checksum byte.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// A system description table: the 36-byte header, then `body`.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// An AML package: `op`, its PkgLength (which counts itself), then `body`.
fn aml_package(op: &[u8], body: &[u8]) -> Vec<u8> {
    // PkgLength is 1 byte up to 63, else a lead byte carrying the count of
    // following bytes and the low nibble, then 8 bits per byte.
    let mut extra = 0;
    while extra < 3
        && body.len() + 1 + extra
            >= if extra == 0 {
                1 << 6
            } else {
                1 << (4 + 8 * extra)
            }
    {
        extra += 1;
    }
    let len = body.len() + 1 + extra;
    let mut out = op.to_vec();
    if extra == 0 {
        out.push(len as u8);
    } else {
        out.push(((extra as u8) << 6) | (len & 0xf) as u8);
        out.extend((0..extra).map(|i| (len >> (4 + 8 * i)) as u8));
    }
    out.extend_from_slice(body);
    out
}

/// `Name(<seg>, <value>)`.
fn aml_name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    [&[0x08][..], seg, value].concat()
}

/// `Device (<name>) { Name (_HID, <hid>) Name (_UID, Zero) Name (_CRS, <resources>) }`,
/// with `hid` an AML object (EisaId or String) and `resources` the
/// resource template's descriptors (end tag included).
fn aml_device(name: &[u8; 4], hid: &[u8], resources: &[u8]) -> Vec<u8> {
    let buffer = aml_package(
        &[0x11],
        &[&[0x0a, resources.len() as u8][..], resources].concat(),
    );
    aml_package(
        &[0x5b, 0x82],
        &[
            &name[..],
            &aml_name(b"_HID", hid),
            &aml_name(b"_UID", &[0x00]),
            &aml_name(b"_CRS", &buffer),
        ]
        .concat(),
    )
}

/// IRQ descriptor without flags (ISA edge, active high) for `irq`.
fn aml_irq(irq: u8) -> [u8; 3] {
    let mask = (1u16 << irq).to_le_bytes();
    [0x22, mask[0], mask[1]]
}

/// End tag of a resource template (checksum 0: "not computed").
const AML_END_TAG: [u8; 2] = [0x79, 0x00];

/// The DSDT's AML:
///
/// ```text
/// Scope (\_SB) {
///   Device (COM1) {
///     Name (_HID, EisaId ("PNP0501"))
///     Name (_UID, Zero)
///     Name (_CRS, ResourceTemplate () {
///       IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
///       IRQNoFlags () {4}
///     })
///   }
///   Device (NET0) {
///     Name (_HID, "LNRO0005")
///     Name (_UID, Zero)
///     Name (_CRS, ResourceTemplate () {
///       Memory32Fixed (ReadWrite, 0xD0000000, 0x00001000)
///       IRQNoFlags () {5}
///     })
///   }
/// }
/// ```
///
/// NET0 is the virtio-mmio network device (`LNRO0005` is the ID Linux's
/// `virtio_mmio` driver matches). Every Linux guest has it described, but
/// only a sandbox with network loads the driver (see [`crate::vmm::NET_IRQ`]).
fn dsdt_aml() -> Vec<u8> {
    let port = COM1_PORT.to_le_bytes();
    let com1 = aml_device(
        b"COM1",
        // EisaId("PNP0501"): three 5-bit letters and four hex digits, big-endian.
        &[0x0c, 0x41, 0xd0, 0x05, 0x01],
        &[
            // I/O port descriptor: 16-bit decode, min, max, alignment, length.
            &[0x47, 0x01, port[0], port[1], port[0], port[1], 0x00, 0x08][..],
            &aml_irq(COM1_IRQ),
            &AML_END_TAG,
        ]
        .concat(),
    );
    let base = (NET_MMIO_BASE as u32).to_le_bytes();
    let size = (NET_MMIO_SIZE as u32).to_le_bytes();
    let net0 = aml_device(
        b"NET0",
        &[&[0x0d][..], b"LNRO0005", &[0x00]].concat(),
        &[
            // 32-bit fixed memory range descriptor: read-write, base, length.
            &[0x86, 0x09, 0x00, 0x01][..],
            &base,
            &size,
            &aml_irq(NET_IRQ),
            &AML_END_TAG,
        ]
        .concat(),
    );
    aml_package(&[0x10], &[&b"\\_SB_"[..], &com1, &net0].concat())
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let mut body = vec![0u8; FADT_LEN - HEADER_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        body[offset - HEADER_LEN..offset - HEADER_LEN + bytes.len()].copy_from_slice(bytes);
    };
    put(40, &(dsdt as u32).to_le_bytes());
    let iapc = IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT;
    put(109, &iapc.to_le_bytes());
    let flags = FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_HW_REDUCED_ACPI;
    put(112, &flags.to_le_bytes());
    put(140, &dsdt.to_le_bytes());
    table(b"FACP", 6, &body)
}

fn madt() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Processor local APIC: ACPI uid 0, APIC id 0, enabled.
    body.extend_from_slice(&[0, 8, 0, 0]);
    body.extend_from_slice(&1u32.to_le_bytes());
    // IOAPIC: id, reserved, address, first GSI.
    body.extend_from_slice(&[1, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    table(b"APIC", 5, &body)
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|a| a.to_le_bytes()).collect();
    table(b"XSDT", 1, &body)
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_LEN);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(OEM_ID);
    r.push(2);
    r.extend_from_slice(&0u32.to_le_bytes());
    r.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn align16(n: usize) -> usize {
    n.next_multiple_of(16)
}

/// Builds every table for a board whose tables start at `base`.
pub fn tables(base: u64) -> AcpiTables {
    let dsdt = table(b"DSDT", 2, &dsdt_aml());
    let madt = madt();
    let xsdt_len = HEADER_LEN + 2 * 8;
    let xsdt_at = align16(RSDP_LEN);
    let fadt_at = xsdt_at + align16(xsdt_len);
    let madt_at = fadt_at + align16(FADT_LEN);
    let dsdt_at = madt_at + align16(madt.len());
    let addr = |offset: usize| base + offset as u64;
    let placed = [
        (0, rsdp(addr(xsdt_at))),
        (xsdt_at, xsdt(&[addr(fadt_at), addr(madt_at)])),
        (fadt_at, fadt(addr(dsdt_at))),
        (madt_at, madt),
        (dsdt_at, dsdt),
    ];
    let mut bytes = vec![0u8; dsdt_at + placed[4].1.len()];
    for (at, t) in &placed {
        bytes[*at..*at + t.len()].copy_from_slice(t);
    }
    AcpiTables { bytes, rsdp: base }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0xe_0000;

    fn at(t: &AcpiTables, addr: u64) -> &[u8] {
        &t.bytes[(addr - BASE) as usize..]
    }

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], i: usize) -> u64 {
        u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
    }

    /// A table found by address, checked: signature, length, checksum.
    fn sdt<'a>(t: &'a AcpiTables, addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        let b = at(t, addr);
        assert_eq!(&b[..4], sig);
        let len = u32_at(b, 4) as usize;
        let b = &b[..len];
        assert_eq!(
            b.iter().fold(0u8, |s, x| s.wrapping_add(*x)),
            0,
            "{sig:?} checksum"
        );
        b
    }

    #[test]
    fn the_rsdp_leads_to_every_table_with_valid_checksums() {
        let t = tables(BASE);
        assert_eq!(t.rsdp, BASE);
        let r = &t.bytes[..RSDP_LEN];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(r[..20].iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0);
        assert_eq!(r.iter().fold(0u8, |s, x| s.wrapping_add(*x)), 0);
        assert_eq!(r[15], 2, "ACPI 2.0+ RSDP");
        let xsdt = sdt(&t, u64_at(r, 24), b"XSDT");
        assert_eq!(xsdt.len(), HEADER_LEN + 16);
        let fadt = sdt(&t, u64_at(xsdt, 36), b"FACP");
        assert_eq!(fadt.len(), FADT_LEN);
        assert_ne!(u32_at(fadt, 112) & FADT_HW_REDUCED_ACPI, 0);
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]) & 2, 0, "no 8042");
        let dsdt_addr = u64_at(fadt, 140);
        assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr);
        sdt(&t, dsdt_addr, b"DSDT");
        let madt = sdt(&t, u64_at(xsdt, 44), b"APIC");
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        assert_eq!(&madt[44..48], &[0, 8, 0, 0], "LAPIC id 0");
        assert_eq!(u32_at(madt, 48) & 1, 1, "enabled");
        assert_eq!(&madt[52..56], &[1, 12, IOAPIC_ID, 0]);
        assert_eq!(u32_at(madt, 56), IOAPIC_ADDR);
        assert_eq!(u32_at(madt, 60), 0, "GSI base");
    }

    #[test]
    fn tables_are_aligned_and_fit_below_one_mib() {
        let t = tables(BASE);
        assert!(BASE + t.bytes.len() as u64 <= 0x10_0000);
        let r = &t.bytes[..RSDP_LEN];
        let xsdt = u64_at(r, 24);
        for addr in [xsdt, u64_at(at(&t, xsdt), 36), u64_at(at(&t, xsdt), 44)] {
            assert_eq!(addr % 16, 0);
        }
    }

    #[test]
    fn dsdt_describes_com1_and_the_network_device_in_aml() {
        let aml = dsdt_aml();
        // The whole Scope, byte by byte (these bytes, in a DSDT, disassemble
        // with `iasl -d` to exactly the ASL in dsdt_aml's doc comment).
        let expected: Vec<u8> = [
            &[0x10, 0x4a, 0x06][..],
            b"\\_SB_",
            &[0x5b, 0x82, 0x2b],
            b"COM1",
            &[0x08],
            b"_HID",
            &[0x0c, 0x41, 0xd0, 0x05, 0x01, 0x08],
            b"_UID",
            &[0x00, 0x08],
            b"_CRS",
            &[0x11, 0x10, 0x0a, 0x0d],
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08],
            &[0x22, 0x10, 0x00, 0x79, 0x00],
            &[0x5b, 0x82, 0x34],
            b"NET0",
            &[0x08],
            b"_HID",
            &[0x0d],
            b"LNRO0005",
            &[0x00, 0x08],
            b"_UID",
            &[0x00, 0x08],
            b"_CRS",
            &[0x11, 0x14, 0x0a, 0x11],
            &[
                0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00,
            ],
            &[0x22, 0x20, 0x00, 0x79, 0x00],
        ]
        .concat();
        assert_eq!(aml, expected);
    }

    #[test]
    fn long_aml_packages_use_multi_byte_lengths() {
        let p = aml_package(&[0x10], &[0u8; 100]);
        // 100 bytes of body + 2 bytes of PkgLength = 102 = 0x66.
        assert_eq!(&p[..3], &[0x10, 0x46, 0x06]);
        assert_eq!(p.len(), 103);
        let p = aml_package(&[0x10], &[0u8; 62]);
        assert_eq!(&p[..2], &[0x10, 63]);
    }
}
