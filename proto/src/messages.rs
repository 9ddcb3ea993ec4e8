//! Typed payloads. Decoding borrows from the frame (no allocation) and checks
//! every length, so a guest (or host) cannot make its peer read out of bounds.

use crate::{Reader, WireError, Writer};

/// Which agent answered [`crate::Kind::Ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AgentKind {
    /// The freestanding test guest built from `guest/bare`.
    Bare = 0,
    /// The Linux agent (`/init` in the guest image).
    Linux = 1,
}

/// Payload of [`crate::Kind::Ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Protocol version the guest speaks.
    pub version: u32,
    /// Which agent this is.
    pub agent: AgentKind,
}

impl Ready {
    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.version)?;
        w.u32(self.agent as u32)
    }

    /// Parses the payload.
    pub fn decode(payload: &[u8]) -> Result<Ready, WireError> {
        let mut r = Reader::new(payload);
        let version = r.u32()?;
        let agent = match r.u32()? {
            0 => AgentKind::Bare,
            1 => AgentKind::Linux,
            _ => return Err(WireError::BadValue),
        };
        r.finish()?;
        Ok(Ready { version, agent })
    }
}

/// What an exec runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Program {
    /// `argv[0]` with its arguments.
    Argv = 0,
    /// Python source in `argv[0]`, run by the agent's pre-warmed interpreter.
    Python = 1,
}

/// A validated list of length-prefixed byte strings inside a payload.
#[derive(Clone, Copy, Debug)]
pub struct StrList<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> StrList<'a> {
    /// Encodes `items` as a list.
    pub fn encode<'b>(
        w: &mut Writer<'_>,
        items: impl ExactSizeIterator<Item = &'b [u8]>,
    ) -> Result<(), WireError> {
        w.u32(u32::try_from(items.len()).map_err(|_| WireError::BadValue)?)?;
        for item in items {
            w.bytes(item)?;
        }
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader<'a>, per_item: u32) -> Result<StrList<'a>, WireError> {
        let count = r.u32()?;
        let items = count.checked_mul(per_item).ok_or(WireError::BadValue)?;
        let mut walk = r.clone();
        for _ in 0..items {
            walk.bytes()?;
        }
        let raw = r.take(walk.position() - r.position())?;
        Ok(StrList { count, raw })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates the raw byte strings (already validated).
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut r = Reader::new(self.raw);
        core::iter::from_fn(move || r.bytes().ok())
    }

    /// Iterates a list decoded two strings per entry as (key, value) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let mut it = self.iter();
        core::iter::from_fn(move || Some((it.next()?, it.next()?)))
    }
}

/// Payload of [`crate::Kind::Exec`].
#[derive(Clone, Copy, Debug)]
pub struct Exec<'a> {
    /// Host wall clock at send time, nanoseconds since the Unix epoch.
    pub clock_ns: u64,
    /// Fresh host randomness to mix into every guest entropy pool.
    pub seed: [u8; 32],
    /// In-guest deadline in milliseconds (0: none); the host keeps its own.
    pub timeout_ms: u32,
    /// How to interpret `argv`.
    pub program: Program,
    /// Program and arguments (or Python source for [`Program::Python`]).
    pub argv: StrList<'a>,
    /// Environment as alternating key, value entries.
    pub env: StrList<'a>,
    /// Working directory (empty: the agent's default).
    pub cwd: &'a [u8],
    /// Bytes fed to the program's standard input.
    pub stdin: &'a [u8],
}

/// The owned-free inputs of [`Exec::encode`].
pub struct ExecParts<'p, A, E> {
    /// See [`Exec::clock_ns`].
    pub clock_ns: u64,
    /// See [`Exec::seed`].
    pub seed: [u8; 32],
    /// See [`Exec::timeout_ms`].
    pub timeout_ms: u32,
    /// See [`Exec::program`].
    pub program: Program,
    /// Arguments.
    pub argv: A,
    /// Key/value pairs.
    pub env: E,
    /// See [`Exec::cwd`].
    pub cwd: &'p [u8],
    /// See [`Exec::stdin`].
    pub stdin: &'p [u8],
}

