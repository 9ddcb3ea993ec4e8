//! The agent protocol's wire format: one definition for the host, the bare guest
//! and the Linux agent, so the three cannot drift apart.
//!
//! A frame is a 16-byte header (`magic`, `kind`, `len`, `flags`, little-endian
//! `u32`s) followed by `len` payload bytes. In zeroboot's own VMM a frame lives in
//! the guest's mailbox and one port write (the doorbell) hands it over: one VM
//! exit per message, whatever its size. Over a byte stream (a serial port under
//! another VMM, or a pipe in tests) the same bytes are sent back to back.
//!
//! The mailbox is memory the guest chooses: before its first frame the guest
//! writes a [`PageList`] into one page and writes that page's frame number to
//! [`MAILBOX_PORT`]. The bare guest names pages of its own image; the Linux agent
//! names locked pages of its own address space (found through
//! `/proc/self/pagemap`), so neither needs `/dev/mem` or a reserved region.
//!
//! The conversation is strictly alternating. The guest announces [`Kind::Ready`]
//! once; the host then sends a request ([`Kind::Exec`], files) and the guest
//! answers with zero or more [`Kind::Output`] frames — each acknowledged by a
//! [`Kind::Resume`] from the host — and exactly one final frame
//! ([`Kind::Exit`], [`Kind::CodeEnd`], [`Kind::FileData`], [`Kind::Contexts`],
//! [`Kind::Done`] or [`Kind::Error`]).
//! A file larger than one frame moves as a run of such exchanges, one chunk
//! each (see [`WriteFile`] and [`ReadFile`]), inside one host conversation.
//!
//! The crate has no `std` and no allocator: the bare guest links it too. Payloads
//! are built with [`Writer`] and parsed with [`Reader`], which never panic on
//! hostile input.
#![no_std]

mod code;
mod codec;
mod messages;
mod net;

pub use code::*;
pub use codec::{Reader, WireError, Writer};
pub use messages::*;
pub use net::{
    NET_ACTIVE, NET_MODULE_DIR, NetLink, NetUp, TAP_NET_MODULES, VIRTIO_NET_MODULES,
    decode_frame_list, module_depends,
};

/// Page size the mailbox is made of.
pub const PAGE_SIZE: usize = 4096;
/// Most pages a mailbox may have.
pub const MAILBOX_MAX_PAGES: usize = 16;
/// Size of the largest mailbox: the largest frame, header included.
pub const MAILBOX_SIZE: usize = MAILBOX_MAX_PAGES * PAGE_SIZE;
/// I/O port whose write tells the host "a frame is in the mailbox".
pub const DOORBELL_PORT: u16 = 0x0b00;
/// I/O port that takes (as a 32-bit write) the frame number of a [`PageList`] page.
pub const MAILBOX_PORT: u16 = 0x0b04;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// The largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = MAILBOX_SIZE - HEADER_LEN;
/// `"ZBF1"`: marks a frame header and its version.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ZBF1");
/// Protocol version announced in [`Ready`].
pub const VERSION: u32 = 1;

/// Modules the Linux agent's Python zygote imports before the snapshot
/// (comma-separated, the zygote's argument). Here because the guest image's
/// minimal standard library is built around them: the image builder keeps
/// every module they import, so the list cannot drift from the image.
pub const PYTHON_PRELOAD: &str = "os,sys,json,random,re,math,collections,itertools,functools,datetime,time,string,base64,hashlib,struct,io,traceback,types";

/// Frame kinds. Host-to-guest kinds are below 0x80, guest-to-host at or above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Host: run a program ([`ExecHeader`] payload).
    Exec = 0x01,
    /// Host: continue after an [`Kind::Output`] frame; `flags` may carry [`RESUME_STOP_OUTPUT`].
    Resume = 0x02,
    /// Host: write one chunk of a file ([`WriteFile`] payload; flags
    /// [`FILE_CONTINUE`], [`FILE_MORE`]).
    WriteFile = 0x03,
    /// Host: read one chunk of a file ([`ReadFile`] payload; flag [`FILE_CONTINUE`]).
    ReadFile = 0x04,
    /// Host: bring the network interface up ([`NetUp`] payload).
    NetUp = 0x05,
    /// Host: frames for the guest's TAP device, answering
    /// [`Kind::GuestFrames`] (a frame list, see [`encode_frame_list`]; flag
    /// [`NET_ACTIVE`]).
    NetFrames = 0x06,
    /// Host: run code with notebook semantics ([`RunCode`] payload); answered
    /// like an exec, but the final frame is [`Kind::CodeEnd`].
    RunCode = 0x07,
    /// Host: list the persistent contexts (no payload); answered by [`Kind::Contexts`].
    ListContexts = 0x08,
    /// Guest: booted and waiting for work ([`Ready`] payload).
    Ready = 0x81,
    /// Guest: a chunk of output (stream id, then bytes).
    Output = 0x82,
    /// Guest: the program ended ([`ExitStatus`] payload).
    Exit = 0x83,
    /// Guest: the request failed inside the agent (code, message).
    Error = 0x84,
    /// Guest: one chunk of a file read (raw bytes; flag [`FILE_MORE`]).
    FileData = 0x85,
    /// Guest: a request without output succeeded.
    Done = 0x86,
    /// Guest: frames its TAP device sent, during an exec (a frame list).
    GuestFrames = 0x87,
    /// Guest: a [`Kind::RunCode`] ended ([`CodeEnd`] payload).
    CodeEnd = 0x88,
    /// Guest: the persistent contexts ([`ContextList`] payload).
    Contexts = 0x89,
}

