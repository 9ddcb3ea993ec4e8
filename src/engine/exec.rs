//! Running a program in a sandbox: the request goes to the VM's thread, output
//! chunks come back as they are produced, and the caller's thread enforces the
//! deadline by kicking the vCPU. After a deadline or a cancel the guest was
//! stopped mid-program, so the sandbox is marked broken (only kill remains);
//! its VM is still recycled, because a reset restores every piece of state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::pool::Health;
use super::{CancelToken, Engine, EngineError};
use crate::agent::{self, ExecEnd, ExecRequest, Stream};

/// How long a kicked vCPU may take to stop before the sandbox is written off.
const KICK_GRACE: Duration = Duration::from_secs(5);

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

enum Msg {
    Output(Stream, Vec<u8>),
    Done(Result<ExecEnd, agent::AgentError>),
}

impl Engine {
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
        let timeout = opts
            .timeout
            .unwrap_or(Duration::from_millis(self.0.config.default_timeout_ms));
        let cap = opts.output_cap.unwrap_or(self.0.config.default_output_cap);
        let frame =
            agent::encode_exec(req, now_ns(), fresh_seed()).map_err(EngineError::from_agent)?;

        let shell = sb.shell();
        let kicker = shell.thread.kicker().clone();
        kicker.clear();
        let (tx, rx) = mpsc::channel();
        let (tpl, health, counters) = (
            Arc::clone(&sb.template),
            Arc::clone(&shell.health),
            Arc::clone(&sb.counters),
        );
        let submitted = shell.thread.submit(move |vm| {
            if let Health::Broken { reason, .. } =
                health.lock().unwrap_or_else(|e| e.into_inner()).clone()
            {
                let _ = tx.send(Msg::Done(Err(agent::AgentError::Crashed(reason))));
                return;
            }
            let out_tx = tx.clone();
            let r = agent::exec(vm, &tpl.mailbox, &frame, cap, &mut |s, d| {
                // The receiver only goes away once Done was sent.
                let _ = out_tx.send(Msg::Output(s, d.to_vec()));
            });
            *counters.lock().unwrap_or_else(|e| e.into_inner()) = super::sandbox::Counters {
                exits: vm.exits(),
                stray: vm.bus_stats(),
            };
            let _ = tx.send(Msg::Done(r));
        });
        if !submitted {
            return Err(EngineError::SandboxUnusable {
                id: id.to_string(),
                reason: "its VM thread is gone".into(),
            });
        }
        opts.cancel.attach(&kicker);
        let mut result = ExecResult::default();
        let deadline = start + timeout;
        let mut timed_out = false;
        let done = loop {
            let wait = if timed_out {
                KICK_GRACE
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            match rx.recv_timeout(wait) {
                Ok(Msg::Output(stream, data)) => {
                    on_output(stream, &data);
                    match stream {
                        Stream::Stdout => result.stdout.extend_from_slice(&data),
                        Stream::Stderr => result.stderr.extend_from_slice(&data),
                    }
                }
                Ok(Msg::Done(r)) => break Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) if !timed_out => {
                    timed_out = true;
                    kicker.kick();
                }
                Err(_) => break None,
            }
        };
        opts.cancel.detach();
        sb.execs.fetch_add(1, Ordering::Relaxed);
        let outcome = match done {
            Some(Ok(end)) => {
                result.exit_code = (end.signal == 0).then_some(end.code);
                result.signal = (end.signal != 0).then_some(end.signal);
                result.timed_out = end.timed_out;
                result.truncated = end.truncated;
                result.duration = start.elapsed();
                return Ok(result);
            }
            Some(Err(agent::AgentError::Interrupted)) if sb.killed.load(Ordering::SeqCst) => {
                Err(EngineError::SandboxNotFound(id.to_string()))
            }
            Some(Err(agent::AgentError::Interrupted)) if timed_out => {
                Err(EngineError::ExecTimeout {
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
            Some(Err(e)) => Err(EngineError::from_agent(e)),
            None => Err(EngineError::ExecTimeout {
                timeout_ms: timeout.as_millis() as u64,
            }),
        };
        if let Err(e) = &outcome
            && e.breaks_sandbox()
        {
            sb.set_health(Health::Broken {
                reason: e.to_string(),
                recyclable: !matches!(e, EngineError::GuestCrashed { .. }),
            });
        }
        outcome
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
