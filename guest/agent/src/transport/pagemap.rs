//! Finding the physical frame behind a virtual page through
//! `/proc/self/pagemap` (one little-endian `u64` per virtual page). In a guest
//! the "physical" frame is the guest-physical one the host can address. The
//! frame bits read as zero without `CAP_SYS_ADMIN`, which PID 1 has.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use zeroboot_proto::PAGE_SIZE;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const PFN_MASK: u64 = (1 << 55) - 1;

/// Decodes one pagemap entry into a page frame number.
pub fn frame_of(entry: u64) -> io::Result<u64> {
    if entry & SWAPPED != 0 || entry & PRESENT == 0 {
        return Err(io::Error::other("page is not resident in memory"));
    }
    match entry & PFN_MASK {
        0 => Err(io::Error::other(
            "pagemap hides frame numbers (needs CAP_SYS_ADMIN)",
        )),
        pfn => Ok(pfn),
    }
}

/// Frame numbers of the `count` pages starting at page-aligned address `addr`
/// of this process.
pub fn frames(addr: usize, count: usize) -> io::Result<Vec<u64>> {
    assert_eq!(
        addr % PAGE_SIZE,
        0,
        "pagemap lookups take a page-aligned address"
    );
    let map = File::open("/proc/self/pagemap")?;
    let mut raw = vec![0u8; count * 8];
    map.read_exact_at(&mut raw, (addr / PAGE_SIZE * 8) as u64)?;
    raw.chunks_exact(8)
        .map(|e| frame_of(u64::from_le_bytes(e.try_into().expect("8-byte chunk"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_entries_yield_their_frame() {
        assert_eq!(frame_of(PRESENT | 0x1234).unwrap(), 0x1234);
        // Soft-dirty and exclusive bits (55, 56) are not part of the frame.
        assert_eq!(frame_of(PRESENT | (1 << 55) | (1 << 56) | 7).unwrap(), 7);
    }

    #[test]
    fn absent_swapped_or_hidden_entries_are_errors() {
        assert!(frame_of(0x1234).is_err());
        assert!(frame_of(PRESENT | SWAPPED | 0x1234).is_err());
        assert!(frame_of(PRESENT).is_err());
    }
}
