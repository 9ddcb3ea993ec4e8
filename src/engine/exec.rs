//! Running a program in a sandbox and collecting what it printed.

use std::time::{Duration, Instant, SystemTime};

use super::{CancelToken, Engine, EngineError};
use crate::agent::{self, ExecRequest, FramePort, Stream};

/// Extra time the host allows past an exec's in-guest `timeout_ms` before it
/// stops the vCPU: a guest agent that honours the in-guest deadline answers
/// `timed_out: true` first and the sandbox stays usable. Every front end that
/// takes a `timeout_ms` from its caller adds it.
pub const EXEC_HOST_GRACE_MS: u64 = 500;

/// Per-call knobs.
#[derive(Clone, Default)]
pub struct ExecOptions {
    /// Deadline; `None` uses the engine default.
    pub timeout: Option<Duration>,
    /// Output bytes kept; `None` uses the engine default.
    pub output_cap: Option<usize>,
    /// Cancels the call when triggered.
    pub cancel: CancelToken,
}

/// The outcome of an exec that ran to its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code, unless a signal ended the program.
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    pub signal: Option<i32>,
    /// The agent's in-guest deadline killed the program (the sandbox stays usable).
    pub timed_out: bool,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    /// Wall time of the call.
    pub duration: Duration,
}

impl Engine {
    /// Deadline of a call that names none.
    pub(crate) fn timeout_or_default(&self, t: Option<Duration>) -> Duration {
        t.unwrap_or(Duration::from_millis(self.0.config.default_timeout_ms))
    }

    /// Runs `req` in a sandbox; `on_output` sees each chunk as it arrives.
    pub fn exec(
        &self,
        id: &str,
        req: &ExecRequest,
        opts: &ExecOptions,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<ExecResult, EngineError> {
        let start = Instant::now();
        if req.argv.is_empty() {
            return Err(EngineError::InvalidRequest("argv must not be empty".into()));
        }
        let cap = opts.output_cap.unwrap_or(self.0.config.default_output_cap);
        let frame =
            agent::encode_exec(req, now_ns(), fresh_seed()).map_err(EngineError::from_agent)?;
        let mut result = ExecResult::default();
        let port = self.sandbox(id)?.net.as_ref().and_then(|n| n.port());
        let end = self.converse(
            id,
            self.timeout_or_default(opts.timeout),
            &opts.cancel,
            &mut |stream, data| {
                on_output(stream, data);
                match stream {
                    Stream::Stdout => result.stdout.extend_from_slice(data),
                    Stream::Stderr => result.stderr.extend_from_slice(data),
                }
            },
            Box::new(move |vm, tpl, out| {
                let net = port.as_deref().map(|p| p as &dyn FramePort);
                agent::exec(vm, &tpl.layer.mailbox, &frame, cap, out, net)
            }),
        )?;
        result.exit_code = (end.signal == 0).then_some(end.code);
        result.signal = (end.signal != 0).then_some(end.signal);
        result.timed_out = end.timed_out;
        result.truncated = end.truncated;
        result.duration = start.elapsed();
        Ok(result)
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source is available");
    seed
}
