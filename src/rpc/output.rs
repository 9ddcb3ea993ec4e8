//! Turning output bytes into JSON strings: lossy UTF-8 or base64. Streamed
//! chunks are decoded incrementally, so a character split across two chunks
//! arrives whole in the second notification instead of as two U+FFFD.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::params::Encoding;

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
