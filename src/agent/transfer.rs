//! Files larger than one frame: the host's side of a chunked transfer. One
//! conversation moves a whole file as a run of one-chunk exchanges (one VM
//! exit each, never one per byte). Every reply is checked against what was
//! asked, so a guest that answers more than requested, or claims "more" with
//! a short chunk, is a protocol error: never an unbounded allocation or an
//! endless loop.

use std::ops::Range;

use zeroboot_proto::{FILE_CONTINUE, FILE_MORE, HEADER_LEN, Header, Kind, ReadFile, WriteFile};

use super::conversation::{agent_error, round_trip};
use super::request::encode;
use super::{AgentError, Mailbox};
use crate::vmm::Vm;

/// Where file chunks travel: a VM's mailbox, or a byte stream to an agent
/// running as a process (the Linux agent's tests use the same transfer code).
pub trait FrameLink {
    /// Largest frame the guest takes, header included.
    fn capacity(&self) -> usize;
    /// Sends `frame` and waits for the guest's answer; its payload lands in `reply`.
    fn round_trip(&mut self, frame: &[u8], reply: &mut Vec<u8>) -> Result<Header, AgentError>;
}

/// A VM stopped at its doorbell, and the mailbox its guest registered.
pub struct VmLink<'a> {
    /// The VM (run on its own thread).
    pub vm: &'a mut Vm,
    /// The guest's mailbox.
    pub mailbox: &'a Mailbox,
}

impl FrameLink for VmLink<'_> {
    fn capacity(&self) -> usize {
        self.mailbox.capacity()
    }

    fn round_trip(&mut self, frame: &[u8], reply: &mut Vec<u8>) -> Result<Header, AgentError> {
        round_trip(self.vm, self.mailbox, frame, reply)
    }
}

/// Sends a request answered by one frame of kind `expect`; returns that
/// frame's header flags (its payload is in `reply`).
pub(super) fn request(
    link: &mut dyn FrameLink,
    frame: &[u8],
    expect: Kind,
    reply: &mut Vec<u8>,
) -> Result<u32, AgentError> {
    let header = link.round_trip(frame, reply)?;
    match header.kind {
        k if k == expect => Ok(header.flags),
        Kind::Error => Err(agent_error(reply)),
        other => Err(AgentError::Protocol(format!(
            "expected {expect:?}, got {other:?}"
        ))),
    }
}

/// One WriteFile frame of a transfer: which bytes, with which header flags.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chunk {
    range: Range<usize>,
    flags: u32,
}

/// Splits `total` bytes into chunks of at most `per` bytes (`per` > 0). An
/// empty file is one empty chunk, so the agent still creates it.
fn write_chunks(total: usize, per: usize) -> impl Iterator<Item = Chunk> {
    let count = total.div_ceil(per).max(1);
    (0..count).map(move |i| {
        let start = i * per;
        let end = (start + per).min(total);
        let continues = if i > 0 { FILE_CONTINUE } else { 0 };
        let more = if end < total { FILE_MORE } else { 0 };
        Chunk {
            range: start..end,
            flags: continues | more,
        }
    })
}

