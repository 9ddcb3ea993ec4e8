//! Guest RAM and the files behind it.
//!
//! A [`MemoryFile`] holds a template's base memory: a sealed memfd (templates
//! built in this worker) or the body of a template file (mapped straight from
//! the page cache, so every worker on a host shares one copy). Every fork maps
//! it private (copy-on-write); a recycled fork maps it again over the same
//! address so its KVM slot stays valid while its dirty pages are dropped.
//!
//! Layers above the base (branches) keep the pages they changed in a
//! [`super::pages::PageStore`]; a fork of a branch gets them written over its private
//! mapping with [`GuestRam::place`].
//!
//! The host never reads a template file through a mapping: a file cut short
//! while loaded would turn that read into SIGBUS. It reads with `pread`, and
//! it writes into a fork's mapping only after `MADV_POPULATE_WRITE` made the
//! pages private, which reports a vanished page as an error instead.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::OnceLock;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::VmmError;

/// Bytes in a guest page.
pub const PAGE: usize = 4096;

/// The file holding a template's base memory: `size` bytes at `offset`.
#[derive(Debug)]
pub struct MemoryFile {
    file: File,
    offset: u64,
    size: usize,
    /// Which pages hold data (not holes), computed once, after sealing.
    data: OnceLock<Vec<bool>>,
}

impl MemoryFile {
    /// Creates an empty (all-zero, no pages allocated) memfd of `size` bytes.
    pub fn create(name: &str, size: usize) -> Result<MemoryFile, VmmError> {
        let err = |source| VmmError::CreateMemory { size, source };
        let cname = std::ffi::CString::new(name).expect("memfd names have no NUL");
        // SAFETY: cname is a valid C string; the flags are valid for memfd_create.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64).map_err(err)?;
        Ok(MemoryFile {
            file,
            offset: 0,
            size,
            data: OnceLock::new(),
        })
    }

