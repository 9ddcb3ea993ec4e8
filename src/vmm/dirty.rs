//! Holding a guest to a limit on the memory it dirties, while it runs.
//!
//! Every page a fork writes becomes a private copy in this process, so what a
//! sandbox costs is the number of pages it has written. Counting them only at
//! exits is not enough: a guest can spin and write without ever exiting. KVM's
//! dirty ring closes that gap: each time KVM maps a guest page writable it
//! appends the page to a per-vCPU ring shared with us, and when the ring is
//! full `KVM_RUN` returns (`KVM_EXIT_DIRTY_RING_FULL`) instead of entering
//! the guest. So a guest can write at most one ring's worth of new pages
//! between two looks at its count, exits or not.
//!
//! At each full ring the new entries go into a bitmap of pages known to be
//! private (seeded, the first time, from the page tables), which gives the
//! exact count without scanning; a count past the limit is confirmed by a
//! scan before the guest is stopped. Collected entries are handed back to KVM
//! (`KVM_RESET_DIRTY_RINGS`), which write-protects those pages again: a page
//! written again after that costs one more fault and one more entry, which the
//! bitmap ignores. A ring that never fills costs nothing but its memory.
//! (docs/memory-budget.md compares this with userfaultfd and with scanning.)

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    KVM_CAP_DIRTY_LOG_RING, KVM_DIRTY_LOG_PAGE_OFFSET, kvm_dirty_gfn, kvm_enable_cap,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::{VmmError, pagemap};

/// Entries per ring: KVM's smallest on AMD and kvm-pvm (one page of 16-byte
/// entries). Intel hosts with PML reserve 576 entries and need 1024.
const CANDIDATE_ENTRIES: [u32; 3] = [256, 512, 1024];
const GFN_DIRTY: u32 = 1;
const GFN_RESET: u32 = 2;
/// `_IO(KVMIO, 0xc7)`.
const KVM_RESET_DIRTY_RINGS: libc::c_ulong = 0xae << 8 | 0xc7;

/// Finds the smallest ring this host's KVM takes, on a scratch VM with no
/// vCPU yet; fails when KVM has no dirty ring (Linux before 5.11).
pub(super) fn probe(vm: &VmFd) -> Result<u32, VmmError> {
    let mut last = libc::EINVAL;
    for entries in CANDIDATE_ENTRIES {
        match enable(vm, entries) {
            Ok(()) => return Ok(entries),
            Err(VmmError::DirtyRing(e)) => last = e.raw_os_error().unwrap_or(libc::EINVAL),
            Err(e) => return Err(e),
        }
    }
    Err(VmmError::DirtyRing(io::Error::from_raw_os_error(last)))
}

/// Turns a ring of `entries` on for a VM with no vCPU yet.
pub(super) fn enable(vm: &VmFd, entries: u32) -> Result<(), VmmError> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_DIRTY_LOG_RING,
        args: [
            u64::from(entries) * size_of::<kvm_dirty_gfn>() as u64,
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(|e| VmmError::DirtyRing(io::Error::from_raw_os_error(e.errno())))
}

/// The guest's dirty-page count and its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirtyOverLimit {
    /// Pages the guest holds privately.
    pub pages: u64,
    /// Most it may hold.
    pub limit: u64,
}

/// One vCPU's ring, mapped from its fd, and the count it feeds.
pub(super) struct DirtyRing {
    ring: NonNull<kvm_dirty_gfn>,
    entries: u32,
    /// Entries consumed so far (KVM's index runs on; the slot is `next % entries`).
    next: u32,
    /// Pages known private, one bit each; built at the first full ring.
    known: Option<Vec<u64>>,
    count: u64,
    /// Most private pages allowed; `None`: no limit.
    limit: Option<u64>,
}

