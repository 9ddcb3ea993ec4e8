//! A bounded fuzz run of what the host reads from a guest: every frame
//! decoder of the agent protocol, the mailbox page list and the mailbox
//! reader, fed by proptest with random bytes and with frames that are valid
//! but for a few flipped or cut bytes. Nothing may panic or allocate past the
//! mailbox; a frame that decodes says no more than the mailbox holds.
//!
//! Why property tests rather than cargo-fuzz, and how long they run:
//! tests/common/fuzz.rs.

#[path = "common/fuzz.rs"]
mod fuzz;

use fuzz::fuzz;
use proptest::prelude::*;
use zeroboot::agent::Mailbox;
use zeroboot::vmm::memory::{GuestRam, MemoryFile, Sharing};
use zeroboot_proto::{
    AgentError, Exec, ExitStatus, HEADER_LEN, Header, Kind, MAILBOX_MAX_PAGES, Output, PAGE_SIZE,
    PageList, ReadFile, Ready, Stream, WriteFile, decode_frame, encode_frame,
};

/// A valid frame of each guest kind, as bytes.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (0usize..5, prop::collection::vec(any::<u8>(), 0..600)).prop_map(|(k, data)| {
        let mut buf = vec![0u8; HEADER_LEN + 1024];
        let kind = [
            Kind::Output,
            Kind::Exit,
            Kind::Error,
            Kind::Ready,
            Kind::Output,
        ][k];
        let len = encode_frame(&mut buf, kind, 0, |w| match kind {
            Kind::Output => Output {
                stream: Stream::Stdout,
                data: &data,
            }
            .encode(w),
            _ => w.bytes(&data),
        })
        .expect("the frame fits");
        buf.truncate(len);
        buf
    })
}

/// A valid frame with some bytes flipped and maybe cut short, or random bytes.
fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..700),
        (
            valid_frame(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            prop::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(|(mut f, flips, cut)| {
                for (i, b) in flips {
                    let at = i.index(f.len());
                    f[at] ^= b;
                }
                if let Some(c) = cut {
                    f.truncate(c.index(f.len() + 1));
                }
                f
            }),
    ]
}

/// Every decoder of guest-written bytes, on `bytes` as a payload and as a frame.
fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = Header::decode(bytes);
    if let Ok((header, payload)) = decode_frame(bytes) {
        prop_assert_eq!(payload.len(), header.len as usize);
    }
    let _ = Ready::decode(bytes);
    let _ = Exec::decode(bytes);
    if let Ok(out) = Output::decode(bytes) {
        prop_assert!(out.data.len() <= bytes.len());
    }
    let _ = ExitStatus::decode(bytes);
    let _ = AgentError::decode(bytes);
    let _ = WriteFile::decode(bytes);
    let _ = ReadFile::decode(bytes);
    let mut page = [0u8; PAGE_SIZE];
    let n = bytes.len().min(PAGE_SIZE);
    page[..n].copy_from_slice(&bytes[..n]);
    if let Ok(list) = PageList::decode(&page) {
        prop_assert!(list.count >= 1 && list.count <= MAILBOX_MAX_PAGES);
    }
    Ok(())
}

#[test]
fn guest_frames_never_break_the_decoders() {
    fuzz("decoders", 256, frame_bytes(), |bytes| decode_all(&bytes));
}

/// Guest memory of 64 pages: the page list at page 1, pages named by it,
/// and a frame in the first mailbox page.
const GUEST_PAGES: u64 = 64;

fn mailbox_case() -> impl Strategy<Value = (Vec<u64>, Vec<u8>, Vec<u8>)> {
    (
        // Page numbers, some outside guest memory, some repeated.
        prop::collection::vec(
            prop_oneof![4 => 2u64..GUEST_PAGES, 1 => any::<u64>()],
            0..MAILBOX_MAX_PAGES + 3,
        ),
        // The list's header as a guest might garble it.
        prop::collection::vec(any::<u8>(), 0..16),
        frame_bytes(),
    )
}

#[test]
fn hostile_mailboxes_give_typed_errors_or_bounded_frames() {
    let memfd = MemoryFile::create("fuzz-mailbox", (GUEST_PAGES as usize) * PAGE_SIZE).unwrap();
    let ram = GuestRam::map(&memfd, Sharing::Private).unwrap();
    let page = PAGE_SIZE as u64;
    fuzz("mailbox", 256, mailbox_case(), |(pages, garble, frame)| {
        // A page list as the guest agent writes it, with its first bytes
        // garbled by `garble`.
        let mut list = vec![0u8; PAGE_SIZE];
        let mut valid = PageList {
            count: pages.len().min(MAILBOX_MAX_PAGES),
            pages: [0; MAILBOX_MAX_PAGES],
        };
        for (slot, p) in valid.pages.iter_mut().zip(&pages) {
            *slot = p.wrapping_mul(page);
        }
        valid.encode(&mut list).unwrap();
        // The count as the guest wrote it, which may be too many or none.
        list[4..8].copy_from_slice(&(pages.len() as u32).to_le_bytes());
        for (i, b) in garble.iter().enumerate() {
            list[i] ^= b;
        }
        ram.write(page, &list).unwrap();
        let Ok(mailbox) = Mailbox::register(&ram, 1) else {
            return Ok(());
        };
        if let Some(&first) = pages.first()
            && first < GUEST_PAGES
        {
            let n = frame.len().min(PAGE_SIZE);
            ram.write(first * page, &frame[..n]).unwrap();
        }
        let mut payload = Vec::new();
        if let Ok(header) = mailbox.read(&ram, &mut payload) {
            prop_assert_eq!(payload.len(), header.len as usize);
            prop_assert!(HEADER_LEN + payload.len() <= mailbox.capacity());
        }
        Ok(())
    });
}
