//! The transport of zeroboot's own VMM: a mailbox in guest memory and one
//! port write per message.
//!
//! The agent locks [`MAILBOX_MAX_PAGES`] pages of its own memory, looks up
//! their guest-physical addresses (see [`super::pagemap`]) and tells the host
//! with a [`PageList`] written to one more locked page, whose frame number goes
//! to [`MAILBOX_PORT`]. A frame is then written into the mailbox and handed
//! over by writing its length to [`DOORBELL_PORT`]: the VM exits once, and when
//! the `out` instruction returns the host has put its reply in the mailbox.
//!
//! The pages must keep their physical frames for the agent's lifetime: they are
//! locked (`mlock`), not inherited by children (`MADV_DONTFORK`, so a fork can
//! never turn them copy-on-write), and in the guest compaction is told to leave
//! locked pages alone (`vm.compact_unevictable_allowed = 0`, see `system.rs`).

use super::{Transport, TransportError, pagemap};
use std::io;
use std::ptr::NonNull;
use zeroboot_proto::{
    DOORBELL_PORT, Header, MAILBOX_MAX_PAGES, MAILBOX_PORT, MAILBOX_SIZE, PAGE_SIZE, PageList,
};

/// Anonymous pages locked in memory and hidden from forked children.
struct LockedPages {
    base: NonNull<u8>,
    len: usize,
}

impl LockedPages {
    fn new(count: usize) -> io::Result<LockedPages> {
        let len = count * PAGE_SIZE;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let pages = LockedPages {
            base: NonNull::new(addr.cast()).expect("mmap never returns null on success"),
            len,
        };
        // SAFETY: madvise/mlock on exactly the mapping created above.
        let ok = unsafe {
            libc::madvise(addr, len, libc::MADV_DONTFORK) == 0
                && libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) == 0
                && libc::mlock(addr, len) == 0
        };
        if !ok {
            return Err(io::Error::last_os_error());
        }
        Ok(pages)
    }

    fn addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, and lives
        // as long as `self`; the `&mut self` borrow makes this view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl Drop for LockedPages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no view outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Builds the page list naming `frames` (frame numbers, in mailbox order).
fn page_list(frames: &[u64]) -> PageList {
    let mut pages = [0u64; MAILBOX_MAX_PAGES];
    for (slot, pfn) in pages.iter_mut().zip(frames) {
        *slot = pfn * PAGE_SIZE as u64;
    }
    PageList {
        count: frames.len().min(MAILBOX_MAX_PAGES),
        pages,
    }
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// The process must have permission for `port` (see [`ioperm`]) and the port
/// must belong to zeroboot's VMM, which turns the write into a VM exit.
unsafe fn out32(port: u16, value: u32) {
    // SAFETY: the caller guarantees the port is ours. The asm is not `nomem`,
    // so the compiler finishes every write to the mailbox before it.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack)) };
}

/// Grants this process access to the doorbell and mailbox ports.
fn ioperm() -> io::Result<()> {
    let ports = (MAILBOX_PORT - DOORBELL_PORT + 4) as libc::c_ulong;
    // SAFETY: ioperm takes integers only.
    if unsafe { libc::syscall(libc::SYS_ioperm, DOORBELL_PORT as libc::c_ulong, ports, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The mailbox transport.
pub struct Mailbox {
    pages: LockedPages,
}

impl Mailbox {
    /// Locks the mailbox and its page-list page and resolves their frames.
    fn prepare() -> io::Result<(Mailbox, u64)> {
        let mut pages = LockedPages::new(MAILBOX_MAX_PAGES + 1)?;
        let frames = pagemap::frames(pages.addr(), MAILBOX_MAX_PAGES + 1)?;
        let list_page = &mut pages.bytes()[MAILBOX_SIZE..];
        page_list(&frames[..MAILBOX_MAX_PAGES])
            .encode(list_page)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok((Mailbox { pages }, frames[MAILBOX_MAX_PAGES]))
    }

    /// Sets up the mailbox and registers it with the host. Only valid inside
    /// zeroboot's VMM: elsewhere the port write goes to whatever owns the port.
    pub fn register() -> io::Result<Mailbox> {
        let (mailbox, list_frame) = Mailbox::prepare()?;
        let list_frame = u32::try_from(list_frame)
            .map_err(|_| io::Error::other("page-list frame number exceeds 32 bits"))?;
        ioperm()?;
        // SAFETY: ioperm granted the port; we run in zeroboot's VMM (caller's contract).
        unsafe { out32(MAILBOX_PORT, list_frame) };
        Ok(mailbox)
    }
}

impl Transport for Mailbox {
    fn buf(&mut self) -> &mut [u8] {
        &mut self.pages.bytes()[..MAILBOX_SIZE]
    }

    fn exchange(&mut self, len: usize) -> Result<Header, TransportError> {
        let len = u32::try_from(len).expect("frames fit the mailbox");
        // SAFETY: register() obtained the port permission in zeroboot's VMM.
        unsafe { out32(DOORBELL_PORT, len) };
        let reply = Header::decode(self.buf()).map_err(TransportError::Wire)?;
        if reply.kind.is_from_guest() {
            return Err(TransportError::NoHost);
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_list_names_frame_addresses_in_order() {
        let list = page_list(&[5, 9, 1]);
        assert_eq!(list.count, 3);
        assert_eq!(&list.pages[..3], &[5 * 4096, 9 * 4096, 4096]);
        let mut page = [0u8; PAGE_SIZE];
        list.encode(&mut page).unwrap();
        assert_eq!(PageList::decode(&page).unwrap(), list);
    }

    /// Everything but the port writes, on the host: needs root for the frames.
    #[test]
    fn prepare_locks_pages_and_writes_a_decodable_list() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: frame numbers need root");
            return;
        }
        let (mut mailbox, list_frame) = Mailbox::prepare().unwrap();
        assert_ne!(list_frame, 0);
        let list = PageList::decode(&mailbox.pages.bytes()[MAILBOX_SIZE..]).unwrap();
        assert_eq!(list.count, MAILBOX_MAX_PAGES);
        assert!(list.pages.iter().all(|&gpa| gpa != 0 && gpa % 4096 == 0));
        assert_eq!(mailbox.buf().len(), MAILBOX_SIZE);
    }
}
