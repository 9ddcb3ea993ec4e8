//! Encoding the agent's frames into the transport buffer. Each function
//! returns the frame's total length, ready for `Transport::exchange`.

use crate::exec::Done;
use zeroboot_proto::{
    AgentError, AgentErrorCode, AgentKind, CodeEnd, CodeError, ContextEntry, ContextList,
    ExitStatus, HEADER_LEN, Header, Kind, MAX_PAYLOAD, Output, Ready, Stream, VERSION,
    encode_frame,
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

/// Longest result text a CodeEnd carries.
const MAX_RESULT: usize = 16 << 10;
/// Longest error name, value and traceback a CodeEnd carries.
const MAX_ERROR: [usize; 3] = [256, 4 << 10, 16 << 10];

/// The first `limit` bytes of `b`, cut back to a UTF-8 character boundary
/// when `b` is UTF-8 (the worker already cuts its texts; this bounds a
/// worker that does not).
fn cut(b: &[u8], limit: usize) -> &[u8] {
    if b.len() <= limit {
        return b;
    }
    let head = &b[..limit];
    match std::str::from_utf8(head) {
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        _ => head,
    }
}

/// What a [`Kind::CodeEnd`] says: the status and what the worker reported.
pub struct CodeOutcome<'a>(CodeEnd<'a>);

impl<'a> CodeOutcome<'a> {
    /// The end of a run with `status`, and the worker's report if it made one.
    pub fn new(status: ExitStatus, done: Option<&'a Done>) -> CodeOutcome<'a> {
        CodeOutcome(CodeEnd {
            status,
            result: done
                .and_then(|d| d.result.as_deref())
                .map(|r| cut(r, MAX_RESULT)),
            error: done
                .and_then(|d| d.error.as_ref())
                .map(|[n, v, tb]| CodeError {
                    name: cut(n, MAX_ERROR[0]),
                    value: cut(v, MAX_ERROR[1]),
                    traceback: cut(tb, MAX_ERROR[2]),
                }),
        })
    }

    /// True when a last output chunk of `len` bytes fits beside it.
    pub fn fits_with_tail(&self, len: usize) -> bool {
        self.0.encoded_len() + 8 + len <= MAX_PAYLOAD
    }

    /// Encodes the frame, with the last output chunk when one is given
    /// (checked with [`CodeOutcome::fits_with_tail`]).
    pub fn encode(&self, buf: &mut [u8], tail: Option<(Stream, &[u8])>) -> usize {
        encode(buf, Kind::CodeEnd, |w| match tail {
            Some((stream, data)) => self.0.encode_with_output(w, &Output { stream, data }),
            None => self.0.encode(w),
        })
    }
}

/// [`Kind::Contexts`]; the list is short ([`crate::exec::MAX_CONTEXTS`]).
pub fn contexts<'a>(
    buf: &mut [u8],
    entries: impl ExactSizeIterator<Item = ContextEntry<'a>>,
) -> usize {
    encode(buf, Kind::Contexts, |w| ContextList::encode(w, entries))
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
    fn code_ends_cut_what_a_worker_oversends_and_keep_utf8_whole() {
        let done = Done {
            code: 1,
            result: Some("é".repeat(MAX_RESULT).into_bytes()),
            error: Some([vec![b'n'; 1000], vec![b'v'; 100_000], vec![b't'; 100_000]]),
        };
        let status = ExitStatus {
            code: 1,
            signal: 0,
            flags: 0,
        };
        let outcome = CodeOutcome::new(status, Some(&done));
        assert!(!outcome.fits_with_tail(MAX_PAYLOAD));
        let mut buf = vec![0u8; zeroboot_proto::MAILBOX_SIZE];
        let n = outcome.encode(&mut buf, None);
        let (h, p) = decode_frame(&buf[..n]).unwrap();
        assert_eq!(h.kind, Kind::CodeEnd);
        let (end, tail) = CodeEnd::decode(p).unwrap();
        assert!(tail.is_none());
        let result = std::str::from_utf8(end.result.unwrap()).unwrap();
        assert_eq!(result.len(), MAX_RESULT);
        let error = end.error.unwrap();
        assert_eq!(
            [error.name.len(), error.value.len(), error.traceback.len()],
            MAX_ERROR
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