// SAFETY: the mapping is owned by this value and only touched through it, by
// whichever thread holds it (the VM's own thread).
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    /// Maps the ring of `entries` of a vCPU whose VM has it enabled.
    pub fn map(vcpu: &VcpuFd, entries: u32) -> Result<DirtyRing, VmmError> {
        let len = entries as usize * size_of::<kvm_dirty_gfn>();
        // SAFETY: maps `len` bytes of the vCPU fd at KVM's dirty-ring offset,
        // shared and not executable as KVM requires; the result is checked and
        // owned by the returned value, which unmaps it on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                KVM_DIRTY_LOG_PAGE_OFFSET as i64 * 4096,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VmmError::DirtyRing(io::Error::last_os_error()));
        }
        Ok(DirtyRing {
            ring: NonNull::new(p.cast()).expect("mmap never returns NULL on success"),
            entries,
            next: 0,
            known: None,
            count: 0,
            limit: None,
        })
    }

    /// Sets the most private pages the guest may hold from now on.
    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
    }

    /// The flags word of slot `i`, which KVM and we both write.
    fn flags(&self, i: u32) -> &AtomicU32 {
        // SAFETY: `i % entries` is inside the mapping, which lives as long as
        // `self`; `flags` is the first u32 of an 8-aligned entry, and KVM
        // accesses it only atomically (acquire/release on the dirty bit).
        unsafe {
            AtomicU32::from_ptr(
                &raw mut (*self.ring.as_ptr().add((i % self.entries) as usize)).flags,
            )
        }
    }

    /// Takes every entry KVM has published; calls `f` with each page offset
    /// (the VM has one memory slot, at guest address 0). Returns how many.
    fn collect(&mut self, mut f: impl FnMut(u64)) -> u32 {
        let mut n = 0;
        while self.flags(self.next).load(Ordering::Acquire) & GFN_DIRTY != 0 {
            // SAFETY: as in `flags`; a published entry is not written by KVM
            // again until we mark it for reset.
            let offset =
                unsafe { (*self.ring.as_ptr().add((self.next % self.entries) as usize)).offset };
            f(offset);
            self.flags(self.next).store(GFN_RESET, Ordering::Release);
            self.next = self.next.wrapping_add(1);
            n += 1;
        }
        n
    }

    /// Forgets the count: the VM's memory is the template's again. Entries
    /// still in the ring are left there (handing them back would
    /// write-protect pages the next tenant would then fault on again); the
    /// next count starts from the page tables, which they cannot add to.
    pub fn clear(&mut self) {
        self.known = None;
        self.count = 0;
    }

    /// Handles a full ring: counts the new pages, and hands the entries back
    /// unless the guest is past its limit.
    pub fn on_full(
        &mut self,
        vm: &VmFd,
        ram: (u64, usize),
    ) -> Result<Option<DirtyOverLimit>, VmmError> {
        let scan = |e| VmmError::DirtyRing(e);
        let mut known = match self.known.take() {
            Some(k) => k,
            None => {
                // Everything in the ring is in the page tables' count.
                self.collect(|_| {});
                let (k, n) = scan_private(ram).map_err(scan)?;
                self.count = n;
                k
            }
        };
        let mut count = self.count;
        let pages = (ram.1 / 4096) as u64;
        self.collect(|gfn| {
            if gfn < pages && known[(gfn / 64) as usize] & (1 << (gfn % 64)) == 0 {
                known[(gfn / 64) as usize] |= 1 << (gfn % 64);
                count += 1;
            }
        });
        if let Some(limit) = self.limit
            && count > limit
        {
            // Confirm with the page tables: the host's own writes (the
            // mailbox) are not in the ring.
            let (k, n) = scan_private(ram).map_err(scan)?;
            known = k;
            count = n;
            if count > limit {
                self.known = Some(known);
                self.count = count;
                return Ok(Some(DirtyOverLimit {
                    pages: count,
                    limit,
                }));
            }
        }
        self.known = Some(known);
        self.count = count;
        reset(vm)?;
        Ok(None)
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping of exactly this length.
        unsafe {
            libc::munmap(
                self.ring.as_ptr().cast(),
                self.entries as usize * size_of::<kvm_dirty_gfn>(),
            )
        };
    }
}

fn reset(vm: &VmFd) -> Result<(), VmmError> {
    // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument and touches only the
    // VM's rings, which are mapped as KVM expects.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_RESET_DIRTY_RINGS) };
    if r < 0 {
        return Err(VmmError::DirtyRing(io::Error::last_os_error()));
    }
    Ok(())
}

/// The private pages of guest memory as a bitmap, and their number.
fn scan_private((addr, size): (u64, usize)) -> io::Result<(Vec<u64>, u64)> {
    let mut bits = vec![0u64; (size / 4096).div_ceil(64)];
    let mut n = 0;
    pagemap::private_runs(addr, size, |first, pages| {
        for p in first / 4096..first / 4096 + pages {
            bits[(p / 64) as usize] |= 1 << (p % 64);
        }
        n += pages;
    })?;
    Ok((bits, n))
}
