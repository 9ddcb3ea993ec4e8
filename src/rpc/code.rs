//! `sandbox.run_code` and `sandbox.contexts`: their params in, the engine's
//! code runs and context lists out.

use jsonrpsee::types::ErrorObjectOwned;

use super::errors;
use super::methods::{Call, Streamer, engine_err, run_options};
use super::params::{
    CodeErrorWire, ContextEntry, ContextList, ExecResult, RunCodeResult, SandboxRef, SandboxRunCode,
};
use crate::agent::CodeRequest;
use crate::engine::Engine;

/// `sandbox.run_code`: in `sandbox`, or in a fresh fork of `template`.
pub(super) fn run_code(
    engine: &Engine,
    p: SandboxRunCode,
    call: &Call,
) -> Result<RunCodeResult, ErrorObjectOwned> {
    let (timeout_ms, opts) = run_options(engine, p.timeout_ms, p.output_cap, call)?;
    let req = CodeRequest {
        language: p.language.into(),
        code: p.code,
        context: p.context,
        env: p.env.into_iter().collect(),
        cwd: p.cwd,
        timeout_ms,
    };
    let mut streamer = Streamer::new(call, p.stream, p.encoding);
    let result = match (&p.sandbox, &p.template) {
        (Some(sandbox), None) => engine.run_code(sandbox, &req, &opts, &mut |stream, data| {
            streamer.push(sandbox, stream, data)
        }),
        (None, Some(template)) => {
            engine.run_code_once(template, &req, &opts, &mut |sandbox, stream, data| {
                streamer.push(sandbox, stream, data)
            })
        }
        _ => {
            return Err(errors::invalid_params(
                "give exactly one of `sandbox` or `template`",
            ));
        }
    };
    streamer.finish();
    let r = result.map_err(engine_err)?;
    Ok(RunCodeResult {
        exec: ExecResult::of(&r.exec, p.encoding),
        result: r.result,
        error: r.error.map(|e| CodeErrorWire {
            name: e.name,
            value: e.value,
            traceback: e.traceback,
        }),
    })
}

/// `sandbox.contexts`.
pub(super) fn contexts(
    engine: &Engine,
    p: SandboxRef,
    _call: &Call,
) -> Result<ContextList, ErrorObjectOwned> {
    let contexts = engine.contexts(&p.sandbox).map_err(engine_err)?;
    Ok(ContextList {
        contexts: contexts
            .into_iter()
            .map(|c| ContextEntry {
                name: c.name,
                language: c.language.into(),
            })
            .collect(),
    })
}