    /// The guest memory held at `offset` of an opened template file. The
    /// caller checked that the file is regular and long enough, and that
    /// `offset` is page-aligned.
    pub fn from_file(file: File, offset: u64, size: usize) -> MemoryFile {
        MemoryFile {
            file,
            offset,
            size,
            data: OnceLock::new(),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Pages of guest memory.
    pub fn pages(&self) -> usize {
        self.size / PAGE
    }

    /// Forbids any further change to the contents or size: once a template is
    /// captured, no mapping can alter what later forks start from.
    pub fn seal(&self) -> Result<(), VmmError> {
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on an fd we own, with a valid command and argument.
        let r = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        if r < 0 {
            return Err(VmmError::SealMemory(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Reads guest bytes at `gpa` with `pread`: a hole reads as zeros without
    /// allocating, and a file cut short is an error, never a signal.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        if gpa + buf.len() as u64 > self.size as u64 {
            return Err(io::Error::other(format!("{gpa:#x} is beyond guest memory")));
        }
        self.file.read_exact_at(buf, self.offset + gpa)
    }

    /// Writes guest bytes at `gpa` (a memfd being filled, before sealing).
    pub fn write(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
        if gpa + buf.len() as u64 > self.size as u64 {
            return Err(io::Error::other(format!("{gpa:#x} is beyond guest memory")));
        }
        self.file.write_all_at(buf, self.offset + gpa)
    }

    /// Whether page `index` may hold data (false: a hole, all zeros).
    pub fn has_data(&self, index: usize) -> io::Result<bool> {
        if self.data.get().is_none() {
            let pages = data_pages(&self.file, self.offset, self.size)?;
            // Another thread may have won the race with the same answer.
            let _ = self.data.set(pages);
        }
        Ok(self.data.get().and_then(|d| d.get(index).copied()) == Some(true))
    }
}

/// Pages of `size` bytes at `offset` of `file` that hold data (not holes), by
/// SEEK_DATA/SEEK_HOLE. A file system without holes reports everything as data.
fn data_pages(file: &File, offset: u64, size: usize) -> io::Result<Vec<bool>> {
    let mut pages = vec![false; size / PAGE];
    let fd = file.as_raw_fd();
    let end = offset + size as u64;
    let mut at = offset as libc::off_t;
    while (at as u64) < end {
        // SAFETY: lseek on a descriptor we own; it reads no memory of ours.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(pages)
            } else {
                Err(e)
            };
        }
        // SAFETY: as above.
        let stop = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        let first = (start as u64).saturating_sub(offset) as usize / PAGE;
        let last = ((stop as u64).min(end) - offset).div_ceil(PAGE as u64) as usize;
        for p in first..last.min(pages.len()) {
            pages[p] = true;
        }
        at = stop;
    }
    Ok(pages)
}

/// How a mapping shares its pages with the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Writes go to the file (a template while it boots).
    Shared,
    /// Writes stay in this mapping (a fork).
    Private,
}

/// An owned mapping of guest RAM at a fixed host address, with bounds-checked
/// access through vm-memory.
#[derive(Debug)]
pub struct GuestRam {
    addr: NonNull<u8>,
    size: usize,
    mem: GuestMemoryMmap,
}

// SAFETY: the mapping is plain memory owned by this value; vm-memory's accessors
// use volatile copies, and KVM's concurrent access is what guest memory is for.
unsafe impl Send for GuestRam {}
// SAFETY: as above; shared references only perform volatile copies.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps the whole file.
    pub fn map(file: &MemoryFile, sharing: Sharing) -> Result<GuestRam, VmmError> {
        let addr = map_at(None, file, sharing)?;
        // SAFETY: addr..addr+size was just mapped readable and writable, stays
        // mapped until this value drops, and the region does not unmap it.
        let region = unsafe {
            MmapRegion::build_raw(
                addr.as_ptr(),
                file.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_NORESERVE | flags(sharing),
            )
        }
        .map_err(|e| VmmError::MapMemory(io::Error::other(e.to_string())))?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(0)).ok_or(VmmError::GuestAddress {
                addr: 0,
                len: file.size(),
            })?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| VmmError::MapMemory(io::Error::other(e.to_string())))?;
        Ok(GuestRam {
            addr,
            size: file.size(),
            mem,
        })
    }

    /// Makes every page equal to the file's again. With at most `in_place`
    /// private pages, their contents are copied back over them: the mapping and
    /// KVM's view of it stay warm, so the next tenant takes no page faults on
    /// them. Beyond that, the file is mapped again privately at the same host
    /// address: the private pages are freed and KVM's MMU notifier forgets them.
    /// Returns whether the reset happened in place.
    pub fn reset_private(&self, file: &MemoryFile, in_place: usize) -> Result<bool, VmmError> {
        assert_eq!(file.size(), self.size, "a reset keeps the size");
        let io = |e: io::Error| VmmError::MapMemory(e);
        let Some(private) =
            super::pagemap::private_page_offsets(self.host_addr(), self.size, in_place)
                .map_err(io)?
        else {
            return map_at(Some(self.addr), file, Sharing::Private).map(|_| false);
        };
        let mut page = [0u8; PAGE];
        for gpa in private {
            file.read(gpa, &mut page).map_err(io)?;
            self.write(gpa, &page)?;
        }
        Ok(true)
    }

    /// Gives back the private copies of the pages at `gpas` (sorted): they
    /// read as the file's pages again. The caller has checked that each one
    /// holds what the file holds and keeps every writer (the vCPU, devices)
    /// off them meanwhile, so no byte anyone reads changes.
    pub fn discard(&self, gpas: &[u64]) -> Result<(), VmmError> {
        self.advise(gpas, libc::MADV_DONTNEED)
    }

    /// Host address of guest-physical 0.
    pub fn host_addr(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The mapping as vm-memory sees it (for loaders that take a `GuestMemoryBackend`).
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Copies bytes into guest memory.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), VmmError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| VmmError::GuestAddress {
                addr: gpa,
                len: data.len(),
            })
    }

    /// Copies bytes out of guest memory.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmmError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| VmmError::GuestAddress {
                addr: gpa,
                len: buf.len(),
            })
    }

    /// Guest-physical addresses of the pages this mapping holds privately.
    pub fn private_pages(&self) -> io::Result<Vec<u64>> {
        private_page_addrs(self.host_addr(), self.size)
    }
}

