//! Making a spare worker's memory its own before the snapshot.
//!
//! A Python spare is forked from the zygote, so they share every page
//! copy-on-write: the first run's first write to each page is a fault in the
//! guest (allocate a page, copy it, update the page table, the struct pages,
//! the LRU...) before it is a copy on the host. Written through
//! `/proc/PID/mem` before the snapshot, every present page of the spare's
//! private writable mappings is the spare's alone and marked dirty, so what
//! the first run writes costs the host one page copy each and the guest
//! nothing.
//!
//! The pages of those mappings that are not there yet (the rest of an
//! allocator's arena or heap, of a library's `.bss`, of the stack) would
//! fault in the guest at the run's first touch the same way (a zeroed page,
//! a page table, the struct page): written once here too, they are there in
//! every fork. Only where the spare is likely to go next: small mappings and
//! mostly present ones, not the reserved stacks of threads that never grew;
//! and at most [`MAX_HOLES`] pages in all.
//!
//! The pages so written cost template memory once (the spare's resident
//! set), never a fork's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;
/// Pagemap entries read at once.
const BATCH: u64 = 512;
/// A mapping this small (pages) gets its missing pages written whatever its
/// share of present ones (1 MiB: an arena of CPython's allocator, V8's
/// 256 KiB pages).
const SMALL: u64 = 256;
/// Missing pages written in all, at most (16 MiB of template memory).
const MAX_HOLES: u64 = 4096;

/// The private writable mappings in a `/proc/PID/maps` text, as address
/// ranges (the kernel's special mappings left out).
fn writable_private(maps: &str) -> Vec<(u64, u64)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?.as_bytes();
            let name = fields.nth(3).unwrap_or("");
            if perms.get(1) != Some(&b'w') || perms.get(3) != Some(&b'p') || name.starts_with("[v")
            {
                return None;
            }
            let (lo, hi) = range.split_once('-')?;
            Some((
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            ))
        })
        .collect()
}

/// Whether a mapping of `pages` pages, `present` of them there, gets its
/// missing pages written: small ones, and those at least half there (a
/// heap, arenas); not a thread's stack reserved in full and barely used.
fn fills_holes(pages: u64, present: u64) -> bool {
    pages <= SMALL || present * 2 >= pages
}

/// One private writable mapping of a process, read through its pagemap.
struct Mapping<'a> {
    pagemap: &'a File,
    lo: u64,
    hi: u64,
}

impl Mapping<'_> {
    /// Calls `each(address, present)` for every page, in order, until it
    /// returns false.
    fn pages(&self, mut each: impl FnMut(u64, bool) -> bool) -> io::Result<()> {
        let mut entries = [0u8; (BATCH * 8) as usize];
        let mut page = self.lo;
        while page < self.hi {
            let n = ((self.hi - page) / PAGE).min(BATCH);
            let buf = &mut entries[..(n * 8) as usize];
            self.pagemap.read_exact_at(buf, page / PAGE * 8)?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                let present = u64::from_le_bytes(e.try_into().expect("8 bytes")) >> 63 == 1;
                if !each(page + i as u64 * PAGE, present) {
                    return Ok(());
                }
            }
            page += n * PAGE;
        }
        Ok(())
    }
}

/// Writes one byte of a page back to itself.
fn rewrite(mem: &File, addr: u64) -> io::Result<()> {
    let mut byte = [0u8];
    mem.read_exact_at(&mut byte, addr)?;
    mem.write_all_at(&byte, addr)
}

/// What [`privatize`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Privatized {
    /// Present pages written back.
    pub present: u64,
    /// Missing pages written (new to the process: its resident set grew by
    /// as many).
    pub filled: u64,
}

