//! Running code rather than a program: [`RunCode`] asks the agent to run
//! source in a language with notebook semantics (the value of a final
//! expression comes back as text, an uncaught exception as a structured
//! error), either in a fresh interpreter or in a named, persistent context.
//! Output streams exactly as for an exec ([`crate::Kind::Output`] frames, each
//! answered by [`crate::Kind::Resume`]); the final frame is
//! [`crate::Kind::CodeEnd`]. [`crate::Kind::ListContexts`] asks for the
//! contexts alive in the guest ([`ContextList`]).

use crate::{ExitStatus, Output, Reader, StrList, Stream, WireError, Writer};

/// Longest context name the agent accepts.
pub const MAX_CONTEXT_NAME: usize = 64;

/// The language of a [`RunCode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Language {
    /// Python, in the agent's pre-warmed interpreter.
    Python = 0,
    /// JavaScript, in Node.js.
    JavaScript = 1,
    /// Shell: the code runs as `sh -c` would run it.
    Bash = 2,
}

impl Language {
    /// Decodes a language, rejecting unknown values.
    pub fn from_u32(v: u32) -> Result<Language, WireError> {
        match v {
            0 => Ok(Language::Python),
            1 => Ok(Language::JavaScript),
            2 => Ok(Language::Bash),
            _ => Err(WireError::BadValue),
        }
    }
}

/// Payload of [`crate::Kind::RunCode`].
#[derive(Clone, Copy, Debug)]
pub struct RunCode<'a> {
    /// Host wall clock at send time, nanoseconds since the Unix epoch.
    pub clock_ns: u64,
    /// Fresh host randomness to mix into every guest entropy pool.
    pub seed: [u8; 32],
    /// In-guest deadline in milliseconds (0: none); the host keeps its own.
    pub timeout_ms: u32,
    /// What `code` is written in.
    pub language: Language,
    /// The identity of the VM this request runs in, chosen by the host once
    /// per sandbox. A context that last ran under another identity has been
    /// copied into a new VM (a fork of a branch) since, so the agent reseeds
    /// its userspace random generators before its next cell.
    pub vm_id: u64,
    /// The persistent context to run in (empty: a fresh interpreter).
    pub context: &'a [u8],
    /// The source.
    pub code: &'a [u8],
    /// Environment as alternating key, value entries, set before the code runs.
    pub env: StrList<'a>,
    /// Working directory to run in (empty: the interpreter's current one).
    pub cwd: &'a [u8],
}

/// The inputs of [`RunCode::encode`] (the environment as pairs).
pub struct RunCodeParts<'p, E> {
    /// See [`RunCode::clock_ns`].
    pub clock_ns: u64,
    /// See [`RunCode::seed`].
    pub seed: [u8; 32],
    /// See [`RunCode::timeout_ms`].
    pub timeout_ms: u32,
    /// See [`RunCode::language`].
    pub language: Language,
    /// See [`RunCode::vm_id`].
    pub vm_id: u64,
    /// See [`RunCode::context`].
    pub context: &'p [u8],
    /// See [`RunCode::code`].
    pub code: &'p [u8],
    /// Key/value pairs.
    pub env: E,
    /// See [`RunCode::cwd`].
    pub cwd: &'p [u8],
}

impl<'a> RunCode<'a> {
    /// Appends the payload.
    pub fn encode<'p, E>(w: &mut Writer<'_>, p: RunCodeParts<'p, E>) -> Result<(), WireError>
    where
        E: ExactSizeIterator<Item = (&'p [u8], &'p [u8])>,
    {
        w.u64(p.clock_ns)?;
        w.raw(&p.seed)?;
        w.u32(p.timeout_ms)?;
        w.u32(p.language as u32)?;
        w.u64(p.vm_id)?;
        w.bytes(p.context)?;
        w.bytes(p.code)?;
        w.u32(u32::try_from(p.env.len()).map_err(|_| WireError::BadValue)?)?;
        for (k, v) in p.env {
            w.bytes(k)?;
            w.bytes(v)?;
        }
        w.bytes(p.cwd)
    }

    /// Parses and validates the payload.
    pub fn decode(payload: &'a [u8]) -> Result<RunCode<'a>, WireError> {
        let mut r = Reader::new(payload);
        let clock_ns = r.u64()?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(r.take(32)?);
        let timeout_ms = r.u32()?;
        let language = Language::from_u32(r.u32()?)?;
        let vm_id = r.u64()?;
        let context = r.bytes()?;
        if context.len() > MAX_CONTEXT_NAME {
            return Err(WireError::BadValue);
        }
        let code = r.bytes()?;
        let env = StrList::decode(&mut r, 2)?;
        let cwd = r.bytes()?;
        r.finish()?;
        Ok(RunCode {
            clock_ns,
            seed,
            timeout_ms,
            language,
            vm_id,
            context,
            code,
            env,
            cwd,
        })
    }

    /// Iterates the environment as (key, value) pairs.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.env.pairs()
    }
}

/// An uncaught exception, as the language reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeError<'a> {
    /// The exception's type (`ValueError`, `TypeError`, `SyntaxError`...).
    pub name: &'a [u8],
    /// Its message.
    pub value: &'a [u8],
    /// The formatted traceback (or stack), as the language prints it.
    pub traceback: &'a [u8],
}