impl<'a> Exec<'a> {
    /// Appends an exec payload.
    pub fn encode<'p, A, E>(w: &mut Writer<'_>, p: ExecParts<'p, A, E>) -> Result<(), WireError>
    where
        A: ExactSizeIterator<Item = &'p [u8]>,
        E: ExactSizeIterator<Item = (&'p [u8], &'p [u8])>,
    {
        w.u64(p.clock_ns)?;
        w.raw(&p.seed)?;
        w.u32(p.timeout_ms)?;
        w.u32(p.program as u32)?;
        StrList::encode(w, p.argv)?;
        w.u32(u32::try_from(p.env.len()).map_err(|_| WireError::BadValue)?)?;
        for (k, v) in p.env {
            w.bytes(k)?;
            w.bytes(v)?;
        }
        w.bytes(p.cwd)?;
        w.bytes(p.stdin)
    }

    /// Parses and validates an exec payload.
    pub fn decode(payload: &'a [u8]) -> Result<Exec<'a>, WireError> {
        let mut r = Reader::new(payload);
        let clock_ns = r.u64()?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(r.take(32)?);
        let timeout_ms = r.u32()?;
        let program = match r.u32()? {
            0 => Program::Argv,
            1 => Program::Python,
            _ => return Err(WireError::BadValue),
        };
        let argv = StrList::decode(&mut r, 1)?;
        let env = StrList::decode(&mut r, 2)?;
        let cwd = r.bytes()?;
        let stdin = r.bytes()?;
        r.finish()?;
        Ok(Exec {
            clock_ns,
            seed,
            timeout_ms,
            program,
            argv,
            env,
            cwd,
            stdin,
        })
    }

    /// Iterates the environment as (key, value) pairs.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.env.pairs()
    }
}

/// Output stream identifiers in [`crate::Kind::Output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stream {
    /// Standard output.
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
}

impl Stream {
    /// Decodes a stream id.
    pub fn from_u32(v: u32) -> Result<Stream, WireError> {
        match v {
            1 => Ok(Stream::Stdout),
            2 => Ok(Stream::Stderr),
            _ => Err(WireError::BadValue),
        }
    }
}

/// Payload of [`crate::Kind::Output`]: a stream id then the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output<'a> {
    /// Which stream.
    pub stream: Stream,
    /// The chunk.
    pub data: &'a [u8],
}

impl<'a> Output<'a> {
    /// Bytes of payload taken by the header fields.
    pub const OVERHEAD: usize = 4;

    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.stream as u32)?;
        w.raw(self.data)
    }

    /// Parses the payload.
    pub fn decode(payload: &'a [u8]) -> Result<Output<'a>, WireError> {
        let mut r = Reader::new(payload);
        let stream = Stream::from_u32(r.u32()?)?;
        Ok(Output {
            stream,
            data: r.rest(),
        })
    }
}

/// `ExitStatus::flags`: the agent's own deadline killed the program.
pub const EXIT_TIMED_OUT: u32 = 1;

/// Payload of [`crate::Kind::Exit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code (meaningful when `signal` is 0).
    pub code: i32,
    /// Terminating signal number, or 0.
    pub signal: i32,
    /// [`EXIT_TIMED_OUT`] and future flags.
    pub flags: u32,
}

impl ExitStatus {
    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.i32(self.code)?;
        w.i32(self.signal)?;
        w.u32(self.flags)
    }

    /// Parses the payload, which may end with the program's last output chunk
    /// (see [`ExitStatus::encode_with_output`]).
    pub fn decode(payload: &[u8]) -> Result<(ExitStatus, Option<Output<'_>>), WireError> {
        let mut r = Reader::new(payload);
        let status = ExitStatus {
            code: r.i32()?,
            signal: r.i32()?,
            flags: r.u32()?,
        };
        if r.position() == payload.len() {
            return Ok((status, None));
        }
        let stream = Stream::from_u32(r.u32()?)?;
        let data = r.bytes()?;
        r.finish()?;
        Ok((status, Some(Output { stream, data })))
    }

    /// Bytes an Exit payload spends before a trailing chunk's data.
    pub const OUTPUT_TAIL_OFFSET: usize = 20;

    /// Appends the payload followed by a last output chunk, which saves a
    /// round trip (one VM exit) for programs whose output fits one frame.
    pub fn encode_with_output(
        &self,
        w: &mut Writer<'_>,
        tail: &Output<'_>,
    ) -> Result<(), WireError> {
        self.encode(w)?;
        w.u32(tail.stream as u32)?;
        w.bytes(tail.data)
    }
}

/// Error codes carried by [`crate::Kind::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AgentErrorCode {
    /// The request kind is not supported by this agent.
    Unsupported = 1,
    /// The request was malformed.
    BadRequest = 2,
    /// A file operation failed.
    Io = 3,
    /// The data exceeds a size cap.
    TooLarge = 4,
    /// The program could not be started.
    SpawnFailed = 5,
}

