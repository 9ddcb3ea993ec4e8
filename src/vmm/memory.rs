//! Guest RAM: a memfd holds the template's pages; the template VM maps it
//! shared while it boots, every fork maps it private (copy-on-write), and a
//! recycled fork maps it again over the same address so its KVM slot stays valid
//! while its dirty pages are dropped.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::VmmError;

/// The file holding a template's memory.
#[derive(Debug)]
pub struct Memfd {
    file: File,
    size: usize,
}

impl Memfd {
    /// Creates an empty (all-zero, no pages allocated) memfd of `size` bytes.
    pub fn create(name: &str, size: usize) -> Result<Memfd, VmmError> {
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
        Ok(Memfd { file, size })
    }

    /// Wraps an existing file (a loaded template) of `size` bytes.
    pub fn from_file(file: File, size: usize) -> Memfd {
        Memfd { file, size }
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
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
}

/// How a mapping shares its pages with the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Writes go to the memfd (the template while it boots).
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
    /// Maps the whole memfd.
    pub fn map(memfd: &Memfd, sharing: Sharing) -> Result<GuestRam, VmmError> {
        let addr = map_at(None, memfd, sharing)?;
        // SAFETY: addr..addr+size was just mapped readable and writable, stays
        // mapped until this value drops, and the region does not unmap it.
        let region = unsafe {
            MmapRegion::build_raw(
                addr.as_ptr(),
                memfd.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_NORESERVE | flags(sharing),
            )
        }
        .map_err(|e| VmmError::MapMemory(io::Error::other(e.to_string())))?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(0)).ok_or(VmmError::GuestAddress {
                addr: 0,
                len: memfd.size(),
            })?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| VmmError::MapMemory(io::Error::other(e.to_string())))?;
        Ok(GuestRam {
            addr,
            size: memfd.size(),
            mem,
        })
    }

    /// Makes every page equal to the memfd's again. With at most `in_place`
    /// private pages, their contents are copied back over them: the mapping and
    /// KVM's view of it stay warm, so the next tenant takes no page faults on
    /// them. Beyond that, the memfd is mapped again privately at the same host
    /// address: the private pages are freed and KVM's MMU notifier forgets them.
    /// Returns whether the reset happened in place.
    pub fn reset_private(&self, memfd: &Memfd, in_place: usize) -> Result<bool, VmmError> {
        use std::os::unix::fs::FileExt;
        assert_eq!(memfd.size(), self.size, "a reset keeps the size");
        let io = |e: io::Error| VmmError::MapMemory(e);
        let private = private_page_addrs(self.host_addr(), self.size).map_err(io)?;
        if private.len() > in_place {
            return map_at(Some(self.addr), memfd, Sharing::Private).map(|_| false);
        }
        let mut page = [0u8; 4096];
        for gpa in private {
            memfd.file().read_exact_at(&mut page, gpa).map_err(io)?;
            self.write(gpa, &page)?;
        }
        Ok(true)
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
}

/// Which pages of a mapping of this process are held privately (copied on
/// write), from /proc/self/pagemap: a present page that is neither
/// file-backed nor shared is a private copy.
fn private_page_map(host_addr: u64, size: usize) -> io::Result<Vec<bool>> {
    use std::os::unix::fs::FileExt;
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut buf = vec![0u8; size / 4096 * 8];
    pagemap.read_exact_at(&mut buf, host_addr / 4096 * 8)?;
    const PRESENT: u64 = 1 << 63;
    const FILE_OR_SHARED: u64 = 1 << 61;
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .map(|e| e & PRESENT != 0 && e & FILE_OR_SHARED == 0)
        .collect())
}

/// Guest-physical addresses of the pages of a mapping held privately.
pub fn private_page_addrs(host_addr: u64, size: usize) -> io::Result<Vec<u64>> {
    Ok(private_page_map(host_addr, size)?
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| p.then_some((i * 4096) as u64))
        .collect())
}

/// Counts the pages of a mapping of this process held privately.
pub fn private_pages(host_addr: u64, size: usize) -> io::Result<u64> {
    Ok(private_page_map(host_addr, size)?
        .into_iter()
        .filter(|p| *p)
        .count() as u64)
}

/// Sorted page addresses grouped into (first address, page count) runs of
/// adjacent pages, so each run takes one system call.
fn page_runs(pages: &[u64]) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for &gpa in pages {
        match runs.last_mut() {
            Some((start, count)) if *start + *count as u64 * 4096 == gpa => *count += 1,
            _ => runs.push((gpa, 1)),
        }
    }
    runs
}

