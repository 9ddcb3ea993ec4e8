//! Whole pages in anonymous memory of the worker's own: what a branch changed
//! ([`PageStore`]), and the spans of populated memory it is made of
//! ([`Pages`]).
//!
//! A span is populated (every page faulted in, writable) when it is made,
//! with one `MADV_POPULATE_WRITE` rather than a fault per page: on a host
//! that is itself a guest, each first touch of a page costs an exit to the
//! host's hypervisor (~1 us), as much as copying the page. A span outlives
//! the store it backed when its owner keeps it for the next store (the
//! engine's page reserve), so a capture that finds one ready copies and
//! nothing else. Spans are plain address ranges: adjacent ones join (a range
//! may cross the boundary of two mappings), any part can be split off and
//! unmapped alone.

use std::io;
use std::ptr::NonNull;

use super::VmmError;
use super::memory::PAGE;

/// Populated, writable anonymous pages at one address range, unmapped when
/// dropped. Their contents are whatever was last written there.
pub struct Pages {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the range is owned by this value alone; nothing else maps or frees it.
unsafe impl Send for Pages {}
// SAFETY: shared references only hand out the address; reads and writes go
// through the `PageStore` that owns the value.
unsafe impl Sync for Pages {}

impl Pages {
    /// `len` new pages (at least one), populated now.
    pub fn populate(len: usize) -> Result<Pages, VmmError> {
        let len = len.max(1);
        let bytes = len * PAGE;
        // SAFETY: a new anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(VmmError::CreateMemory {
                size: bytes,
                source: io::Error::last_os_error(),
            });
        }
        // Fault the pages in with one call rather than one fault each (they
        // are about to be written); a kernel without it faults them one by one.
        // SAFETY: advice on the mapping just made; its contents stay zero.
        unsafe { libc::madvise(p, bytes, libc::MADV_POPULATE_WRITE) };
        Ok(Pages {
            addr: NonNull::new(p.cast()).expect("mmap never returns NULL on success"),
            len,
        })
    }

    /// No pages (nothing to unmap).
    pub fn empty() -> Pages {
        Pages {
            addr: NonNull::dangling(),
            len: 0,
        }
    }

    /// Pages in the span.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a span of no pages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the span.
    pub fn bytes(&self) -> usize {
        self.len * PAGE
    }

    /// Where the span starts.
    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    fn end(&self) -> usize {
        self.addr() + self.bytes()
    }

    /// Splits the span at page `at`: `self` keeps the pages before it, the
    /// rest is returned.
    pub fn split_off(&mut self, at: usize) -> Pages {
        if at >= self.len {
            return Pages::empty();
        }
        // SAFETY: `at < len`, so the address lies inside the span.
        let tail = unsafe { self.addr.add(at * PAGE) };
        let rest = Pages {
            addr: tail,
            len: self.len - at,
        };
        self.len = at;
        rest
    }

    /// Joins `other` to this span when it starts where this one ends (or
    /// ends where it starts); gives it back otherwise.
    pub fn join(&mut self, other: Pages) -> Result<(), Pages> {
        if other.is_empty() {
            return Ok(());
        }
        if self.is_empty() {
            *self = other;
            return Ok(());
        }
        let start = if other.addr() == self.end() {
            self.addr
        } else if other.end() == self.addr() {
            other.addr
        } else {
            return Err(other);
        };
        self.addr = start;
        self.len += other.len;
        std::mem::forget(other);
        Ok(())
    }

    fn page_ptr(&self, slot: usize) -> *mut u8 {
        // SAFETY: callers pass slot <= len: within or one past the span.
        unsafe { self.addr.as_ptr().add(slot * PAGE) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: this value owns the range of `len` pages.
            unsafe { libc::munmap(self.addr.as_ptr().cast(), self.bytes()) };
        }
    }
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pages({:#x}, {} pages)", self.addr(), self.len)
    }
}

