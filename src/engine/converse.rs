//! One request/response conversation with a sandbox's guest, whatever the
//! request. The job runs on the VM's thread and the call ends there too: its
//! `done` callback is called by the thread that finished the work, so a front
//! end can write the answer from it without waking anyone. The deadline is
//! kept by the engine's [`Deadlines`](super::deadline) thread and a cancel
//! kicks the vCPU from whichever thread cancels; both make the guest stop at
//! once. After a deadline or a cancel the guest was stopped mid-request, so
//! the sandbox is marked broken (only kill remains); its VM is still recycled
//! later, because a reset restores every piece of state.
//!
//! [`Engine::wait`] turns any of these calls back into a blocking one for
//! callers that have a thread to spare (the CLI, the bench, tests).

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::pool::Health;
use super::sandbox::{Counters, Sandbox};
use super::session;
use super::{CancelToken, Engine, EngineError, OutputStream, Template};
use crate::agent::AgentError;
use crate::vmm::Vm;

/// How a call reports its end, exactly once.
pub type Done<T> = Box<dyn FnOnce(Result<T, EngineError>) + Send>;

/// A conversation between its start and its end. If it is dropped without
/// having ended (the VM thread is gone, or the job never ran), it still
/// frees the sandbox and reports, so no caller waits forever.
struct Pending<S, D: FnOnce(S, Result<T, EngineError>), T> {
    sb: Arc<Sandbox>,
    state: Option<(S, D)>,
    _result: std::marker::PhantomData<fn() -> T>,
}

impl<S, D: FnOnce(S, Result<T, EngineError>), T> Pending<S, D, T> {
    fn finish(&mut self, result: Result<T, EngineError>) {
        if let Some((state, done)) = self.state.take() {
            // Free the sandbox before reporting: whoever reads the answer may
            // send the next call on it at once.
            self.sb.busy.store(false, Ordering::SeqCst);
            done(state, result);
        }
    }
}

impl<S, D: FnOnce(S, Result<T, EngineError>), T> Drop for Pending<S, D, T> {
    fn drop(&mut self) {
        let id = self.sb.id.clone();
        self.finish(Err(EngineError::SandboxUnusable {
            id,
            reason: "its VM thread is gone".into(),
        }));
    }
}

impl Engine {
    /// Starts `job` against sandbox `id` under a deadline `limit` from now and
    /// a cancel token. `state` is handed to the job (for its output) and back
    /// to `done`, which is called exactly once: on this thread if the call
    /// cannot start (no such sandbox, busy, broken), else on the VM's thread
    /// when the job ends.
    pub(crate) fn converse_then<S, T, J, D>(
        &self,
        id: &str,
        limit: Duration,
        cancel: &CancelToken,
        state: S,
        job: J,
        done: D,
    ) where
        S: Send + 'static,
        T: Send + 'static,
        J: FnOnce(&mut Vm, &Template, &mut S) -> Result<T, AgentError> + Send + 'static,
        D: FnOnce(S, Result<T, EngineError>) + Send + 'static,
    {
        let sb = match self.claim(id) {
            Ok(sb) => sb,
            Err(e) => return done(state, Err(e)),
        };
        let mut pending = Pending {
            sb: Arc::clone(&sb),
            state: Some((state, done)),
            _result: std::marker::PhantomData,
        };
        let shell = sb.shell();
        let (token, health) = (cancel.clone(), Arc::clone(&shell.health));
        sb.ran.store(true, Ordering::SeqCst);
        let job = move |vm: &mut Vm| {
            // A failed recycling reset or branch placement is only known
            // here, on the VM's thread.
            let broken = match &*health.lock().unwrap_or_else(|e| e.into_inner()) {
                Health::Broken { reason, .. } => Some(reason.clone()),
                Health::Ready => None,
            };
            let (tpl, sb) = (Arc::clone(&pending.sb.template), Arc::clone(&pending.sb));
            let result = match (broken, pending.state.as_mut()) {
                (Some(reason), _) => Err(AgentError::Crashed(reason)),
                (None, Some((state, _))) => {
                    vm.set_dirty_limit(Some(sb.memory_limit));
                    match &sb.net {
                        Some(net) => net.ensure_up(vm, &tpl).and_then(|()| job(vm, &tpl, state)),
                        None => job(vm, &tpl, state),
                    }
                }
                // Only `finish` takes the state, and it has not run yet.
                (None, None) => return (pending, None),
            };
            *sb.counters.lock().unwrap_or_else(|e| e.into_inner()) = Counters {
                exits: vm.exits(),
                stray: vm.bus_stats(),
            };
            (pending, Some(result))
        };
        // If the VM thread is gone the job is dropped unrun, and `Pending`
        // reports then.
        session::start(
            &shell.thread,
            &self.0.deadlines,
            limit,
            cancel,
            job,
            move |(mut pending, result), timed_out| {
                if let Some(result) = result {
                    let sb = Arc::clone(&pending.sb);
                    sb.execs.fetch_add(1, Ordering::Relaxed);
                    pending.finish(settle(&sb, result, &token, timed_out, limit));
                }
            },
        );
        // Queued behind the job, so its wait starts when the job ends.
        super::trim::when_idle(&sb, self.config().trim_idle_ms);
    }

