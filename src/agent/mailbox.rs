//! The guest's mailbox as the host sees it: up to 16 guest pages, named by the
//! guest, validated once at registration and read and written page by page.

use zeroboot_proto::{HEADER_LEN, Header, PAGE_SIZE, PageList};

use super::AgentError;
use crate::vmm::memory::GuestRam;

/// A registered mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mailbox {
    pages: [u64; zeroboot_proto::MAILBOX_MAX_PAGES],
    count: usize,
}

impl Mailbox {
    /// Reads and validates the page list the guest put at frame `pfn`.
    pub fn register(ram: &GuestRam, pfn: u32) -> Result<Mailbox, AgentError> {
        let mut page = [0u8; PAGE_SIZE];
        let list_gpa = u64::from(pfn) * PAGE_SIZE as u64;
        ram.read(list_gpa, &mut page).map_err(|_| {
            AgentError::Protocol(format!(
                "mailbox page list at {list_gpa:#x} is outside guest memory"
            ))
        })?;
        let list = PageList::decode(&page)?;
        for &gpa in &list.pages[..list.count] {
            if gpa + PAGE_SIZE as u64 > ram.size() as u64 {
                return Err(AgentError::Protocol(format!(
                    "mailbox page {gpa:#x} is outside guest memory"
                )));
            }
        }
        Ok(Mailbox {
            pages: list.pages,
            count: list.count,
        })
    }

    /// Bytes the mailbox holds.
    pub fn capacity(&self) -> usize {
        self.count * PAGE_SIZE
    }

    /// Walks `len` bytes from the mailbox start as (gpa, offset-in-buffer, len) pieces.
    fn pieces(&self, len: usize) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        (0..len.div_ceil(PAGE_SIZE)).map(move |i| {
            let at = i * PAGE_SIZE;
            (self.pages[i], at, (len - at).min(PAGE_SIZE))
        })
    }

    /// Writes a whole frame for the guest to read.
    pub fn write(&self, ram: &GuestRam, frame: &[u8]) -> Result<(), AgentError> {
        if frame.len() > self.capacity() {
            return Err(AgentError::RequestTooLarge(frame.len()));
        }
        for (gpa, at, n) in self.pieces(frame.len()) {
            ram.write(gpa, &frame[at..at + n])?;
        }
        Ok(())
    }

    /// Reads and validates the guest's frame; the payload lands in `payload`.
    pub fn read(&self, ram: &GuestRam, payload: &mut Vec<u8>) -> Result<Header, AgentError> {
        let mut head = [0u8; HEADER_LEN];
        ram.read(self.pages[0], &mut head)?;
        let header = Header::decode(&head)?;
        if !header.kind.is_from_guest() {
            return Err(AgentError::Protocol(format!(
                "guest sent a host-only frame {:?}",
                header.kind
            )));
        }
        let total = HEADER_LEN + header.len as usize;
        if total > self.capacity() {
            return Err(AgentError::Protocol(format!(
                "frame of {total} bytes overruns the mailbox"
            )));
        }
        let mut frame = vec![0u8; total];
        for (gpa, at, n) in self.pieces(total) {
            ram.read(gpa, &mut frame[at..at + n])?;
        }
        payload.clear();
        payload.extend_from_slice(&frame[HEADER_LEN..]);
        Ok(header)
    }
}