impl Kind {
    /// Decodes a kind, rejecting unknown values.
    pub fn from_u32(v: u32) -> Result<Kind, WireError> {
        Ok(match v {
            0x01 => Kind::Exec,
            0x02 => Kind::Resume,
            0x03 => Kind::WriteFile,
            0x04 => Kind::ReadFile,
            0x05 => Kind::NetUp,
            0x06 => Kind::NetFrames,
            0x07 => Kind::RunCode,
            0x08 => Kind::ListContexts,
            0x81 => Kind::Ready,
            0x82 => Kind::Output,
            0x83 => Kind::Exit,
            0x84 => Kind::Error,
            0x85 => Kind::FileData,
            0x86 => Kind::Done,
            0x87 => Kind::GuestFrames,
            0x88 => Kind::CodeEnd,
            0x89 => Kind::Contexts,
            other => return Err(WireError::UnknownKind(other)),
        })
    }

    /// True for kinds only a guest may send.
    pub fn is_from_guest(self) -> bool {
        self as u32 >= 0x80
    }
}

/// `Resume` flag: the host has enough output; stop sending more and finish.
pub const RESUME_STOP_OUTPUT: u32 = 1;

/// `WriteFile`/`ReadFile` flag: this chunk continues the transfer the
/// previous request started (same path); without it a new transfer starts and
/// any unfinished one is abandoned (an unfinished write leaves no file).
pub const FILE_CONTINUE: u32 = 1;
/// `WriteFile` flag: more chunks follow, so do not make the file visible yet.
/// `FileData` flag: the chunk was full and the file may go on; ask for more.
pub const FILE_MORE: u32 = 2;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub kind: Kind,
    /// Payload length in bytes (at most [`MAX_PAYLOAD`]).
    pub len: u32,
    /// Kind-specific flags.
    pub flags: u32,
}

impl Header {
    /// Encodes the header into its 16 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&(self.kind as u32).to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out
    }

    /// Decodes and validates a header: magic, known kind, length within bounds.
    pub fn decode(bytes: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader::new(bytes);
        if r.u32()? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let kind = Kind::from_u32(r.u32()?)?;
        let len = r.u32()?;
        if len as usize > MAX_PAYLOAD {
            return Err(WireError::TooLong(len));
        }
        let flags = r.u32()?;
        Ok(Header { kind, len, flags })
    }
}

/// Writes a whole frame (header + payload built by `body`) into `buf`, returning
/// the frame's total length.
pub fn encode_frame(
    buf: &mut [u8],
    kind: Kind,
    flags: u32,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<usize, WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let (head, rest) = buf.split_at_mut(HEADER_LEN);
    let limit = rest.len().min(MAX_PAYLOAD);
    let mut w = Writer::new(&mut rest[..limit]);
    body(&mut w)?;
    let len = w.position();
    head.copy_from_slice(
        &Header {
            kind,
            len: len as u32,
            flags,
        }
        .encode(),
    );
    Ok(HEADER_LEN + len)
}

/// The length of the frame `body` would build, header included, whatever
/// its size (nothing is stored).
pub fn frame_len(
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<usize, WireError> {
    let mut w = Writer::counting();
    body(&mut w)?;
    Ok(HEADER_LEN + w.position())
}

/// Splits a buffer holding a frame into its validated header and payload.
pub fn decode_frame(buf: &[u8]) -> Result<(Header, &[u8]), WireError> {
    let header = Header::decode(buf)?;
    let end = HEADER_LEN + header.len as usize;
    let payload = buf.get(HEADER_LEN..end).ok_or(WireError::Truncated)?;
    Ok((header, payload))
}

/// `"ZBML"`: marks a [`PageList`] page.
pub const PAGE_LIST_MAGIC: u32 = u32::from_le_bytes(*b"ZBML");

/// The guest-physical pages that make up a mailbox, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageList {
    /// Number of valid entries in `pages`.
    pub count: usize,
    /// Page-aligned guest-physical addresses.
    pub pages: [u64; MAILBOX_MAX_PAGES],
}

impl PageList {
    /// Encodes the list into the start of a page.
    pub fn encode(&self, page: &mut [u8]) -> Result<usize, WireError> {
        let mut w = Writer::new(page);
        w.u32(PAGE_LIST_MAGIC)?;
        w.u32(self.count as u32)?;
        for gpa in &self.pages[..self.count] {
            w.u64(*gpa)?;
        }
        Ok(w.position())
    }

    /// Decodes and validates a list: magic, 1..=16 entries, each page-aligned.
    pub fn decode(page: &[u8]) -> Result<PageList, WireError> {
        let mut r = Reader::new(page);
        if r.u32()? != PAGE_LIST_MAGIC {
            return Err(WireError::BadMagic);
        }
        let count = r.u32()? as usize;
        if count == 0 || count > MAILBOX_MAX_PAGES {
            return Err(WireError::BadValue);
        }
        let mut pages = [0u64; MAILBOX_MAX_PAGES];
        for slot in &mut pages[..count] {
            let gpa = r.u64()?;
            if gpa % PAGE_SIZE as u64 != 0 {
                return Err(WireError::BadValue);
            }
            *slot = gpa;
        }
        Ok(PageList { count, pages })
    }

    /// Mailbox capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.count * PAGE_SIZE
    }
}

#[cfg(test)]
mod tests;