/// Writes every present page of process `pid`'s private writable mappings
/// back to itself, and the missing pages of those [`fills_holes`] picks.
pub fn privatize(pid: u32) -> io::Result<Privatized> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let mut done = Privatized::default();
    for (lo, hi) in writable_private(&maps) {
        let mapping = Mapping {
            pagemap: &pagemap,
            lo,
            hi,
        };
        let mut present = 0;
        mapping.pages(|_, p| {
            present += u64::from(p);
            true
        })?;
        let fill = fills_holes((hi - lo) / PAGE, present);
        let mut failed = Ok(());
        mapping.pages(|addr, p| {
            if p {
                failed = rewrite(&mem, addr);
                done.present += 1;
            } else if fill && done.filled < MAX_HOLES {
                // A missing page may have nothing behind it (a file
                // mapping past the file's end): leave the rest of the
                // mapping as it is.
                if rewrite(&mem, addr).is_err() {
                    return false;
                }
                done.filled += 1;
            }
            failed.is_ok()
        })?;
        failed?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_writable_mappings_count() {
        let maps = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6
7f0000001000-7f0000003000 rw-p 00002000 08:01 42                         /usr/lib/libc.so.6
7f0000003000-7f0000004000 rw-s 00000000 00:05 7                          /dev/shm/x
7ffd00000000-7ffd00002000 rw-p 00000000 00:00 0                          [vvar]
7ffd10000000-7ffd10021000 rw-p 00000000 00:00 0                          [stack]
7f0000005000-7f0000006000 rw-p 00000000 00:00 0
";
        assert_eq!(
            writable_private(maps),
            [
                (0x55d0_c000_0000, 0x55d0_c002_1000),
                (0x7f00_0000_1000, 0x7f00_0000_3000),
                (0x7ffd_1000_0000, 0x7ffd_1002_1000),
                (0x7f00_0000_5000, 0x7f00_0000_6000),
            ]
        );
    }

    #[test]
    fn holes_are_filled_in_small_or_mostly_present_mappings_only() {
        // Small: whatever is there.
        assert!(fills_holes(1, 0));
        assert!(fills_holes(SMALL, 2));
        // Larger: half there at least (an arena-filled heap)...
        assert!(fills_holes(SMALL + 1, (SMALL + 1).div_ceil(2)));
        assert!(fills_holes(10_000, 9_000));
        // ...not an 8 MiB thread stack that used two pages.
        assert!(!fills_holes(2048, 2));
        assert!(!fills_holes(SMALL + 1, SMALL / 2));
    }

    /// Present pages of `pid`'s private writable mappings, counted over
    /// the mappings `fills_holes` picks, and missing pages there.
    fn present_and_missing(pid: u32) -> (u64, u64) {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let pagemap = File::open(format!("/proc/{pid}/pagemap")).unwrap();
        let (mut present, mut missing) = (0, 0);
        for (lo, hi) in writable_private(&maps) {
            let mapping = Mapping {
                pagemap: &pagemap,
                lo,
                hi,
            };
            let mut here = [0u64; 2];
            mapping
                .pages(|_, p| {
                    here[usize::from(p)] += 1;
                    true
                })
                .unwrap();
            if fills_holes((hi - lo) / PAGE, here[1]) {
                present += here[1];
                missing += here[0];
            }
        }
        (present, missing)
    }

    #[test]
    fn a_child_gets_its_pages_written_back_and_its_holes_filled() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Asleep: its loader has mapped everything.
        let stat = format!("/proc/{pid}/stat");
        for _ in 0..500 {
            let s = std::fs::read_to_string(&stat).unwrap();
            if s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (_, missing) = present_and_missing(pid);
        assert!(
            missing > 0,
            "a fresh sleep has untouched pages (stack, .bss)"
        );
        let done = privatize(pid).unwrap();
        assert!(done.present > 0);
        assert!(done.filled > 0);
        let (present, after) = present_and_missing(pid);
        assert_eq!(after, 0, "every hole of the picked mappings filled");
        assert!(present >= done.present + done.filled);
        let _ = child.kill().and_then(|()| child.wait());
    }
}
