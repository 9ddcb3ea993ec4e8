//! Message framing on a byte stream, pure and independent of what the messages
//! mean: the LSP base protocol (`Content-Length: N\r\n` headers, a blank line,
//! N bytes of body) or newline-delimited JSON. The first non-blank byte of the
//! stream decides which one the peer speaks: an ASCII letter starts a header,
//! so LSP; anything else is JSON, so NDJSON. Replies use the same framing.
//!
//! Nothing is allocated beyond the configured message limit: a body declared
//! (or found) larger is skipped in fixed-size pieces and reported as
//! [`FrameError::TooLarge`], after which the stream is still in step. Errors
//! after which the next message cannot be found (a malformed header, a missing
//! length, a body cut off by end of input) are fatal: see
//! [`FrameError::is_fatal`].

use std::io::{self, BufRead, Read, Write};

/// The two framings a peer may speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// LSP base protocol: `Content-Length` header, blank line, body.
    Lsp,
    /// One JSON text per line.
    Ndjson,
}

impl Framing {
    /// Name used in logs and `worker.info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Lsp => "lsp",
            Framing::Ndjson => "ndjson",
        }
    }
}

/// Longest header line accepted (LSP framing).
pub const MAX_HEADER_LINE: usize = 4096;
/// Most header lines accepted in one message (LSP framing).
pub const MAX_HEADERS: usize = 32;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The message was larger than the limit; it was skipped unread and the
    /// stream is still in step.
    #[error("message of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its length (declared by Content-Length, or counted while skipping a line).
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// A header line was not `Name: value`, or too long, or there were too many.
    #[error("malformed header: {0}")]
    BadHeader(String),
    /// The headers ended without a usable Content-Length.
    #[error("missing Content-Length header")]
    MissingLength,
    /// Content-Length was not a decimal number (or appeared twice, differently).
    #[error("invalid Content-Length: {0}")]
    BadLength(String),
    /// Input ended inside a message.
    #[error("input ended inside a message ({0})")]
    Truncated(String),
    /// Reading failed.
    #[error("read failed")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// True when the stream cannot be resynchronised: the worker logs the
    /// error and exits. Only [`FrameError::TooLarge`] leaves it in step.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::TooLarge { .. })
    }
}

/// Reads frames from a byte stream, detecting the framing from the first byte.
pub struct FrameReader<R> {
    input: R,
    framing: Option<Framing>,
    limit: usize,
}

impl<R: BufRead> FrameReader<R> {
    /// A reader that accepts bodies of at most `limit` bytes.
    pub fn new(input: R, limit: usize) -> Self {
        FrameReader {
            input,
            framing: None,
            limit,
        }
    }

    /// The framing in use, once the first byte has been seen.
    pub fn framing(&self) -> Option<Framing> {
        self.framing
    }

    /// Reads the next message body. `Ok(None)` is a clean end of input (at a
    /// message boundary).
    pub fn read(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let framing = match self.framing {
            Some(f) => f,
            None => match self.detect()? {
                Some(f) => {
                    self.framing = Some(f);
                    f
                }
                None => return Ok(None),
            },
        };
        match framing {
            Framing::Lsp => self.read_lsp(),
            Framing::Ndjson => self.read_line(),
        }
    }

