//! Guest side of the mailbox transport: frames are written in place and handed
//! over with one port write; when that write returns, the host's answer is there.

use zeroboot_proto::{
    AgentError, AgentErrorCode, HEADER_LEN, Header, Kind, MAILBOX_MAX_PAGES, MAILBOX_PORT,
    MAILBOX_SIZE, PAGE_SIZE, PageList, WireError, Writer, decode_frame, encode_frame,
};

use crate::cell::Global;
use crate::rt::{doorbell, outl};

static MAILBOX: Global<[u8; MAILBOX_SIZE]> = Global::new([0; MAILBOX_SIZE]);
static PAGE_LIST: Global<[u8; PAGE_SIZE]> = Global::new([0; PAGE_SIZE]);
/// Where a request is copied before the mailbox is reused for the answer.
static REQUEST: Global<[u8; MAILBOX_SIZE]> = Global::new([0; MAILBOX_SIZE]);

/// The guest's end of the channel (one per program).
pub struct Channel(());

impl Channel {
    /// Tells the host where the mailbox is. The guest is identity-mapped, so a
    /// virtual address is the guest-physical one.
    pub fn open() -> Channel {
        let base = MAILBOX.ptr() as u64;
        let mut pages = [0u64; MAILBOX_MAX_PAGES];
        for (i, p) in pages.iter_mut().enumerate() {
            *p = base + (i * PAGE_SIZE) as u64;
        }
        let list = PageList {
            count: MAILBOX_MAX_PAGES,
            pages,
        };
        // SAFETY: no other reference to PAGE_LIST exists.
        let page = unsafe { PAGE_LIST.get() };
        if list.encode(page).is_err() {
            crate::rt::crash();
        }
        outl(
            MAILBOX_PORT,
            (PAGE_LIST.ptr() as u64 / PAGE_SIZE as u64) as u32,
        );
        Channel(())
    }

    /// The mailbox bytes.
    #[allow(clippy::mut_from_ref)]
    pub fn mailbox(&self) -> &mut [u8; MAILBOX_SIZE] {
        // SAFETY: callers use the mailbox strictly in turn (build a frame, ring,
        // read the answer) and never hold two borrows at once.
        unsafe { MAILBOX.get() }
    }

    /// Encodes a frame in the mailbox and rings the doorbell.
    pub fn send(&self, kind: Kind, body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>) {
        self.send_flags(kind, 0, body);
    }

    /// [`Channel::send`] with header flags.
    pub fn send_flags(
        &self,
        kind: Kind,
        flags: u32,
        body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
    ) {
        if encode_frame(self.mailbox(), kind, flags, body).is_err() {
            crate::rt::crash();
        }
        self.ring();
    }

    /// Hands the mailbox to the host; returns once the host has answered.
    pub fn ring(&self) {
        doorbell();
    }

    /// Sends an agent error as the final frame.
    pub fn send_error(&self, code: AgentErrorCode, message: &[u8]) {
        self.send(Kind::Error, |w| AgentError { code, message }.encode(w));
    }

    /// Copies the host's frame out of the mailbox and decodes it.
    pub fn take_request(&self) -> Result<(Header, &'static [u8]), WireError> {
        let mailbox = self.mailbox();
        let (header, _) = decode_frame(mailbox)?;
        let len = HEADER_LEN + header.len as usize;
        // SAFETY: REQUEST is only borrowed here and by the returned slice, which
        // lives until the next call, made after the request was fully served.
        let copy = unsafe { REQUEST.get() };
        copy[..len].copy_from_slice(&mailbox[..len]);
        decode_frame(&copy[..len])
    }

    /// Reads the header flags of the host's answer to an output frame.
    pub fn resume_flags(&self) -> u32 {
        match decode_frame(self.mailbox()) {
            Ok((h, _)) if h.kind == Kind::Resume => h.flags,
            _ => crate::rt::crash(),
        }
    }
}
