//! Bounds-checked little-endian cursor types: the only way payloads are read or
//! written, so a hostile length can never index out of a buffer.

/// Why a frame or payload was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The header does not start with [`crate::MAGIC`].
    BadMagic,
    /// The header names a kind this version does not know.
    UnknownKind(u32),
    /// The header's length exceeds [`crate::MAX_PAYLOAD`].
    TooLong(u32),
    /// A field runs past the end of the buffer.
    Truncated,
    /// The payload has bytes left over after its last field.
    TrailingBytes,
    /// A field holds a value outside its range.
    BadValue,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::BadMagic => write!(f, "frame has a bad magic number"),
            WireError::UnknownKind(k) => write!(f, "frame has unknown kind {k:#x}"),
            WireError::TooLong(n) => write!(f, "frame length {n} exceeds the mailbox"),
            WireError::Truncated => write!(f, "frame is truncated"),
            WireError::TrailingBytes => write!(f, "frame has trailing bytes"),
            WireError::BadValue => write!(f, "frame field has an invalid value"),
        }
    }
}

/// Reads fields from a byte slice; every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads an `i32`.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        Ok(self.u32()? as i32)
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let lo = self.u32()? as u64;
        let hi = self.u32()? as u64;
        Ok(lo | (hi << 32))
    }

    /// Reads a `u32` length followed by that many bytes.
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// Writes fields into a byte slice; fails instead of overflowing it.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    /// Counts what would be written without storing it (see [`Writer::counting`]).
    counting: bool,
}

impl<'a> Writer<'a> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            counting: false,
        }
    }

    /// A writer with no buffer and no limit that only counts: what an
    /// encoder writes into it is the exact size it needs, so a frame too
    /// large for a mailbox can be reported with its real size.
    pub fn counting() -> Writer<'static> {
        Writer {
            buf: &mut [],
            pos: 0,
            counting: true,
        }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        if self.counting {
            return usize::MAX - self.pos;
        }
        self.buf.len() - self.pos
    }

    /// Appends raw bytes.
    pub fn raw(&mut self, data: &[u8]) -> Result<(), WireError> {
        let end = self
            .pos
            .checked_add(data.len())
            .ok_or(WireError::Truncated)?;
        if self.counting {
            self.pos = end;
            return Ok(());
        }
        self.buf
            .get_mut(self.pos..end)
            .ok_or(WireError::Truncated)?
            .copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    /// Counts `n` bytes already present in the buffer (written in place by the
    /// caller) as written.
    pub fn skip(&mut self, n: usize) -> Result<(), WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        if !self.counting && end > self.buf.len() {
            return Err(WireError::Truncated);
        }
        self.pos = end;
        Ok(())
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.raw(&v.to_le_bytes())
    }

    /// Appends an `i32`.
    pub fn i32(&mut self, v: i32) -> Result<(), WireError> {
        self.raw(&v.to_le_bytes())
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.raw(&v.to_le_bytes())
    }

    /// Appends a `u32` length and the bytes.
    pub fn bytes(&mut self, data: &[u8]) -> Result<(), WireError> {
        let n = u32::try_from(data.len()).map_err(|_| WireError::Truncated)?;
        self.u32(n)?;
        self.raw(data)
    }
}