/// Payload of [`crate::Kind::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentError<'a> {
    /// What went wrong.
    pub code: AgentErrorCode,
    /// Human-readable detail (UTF-8 expected, not trusted).
    pub message: &'a [u8],
}

impl<'a> AgentError<'a> {
    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.code as u32)?;
        w.raw(self.message)
    }

    /// Parses the payload.
    pub fn decode(payload: &'a [u8]) -> Result<AgentError<'a>, WireError> {
        let mut r = Reader::new(payload);
        let code = match r.u32()? {
            1 => AgentErrorCode::Unsupported,
            2 => AgentErrorCode::BadRequest,
            3 => AgentErrorCode::Io,
            4 => AgentErrorCode::TooLarge,
            5 => AgentErrorCode::SpawnFailed,
            _ => return Err(WireError::BadValue),
        };
        Ok(AgentError {
            code,
            message: r.rest(),
        })
    }
}

/// Payload of [`crate::Kind::WriteFile`]: one chunk of a file.
///
/// A file larger than one frame travels as several WriteFile frames in one
/// conversation: the first without [`crate::FILE_CONTINUE`] (a new file, at
/// offset 0), the others with it, each at the offset where the previous one
/// ended; every frame but the last carries [`crate::FILE_MORE`]. The agent
/// makes the file visible under `path`, with `mode`, only when the last chunk
/// arrives, so an interrupted transfer never leaves a partial file there.
/// A version-1 frame (no flags, no offset) is the one-chunk case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteFile<'a> {
    /// Absolute path in the guest.
    pub path: &'a [u8],
    /// Permission bits.
    pub mode: u32,
    /// This chunk's bytes.
    pub data: &'a [u8],
    /// Where `data` starts in the file.
    pub offset: u64,
}

impl<'a> WriteFile<'a> {
    /// Payload bytes a chunk spends besides its path and data.
    pub const OVERHEAD: usize = 4 + 4 + 4 + 8;

    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.bytes(self.path)?;
        w.u32(self.mode)?;
        w.bytes(self.data)?;
        w.u64(self.offset)
    }

    /// Parses the payload (a version-1 payload has no offset: 0).
    pub fn decode(payload: &'a [u8]) -> Result<WriteFile<'a>, WireError> {
        let mut r = Reader::new(payload);
        let (path, mode, data) = (r.bytes()?, r.u32()?, r.bytes()?);
        let offset = if r.position() == payload.len() {
            0
        } else {
            r.u64()?
        };
        r.finish()?;
        Ok(WriteFile {
            path,
            mode,
            data,
            offset,
        })
    }
}

/// Payload of [`crate::Kind::ReadFile`]: a request for one chunk of a file.
///
/// The agent answers [`crate::Kind::FileData`] holding at most `length` bytes
/// from `offset`, with [`crate::FILE_MORE`] in the header flags when the file
/// may go on (a full chunk); the host asks for the next chunk with
/// [`crate::FILE_CONTINUE`], which reads the file the agent already has open.
/// A version-1 payload (no offset and length) asks for the whole file in one
/// reply, and a file that does not fit is a [`AgentErrorCode::TooLarge`] error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadFile<'a> {
    /// Absolute path in the guest.
    pub path: &'a [u8],
    /// Largest file accepted; a bigger file is an error, not a cut.
    pub max_bytes: u32,
    /// Where the chunk starts.
    pub offset: u64,
    /// Most bytes the reply may hold; `None` (version 1): the whole file.
    pub length: Option<u32>,
}

impl<'a> ReadFile<'a> {
    /// Appends the payload; without `length` only version-1 fields are written.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.bytes(self.path)?;
        w.u32(self.max_bytes)?;
        match self.length {
            Some(length) => {
                w.u64(self.offset)?;
                w.u32(length)
            }
            None if self.offset == 0 => Ok(()),
            None => Err(WireError::BadValue),
        }
    }

    /// Parses the payload.
    pub fn decode(payload: &'a [u8]) -> Result<ReadFile<'a>, WireError> {
        let mut r = Reader::new(payload);
        let (path, max_bytes) = (r.bytes()?, r.u32()?);
        let (offset, length) = if r.position() == payload.len() {
            (0, None)
        } else {
            (r.u64()?, Some(r.u32()?))
        };
        r.finish()?;
        Ok(ReadFile {
            path,
            max_bytes,
            offset,
            length,
        })
    }
}