    /// Skips leading whitespace and looks at the first byte.
    fn detect(&mut self) -> Result<Option<Framing>, FrameError> {
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if first.is_ascii_whitespace() {
                self.input.consume(1);
                continue;
            }
            return Ok(Some(if first.is_ascii_alphabetic() {
                Framing::Lsp
            } else {
                Framing::Ndjson
            }));
        }
    }

    fn read_lsp(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut length: Option<u64> = None;
        let mut headers = 0usize;
        loop {
            let line = match self.header_line()? {
                None if headers == 0 => return Ok(None),
                None => return Err(FrameError::Truncated("inside the headers".into())),
                Some(line) => line,
            };
            if line.is_empty() {
                if headers == 0 {
                    // Blank lines between messages are tolerated.
                    continue;
                }
                break;
            }
            headers += 1;
            if headers > MAX_HEADERS {
                return Err(FrameError::BadHeader(format!(
                    "more than {MAX_HEADERS} header lines"
                )));
            }
            let text = std::str::from_utf8(&line)
                .map_err(|_| FrameError::BadHeader("header is not ASCII".into()))?;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| FrameError::BadHeader(format!("no colon in {text:?}")))?;
            let name = name.trim();
            let value = value.trim();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(FrameError::BadHeader(format!(
                    "bad header name in {text:?}"
                )));
            }
            if name.eq_ignore_ascii_case("content-length") {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FrameError::BadLength(value.to_string()));
                }
                let n: u64 = value
                    .parse()
                    .map_err(|_| FrameError::BadLength(value.to_string()))?;
                if length.is_some_and(|old| old != n) {
                    return Err(FrameError::BadLength(format!(
                        "two different values ({} and {n})",
                        length.unwrap_or_default()
                    )));
                }
                length = Some(n);
            }
            // Content-Type and unknown headers are accepted and ignored: the
            // body is always read as UTF-8 JSON.
        }
        let length = length.ok_or(FrameError::MissingLength)?;
        if length > self.limit as u64 {
            let mut rest = Read::take(&mut self.input, length);
            let skipped = io::copy(&mut rest, &mut io::sink())?;
            if skipped < length {
                return Err(FrameError::Truncated(format!(
                    "body of {length} bytes ended after {skipped}"
                )));
            }
            return Err(FrameError::TooLarge {
                length,
                limit: self.limit,
            });
        }
        let mut body = vec![0u8; length as usize];
        let mut got = 0;
        while got < body.len() {
            match self.input.read(&mut body[got..]) {
                Ok(0) => {
                    return Err(FrameError::Truncated(format!(
                        "body of {length} bytes ended after {got}"
                    )));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(body))
    }

    /// One header line without its line ending (`\r\n`, or a lone `\n`).
    /// `None` at end of input before any byte of the line.
    fn header_line(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut line = Vec::new();
        let mut seen_any = false;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if buf.is_empty() {
                return if seen_any {
                    Err(FrameError::Truncated("inside a header line".into()))
                } else {
                    Ok(None)
                };
            }
            seen_any = true;
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            if line.len() + chunk.len() > MAX_HEADER_LINE {
                return Err(FrameError::BadHeader(format!(
                    "header line longer than {MAX_HEADER_LINE} bytes"
                )));
            }
            line.extend_from_slice(chunk);
            let used = done.unwrap_or(buf.len());
            self.input.consume(used);
            if done.is_some() {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
        }
    }

    /// The next non-blank line (NDJSON). A last line without a newline still
    /// counts: end of input ends it.
    fn read_line(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            let mut line = Vec::new();
            let mut length: u64 = 0;
            let mut too_large = false;
            let mut seen_any = false;
            loop {
                let buf = match self.input.fill_buf() {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                if buf.is_empty() {
                    if !seen_any {
                        return Ok(None);
                    }
                    break;
                }
                seen_any = true;
                let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (&buf[..i], i + 1, true),
                    None => (buf, buf.len(), false),
                };
                length += chunk.len() as u64;
                if !too_large && line.len() + chunk.len() > self.limit.saturating_add(1) {
                    // One extra byte is allowed for a trailing '\r'.
                    too_large = true;
                    line = Vec::new();
                }
                if !too_large {
                    line.extend_from_slice(chunk);
                }
                self.input.consume(used);
                if done {
                    break;
                }
            }
            if too_large {
                return Err(FrameError::TooLarge {
                    length,
                    limit: self.limit,
                });
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > self.limit {
                return Err(FrameError::TooLarge {
                    length: line.len() as u64,
                    limit: self.limit,
                });
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(line));
        }
    }
}