/// Pages of `memfd` that hold data (not holes), by SEEK_DATA/SEEK_HOLE.
fn data_pages(memfd: &Memfd) -> io::Result<Vec<bool>> {
    let mut pages = vec![false; memfd.size() / 4096];
    let fd = memfd.file().as_raw_fd();
    let mut at: libc::off_t = 0;
    loop {
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
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        for p in (start as usize / 4096)..(end as usize).div_ceil(4096).min(pages.len()) {
            pages[p] = true;
        }
        at = end;
    }
}

impl GuestRam {
    /// Makes the private copies of `pages` now, leaving their contents as they
    /// are: the host takes the copy-on-write faults here instead of the guest
    /// taking them (and KVM's notifier round) on its first run.
    ///
    /// The pages are populated *writable* (MADV_POPULATE_WRITE), never read
    /// first. A write fault on a page not yet mapped copies it straight into a
    /// private page; reading first would map the memfd's page read-only, and
    /// the write after it must then replace a present PTE, which runs every
    /// MMU notifier registered on this process: one per live VM. Measured
    /// here, that made each precopied page cost ~0.27 us per live VM (1.1 ms
    /// for 4 pages with 1000 VMs alive). On a kernel without
    /// MADV_POPULATE_WRITE (before 5.14) nothing is copied ahead: the guest
    /// takes those faults itself.
    pub fn precopy(&self, pages: &[u64]) -> Result<(), VmmError> {
        for (start, count) in page_runs(pages) {
            let len = count * 4096;
            if start
                .checked_add(len as u64)
                .is_none_or(|end| end > self.size as u64)
            {
                return Err(VmmError::GuestAddress { addr: start, len });
            }
            // SAFETY: the range lies inside this mapping (checked above), which
            // stays mapped while `self` lives; populating changes no contents.
            let r = unsafe {
                libc::madvise(
                    self.addr.as_ptr().add(start as usize).cast(),
                    len,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Ok(());
                }
                return Err(VmmError::MapMemory(e));
            }
        }
        Ok(())
    }

    /// Copies this mapping's contents into `dst` (same size), reading only the
    /// pages that can differ from zero: data pages of `base` (the memfd this
    /// mapping is a private view of) and pages this mapping copied on write.
    /// Returns the number of pages copied.
    pub fn copy_into(&self, base: &Memfd, dst: &Memfd) -> Result<u64, VmmError> {
        use std::os::unix::fs::FileExt;
        let io = |e: io::Error| VmmError::CreateMemory {
            size: dst.size(),
            source: e,
        };
        let private = private_page_map(self.host_addr(), self.size).map_err(io)?;
        let data = data_pages(base).map_err(io)?;
        let mut page = vec![0u8; 4096];
        let mut copied = 0;
        for (i, _) in private
            .iter()
            .zip(&data)
            .enumerate()
            .filter(|(_, (p, d))| **p || **d)
        {
            let gpa = (i * 4096) as u64;
            self.read(gpa, &mut page)?;
            dst.file().write_all_at(&page, gpa).map_err(io)?;
            copied += 1;
        }
        Ok(copied)
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
    memfd: &Memfd,
    sharing: Sharing,
) -> Result<NonNull<u8>, VmmError> {
    let (hint, fixed) = match at {
        Some(p) => (p.as_ptr().cast(), libc::MAP_FIXED),
        None => (std::ptr::null_mut(), 0),
    };
    // SAFETY: maps a file we own; with MAP_FIXED the target range is a mapping
    // owned by the caller's GuestRam, replaced atomically with the same size.
    let p = unsafe {
        libc::mmap(
            hint,
            memfd.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            flags(sharing) | libc::MAP_NORESERVE | fixed,
            memfd.file().as_raw_fd(),
            0,
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
            page_runs(&[0, 4096, 8192, 5 * 4096, 9 * 4096, 10 * 4096]),
            vec![(0, 3), (5 * 4096, 1), (9 * 4096, 2)]
        );
        assert!(page_runs(&[]).is_empty());
    }

    #[test]
    fn precopy_makes_private_copies_with_the_memfd_contents() {
        let memfd = Memfd::create("precopy-test", 16 * 4096).unwrap();
        let shared = GuestRam::map(&memfd, Sharing::Shared).unwrap();
        shared.write(2 * 4096 + 7, b"template").unwrap();
        drop(shared);
        let ram = GuestRam::map(&memfd, Sharing::Private).unwrap();
        ram.precopy(&[2 * 4096, 3 * 4096, 9 * 4096]).unwrap();
        assert_eq!(
            private_page_addrs(ram.host_addr(), ram.size()).unwrap(),
            vec![2 * 4096, 3 * 4096, 9 * 4096]
        );
        let mut buf = [0u8; 8];
        ram.read(2 * 4096 + 7, &mut buf).unwrap();
        assert_eq!(&buf, b"template");
        assert!(ram.precopy(&[16 * 4096]).is_err());
    }
}
