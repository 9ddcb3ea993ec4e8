//! Encoding the agent's frames into the transport buffer. Each function
//! returns the frame's total length, ready for `Transport::exchange`.

use zeroboot_proto::{
    AgentError, AgentErrorCode, AgentKind, ExitStatus, HEADER_LEN, Header, Kind, MAX_PAYLOAD,
    Output, Ready, Stream, VERSION, encode_frame,
};

/// Where an output chunk's bytes start in the buffer: read straight there.
pub const OUTPUT_DATA: usize = HEADER_LEN + Output::OVERHEAD;

fn encode(
    buf: &mut [u8],
    kind: Kind,
    body: impl FnOnce(&mut zeroboot_proto::Writer<'_>) -> Result<(), zeroboot_proto::WireError>,
) -> usize {
    encode_frame(buf, kind, 0, body).expect("agent frames fit the buffer")
}

/// [`Kind::Ready`] for the Linux agent.
pub fn ready(buf: &mut [u8]) -> usize {
    encode(buf, Kind::Ready, |w| {
        Ready {
            version: VERSION,
            agent: AgentKind::Linux,
        }
        .encode(w)
    })
}

/// [`Kind::Error`]; the message is cut to fit one frame.
pub fn error(buf: &mut [u8], code: AgentErrorCode, message: &str) -> usize {
    let cut = message.len().min(MAX_PAYLOAD - 4);
    encode(buf, Kind::Error, |w| {
        AgentError {
            code,
            message: &message.as_bytes()[..cut],
        }
        .encode(w)
    })
}

/// A request the agent refuses or fails, answered with one Error frame.
#[derive(Debug)]
pub struct Failure {
    /// The wire error code.
    pub code: AgentErrorCode,
    /// What went wrong, for the host's user.
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: AgentErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Encodes the Error frame.
    pub fn encode(&self, buf: &mut [u8]) -> usize {
        error(buf, self.code, &self.message)
    }
}

/// [`Kind::Exit`].
pub fn exit(buf: &mut [u8], status: ExitStatus) -> usize {
    encode(buf, Kind::Exit, |w| status.encode(w))
}

/// [`Kind::Exit`] carrying the program's last output chunk (at most
/// `MAX_PAYLOAD - ExitStatus::OUTPUT_TAIL_OFFSET` bytes).
pub fn exit_with_output(buf: &mut [u8], status: ExitStatus, stream: Stream, data: &[u8]) -> usize {
    encode(buf, Kind::Exit, |w| {
        status.encode_with_output(w, &Output { stream, data })
    })
}

/// [`Kind::Done`].
pub fn done(buf: &mut [u8]) -> usize {
    encode(buf, Kind::Done, |_| Ok(()))
}

/// A frame of `kind` whose `len` payload bytes are already at `HEADER_LEN`.
pub fn in_place(buf: &mut [u8], kind: Kind, flags: u32, len: usize) -> usize {
    assert!(len <= MAX_PAYLOAD, "payload fits one frame");
    buf[..HEADER_LEN].copy_from_slice(
        &Header {
            kind,
            len: len as u32,
            flags,
        }
        .encode(),
    );
    HEADER_LEN + len
}

/// [`Kind::Output`] whose `n` data bytes are already at [`OUTPUT_DATA`].
pub fn output_in_place(buf: &mut [u8], stream: Stream, n: usize) -> usize {
    buf[HEADER_LEN..OUTPUT_DATA].copy_from_slice(&(stream as u32).to_le_bytes());
    in_place(buf, Kind::Output, 0, Output::OVERHEAD + n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroboot_proto::decode_frame;

    #[test]
    fn output_in_place_decodes() {
        let mut buf = vec![0u8; 64];
        buf[OUTPUT_DATA..OUTPUT_DATA + 2].copy_from_slice(b"hi");
        let n = output_in_place(&mut buf, Stream::Stderr, 2);
        let (h, p) = decode_frame(&buf[..n]).unwrap();
        assert_eq!(h.kind, Kind::Output);
        assert_eq!(
            Output::decode(p).unwrap(),
            Output {
                stream: Stream::Stderr,
                data: b"hi"
            }
        );
    }

    #[test]
    fn exit_can_carry_a_full_last_chunk() {
        let mut buf = vec![0u8; zeroboot_proto::MAILBOX_SIZE];
        let status = ExitStatus {
            code: 2,
            signal: 0,
            flags: 0,
        };
        let data = vec![7u8; MAX_PAYLOAD - ExitStatus::OUTPUT_TAIL_OFFSET];
        let n = exit_with_output(&mut buf, status, Stream::Stdout, &data);
        let (h, p) = decode_frame(&buf[..n]).unwrap();
        assert_eq!(h.kind, Kind::Exit);
        let (got, tail) = ExitStatus::decode(p).unwrap();
        assert_eq!(got, status);
        assert_eq!(
            tail,
            Some(Output {
                stream: Stream::Stdout,
                data: &data
            })
        );
    }

    #[test]
    fn long_error_messages_are_cut_to_one_frame() {
        let mut buf = vec![0u8; zeroboot_proto::MAILBOX_SIZE];
        let n = error(&mut buf, AgentErrorCode::Io, &"x".repeat(100_000));
        let (h, p) = decode_frame(&buf[..n]).unwrap();
        assert_eq!(h.kind, Kind::Error);
        assert_eq!(
            AgentError::decode(p).unwrap().message.len(),
            MAX_PAYLOAD - 4
        );
    }
}
