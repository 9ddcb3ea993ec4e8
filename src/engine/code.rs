//! Running code with notebook semantics: Python, JavaScript or shell, in a
//! fresh interpreter or in one of a sandbox's persistent contexts (which live
//! in its memory, so a snapshot branches them). The one-shot form forks a
//! sandbox, runs the code and kills it.

use std::time::{Duration, Instant};

use super::exec::PrintingCall;
use super::request::{Checked, fresh_seed, now_ns};
use super::{CancelToken, Engine, EngineError, ExecResult, ForkOptions, OutputStream};
use crate::agent::{self, VmLink};
pub use crate::agent::{CodeFailure, ContextInfo, Language};

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
    /// Deadline inside the guest (default: the engine's), as for an exec.
    pub timeout: Option<Duration>,
    /// Output bytes kept (default: the engine's), as for an exec.
    pub output_cap: Option<usize>,
}

/// The outcome of a code run that ran to its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodeResult {
    /// Output and exit status, as for an exec.
    pub exec: ExecResult,
    /// The text of the last expression's value.
    pub result: Option<String>,
    /// The uncaught exception.
    pub error: Option<CodeFailure>,
}

/// Longest context name (the agent's limit).
pub const MAX_CONTEXT_NAME: usize = zeroboot_proto::MAX_CONTEXT_NAME;

/// Checks a context name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn check_context(name: &str) -> Result<(), EngineError> {
    let ok = (1..=MAX_CONTEXT_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(EngineError::InvalidRequest(format!(
            "a context name is 1 to {MAX_CONTEXT_NAME} letters, digits, '.', '_' or '-'"
        )))
    }
}

impl Engine {
    /// Runs `req` in sandbox `id` and waits for it; `on_output` sees each
    /// chunk as it arrives, on this thread.
    pub fn run_code(
        &self,
        id: &str,
        req: &CodeRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<CodeResult, EngineError> {
        let start = Instant::now();
        if let Some(name) = &req.context {
            check_context(name)?;
        }
        let checked = Checked::new(req.timeout, req.output_cap, &self.0.config)?;
        let sandbox = self.sandbox(id)?;
        let wire = agent::CodeRequest {
            language: req.language,
            code: req.code.clone(),
            context: req.context.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            timeout_ms: checked.timeout.as_millis() as u32,
        };
        let call = PrintingCall {
            frame: agent::encode_run_code(&wire, sandbox.vm_id, now_ns(), fresh_seed())
                .map_err(EngineError::from_agent)?,
            cap: checked.output_cap,
            call: agent::run_code,
        };
        let limit = checked.host_deadline;
        Engine::wait(limit, on_output, |relay| {
            self.converse_printing(id, limit, cancel, call, relay, move |relay, result| {
                relay.done(result.map(|(printed, end)| CodeResult {
                    exec: printed.ended(&end.end, start),
                    result: end.result,
                    error: end.error,
                }));
            });
        })
    }

    /// Forks a sandbox from `template` as `opts` say, runs `req` in it and
    /// kills it, whatever the run's outcome. `on_output` also gets the
    /// sandbox's id.
    pub fn run_code_once(
        &self,
        template: &str,
        opts: &ForkOptions,
        req: &CodeRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(&str, OutputStream, &[u8]),
    ) -> Result<CodeResult, EngineError> {
        if req.context.is_some() {
            return Err(EngineError::InvalidRequest(
                "a context lives in a sandbox: fork one to keep it".into(),
            ));
        }
        let sandbox = self.fork_with(template, opts)?.sandbox;
        let ran = self.run_code(&sandbox, req, cancel, &mut |s, d| on_output(&sandbox, s, d));
        // Only fails if a concurrent kill (or shutdown) got there first.
        let _already_gone = self.kill(&sandbox);
        ran
    }

    /// The persistent contexts alive in sandbox `id`.
    pub fn contexts(&self, id: &str) -> Result<Vec<ContextInfo>, EngineError> {
        let limit = Checked::new(None, None, &self.0.config)?.host_deadline;
        self.converse(id, limit, &CancelToken::new(), |vm, tpl| {
            agent::list_contexts(&mut VmLink {
                vm,
                mailbox: &tpl.layer.mailbox,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_names_are_short_plain_words() {
        for good in ["a", "nb-1", "x.y_z", &"n".repeat(64)] {
            assert!(check_context(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "é", "a/b", &"n".repeat(65)] {
            assert!(check_context(bad).is_err(), "{bad}");
        }
    }
}
