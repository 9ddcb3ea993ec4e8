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

    /// Checks a mailbox read from a template file against guest memory of
    /// `memory_bytes`, as registration checked the guest's page list.
    pub fn check(&self, memory_bytes: usize) -> Result<(), String> {
        if self.count == 0 || self.count > zeroboot_proto::MAILBOX_MAX_PAGES {
            return Err(format!(
                "{} pages (1 to {})",
                self.count,
                zeroboot_proto::MAILBOX_MAX_PAGES
            ));
        }
        match self.pages[..self.count]
            .iter()
            .find(|&&gpa| !gpa.is_multiple_of(PAGE_SIZE as u64) || gpa >= memory_bytes as u64)
        {
            Some(gpa) => Err(format!("page {gpa:#x} is not a page of guest memory")),
            None => Ok(()),
        }
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
            return Err(AgentError::RequestTooLarge {
                bytes: frame.len(),
                limit: self.capacity(),
            });
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

#[cfg(test)]
mod tests {
    use zeroboot_proto::{Kind, MAILBOX_MAX_PAGES, Output, Stream, encode_frame};

    use super::*;
    use crate::vmm::memory::{MemoryFile, Sharing};

    const LIST: u64 = 0x1000;

    fn ram() -> (MemoryFile, GuestRam) {
        let memfd = MemoryFile::create("mailbox-test", 1 << 20).unwrap();
        let ram = GuestRam::map(&memfd, Sharing::Private).unwrap();
        (memfd, ram)
    }

    fn register(ram: &GuestRam, pages: &[u64]) -> Result<Mailbox, AgentError> {
        let mut list = PageList {
            count: pages.len(),
            pages: [0; MAILBOX_MAX_PAGES],
        };
        list.pages[..pages.len()].copy_from_slice(pages);
        let mut page = [0u8; PAGE_SIZE];
        list.encode(&mut page).unwrap();
        ram.write(LIST, &page).unwrap();
        Mailbox::register(ram, (LIST / PAGE_SIZE as u64) as u32)
    }

    #[test]
    fn pages_outside_guest_memory_are_refused() {
        let (_m, ram) = ram();
        assert!(matches!(
            register(&ram, &[0x10_0000]),
            Err(AgentError::Protocol(_))
        ));
        assert!(matches!(
            Mailbox::register(&ram, 0x00ff_ffff),
            Err(AgentError::Protocol(_))
        ));
    }

    #[test]
    fn mailboxes_from_files_are_range_checked() {
        let (_m, ram) = ram();
        let mb = register(&ram, &[0x5000, 0x3000]).unwrap();
        assert_eq!(mb.check(1 << 20), Ok(()));
        assert!(mb.check(0x4000).is_err(), "a page beyond memory");
        let mut bad = mb;
        bad.count = usize::MAX;
        assert!(bad.check(1 << 20).is_err(), "a count beyond the page list");
        let mut bad = mb;
        bad.count = 0;
        assert!(bad.check(1 << 20).is_err());
        let mut bad = mb;
        bad.pages[1] = 0x3001;
        assert!(bad.check(1 << 20).is_err(), "an unaligned page");
    }

    #[test]
    fn frames_cross_scattered_pages() {
        let (_m, ram) = ram();
        let mb = register(&ram, &[0x5000, 0x3000]).unwrap();
        let data = vec![7u8; 6000];
        let mut frame = vec![0u8; 8192];
        let n = encode_frame(&mut frame, Kind::Output, 0, |w| {
            Output {
                stream: Stream::Stderr,
                data: &data,
            }
            .encode(w)
        })
        .unwrap();
        mb.write(&ram, &frame[..n]).unwrap();
        let mut payload = Vec::new();
        let header = mb.read(&ram, &mut payload).unwrap();
        assert_eq!(header.kind, Kind::Output);
        assert_eq!(Output::decode(&payload).unwrap().data, &data[..]);
    }

    #[test]
    fn hostile_frames_are_rejected() {
        let (_m, ram) = ram();
        let mb = register(&ram, &[0x5000]).unwrap();
        let mut payload = Vec::new();
        // Longer than the one-page mailbox.
        let mut frame = [0u8; 16];
        encode_frame(&mut frame, Kind::Output, 0, |_| Ok(())).unwrap();
        frame[8..12].copy_from_slice(&5000u32.to_le_bytes());
        mb.write(&ram, &frame).unwrap();
        assert!(matches!(
            mb.read(&ram, &mut payload),
            Err(AgentError::Protocol(_))
        ));
        // A kind only the host may send.
        encode_frame(&mut frame, Kind::Resume, 0, |_| Ok(())).unwrap();
        mb.write(&ram, &frame).unwrap();
        assert!(matches!(
            mb.read(&ram, &mut payload),
            Err(AgentError::Protocol(_))
        ));
        // Garbage.
        mb.write(&ram, b"NOT A FRAME AT A").unwrap();
        assert!(matches!(
            mb.read(&ram, &mut payload),
            Err(AgentError::Protocol(_))
        ));
        // Too large to send.
        assert!(matches!(
            mb.write(&ram, &[0u8; 4097]),
            Err(AgentError::RequestTooLarge {
                bytes: 4097,
                limit: 4096
            })
        ));
    }
}
