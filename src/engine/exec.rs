//! Running a program in a sandbox and collecting what it printed; and the
//! one-shot run (fork, exec, kill) that needs no sandbox id from the caller.

use std::time::{Duration, Instant};

use super::converse::Relay;
use super::{CancelToken, Engine, EngineError, ExecRequest, ExecResult, OutputStream};
use crate::agent::{self, AgentError, FrameLink, FramePort, Stream, VmLink};

/// Where an exec's output and end go. Both are called on the VM's thread:
/// the guest is not run while [`ExecSink::output`] blocks, so a sink whose
/// consumer is slow holds the guest back instead of buffering without bound.
pub trait ExecSink: Send + 'static {
    /// A chunk of output, as the guest produced it, within the output cap.
    fn output(&mut self, stream: OutputStream, data: &[u8]);
    /// The end of the exec; called exactly once.
    fn done(self: Box<Self>, result: Result<ExecResult, EngineError>);
}

/// The agent's calls that print as they run ([`agent::exec`],
/// [`agent::run_code`]): link, request frame, output cap, output, network.
type AgentCall<E> = fn(
    &mut dyn FrameLink,
    &[u8],
    usize,
    &mut dyn FnMut(Stream, &[u8]),
    Option<&dyn FramePort>,
) -> Result<E, AgentError>;

/// A guest call that prints as it runs, with its request frame and the
/// output cap.
pub(crate) struct PrintingCall<E> {
    pub frame: Vec<u8>,
    pub cap: usize,
    pub call: AgentCall<E>,
}

/// What sees a printing call's output chunks, on the VM's thread.
pub(crate) trait OnOutput: Send + 'static {
    fn chunk(&mut self, stream: OutputStream, data: &[u8]);
}

impl OnOutput for Box<dyn ExecSink> {
    fn chunk(&mut self, stream: OutputStream, data: &[u8]) {
        self.output(stream, data);
    }
}

impl<T: Send + 'static> OnOutput for Relay<T> {
    fn chunk(&mut self, stream: OutputStream, data: &[u8]) {
        self.output(stream, data);
    }
}

/// A printing call under way: who sees its output, and what it printed.
struct Collect<S> {
    sink: S,
    printed: Printed,
}

/// What a program has printed so far (an exec's or a code run's).
#[derive(Default)]
pub(crate) struct Printed {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Printed {
    /// Keeps a chunk of output.
    pub(crate) fn push(&mut self, stream: OutputStream, data: &[u8]) {
        match stream {
            OutputStream::Stdout => self.stdout.extend_from_slice(data),
            OutputStream::Stderr => self.stderr.extend_from_slice(data),
        }
    }

    /// The result of a run that ended as `end` after starting at `start`.
    pub(crate) fn ended(self, end: &agent::ExecEnd, start: Instant) -> ExecResult {
        ExecResult {
            stdout: self.stdout,
            stderr: self.stderr,
            exit_code: (end.signal == 0).then_some(end.code),
            signal: (end.signal != 0).then_some(end.signal),
            timed_out: end.timed_out,
            truncated: end.truncated,
            duration: start.elapsed(),
        }
    }
}

impl Engine {
    /// Runs `call` in sandbox `id` within `limit`: `sink` sees each output
    /// chunk as it arrives, then `done` gets it back with the call's end and
    /// what was printed (on this thread if the call cannot start).
    pub(crate) fn converse_printing<S: OnOutput, E: Send + 'static>(
        &self,
        id: &str,
        limit: Duration,
        cancel: &CancelToken,
        call: PrintingCall<E>,
        sink: S,
        done: impl FnOnce(S, Result<(Printed, E), EngineError>) + Send + 'static,
    ) {
        // The TAP link's endpoint, which the conversation carries frames for
        // (none without network, or on the virtio link).
        let port = self
            .sandbox(id)
            .ok()
            .and_then(|sb| sb.net.as_ref().and_then(|n| n.port()));
        let collect = Collect {
            sink,
            printed: Printed::default(),
        };
        self.converse_then(
            id,
            limit,
            cancel,
            collect,
            move |vm, tpl, c: &mut Collect<S>| {
                let net = port.as_deref().map(|p| p as &dyn FramePort);
                let mut out = |stream, data: &[u8]| {
                    let stream = OutputStream::from_agent(stream);
                    c.sink.chunk(stream, data);
                    c.printed.push(stream, data);
                };
                let mut link = VmLink {
                    vm,
                    mailbox: &tpl.layer.mailbox,
                };
                (call.call)(&mut link, &call.frame, call.cap, &mut out, net)
            },
            move |c, result| done(c.sink, result.map(|end| (c.printed, end))),
        );
    }