/// Guest-physical addresses of the pages of a mapping of this process held
/// privately (copied on write): see [`super::pagemap`].
pub fn private_page_addrs(host_addr: u64, size: usize) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    super::pagemap::private_runs(host_addr, size, |first, pages| {
        out.extend((0..pages).map(|i| first + i * PAGE as u64))
    })?;
    Ok(out)
}

/// Sorted page addresses grouped into (first address, page count) runs of
/// adjacent pages, so each run takes one system call.
fn page_runs(pages: impl IntoIterator<Item = u64>) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for gpa in pages {
        match runs.last_mut() {
            Some((start, count)) if *start + (*count * PAGE) as u64 == gpa => *count += 1,
            _ => runs.push((gpa, 1)),
        }
    }
    runs
}

impl GuestRam {
    /// Makes the private copies of `pages` now, leaving their contents as they
    /// are: the host takes the copy-on-write faults here instead of the guest
    /// taking them (and KVM's notifier round) on its first run.
    ///
    /// The pages are populated *writable* (MADV_POPULATE_WRITE), never read
    /// first. A write fault on a page not yet mapped copies it straight into a
    /// private page; reading first would map the file's page read-only, and
    /// the write after it must then replace a present PTE, which runs every
    /// MMU notifier registered on this process: one per live VM. Measured
    /// here, that made each precopied page cost ~0.27 us per live VM (1.1 ms
    /// for 4 pages with 1000 VMs alive). On a kernel without
    /// MADV_POPULATE_WRITE (before 5.14) nothing is copied ahead: the guest
    /// takes those faults itself. Returns whether the pages were populated.
    pub fn precopy(&self, pages: &[u64]) -> Result<bool, VmmError> {
        match self.advise(pages, libc::MADV_POPULATE_WRITE) {
            Err(VmmError::MapMemory(e)) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// `madvise(advice)` on each run of adjacent `pages` (sorted), each
    /// checked to lie inside the mapping first; stops at the first failure.
    /// `advice` is MADV_POPULATE_WRITE (makes copies, changes no contents) or
    /// MADV_DONTNEED (drops copies: see [`GuestRam::discard`]).
    fn advise(&self, pages: &[u64], advice: libc::c_int) -> Result<(), VmmError> {
        for (start, count) in page_runs(pages.iter().copied()) {
            let len = count * PAGE;
            if start
                .checked_add(len as u64)
                .is_none_or(|end| end > self.size as u64)
            {
                return Err(VmmError::GuestAddress { addr: start, len });
            }
            // SAFETY: the range lies inside this mapping (checked above), which
            // stays mapped while `self` lives; neither advice unmaps it, and
            // neither changes a byte the guest or host reads except as the
            // callers document (a dropped copy reads as the file's page, which
            // `discard`'s caller checked it holds).
            let r = unsafe {
                libc::madvise(self.addr.as_ptr().add(start as usize).cast(), len, advice)
            };
            if r != 0 {
                return Err(VmmError::MapMemory(io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// Writes whole pages over this mapping: a branch's pages placed over the
    /// base a fork maps. `pages` yields (guest address, page) in ascending
    /// order. The pages are first made private by [`GuestRam::precopy`], so
    /// a base file that lost them is an error here, not a SIGBUS later.
    pub fn place<'a>(
        &self,
        pages: impl Iterator<Item = (u64, &'a [u8])> + Clone,
    ) -> Result<(), VmmError> {
        let addrs: Vec<u64> = pages.clone().map(|(gpa, _)| gpa).collect();
        self.precopy(&addrs)?;
        for (gpa, page) in pages {
            self.write(gpa, page)?;
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping; vm-memory's region does not unmap it.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.size) };
    }
}

fn flags(sharing: Sharing) -> i32 {
    match sharing {
        Sharing::Shared => libc::MAP_SHARED,
        Sharing::Private => libc::MAP_PRIVATE,
    }
}

fn map_at(
    at: Option<NonNull<u8>>,
    file: &MemoryFile,
    sharing: Sharing,
) -> Result<NonNull<u8>, VmmError> {
    let (hint, fixed) = match at {
        Some(p) => (p.as_ptr().cast(), libc::MAP_FIXED),
        None => (std::ptr::null_mut(), 0),
    };
    let offset = libc::off_t::try_from(file.offset)
        .map_err(|_| VmmError::MapMemory(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
    // SAFETY: maps a file we own; with MAP_FIXED the target range is a mapping
    // owned by the caller's GuestRam, replaced atomically with the same size.
    let p = unsafe {
        libc::mmap(
            hint,
            file.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            flags(sharing) | libc::MAP_NORESERVE | fixed,
            file.file.as_raw_fd(),
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(VmmError::MapMemory(io::Error::last_os_error()));
    }
    Ok(NonNull::new(p.cast()).expect("mmap never returns NULL on success"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_pages_form_one_run() {
        assert_eq!(
            page_runs([0, 4096, 8192, 5 * 4096, 9 * 4096, 10 * 4096]),
            vec![(0, 3), (5 * 4096, 1), (9 * 4096, 2)]
        );
        assert!(page_runs([]).is_empty());
    }

    #[test]
    fn precopy_makes_private_copies_with_the_file_contents() {
        let file = MemoryFile::create("precopy-test", 16 * 4096).unwrap();
        let shared = GuestRam::map(&file, Sharing::Shared).unwrap();
        shared.write(2 * 4096 + 7, b"template").unwrap();
        drop(shared);
        let ram = GuestRam::map(&file, Sharing::Private).unwrap();
        ram.precopy(&[2 * 4096, 3 * 4096, 9 * 4096]).unwrap();
        assert_eq!(
            ram.private_pages().unwrap(),
            vec![2 * 4096, 3 * 4096, 9 * 4096]
        );
        let mut buf = [0u8; 8];
        ram.read(2 * 4096 + 7, &mut buf).unwrap();
        assert_eq!(&buf, b"template");
        assert!(ram.precopy(&[16 * 4096]).is_err());
    }

    #[test]
    fn placed_pages_are_private_and_hold_what_was_placed() {
        let file = MemoryFile::create("place-test", 16 * 4096).unwrap();
        let ram = GuestRam::map(&file, Sharing::Private).unwrap();
        let (a, b) = ([1u8; PAGE], [2u8; PAGE]);
        ram.place([(4096, &a[..]), (3 * 4096, &b[..])].into_iter())
            .unwrap();
        assert_eq!(ram.private_pages().unwrap(), vec![4096, 3 * 4096]);
        let mut buf = [0u8; PAGE];
        ram.read(3 * 4096, &mut buf).unwrap();
        assert_eq!(buf, b);
        // The file itself is unchanged.
        file.read(4096, &mut buf).unwrap();
        assert_eq!(buf, [0u8; PAGE]);
    }

    #[test]
    fn discarded_pages_read_as_the_file_and_are_no_longer_private() {
        let file = MemoryFile::create("discard-test", 16 * 4096).unwrap();
        file.write(2 * 4096, &[9u8; PAGE]).unwrap();
        let ram = GuestRam::map(&file, Sharing::Private).unwrap();
        for gpa in [2 * 4096, 3 * 4096, 4 * 4096] {
            ram.write(gpa, &[1u8; 8]).unwrap();
        }
        ram.discard(&[2 * 4096, 3 * 4096]).unwrap();
        assert_eq!(ram.private_pages().unwrap(), vec![4 * 4096]);
        let mut buf = [0u8; PAGE];
        ram.read(2 * 4096, &mut buf).unwrap();
        assert_eq!(buf, [9u8; PAGE]);
        ram.read(4 * 4096, &mut buf[..8]).unwrap();
        assert_eq!(buf[..8], [1u8; 8]);
        assert!(ram.discard(&[16 * 4096]).is_err());
    }

    #[test]
    fn holes_are_told_apart_from_data() {
        let file = MemoryFile::create("holes-test", 64 * 4096).unwrap();
        file.write(5 * 4096, &[7u8; 10]).unwrap();
        assert!(file.has_data(5).unwrap());
        assert!(!file.has_data(4).unwrap());
        assert!(!file.has_data(63).unwrap());
    }
}
