//! One request/response conversation with a sandbox's guest, whatever the
//! request: the job runs on the VM's thread, output chunks come back as they
//! are produced, and the caller's thread enforces the deadline and
//! cancellation by kicking the vCPU. After a deadline or a cancel the guest was
//! stopped mid-request, so the sandbox is marked broken (only kill remains);
//! its VM is still recycled later, because a reset restores every piece of state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::pool::Health;
use super::sandbox::Counters;
use super::session::{self, Sink};
use super::{CancelToken, Engine, EngineError, Template};
use crate::agent::AgentError;
use crate::vmm::Vm;

/// What runs on the VM's thread: the guest side of one request.
pub(crate) type Job<T> =
    Box<dyn FnOnce(&mut Vm, &Template, Sink<'_>) -> Result<T, AgentError> + Send>;

impl Engine {
    /// Runs `job` against sandbox `id` with a deadline and a cancel token.
    pub(crate) fn converse<T: Send + 'static>(
        &self,
        id: &str,
        timeout: Duration,
        cancel: &CancelToken,
        on_output: Sink<'_>,
        job: Job<T>,
    ) -> Result<T, EngineError> {
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
        let (tpl, health, counters) = (
            Arc::clone(&sb.template),
            Arc::clone(&shell.health),
            Arc::clone(&sb.counters),
        );
        let outcome = session::run(&shell.thread, timeout, cancel, on_output, move |vm, out| {
            // A failed recycling reset or branch placement is only known
            // here, on the VM's thread.
            let broken = match &*health.lock().unwrap_or_else(|e| e.into_inner()) {
                Health::Broken { reason, .. } => Some(reason.clone()),
                Health::Ready => None,
            };
            let result = match broken {
                Some(reason) => Err(AgentError::Crashed(reason)),
                None => job(vm, &tpl, out),
            };
            *counters.lock().unwrap_or_else(|e| e.into_inner()) = Counters {
                exits: vm.exits(),
                stray: vm.bus_stats(),
            };
            result
        });
        sb.execs.fetch_add(1, Ordering::Relaxed);
        let timeout_err = || EngineError::ExecTimeout {
            timeout_ms: timeout.as_millis() as u64,
        };
        let err = match outcome.value {
            Some(Ok(v)) => return Ok(v),
            // A cancel answers as a cancel even when a kill follows it at once.
            Some(Err(AgentError::Interrupted)) if cancel.is_cancelled() => EngineError::Cancelled,
            Some(Err(AgentError::Interrupted)) if sb.killed.load(Ordering::SeqCst) => {
                EngineError::SandboxNotFound(id.to_string())
            }
            Some(Err(AgentError::Interrupted)) if outcome.timed_out => timeout_err(),
            Some(Err(e)) => EngineError::from_agent(e),
            None if outcome.timed_out => timeout_err(),
            None => {
                return Err(EngineError::SandboxUnusable {
                    id: id.to_string(),
                    reason: "its VM thread is gone".into(),
                });
            }
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
