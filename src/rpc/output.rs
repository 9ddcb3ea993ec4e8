//! An exec's output on the wire: bytes turned into JSON strings (lossy UTF-8
//! or base64), and the [`ExecSink`] that streams chunks as `sandbox.output`
//! notifications and then answers the call. Streamed chunks are decoded
//! incrementally, so a character split across two chunks arrives whole in
//! the second notification instead of as two U+FFFD.
//!
//! The sink runs on the sandbox's VM thread: each notification is written
//! by that thread before the guest runs on, and the answer after the last
//! notification, so the order "output, then the reply" needs no queue.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::params::{Encoding, Output};
use super::reply::Notifier;
use crate::engine::{EngineError, ExecResult, ExecSink, OutputStream};

/// Encodes a complete buffer.
pub fn encode(bytes: &[u8], encoding: Encoding) -> String {
    match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Encoding::Base64 => STANDARD.encode(bytes),
    }
}

/// Decodes standard base64.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("invalid base64: {e}"))
}

/// Encodes a stream of chunks; holds back an incomplete UTF-8 sequence at a
/// chunk's end until the next chunk (or [`ChunkEncoder::finish`]).
pub struct ChunkEncoder {
    encoding: Encoding,
    pending: Vec<u8>,
}

impl ChunkEncoder {
    /// A fresh encoder.
    pub fn new(encoding: Encoding) -> Self {
        ChunkEncoder {
            encoding,
            pending: Vec::new(),
        }
    }

    /// Encodes what can be encoded of `chunk` now (may be empty).
    pub fn push(&mut self, chunk: &[u8]) -> String {
        if self.encoding == Encoding::Base64 {
            return STANDARD.encode(chunk);
        }
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(chunk);
        let mut out = String::with_capacity(bytes.len());
        let mut rest = &bytes[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(
                        std::str::from_utf8(good).expect("bytes up to valid_up_to are UTF-8"),
                    );
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            // An incomplete sequence at the end: keep it.
                            self.pending = bad.to_vec();
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// Whatever is still held back, encoded lossily.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// Sends an exec's output as `sandbox.output` notifications.
pub struct Streamer {
    notifier: Notifier,
    sandbox: String,
    encoding: Encoding,
    /// Stdout's, then stderr's.
    encoders: [ChunkEncoder; 2],
}

impl Streamer {
    /// A streamer for the output of `sandbox` in `encoding`.
    pub fn new(notifier: Notifier, sandbox: String, encoding: Encoding) -> Streamer {
        Streamer {
            notifier,
            sandbox,
            encoding,
            encoders: [ChunkEncoder::new(encoding), ChunkEncoder::new(encoding)],
        }
    }

    /// Sends a chunk of `stream`'s output (what completes a character).
    pub fn chunk(&mut self, stream: OutputStream, data: &[u8]) {
        let text = self.encoders[index(stream)].push(data);
        self.send(stream, text);
    }

    /// Sends what the encoders still hold.
    pub fn finish(&mut self) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let rest = self.encoders[index(stream)].finish();
            self.send(stream, rest);
        }
    }

    fn send(&self, stream: OutputStream, data: String) {
        if data.is_empty() {
            return;
        }
        self.notifier.notify(
            "sandbox.output",
            Output {
                sandbox: &self.sandbox,
                request: self.notifier.request().raw(),
                stream: match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                },
                data,
                encoding: self.encoding,
            },
        );
    }
}

fn index(s: OutputStream) -> usize {
    match s {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

/// An exec's sink on the wire: streams its output if asked, then hands the
/// end to `answer` (which writes the call's reply, or adds to a batch of runs).
pub struct WireSink<F> {
    streamer: Option<Streamer>,
    answer: F,
}

impl<F> WireSink<F>
where
    F: FnOnce(Result<ExecResult, EngineError>) + Send + 'static,
{
    /// A sink that streams through `streamer`, if any, and ends with `answer`.
    pub fn new(streamer: Option<Streamer>, answer: F) -> Box<WireSink<F>> {
        Box::new(WireSink { streamer, answer })
    }
}

impl<F> ExecSink for WireSink<F>
where
    F: FnOnce(Result<ExecResult, EngineError>) + Send + 'static,
{
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        if let Some(s) = &mut self.streamer {
            s.chunk(stream, data);
        }
    }

    fn done(self: Box<Self>, result: Result<ExecResult, EngineError>) {
        let WireSink {
            mut streamer,
            answer,
        } = *self;
        if let Some(s) = &mut streamer {
            s.finish();
        }
        answer(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_joined() {
        let text = "héllo €uro 🦀";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut enc = ChunkEncoder::new(Encoding::Utf8);
            let mut out = enc.push(&bytes[..split]);
            out.push_str(&enc.push(&bytes[split..]));
            out.push_str(&enc.finish());
            assert_eq!(out, text, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_matches_whole() {
        let bytes = "a€b🦀c\u{7ff}".as_bytes();
        let mut enc = ChunkEncoder::new(Encoding::Utf8);
        let out: String = bytes.iter().map(|b| enc.push(&[*b])).collect();
        assert_eq!(out + &enc.finish(), String::from_utf8_lossy(bytes));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut enc = ChunkEncoder::new(Encoding::Utf8);
        assert_eq!(enc.push(b"a\xffb\xc0"), "a\u{fffd}b\u{fffd}");
        let mut enc = ChunkEncoder::new(Encoding::Utf8);
        assert_eq!(enc.push(b"x\xe2\x82"), "x");
        assert_eq!(enc.finish(), "\u{fffd}");
    }

    #[test]
    fn base64_round_trips() {
        let data = [0u8, 255, 10, 13, 34];
        let s = encode(&data, Encoding::Base64);
        assert_eq!(decode_base64(&s).unwrap(), data);
        assert_eq!(ChunkEncoder::new(Encoding::Base64).push(&data), s);
        assert!(decode_base64("!!").is_err());
    }
}
