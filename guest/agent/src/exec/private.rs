//! Making a spare worker's memory its own before the snapshot.
//!
//! A Python spare is forked from the zygote, so they share every page
//! copy-on-write: the first run's first write to each page is a fault in the
//! guest (allocate a page, copy it, update the page table, the struct pages,
//! the LRU...) before it is a copy on the host. Written through
//! `/proc/PID/mem` before the snapshot, every present page of the spare's
//! private writable mappings is the spare's alone and marked dirty, so what
//! the first run writes costs the host one page copy each and the guest
//! nothing. The pages so copied cost template memory once (the spare's
//! resident set), never a fork's.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;
/// Pagemap entries read at once.
const BATCH: u64 = 512;

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

/// Writes every present page of process `pid`'s private writable mappings
/// back to itself; returns how many pages it wrote.
pub fn privatize(pid: u32) -> io::Result<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let mut written = 0;
    let mut entries = vec![0u8; (BATCH * 8) as usize];
    for (lo, hi) in writable_private(&maps) {
        let mut page = lo;
        while page < hi {
            let n = ((hi - page) / PAGE).min(BATCH);
            let buf = &mut entries[..(n * 8) as usize];
            pagemap.read_exact_at(buf, page / PAGE * 8)?;
            for (i, e) in buf.chunks_exact(8).enumerate() {
                let present = u64::from_le_bytes(e.try_into().expect("8 bytes")) >> 63 == 1;
                if present {
                    let addr = page + i as u64 * PAGE;
                    let mut byte = [0u8];
                    mem.read_exact_at(&mut byte, addr)?;
                    mem.write_all_at(&byte, addr)?;
                    written += 1;
                }
            }
            page += n * PAGE;
        }
    }
    Ok(written)
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
    fn a_child_gets_its_pages_written_back_unchanged() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let written = privatize(child.id()).unwrap();
        assert!(written > 0);
        let _ = child.kill().and_then(|()| child.wait());
    }
}
