//! The one way the engine runs something on a VM's thread with a deadline
//! and a cancel. The job runs on the vCPU's own thread (KVM_RUN must not
//! change threads) and nobody has to wait for it: the engine's deadline
//! thread ([`Deadlines`]) kicks the vCPU when the deadline passes, a cancel
//! kicks it at once from whichever thread cancels, and the job, which then
//! sees its KVM_RUN interrupted, ends on its own thread, where `done` hears
//! whether the deadline fired.
//!
//! Sandbox conversations ([`Engine::converse_then`](super::Engine)) answer
//! from `done` without waking anyone; boots and the hot-page probe, which
//! have a thread to spare, wait with [`run`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::CancelToken;
use super::deadline::Deadlines;
use crate::vmm::{VcpuThread, Vm};

/// How long past its deadline a waiting caller gives a kicked vCPU to stop
/// before it stops waiting.
pub(crate) const KICK_GRACE: Duration = Duration::from_secs(5);

/// Starts `job` on `thread`'s VM under a deadline `limit` from now and
/// `cancel`; `done` gets its value and whether the deadline fired, on the
/// VM's thread. If the thread is gone, both are dropped unrun.
pub(crate) fn start<T>(
    thread: &VcpuThread,
    deadlines: &Deadlines,
    limit: Duration,
    cancel: &CancelToken,
    job: impl FnOnce(&mut Vm) -> T + Send + 'static,
    done: impl FnOnce(T, bool) + Send + 'static,
) {
    let kicker = thread.kicker().clone();
    kicker.clear();
    cancel.attach(&kicker);
    let armed = deadlines.arm(Instant::now() + limit, kicker);
    let token = cancel.clone();
    let submitted = thread.submit(move |vm| {
        let value = job(vm);
        token.detach();
        let timed_out = armed.fired();
        drop(armed);
        done(value, timed_out);
    });
    if !submitted {
        cancel.detach();
    }
}

/// How a waited-for job ended.
pub(crate) struct Outcome<T> {
    /// What the job returned; `None` when the VM thread is gone, or did not
    /// stop within [`KICK_GRACE`] after its deadline.
    pub value: Option<T>,
    /// The deadline passed and the vCPU was kicked.
    pub timed_out: bool,
}

/// Runs `job` as [`start`] does and waits for it.
pub(crate) fn run<T: Send + 'static>(
    thread: &VcpuThread,
    deadlines: &Deadlines,
    limit: Duration,
    cancel: &CancelToken,
    job: impl FnOnce(&mut Vm) -> T + Send + 'static,
) -> Outcome<T> {
    let (tx, rx) = mpsc::channel();
    start(
        thread,
        deadlines,
        limit,
        cancel,
        job,
        move |value, timed_out| {
            // The receiver is gone only if it gave up on this job.
            drop(tx.send((value, timed_out)));
        },
    );
    match rx.recv_timeout(limit + KICK_GRACE) {
        Ok((value, timed_out)) => Outcome {
            value: Some(value),
            timed_out,
        },
        Err(mpsc::RecvTimeoutError::Timeout) => Outcome {
            value: None,
            timed_out: true,
        },
        Err(mpsc::RecvTimeoutError::Disconnected) => Outcome {
            value: None,
            timed_out: false,
        },
    }
}