/// Writes one message body with the given framing (no flush).
pub fn write_frame(out: &mut impl Write, framing: Framing, body: &[u8]) -> io::Result<()> {
    match framing {
        Framing::Lsp => {
            write!(out, "Content-Length: {}\r\n\r\n", body.len())?;
            out.write_all(body)
        }
        Framing::Ndjson => {
            if body.contains(&b'\n') {
                // Raw newlines can only be whitespace between JSON tokens
                // (strings escape theirs): write the body compacted instead.
                let value: serde_json::Value = serde_json::from_slice(body)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                serde_json::to_writer(&mut *out, &value)?;
            } else {
                out.write_all(body)?;
            }
            out.write_all(b"\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor, Read};

    fn reader(input: &[u8], limit: usize) -> FrameReader<Cursor<Vec<u8>>> {
        FrameReader::new(Cursor::new(input.to_vec()), limit)
    }

    fn all(input: &[u8], limit: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut r = reader(input, limit);
        let mut out = Vec::new();
        loop {
            match r.read() {
                Ok(Some(b)) => out.push(Ok(b)),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    out.push(Err(e.to_string()));
                    if fatal {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn detects_lsp_and_reads_bodies() {
        let input = b"Content-Length: 2\r\n\r\n{}Content-Length: 7\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n[1,2,3]";
        let mut r = reader(input, 100);
        assert_eq!(r.read().unwrap().unwrap(), b"{}");
        assert_eq!(r.framing(), Some(Framing::Lsp));
        assert_eq!(r.read().unwrap().unwrap(), b"[1,2,3]");
        assert!(r.read().unwrap().is_none());
    }

    #[test]
    fn lsp_header_names_are_case_insensitive_and_lone_newlines_pass() {
        let out = all(
            b"content-length:   3\n\n123\r\n\r\nCONTENT-LENGTH: 1\r\n\r\n4",
            10,
        );
        assert_eq!(out, vec![Ok(b"123".to_vec()), Ok(b"4".to_vec())]);
    }

    #[test]
    fn detects_ndjson_and_skips_blank_lines() {
        let out = all(b"\r\n  {\"a\":1}\r\n\n\n[2]\n   \n\"x\"", 100);
        assert_eq!(
            out,
            vec![
                Ok(b"{\"a\":1}".to_vec()),
                Ok(b"[2]".to_vec()),
                Ok(b"\"x\"".to_vec())
            ]
        );
    }

    #[test]
    fn empty_input_is_a_clean_end() {
        assert!(all(b"", 10).is_empty());
        assert!(all(b" \r\n\t", 10).is_empty());
    }

    #[test]
    fn oversized_lsp_body_is_skipped_and_the_stream_stays_in_step() {
        let mut input = b"Content-Length: 50\r\n\r\n".to_vec();
        input.extend_from_slice(&[b'x'; 50]);
        input.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
        let out = all(&input, 10);
        assert_eq!(out.len(), 2);
        assert!(out[0].as_ref().unwrap_err().contains("exceeds"));
        assert_eq!(out[1], Ok(b"{}".to_vec()));
    }

    #[test]
    fn oversized_ndjson_line_is_skipped_and_the_stream_stays_in_step() {
        let mut input = vec![b'{'; 5000];
        input.extend_from_slice(b"\n{}\n");
        let mut r = reader(&input, 100);
        match r.read() {
            Err(FrameError::TooLarge { length, limit }) => {
                assert_eq!(length, 5000);
                assert_eq!(limit, 100);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.read().unwrap().unwrap(), b"{}");
    }

    #[test]
    fn ndjson_line_at_the_limit_passes_even_with_cr() {
        let mut input = vec![b'1'; 10];
        input.extend_from_slice(b"\r\n");
        assert_eq!(all(&input, 10), vec![Ok(vec![b'1'; 10])]);
        assert!(all(&[b'1'; 11], 10)[0].is_err());
    }

    /// A reader that yields an endless stream of one byte and counts what was read.
    struct Endless {
        served: u64,
        cap: u64,
    }
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (buf.len() as u64).min(self.cap - self.served) as usize;
            buf[..n].fill(b'a');
            self.served += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn huge_declared_length_is_not_allocated() {
        // 100 MB body with a 1 KiB limit; the reader must stream it to a sink.
        let len = 100u64 << 20;
        let header = format!("Content-Length: {len}\r\n\r\n");
        let body = Endless {
            served: 0,
            cap: len,
        };
        let input = BufReader::new(Cursor::new(header.into_bytes()).chain(body));
        let mut r = FrameReader::new(input, 1024);
        assert!(matches!(
            r.read(),
            Err(FrameError::TooLarge { length, .. }) if length == len
        ));
        assert!(r.read().unwrap().is_none());
    }

    #[test]
    fn absurd_declared_length_is_truncated_not_allocated() {
        let out = all(b"Content-Length: 99999999999999999\r\n\r\n{}", 1024);
        assert_eq!(out.len(), 1);
        assert!(out[0].as_ref().unwrap_err().contains("ended"));
    }

    #[test]
    fn fatal_errors() {
        for (input, needle) in [
            (&b"Content-Length 2\r\n\r\n{}"[..], "no colon"),
            (b"Content-Length: two\r\n\r\n{}", "invalid Content-Length"),
            (b"Content-Length: -2\r\n\r\n{}", "invalid Content-Length"),
            (
                b"Content-Length: 99999999999999999999999\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                "two different",
            ),
            (b"Content-Type: x\r\n\r\n{}", "missing Content-Length"),
            (b"Content-Length: 10\r\n\r\n{}", "ended after 2"),
            (b"Content-Length: 10\r\n", "inside the headers"),
            (b"Content-Length: 10", "inside a header line"),
            (b"Content-Length: \xff\r\n\r\n", "not ASCII"),
            (b"Bad Name: 1\r\n\r\n", "bad header name"),
        ] {
            let out = all(input, 1024);
            let last = out.last().unwrap().as_ref().unwrap_err();
            assert!(last.contains(needle), "{input:?}: {last}");
        }
        let long = format!("X-Long: {}\r\n\r\n", "y".repeat(MAX_HEADER_LINE));
        assert!(
            all(long.as_bytes(), 10)[0]
                .as_ref()
                .unwrap_err()
                .contains("longer")
        );
        let many = "X-A: 1\r\n".repeat(MAX_HEADERS + 1);
        assert!(
            all(many.as_bytes(), 10)[0]
                .as_ref()
                .unwrap_err()
                .contains("more than")
        );
    }

    #[test]
    fn only_too_large_is_recoverable() {
        assert!(
            !FrameError::TooLarge {
                length: 1,
                limit: 0
            }
            .is_fatal()
        );
        assert!(FrameError::MissingLength.is_fatal());
        assert!(FrameError::Truncated(String::new()).is_fatal());
    }

    #[test]
    fn writes_both_framings_and_reads_them_back() {
        for framing in [Framing::Lsp, Framing::Ndjson] {
            let mut out = Vec::new();
            write_frame(&mut out, framing, b"{\"a\":\"b\\nc\"}").unwrap();
            write_frame(&mut out, framing, b"[]").unwrap();
            let mut r = reader(&out, 100);
            assert_eq!(r.read().unwrap().unwrap(), b"{\"a\":\"b\\nc\"}");
            assert_eq!(r.framing(), Some(framing));
            assert_eq!(r.read().unwrap().unwrap(), b"[]");
            assert!(r.read().unwrap().is_none());
        }
    }

    #[test]
    fn ndjson_bodies_with_newlines_are_compacted() {
        let mut out = Vec::new();
        write_frame(&mut out, Framing::Ndjson, b"{\n  \"a\": [1,\n 2]\n}").unwrap();
        assert_eq!(out, b"{\"a\":[1,2]}\n");
    }

    #[test]
    fn byte_at_a_time_input_reads_the_same() {
        struct OneByte(Cursor<Vec<u8>>);
        impl Read for OneByte {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let input = b"Content-Length: 2\r\n\r\n{}Content-Length: 3\r\n\r\n[1]".to_vec();
        let mut r = FrameReader::new(BufReader::with_capacity(1, OneByte(Cursor::new(input))), 10);
        assert_eq!(r.read().unwrap().unwrap(), b"{}");
        assert_eq!(r.read().unwrap().unwrap(), b"[1]");
        assert!(r.read().unwrap().is_none());
    }
}
