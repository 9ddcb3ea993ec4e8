//! Encoding requests. Every exec carries the host's wall clock and
//! fresh randomness, so the first exec after a fork already reseeds the guest.

use zeroboot_proto::{
    Exec, ExecParts, Kind, Language, MAILBOX_SIZE, Program, RunCode, RunCodeParts, Writer,
    encode_frame, frame_len,
};

use super::AgentError;

/// What to run in the guest, borrowed from the caller's request.
#[derive(Clone, Copy, Debug)]
pub struct ExecRequest<'a> {
    /// Program and arguments (Python source in `argv[0]` for [`Program::Python`]).
    pub argv: &'a [String],
    /// Environment variables.
    pub env: &'a [(String, String)],
    /// Working directory ("" for the agent's default).
    pub cwd: &'a str,
    /// Standard input.
    pub stdin: &'a [u8],
    /// In-guest deadline in milliseconds (0: none).
    pub timeout_ms: u32,
    /// How to interpret `argv`.
    pub program: Program,
}

/// Builds the Exec frame for `req` with the given clock and seed.
pub fn encode_exec(
    req: &ExecRequest<'_>,
    clock_ns: u64,
    seed: [u8; 32],
) -> Result<Vec<u8>, AgentError> {
    encode(Kind::Exec, 0, |w| {
        Exec::encode(
            w,
            ExecParts {
                clock_ns,
                seed,
                timeout_ms: req.timeout_ms,
                program: req.program,
                argv: req.argv.iter().map(|a| a.as_bytes()),
                env: req.env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                cwd: req.cwd.as_bytes(),
                stdin: req.stdin,
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
    encode(Kind::RunCode, 0, |w| {
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

/// Encodes one frame into a fresh buffer. A frame that does not fit a
/// mailbox is [`AgentError::RequestTooLarge`] with its real size: `body` is
/// run again on a writer that only counts.
pub(super) fn encode(
    kind: Kind,
    flags: u32,
    body: impl Fn(&mut Writer<'_>) -> Result<(), zeroboot_proto::WireError>,
) -> Result<Vec<u8>, AgentError> {
    let mut buf = vec![0u8; MAILBOX_SIZE];
    match encode_frame(&mut buf, kind, flags, &body) {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(_) => Err(AgentError::RequestTooLarge {
            bytes: frame_len(&body)?,
            limit: MAILBOX_SIZE,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroboot_proto::decode_frame;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn request_round_trips_through_the_wire_format() {
        let argv = strings(&["echo", "hi"]);
        let env = vec![("A".to_string(), "1".to_string())];
        let req = ExecRequest {
            argv: &argv,
            env: &env,
            cwd: "/w",
            stdin: b"x",
            timeout_ms: 5,
            program: Program::Argv,
        };
        let frame = encode_exec(&req, 42, [3; 32]).unwrap();
        let (h, p) = decode_frame(&frame).unwrap();
        assert_eq!(h.kind, Kind::Exec);
        let e = Exec::decode(p).unwrap();
        assert_eq!(e.clock_ns, 42);
        assert_eq!(e.argv.len(), 2);
        assert_eq!(e.cwd, b"/w");
    }

    /// The size reported counts every part of the request: argv, env, cwd
    /// and stdin (a 10 MB env value was once reported as "3 bytes").
    #[test]
    fn an_oversized_request_reports_its_whole_size() {
        let argv = strings(&["env"]);
        let small = ExecRequest {
            argv: &argv,
            env: &[],
            cwd: "",
            stdin: b"",
            timeout_ms: 0,
            program: Program::Argv,
        };
        let base = encode_exec(&small, 0, [0; 32]).unwrap().len();
        let big = "v".repeat(10_000_000);
        let env = vec![("K".to_string(), big)];
        let cwd = "c".repeat(70_000);
        let stdin = vec![0u8; 80_000];
        for (req, extra) in [
            (ExecRequest { env: &env, ..small }, 4 + 1 + 4 + 10_000_000),
            (ExecRequest { cwd: &cwd, ..small }, 70_000),
            (
                ExecRequest {
                    stdin: &stdin,
                    ..small
                },
                80_000,
            ),
        ] {
            // The counts and length prefixes of the small request are
            // already in `base`; an env pair adds its two prefixes.
            let want = base + extra;
            match encode_exec(&req, 0, [0; 32]) {
                Err(AgentError::RequestTooLarge { bytes, limit }) => {
                    assert_eq!(limit, MAILBOX_SIZE);
                    assert_eq!(bytes, want);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