/// Pages kept one after another in a span: what a branch changed. Slots
/// below `len` hold stored pages and are never written again.
pub struct PageStore {
    pages: Pages,
    len: usize,
}

impl PageStore {
    /// Room for `capacity` pages in a new span.
    pub fn with_capacity(capacity: usize) -> Result<PageStore, VmmError> {
        Ok(PageStore::in_pages(Pages::populate(capacity)?))
    }

    /// An empty store in `pages` (whatever they hold is overwritten slot by
    /// slot before it can be read).
    pub fn in_pages(pages: Pages) -> PageStore {
        PageStore { pages, len: 0 }
    }

    /// Pages stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the stored pages hold.
    pub fn bytes(&self) -> usize {
        self.len * PAGE
    }

    /// Appends a page; returns its slot.
    pub fn push(&mut self, page: &[u8]) -> usize {
        self.spare().copy_from_slice(page);
        self.keep()
    }

    /// The next free slot, to be filled in place and then kept with
    /// [`PageStore::keep`] (or left for the next page).
    pub fn spare(&mut self) -> &mut [u8] {
        assert!(self.len < self.pages.len(), "page store is full");
        // SAFETY: slot `len` lies inside the span (checked above), which is
        // exclusively borrowed through `self` for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.pages.page_ptr(self.len), PAGE) }
    }

    /// Keeps the spare slot's page; returns its slot.
    pub fn keep(&mut self) -> usize {
        assert!(self.len < self.pages.len(), "page store is full");
        self.len += 1;
        self.len - 1
    }

    /// The unused tail of the span, split off (to be reused or unmapped).
    pub fn shrink(&mut self) -> Pages {
        self.pages.split_off(self.len.max(1))
    }

    /// The whole span, leaving the store empty (its pages unreadable).
    pub fn take_pages(&mut self) -> Pages {
        self.len = 0;
        std::mem::replace(&mut self.pages, Pages::empty())
    }

    /// The page in `slot`.
    pub fn page(&self, slot: usize) -> &[u8] {
        assert!(slot < self.len, "slot {slot} of {}", self.len);
        // SAFETY: the slot was written by `push`/`spare`, lies inside the
        // span, and is never written again while shared.
        unsafe { std::slice::from_raw_parts(self.pages.page_ptr(slot), PAGE) }
    }
}

impl std::fmt::Debug for PageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageStore({} pages)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_spans_join_again_in_either_order() {
        let mut a = Pages::populate(8).unwrap();
        let start = a.addr();
        let mut b = a.split_off(3);
        let c = b.split_off(2);
        assert_eq!((a.len(), b.len(), c.len()), (3, 2, 3));
        assert_eq!(b.addr(), start + 3 * PAGE);
        // Not adjacent: given back whole.
        let c = a.join(c).unwrap_err();
        b.join(c).unwrap();
        b.join(a).unwrap();
        assert_eq!((b.addr(), b.len()), (start, 8));
        assert!(b.split_off(8).is_empty());
    }

    #[test]
    fn a_page_store_keeps_what_was_pushed() {
        let mut store = PageStore::with_capacity(8).unwrap();
        let slot = store.push(&[9u8; PAGE]);
        store.push(&[3u8; PAGE]);
        assert_eq!(store.shrink().len(), 6);
        assert_eq!(store.len(), 2);
        assert_eq!(store.page(slot), &[9u8; PAGE][..]);
        assert_eq!(store.bytes(), 2 * PAGE);
    }

    #[test]
    fn a_store_in_used_pages_shows_only_what_it_stored() {
        let mut old = PageStore::with_capacity(4).unwrap();
        old.push(&[7u8; PAGE]);
        let mut store = PageStore::in_pages(old.take_pages());
        assert!(old.is_empty());
        assert_eq!(store.push(&[1u8; PAGE]), 0);
        assert!(store.page(0).iter().all(|&b| b == 1));
        let tail = store.shrink();
        assert_eq!((tail.len(), store.pages.len()), (3, 1));
    }
}