/// Writes `data` to `path` in the guest with permission bits `mode`, in as
/// many chunks as the guest's mailbox needs.
pub fn write_file(
    link: &mut dyn FrameLink,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<(), AgentError> {
    let per = (link.capacity() - HEADER_LEN)
        .checked_sub(WriteFile::OVERHEAD + path.len())
        .filter(|&n| n > 0)
        .ok_or(AgentError::RequestTooLarge {
            // The smallest frame that carries a byte of the file.
            bytes: HEADER_LEN + WriteFile::OVERHEAD + path.len() + 1,
            limit: link.capacity(),
        })?;
    let mut reply = Vec::new();
    for chunk in write_chunks(data.len(), per) {
        let frame = encode(Kind::WriteFile, chunk.flags, |w| {
            WriteFile {
                path: path.as_bytes(),
                mode,
                data: &data[chunk.range.clone()],
                offset: chunk.range.start as u64,
            }
            .encode(w)
        })?;
        request(link, &frame, Kind::Done, &mut reply)?;
    }
    Ok(())
}

/// The host's account of a read in progress: what it has, what it may ask
/// for next, and whether a reply keeps the rules.
#[derive(Debug)]
struct ReadProgress {
    data: Vec<u8>,
    max_bytes: usize,
}

impl ReadProgress {
    fn new(max_bytes: u32) -> ReadProgress {
        ReadProgress {
            data: Vec::new(),
            max_bytes: max_bytes as usize,
        }
    }

    /// Length of the next chunk to ask for, at most `room`: never more than
    /// one byte past `max_bytes`, which is enough to learn that the file
    /// ended (or, from the agent, that it is too large).
    fn next_length(&self, room: usize) -> u32 {
        let left = self.max_bytes - self.data.len() + 1;
        left.min(room).min(u32::MAX as usize) as u32
    }

    /// Takes a reply to a request for `asked` bytes; true once the file is whole.
    fn accept(&mut self, asked: u32, chunk: &[u8], more: bool) -> Result<bool, AgentError> {
        let asked = asked as usize;
        if chunk.len() > asked {
            return Err(AgentError::Protocol(format!(
                "guest sent {} bytes for a {asked}-byte file chunk",
                chunk.len()
            )));
        }
        if more && chunk.len() != asked {
            return Err(AgentError::Protocol(format!(
                "guest announced more file data after a {}-byte chunk of {asked}",
                chunk.len()
            )));
        }
        if self.data.len() + chunk.len() > self.max_bytes {
            return Err(AgentError::Protocol(format!(
                "guest sent more than the {}-byte limit it was given",
                self.max_bytes
            )));
        }
        self.data.extend_from_slice(chunk);
        Ok(!more)
    }
}

/// Reads `path` from the guest, in as many chunks as it takes; a file larger
/// than `max_bytes` is the agent's TooLarge error.
pub fn read_file(
    link: &mut dyn FrameLink,
    path: &str,
    max_bytes: u32,
) -> Result<Vec<u8>, AgentError> {
    let room = link.capacity() - HEADER_LEN;
    let mut progress = ReadProgress::new(max_bytes);
    let mut reply = Vec::new();
    let mut flags = 0;
    loop {
        let length = progress.next_length(room);
        let frame = encode(Kind::ReadFile, flags, |w| {
            ReadFile {
                path: path.as_bytes(),
                max_bytes,
                offset: progress.data.len() as u64,
                length: Some(length),
            }
            .encode(w)
        })?;
        let more = request(link, &frame, Kind::FileData, &mut reply)? & FILE_MORE != 0;
        if progress.accept(length, &reply, more)? {
            return Ok(progress.data);
        }
        flags = FILE_CONTINUE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(total: usize, per: usize) -> Vec<(Range<usize>, u32)> {
        write_chunks(total, per)
            .map(|c| (c.range, c.flags))
            .collect()
    }

    #[test]
    fn chunks_cover_the_file_with_the_right_flags() {
        const C: u32 = FILE_CONTINUE;
        const M: u32 = FILE_MORE;
        assert_eq!(plan(0, 10), vec![(0..0, 0)]);
        assert_eq!(plan(10, 10), vec![(0..10, 0)]);
        assert_eq!(plan(11, 10), vec![(0..10, M), (10..11, C)]);
        assert_eq!(plan(25, 10), vec![(0..10, M), (10..20, C | M), (20..25, C)]);
        assert_eq!(plan(5, 10), vec![(0..5, 0)]);
    }

    #[test]
    fn reads_ask_one_byte_past_the_limit_at_most() {
        let mut p = ReadProgress::new(25);
        assert_eq!(p.next_length(10), 10);
        assert!(!p.accept(10, &[1; 10], true).unwrap());
        assert!(!p.accept(10, &[2; 10], true).unwrap());
        assert_eq!(p.next_length(10), 6);
        assert!(p.accept(6, &[3; 5], false).unwrap());
        assert_eq!(p.data.len(), 25);
        let p = ReadProgress::new(u32::MAX);
        assert_eq!(p.next_length(100), 100);
    }

    #[test]
    fn hostile_replies_are_protocol_errors() {
        let mut p = ReadProgress::new(100);
        // More than asked.
        assert!(matches!(
            p.accept(4, &[0; 5], false),
            Err(AgentError::Protocol(_))
        ));
        // "More" after a short (or empty) chunk: would never end.
        assert!(matches!(
            p.accept(4, &[], true),
            Err(AgentError::Protocol(_))
        ));
        assert!(matches!(
            p.accept(4, &[0; 3], true),
            Err(AgentError::Protocol(_))
        ));
        // Past the limit the host gave.
        let mut p = ReadProgress::new(3);
        assert!(matches!(
            p.accept(4, &[0; 4], false),
            Err(AgentError::Protocol(_))
        ));
        assert!(p.data.is_empty());
    }

    #[test]
    fn an_exact_fit_ends_with_an_empty_chunk() {
        let mut p = ReadProgress::new(8);
        assert!(!p.accept(8, &[7; 8], true).unwrap());
        assert_eq!(p.next_length(8), 1);
        assert!(p.accept(1, &[], false).unwrap());
        assert_eq!(p.data, vec![7; 8]);
    }
}
