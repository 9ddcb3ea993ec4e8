//! A transport over a byte stream: stdin/stdout in tests, a serial port under
//! another VMM. Frames are sent back to back; the reader skips any bytes
//! before a frame's magic, so line noise or a stray console message on the
//! channel costs a resync rather than the connection.

use super::{Transport, TransportError};
use std::io::{Read, Write};
use zeroboot_proto::{HEADER_LEN, Header, MAGIC, MAILBOX_SIZE};

/// Frames over a reader (host to guest) and a writer (guest to host).
pub struct Stream<R, W> {
    input: R,
    output: W,
    buf: Vec<u8>,
}

impl<R: Read, W: Write> Stream<R, W> {
    /// Wraps the two halves of a channel.
    pub fn new(input: R, output: W) -> Self {
        Stream {
            input,
            output,
            buf: vec![0; MAILBOX_SIZE],
        }
    }

    /// Reads the next frame into the buffer, skipping bytes until a magic.
    fn read_frame(&mut self) -> Result<Header, TransportError> {
        let magic = MAGIC.to_le_bytes();
        let head = &mut self.buf[..HEADER_LEN];
        self.input.read_exact(head)?;
        while head[..4] != magic {
            head.copy_within(1.., 0);
            self.input.read_exact(&mut head[HEADER_LEN - 1..])?;
        }
        let header = Header::decode(head).map_err(TransportError::Wire)?;
        let end = HEADER_LEN + header.len as usize;
        self.input.read_exact(&mut self.buf[HEADER_LEN..end])?;
        Ok(header)
    }
}

impl<R: Read, W: Write> Transport for Stream<R, W> {
    fn buf(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn exchange(&mut self, len: usize) -> Result<Header, TransportError> {
        self.output.write_all(&self.buf[..len])?;
        self.output.flush()?;
        self.read_frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroboot_proto::{Kind, RESUME_STOP_OUTPUT, encode_frame};

    fn frame(kind: Kind, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0; 256];
        let n = encode_frame(&mut buf, kind, flags, |w| w.raw(body)).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn exchange_writes_the_frame_and_reads_the_reply() {
        let reply = frame(Kind::Resume, RESUME_STOP_OUTPUT, b"");
        let mut out = Vec::new();
        let mut t = Stream::new(reply.as_slice(), &mut out);
        t.buf()[..3].copy_from_slice(b"abc");
        let h = t.exchange(3).unwrap();
        assert_eq!(
            (h.kind, h.flags, h.len),
            (Kind::Resume, RESUME_STOP_OUTPUT, 0)
        );
        assert_eq!(out, b"abc");
    }

    #[test]
    fn reader_skips_noise_before_a_frame() {
        let mut input = b"[ 0.1] kernel noise ZBF".to_vec();
        input.extend(frame(Kind::ReadFile, 0, b"payload"));
        let mut t = Stream::new(input.as_slice(), Vec::new());
        let h = t.exchange(0).unwrap();
        assert_eq!(h.kind, Kind::ReadFile);
        assert_eq!(&t.buf()[HEADER_LEN..HEADER_LEN + 7], b"payload");
    }

    #[test]
    fn end_of_stream_is_closed_and_bad_kind_is_wire_error() {
        let mut t = Stream::new(&b""[..], Vec::new());
        assert!(matches!(t.exchange(0), Err(TransportError::Closed)));
        let mut bad = frame(Kind::Exec, 0, b"");
        bad[4] = 0x7e;
        let mut t = Stream::new(bad.as_slice(), Vec::new());
        assert!(matches!(t.exchange(0), Err(TransportError::Wire(_))));
    }
}
