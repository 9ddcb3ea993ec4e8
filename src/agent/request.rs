//! Encoding requests. Every exec carries the host's wall clock and
//! fresh randomness, so the first exec after a fork already reseeds the guest.

use zeroboot_proto::{
    Exec, ExecParts, Kind, Language, MAILBOX_SIZE, Program, RunCode, RunCodeParts, encode_frame,
};

use super::AgentError;

/// What to run in the guest.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    /// Program and arguments (Python source in `argv[0]` for [`Program::Python`]).
    pub argv: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory ("" for the agent's default).
    pub cwd: String,
    /// Standard input.
    pub stdin: Vec<u8>,
    /// In-guest deadline in milliseconds (0: none).
    pub timeout_ms: u32,
    /// How to interpret `argv`.
    pub program: Option<Program>,
}

/// Builds the Exec frame for `req` with the given clock and seed.
pub fn encode_exec(
    req: &ExecRequest,
    clock_ns: u64,
    seed: [u8; 32],
) -> Result<Vec<u8>, AgentError> {
    let size_hint = req.stdin.len() + req.argv.iter().map(String::len).sum::<usize>();
    encode(Kind::Exec, 0, size_hint, |w| {
        Exec::encode(
            w,
            ExecParts {
                clock_ns,
                seed,
                timeout_ms: req.timeout_ms,
                program: req.program.unwrap_or(Program::Argv),
                argv: req.argv.iter().map(|a| a.as_bytes()),
                env: req.env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                cwd: req.cwd.as_bytes(),
                stdin: &req.stdin,
            },
        )
    })
}

/// Code to run with notebook semantics.
#[derive(Clone, Debug)]
pub struct CodeRequest {
    /// What `code` is written in.
    pub language: Language,
    /// The source.
    pub code: String,
    /// The persistent context (`None`: a fresh interpreter).
    pub context: Option<String>,
    /// Environment variables set before the code runs.
    pub env: Vec<(String, String)>,
    /// Working directory ("" to leave it).
    pub cwd: String,
    /// In-guest deadline in milliseconds (0: none).
    pub timeout_ms: u32,
}

/// Builds the RunCode frame for `req` run in the VM named `vm_id`, with the
/// given clock and seed.
pub fn encode_run_code(
    req: &CodeRequest,
    vm_id: u64,
    clock_ns: u64,
    seed: [u8; 32],
) -> Result<Vec<u8>, AgentError> {
    encode(Kind::RunCode, 0, req.code.len(), |w| {
        RunCode::encode(
            w,
            RunCodeParts {
                clock_ns,
                seed,
                timeout_ms: req.timeout_ms,
                language: req.language,
                vm_id,
                context: req.context.as_deref().unwrap_or_default().as_bytes(),
                code: req.code.as_bytes(),
                env: req.env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                cwd: req.cwd.as_bytes(),
            },
        )
    })
}

/// Encodes one frame into a fresh buffer; a body that does not fit a mailbox
/// is [`AgentError::RequestTooLarge`] (`size_hint` is the size reported).
pub(super) fn encode(
    kind: Kind,
    flags: u32,
    size_hint: usize,
    body: impl FnOnce(&mut zeroboot_proto::Writer<'_>) -> Result<(), zeroboot_proto::WireError>,
) -> Result<Vec<u8>, AgentError> {
    let mut buf = vec![0u8; MAILBOX_SIZE];
    let n = encode_frame(&mut buf, kind, flags, body)
        .map_err(|_| AgentError::RequestTooLarge(size_hint))?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroboot_proto::decode_frame;

    #[test]
    fn request_round_trips_through_the_wire_format() {
        let req = ExecRequest {
            argv: vec!["echo".into(), "hi".into()],
            env: vec![("A".into(), "1".into())],
            cwd: "/w".into(),
            stdin: b"x".to_vec(),
            timeout_ms: 5,
            program: None,
        };
        let frame = encode_exec(&req, 42, [3; 32]).unwrap();
        let (h, p) = decode_frame(&frame).unwrap();
        assert_eq!(h.kind, Kind::Exec);
        let e = Exec::decode(p).unwrap();
        assert_eq!(e.clock_ns, 42);
        assert_eq!(e.argv.len(), 2);
        assert_eq!(e.cwd, b"/w");
    }

    #[test]
    fn oversized_stdin_is_refused() {
        let req = ExecRequest {
            argv: vec!["cat".into()],
            stdin: vec![0; MAILBOX_SIZE],
            ..Default::default()
        };
        assert!(matches!(
            encode_exec(&req, 0, [0; 32]),
            Err(AgentError::RequestTooLarge(_))
        ));
    }
}
