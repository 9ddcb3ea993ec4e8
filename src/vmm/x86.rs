//! Architectural x86-64 bits both boot layouts (bare guest and Linux) set:
//! control-register and EFER flags, page-table entry bits, and the flat
//! 64-bit segment they load.

use kvm_bindings::kvm_segment;

pub(crate) const CR0_PE: u64 = 1;
pub(crate) const CR0_MP: u64 = 1 << 1;
pub(crate) const CR0_ET: u64 = 1 << 4;
pub(crate) const CR0_NE: u64 = 1 << 5;
pub(crate) const CR0_WP: u64 = 1 << 16;
pub(crate) const CR0_PG: u64 = 1 << 31;
/// Protected mode, paging, write protection, native FPU errors: long mode's CR0.
pub(crate) const CR0_LONG_MODE: u64 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
pub(crate) const CR4_PAE: u64 = 1 << 5;
pub(crate) const EFER_LME: u64 = 1 << 8;
pub(crate) const EFER_LMA: u64 = 1 << 10;
pub(crate) const RFLAGS_RESERVED: u64 = 1 << 1;

pub(crate) const PTE_PRESENT: u64 = 1;
pub(crate) const PTE_WRITE: u64 = 1 << 1;
pub(crate) const PTE_USER: u64 = 1 << 2;
pub(crate) const PTE_ACCESSED: u64 = 1 << 5;
pub(crate) const PTE_DIRTY: u64 = 1 << 6;
/// A 2 MiB page (in a page-directory entry).
pub(crate) const PTE_HUGE: u64 = 1 << 7;

/// A flat (base 0, 4 GiB, page-granular) present segment; its privilege level
/// is the selector's RPL. `l` marks 64-bit code, `db` 32-bit default size.
pub(crate) fn flat_segment(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: (selector & 3) as u8,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}
