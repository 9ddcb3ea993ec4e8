//! `sandbox.run_code`: its params in, the engine's code run out, on the
//! slow-work pool (the engine's blocking call waits for the guest there;
//! a code run is a request of seconds, not of microseconds). The output
//! streams as `sandbox.output` notifications, as an exec's does.

use super::dispatch::answer;
use super::errors;
use super::output::Streamer;
use super::params::{
    CodeErrorWire, ExecResult, NetworkParam, RunCodeResult, SandboxRunCode, fork_options,
};
use super::reply::Reply;
use crate::engine::{Engine, OutputStream};

/// `sandbox.run_code`: in `sandbox`, or in a fresh fork of `template` (made
/// with `network` and `memory_limit_mib`, as `sandbox.run`'s forks are).
pub(super) fn run_code(engine: &Engine, p: SandboxRunCode, reply: Reply) {
    let req = p.request();
    let cancel = reply.cancel_token().clone();
    let notifier = reply.notifier();
    // Made at the first chunk: a one-shot run's sandbox is named then.
    let mut streamer: Option<Streamer> = None;
    let mut push = |sandbox: &str, stream: OutputStream, data: &[u8]| {
        if p.stream {
            streamer
                .get_or_insert_with(|| {
                    Streamer::new(notifier.clone(), sandbox.to_string(), p.encoding)
                })
                .chunk(stream, data);
        }
    };
    let for_fork = !matches!(p.network, NetworkParam::Template) || p.memory_limit_mib.is_some();
    let result = match (&p.sandbox, &p.template) {
        (Some(_), None) if for_fork => {
            return reply.err(errors::invalid_params(
                "`network` and `memory_limit_mib` set up a fresh fork: give them with `template`",
            ));
        }
        (Some(sandbox), None) => {
            engine.run_code(sandbox, &req, &cancel, &mut |s, d| push(sandbox, s, d))
        }
        (None, Some(template)) => {
            let opts = fork_options(p.network, p.memory_limit_mib);
            engine.run_code_once(template, &opts, &req, &cancel, &mut push)
        }
        _ => {
            return reply.err(errors::invalid_params(
                "give exactly one of `sandbox` or `template`",
            ));
        }
    };
    if let Some(s) = &mut streamer {
        s.finish();
    }
    let encoding = p.encoding;
    answer(
        reply,
        result.map(|r| RunCodeResult {
            exec: ExecResult::new(r.exec, encoding),
            result: r.result,
            error: r.error.map(|e| CodeErrorWire {
                name: e.name,
                value: e.value,
                traceback: e.traceback,
            }),
        }),
    );
}
