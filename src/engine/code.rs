//! Running code with notebook semantics: Python, JavaScript or shell, in a
//! fresh interpreter or in one of a sandbox's persistent contexts (which live
//! in its memory, so a snapshot branches them). The one-shot form forks a
//! sandbox, runs the code and kills it.

use super::exec::{fresh_seed, now_ns};
use super::{CancelToken, Engine, EngineError, ExecOptions, ExecResult};
use crate::agent::{self, CodeFailure, CodeRequest, ContextInfo, Stream, VmLink};

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
    /// Runs `req` in sandbox `id`; `on_output` sees each chunk as it arrives.
    pub fn run_code(
        &self,
        id: &str,
        req: &CodeRequest,
        opts: &ExecOptions,
        on_output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<CodeResult, EngineError> {
        if let Some(name) = &req.context {
            check_context(name)?;
        }
        let vm_id = self.sandbox(id)?.vm_id;
        let frame = agent::encode_run_code(req, vm_id, now_ns(), fresh_seed())
            .map_err(EngineError::from_agent)?;
        let (end, exec) = self.streaming_call(id, opts, on_output, move |link, cap, out| {
            agent::run_code(link, &frame, cap, out)
        })?;
        Ok(CodeResult {
            exec: exec.ended(&end.end),
            result: end.result,
            error: end.error,
        })
    }

    /// Forks a sandbox from `template`, runs `req` in it and kills it,
    /// whatever the run's outcome. `on_output` also gets the sandbox's id.
    pub fn run_code_once(
        &self,
        template: &str,
        req: &CodeRequest,
        opts: &ExecOptions,
        on_output: &mut dyn FnMut(&str, Stream, &[u8]),
    ) -> Result<CodeResult, EngineError> {
        if req.context.is_some() {
            return Err(EngineError::InvalidRequest(
                "a context lives in a sandbox: fork one to keep it".into(),
            ));
        }
        let sandbox = self.fork(template)?.sandbox;
        let ran = self.run_code(&sandbox, req, opts, &mut |s, d| on_output(&sandbox, s, d));
        // Only fails if a concurrent kill (or shutdown) got there first.
        let _already_gone = self.kill(&sandbox);
        ran
    }

    /// The persistent contexts alive in sandbox `id`.
    pub fn contexts(&self, id: &str) -> Result<Vec<ContextInfo>, EngineError> {
        self.converse(
            id,
            self.timeout_or_default(None),
            &CancelToken::new(),
            &mut |_, _| {},
            Box::new(|vm, tpl, _| {
                agent::list_contexts(&mut VmLink {
                    vm,
                    mailbox: &tpl.layer.mailbox,
                })
            }),
        )
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