    /// Starts `req` in sandbox `id`; `sink` sees each output chunk as it
    /// arrives and then the result. Returns at once: the end is reported on
    /// the VM's thread (or on this one if the exec cannot start).
    pub fn exec_then(
        &self,
        id: &str,
        req: &ExecRequest,
        cancel: &CancelToken,
        sink: Box<dyn ExecSink>,
    ) {
        let start = Instant::now();
        let checked = match req.check(&self.0.config) {
            Ok(c) => c,
            Err(e) => return sink.done(Err(e)),
        };
        let frame = match req.frame(checked.timeout) {
            Ok(f) => f,
            Err(e) => return sink.done(Err(e)),
        };
        let call = PrintingCall {
            frame,
            cap: checked.output_cap,
            call: agent::exec,
        };
        self.converse_printing(
            id,
            checked.host_deadline,
            cancel,
            call,
            sink,
            move |sink, result| sink.done(result.map(|(printed, end)| printed.ended(&end, start))),
        );
    }

    /// Runs `req` in sandbox `id` and waits for it; `on_output` sees each
    /// chunk as it arrives, on this thread.
    pub fn exec(
        &self,
        id: &str,
        req: &ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<ExecResult, EngineError> {
        let limit = req.check(&self.0.config)?.host_deadline;
        Engine::wait(limit, on_output, |relay| {
            self.exec_then(id, req, cancel, Box::new(relay));
        })
    }

    /// Runs `req` in sandbox `id`, a fresh fork, and kills it when the exec
    /// ends, before `sink` hears of the end: fork, then this, is a one-shot
    /// run. The sandbox is killed even if the exec cannot start.
    pub fn run_then(
        &self,
        id: &str,
        req: &ExecRequest,
        cancel: &CancelToken,
        sink: Box<dyn ExecSink>,
    ) {
        let kill_after = KillAfter {
            engine: self.clone(),
            sandbox: id.to_string(),
            sink,
        };
        self.exec_then(id, req, cancel, Box::new(kill_after));
    }

    /// Forks `template`, runs `req` in the fork and kills it, waiting for
    /// the result.
    pub fn run(
        &self,
        template: &str,
        req: &ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(OutputStream, &[u8]),
    ) -> Result<ExecResult, EngineError> {
        let limit = req.check(&self.0.config)?.host_deadline;
        let forked = self.fork(template)?;
        Engine::wait(limit, on_output, |relay| {
            self.run_then(&forked.sandbox, req, cancel, Box::new(relay));
        })
    }
}

/// Kills the sandbox of a one-shot run before passing its end on.
struct KillAfter {
    engine: Engine,
    sandbox: String,
    sink: Box<dyn ExecSink>,
}

impl ExecSink for KillAfter {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        self.sink.output(stream, data);
    }

    fn done(self: Box<Self>, result: Result<ExecResult, EngineError>) {
        // Already gone if someone killed it meanwhile; the exec's own
        // result says so.
        let _ = self.engine.kill(&self.sandbox);
        self.sink.done(result);
    }
}

impl ExecSink for Relay<ExecResult> {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        Relay::output(self, stream, data);
    }

    fn done(self: Box<Self>, result: Result<ExecResult, EngineError>) {
        Relay::done(*self, result);
    }
}
