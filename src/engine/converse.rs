//! One request/response conversation with a sandbox's guest, whatever the
//! request: the job runs on the VM's thread, output chunks come back as they
//! are produced, and the caller's thread enforces the deadline and
//! cancellation by kicking the vCPU. After a deadline or a cancel the guest was
//! stopped mid-request, so the sandbox is marked broken (only kill remains);
//! its VM is still recycled later, because a reset restores every piece of state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::pool::Health;
use super::sandbox::Counters;
use super::{CancelToken, Engine, EngineError, Template};
use crate::agent::{AgentError, Stream};
use crate::vmm::Vm;

/// How long a kicked vCPU may take to stop before the call gives up on it.
const KICK_GRACE: Duration = Duration::from_secs(5);

enum Msg<T> {
    Output(Stream, Vec<u8>),
    Done(Result<T, AgentError>),
}

/// What runs on the VM's thread: the guest side of one request.
pub(crate) type Job<T> = Box<
    dyn FnOnce(&mut Vm, &Template, &mut dyn FnMut(Stream, &[u8])) -> Result<T, AgentError> + Send,
>;

impl Engine {
    /// Runs `job` against sandbox `id` with a deadline and a cancel token.
    pub(crate) fn converse<T: Send + 'static>(
        &self,
        id: &str,
        timeout: Duration,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(Stream, &[u8]),
        job: Job<T>,
    ) -> Result<T, EngineError> {
        let start = Instant::now();
        let sb = self.sandbox(id)?;
        if sb.busy.swap(true, Ordering::SeqCst) {
            return Err(EngineError::SandboxBusy(id.to_string()));
        }
        let _busy = sb.busy_guard();
        if let Health::Broken { reason, .. } = sb.health() {
            return Err(EngineError::SandboxUnusable {
                id: id.to_string(),
                reason,
            });
        }
        let job = match &sb.net {
            Some(net) => net.around(job),
            None => job,
        };
        let shell = sb.shell();
        let kicker = shell.thread.kicker().clone();
        kicker.clear();
        let (tx, rx) = mpsc::channel::<Msg<T>>();
        let (tpl, health, counters) = (
            Arc::clone(&sb.template),
            Arc::clone(&shell.health),
            Arc::clone(&sb.counters),
        );
        let submitted = shell.thread.submit(move |vm| {
            // A failed recycling reset is only known here, on the VM's thread.
            let broken = match &*health.lock().unwrap_or_else(|e| e.into_inner()) {
                Health::Broken { reason, .. } => Some(reason.clone()),
                Health::Ready => None,
            };
            let result = match broken {
                Some(reason) => Err(AgentError::Crashed(reason)),
                None => {
                    let out = tx.clone();
                    // The receiver outlives every send: it waits for Done.
                    job(vm, &tpl, &mut |s, d| {
                        drop(out.send(Msg::Output(s, d.to_vec())))
                    })
                }
            };
            *counters.lock().unwrap_or_else(|e| e.into_inner()) = Counters {
                exits: vm.exits(),
                stray: vm.bus_stats(),
            };
            drop(tx.send(Msg::Done(result)));
        });
        if !submitted {
            return Err(EngineError::SandboxUnusable {
                id: id.to_string(),
                reason: "its VM thread is gone".into(),
            });
        }
        cancel.attach(&kicker);
        let deadline = start + timeout;
        let mut timed_out = false;
        let done = loop {
            let wait = if timed_out {
                KICK_GRACE
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Output(stream, data)) => on_output(stream, &data),
                Ok(Msg::Done(r)) => break Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) if !timed_out => {
                    timed_out = true;
                    kicker.kick();
                }
                Err(_) => break None,
            }
        };
        cancel.detach();
        sb.execs.fetch_add(1, Ordering::Relaxed);
        let timeout_err = || EngineError::ExecTimeout {
            timeout_ms: timeout.as_millis() as u64,
        };
        let err = match done {
            Some(Ok(v)) => return Ok(v),
            // A cancel answers as a cancel even when a kill follows it at once.
            Some(Err(AgentError::Interrupted)) if cancel.is_cancelled() => EngineError::Cancelled,
            Some(Err(AgentError::Interrupted)) if sb.killed.load(Ordering::SeqCst) => {
                EngineError::SandboxNotFound(id.to_string())
            }
            Some(Err(AgentError::Interrupted)) if timed_out => timeout_err(),
            Some(Err(e)) => EngineError::from_agent(e),
            None => timeout_err(),
        };
        if err.breaks_sandbox() {
            sb.set_health(Health::Broken {
                reason: err.to_string(),
                recyclable: !matches!(err, EngineError::GuestCrashed { .. }),
            });
        }
        Err(err)
    }
}