    /// Runs `job` against sandbox `id` like [`Engine::converse_then`], and
    /// waits for it.
    pub(crate) fn converse<T, J>(
        &self,
        id: &str,
        limit: Duration,
        cancel: &CancelToken,
        job: J,
    ) -> Result<T, EngineError>
    where
        T: Send + 'static,
        J: FnOnce(&mut Vm, &Template) -> Result<T, AgentError> + Send + 'static,
    {
        Engine::wait(limit, &mut |_, _| {}, |relay| {
            let done = relay.into_done();
            self.converse_then(
                id,
                limit,
                cancel,
                (),
                move |vm, tpl, ()| job(vm, tpl),
                move |(), result| done(result),
            );
        })
    }

    /// Takes sandbox `id` for one conversation: it must exist, be idle and
    /// be healthy.
    fn claim(&self, id: &str) -> Result<Arc<Sandbox>, EngineError> {
        let sb = self.sandbox(id)?;
        if sb.busy.swap(true, Ordering::SeqCst) {
            return Err(EngineError::SandboxBusy(id.to_string()));
        }
        if let Health::Broken { reason, .. } = sb.health() {
            sb.busy.store(false, Ordering::SeqCst);
            return Err(EngineError::SandboxUnusable {
                id: id.to_string(),
                reason,
            });
        }
        Ok(sb)
    }

    /// Blocks until a call started by `start` reports through its [`Relay`],
    /// passing output chunks to `on_output` on this thread meanwhile. Gives
    /// up when `limit` (the call's deadline) plus a grace has passed: a vCPU
    /// that does not stop when kicked must not hold its caller forever.
    pub(crate) fn wait<T: Send + 'static>(
        limit: Duration,
        on_output: &mut dyn FnMut(OutputStream, &[u8]),
        start: impl FnOnce(Relay<T>),
    ) -> Result<T, EngineError> {
        let give_up = Instant::now() + limit + session::KICK_GRACE;
        let (tx, rx) = mpsc::channel();
        start(Relay(tx));
        loop {
            match rx.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
                Ok(Msg::Output(stream, data)) => on_output(stream, &data),
                Ok(Msg::Done(result)) => return result,
                Err(_) => {
                    return Err(EngineError::ExecTimeout {
                        timeout_ms: limit.as_millis() as u64,
                    });
                }
            }
        }
    }
}

/// A blocking caller's end of a call that reports on another thread (see
/// [`Engine::wait`]).
pub(crate) struct Relay<T>(mpsc::Sender<Msg<T>>);

enum Msg<T> {
    Output(OutputStream, Vec<u8>),
    Done(Result<T, EngineError>),
}

impl<T> Relay<T> {
    /// Passes an output chunk to the waiting caller.
    pub fn output(&self, stream: OutputStream, data: &[u8]) {
        // The caller stops listening only after the end or after giving up.
        drop(self.0.send(Msg::Output(stream, data.to_vec())));
    }

    /// Passes the end to the waiting caller.
    pub fn done(self, result: Result<T, EngineError>) {
        drop(self.0.send(Msg::Done(result)));
    }
}

impl<T: Send + 'static> Relay<T> {
    /// The relay as a call's `done` callback.
    pub fn into_done(self) -> Done<T> {
        Box::new(move |result| self.done(result))
    }
}

/// The error a conversation ended with, from the engine's point of view; a
/// failure that leaves the vCPU somewhere unknown breaks the sandbox.
fn settle<T>(
    sb: &Sandbox,
    result: Result<T, AgentError>,
    cancel: &CancelToken,
    timed_out: bool,
    limit: Duration,
) -> Result<T, EngineError> {
    let err = match result {
        Ok(v) => return Ok(v),
        // A cancel answers as a cancel even when a kill follows it at once.
        Err(AgentError::Interrupted) if cancel.is_cancelled() => EngineError::Cancelled,
        Err(AgentError::Interrupted) if sb.killed.load(Ordering::SeqCst) => {
            EngineError::SandboxNotFound(sb.id.clone())
        }
        Err(AgentError::Interrupted) if timed_out => EngineError::ExecTimeout {
            timeout_ms: limit.as_millis() as u64,
        },
        Err(e) => EngineError::from_agent(e),
    };
    if err.breaks_sandbox() {
        sb.set_health(Health::Broken {
            reason: err.to_string(),
            recyclable: !matches!(err, EngineError::GuestCrashed { .. }),
        });
    }
    Err(err)
}