/// `CodeEnd` parts bit: a result follows.
const HAS_RESULT: u32 = 1;
/// `CodeEnd` parts bit: an error follows.
const HAS_ERROR: u32 = 2;

/// Payload of [`crate::Kind::CodeEnd`]: how the code ended, the text of its
/// last expression's value and its uncaught exception, then (like
/// [`ExitStatus`]) possibly the last output chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeEnd<'a> {
    /// Exit status: the process's for a fresh interpreter; for a context,
    /// 0 or 1 (error) while it lives, its death's when it died.
    pub status: ExitStatus,
    /// Text representation of the final expression's value, if any.
    pub result: Option<&'a [u8]>,
    /// The uncaught exception, if any.
    pub error: Option<CodeError<'a>>,
}

impl<'a> CodeEnd<'a> {
    /// Payload bytes [`CodeEnd::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let result = self.result.map_or(0, |r| 4 + r.len());
        let error = self
            .error
            .map_or(0, |e| 12 + e.name.len() + e.value.len() + e.traceback.len());
        12 + 4 + result + error
    }

    /// Appends the payload.
    pub fn encode(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        self.status.encode(w)?;
        let parts = if self.result.is_some() { HAS_RESULT } else { 0 }
            | if self.error.is_some() { HAS_ERROR } else { 0 };
        w.u32(parts)?;
        if let Some(r) = self.result {
            w.bytes(r)?;
        }
        if let Some(e) = &self.error {
            w.bytes(e.name)?;
            w.bytes(e.value)?;
            w.bytes(e.traceback)?;
        }
        Ok(())
    }

    /// Appends the payload followed by a last output chunk (one VM exit
    /// saved, as with [`ExitStatus::encode_with_output`]).
    pub fn encode_with_output(
        &self,
        w: &mut Writer<'_>,
        tail: &Output<'_>,
    ) -> Result<(), WireError> {
        self.encode(w)?;
        w.u32(tail.stream as u32)?;
        w.bytes(tail.data)
    }

    /// Parses the payload and its optional trailing output chunk.
    pub fn decode(payload: &'a [u8]) -> Result<(CodeEnd<'a>, Option<Output<'a>>), WireError> {
        let mut r = Reader::new(payload);
        let status = ExitStatus {
            code: r.i32()?,
            signal: r.i32()?,
            flags: r.u32()?,
        };
        let parts = r.u32()?;
        if parts & !(HAS_RESULT | HAS_ERROR) != 0 {
            return Err(WireError::BadValue);
        }
        let result = if parts & HAS_RESULT != 0 {
            Some(r.bytes()?)
        } else {
            None
        };
        let error = if parts & HAS_ERROR != 0 {
            Some(CodeError {
                name: r.bytes()?,
                value: r.bytes()?,
                traceback: r.bytes()?,
            })
        } else {
            None
        };
        let end = CodeEnd {
            status,
            result,
            error,
        };
        if r.position() == payload.len() {
            return Ok((end, None));
        }
        let stream = Stream::from_u32(r.u32()?)?;
        let data = r.bytes()?;
        r.finish()?;
        Ok((end, Some(Output { stream, data })))
    }
}

/// One entry of a [`ContextList`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEntry<'a> {
    /// The name the host gave it.
    pub name: &'a [u8],
    /// Its language.
    pub language: Language,
}

/// Payload of [`crate::Kind::Contexts`]: the persistent contexts alive in the
/// guest.
#[derive(Clone, Copy, Debug)]
pub struct ContextList<'a> {
    count: u32,
    raw: &'a [u8],
}

impl<'a> ContextList<'a> {
    /// Appends the payload.
    pub fn encode<'p>(
        w: &mut Writer<'_>,
        entries: impl ExactSizeIterator<Item = ContextEntry<'p>>,
    ) -> Result<(), WireError> {
        w.u32(u32::try_from(entries.len()).map_err(|_| WireError::BadValue)?)?;
        for e in entries {
            w.bytes(e.name)?;
            w.u32(e.language as u32)?;
        }
        Ok(())
    }

    /// Parses and validates the payload.
    pub fn decode(payload: &'a [u8]) -> Result<ContextList<'a>, WireError> {
        let mut r = Reader::new(payload);
        let count = r.u32()?;
        let raw = r.rest();
        let mut walk = Reader::new(raw);
        for _ in 0..count {
            if walk.bytes()?.len() > MAX_CONTEXT_NAME {
                return Err(WireError::BadValue);
            }
            Language::from_u32(walk.u32()?)?;
        }
        walk.finish()?;
        Ok(ContextList { count, raw })
    }

    /// Number of contexts.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates the (already validated) entries.
    pub fn iter(&self) -> impl Iterator<Item = ContextEntry<'a>> + 'a {
        let mut r = Reader::new(self.raw);
        core::iter::from_fn(move || {
            let name = r.bytes().ok()?;
            let language = Language::from_u32(r.u32().ok()?).ok()?;
            Some(ContextEntry { name, language })
        })
    }
}
