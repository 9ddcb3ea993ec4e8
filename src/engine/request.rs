//! The engine's own words for running a program: what to run
//! ([`ExecRequest`]), which stream a chunk of output came from
//! ([`OutputStream`]) and how it ended ([`ExecResult`]). Front ends (the
//! JSON-RPC worker, the CLI, tests) build these; the engine checks them
//! against its [`EngineConfig`] and turns them into the agent protocol's
//! frames, which nothing above the engine sees.

use std::time::Duration;

use super::config::MAX_TIMEOUT_MS;
use super::{EngineConfig, EngineError};
use crate::agent;

/// How `argv` is interpreted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Program {
    /// `argv[0]` is the program, the rest its arguments.
    #[default]
    Argv,
    /// `argv[0]` is Python source run by the guest's pre-warmed interpreter.
    Python,
}

/// Which of a program's outputs a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What to run in a sandbox.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    /// Program and arguments (non-empty); Python source in `argv[0]` for
    /// [`Program::Python`].
    pub argv: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory ("" for the agent's default).
    pub cwd: String,
    /// Standard input.
    pub stdin: Vec<u8>,
    /// How to interpret `argv`.
    pub program: Program,
    /// Deadline inside the guest (default: the engine's). The host stops the
    /// vCPU `exec_host_grace_ms` later if the guest has not answered.
    pub timeout: Option<Duration>,
    /// Output bytes (stdout and stderr together) kept; the rest is dropped
    /// and the result says `truncated` (default: the engine's).
    pub output_cap: Option<usize>,
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

/// An [`ExecRequest`] checked against the configuration, with its defaults
/// filled in.
pub(crate) struct Checked {
    pub timeout: Duration,
    pub host_deadline: Duration,
    pub output_cap: usize,
}

impl Checked {
    /// Fills in a request's deadline and output cap from `config`, checking
    /// them against its limits.
    pub(crate) fn new(
        timeout: Option<Duration>,
        output_cap: Option<usize>,
        config: &EngineConfig,
    ) -> Result<Checked, EngineError> {
        let timeout = timeout.unwrap_or(Duration::from_millis(config.default_timeout_ms));
        if timeout.is_zero() || timeout.as_millis() > u128::from(MAX_TIMEOUT_MS) {
            return Err(EngineError::InvalidRequest(format!(
                "timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"
            )));
        }
        let limit = config.output_cap_limit();
        let output_cap = output_cap.unwrap_or(config.default_output_cap);
        if output_cap > limit {
            return Err(EngineError::InvalidRequest(format!(
                "output_cap must be at most {limit}"
            )));
        }
        Ok(Checked {
            timeout,
            host_deadline: config.host_deadline(timeout),
            output_cap,
        })
    }
}

impl ExecRequest {
    /// Checks the request against `config`'s limits.
    pub(crate) fn check(&self, config: &EngineConfig) -> Result<Checked, EngineError> {
        if self.argv.is_empty() {
            return Err(EngineError::InvalidRequest("argv must not be empty".into()));
        }
        Checked::new(self.timeout, self.output_cap, config)
    }

    /// The agent's Exec frame for this request, with the host's clock and a
    /// fresh seed.
    pub(crate) fn frame(&self, timeout: Duration) -> Result<Vec<u8>, EngineError> {
        let req = agent::ExecRequest {
            argv: &self.argv,
            env: &self.env,
            cwd: &self.cwd,
            stdin: &self.stdin,
            timeout_ms: timeout.as_millis() as u32,
            program: match self.program {
                Program::Argv => agent::Program::Argv,
                Program::Python => agent::Program::Python,
            },
        };
        agent::encode_exec(&req, now_ns(), fresh_seed()).map_err(EngineError::from_agent)
    }
}

impl OutputStream {
    pub(crate) fn from_agent(s: agent::Stream) -> OutputStream {
        match s {
            agent::Stream::Stdout => OutputStream::Stdout,
            agent::Stream::Stderr => OutputStream::Stderr,
        }
    }
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random source is available");
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> ExecRequest {
        ExecRequest {
            argv: vec!["echo".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_come_from_the_config_and_the_host_adds_its_grace() {
        let config = EngineConfig::default();
        let c = echo().check(&config).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(config.default_timeout_ms));
        assert_eq!(
            c.host_deadline,
            c.timeout + Duration::from_millis(config.exec_host_grace_ms)
        );
        assert_eq!(c.output_cap, config.default_output_cap);
    }

    #[test]
    fn limits_are_the_configs() {
        let config = EngineConfig {
            max_output_cap: 100,
            default_output_cap: 10,
            ..Default::default()
        };
        let with = |f: fn(&mut ExecRequest)| {
            let mut r = echo();
            f(&mut r);
            r.check(&config).err().map(|e| e.to_string())
        };
        assert!(with(|r| r.argv.clear()).unwrap().contains("argv"));
        assert!(with(|r| r.timeout = Some(Duration::ZERO)).is_some());
        assert!(with(|r| r.timeout = Some(Duration::from_millis(MAX_TIMEOUT_MS + 1))).is_some());
        assert!(with(|r| r.timeout = Some(Duration::from_millis(MAX_TIMEOUT_MS))).is_none());
        assert!(with(|r| r.output_cap = Some(101)).unwrap().contains("100"));
        assert!(with(|r| r.output_cap = Some(100)).is_none());
        // A default cap above the maximum stays allowed.
        let config = EngineConfig {
            max_output_cap: 1,
            default_output_cap: 10,
            ..Default::default()
        };
        let mut r = echo();
        r.output_cap = Some(10);
        assert!(r.check(&config).is_ok());
    }
}
