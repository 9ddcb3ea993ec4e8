//! The one way the engine runs something on a VM's thread and waits for it:
//! with a deadline and a cancel token. The job runs on the vCPU's own thread
//! (KVM_RUN must not change threads); output chunks it produces come back as
//! they are produced; when the deadline passes the vCPU is kicked once, and
//! the job, which then sees its KVM_RUN interrupted, gets a grace period to
//! report before the caller stops waiting. A cancel kicks the same way at
//! once. Exec conversations, file transfers, snapshots, the hot-page probe
//! and Linux boots all go through here.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::CancelToken;
use crate::agent::Stream;
use crate::vmm::{VcpuThread, Vm};

/// How long a kicked vCPU may take to stop before the caller gives up on it.
const KICK_GRACE: Duration = Duration::from_secs(5);

/// Where a job sends its output chunks.
pub(crate) type Sink<'a> = &'a mut dyn FnMut(Stream, &[u8]);

/// How a session ended.
pub(crate) struct Outcome<T> {
    /// What the job returned; `None` when the VM thread is gone, or did not
    /// stop within the grace period after a kick.
    pub value: Option<T>,
    /// The deadline passed and the vCPU was kicked.
    pub timed_out: bool,
}

enum Msg<T> {
    Output(Stream, Vec<u8>),
    Done(T),
}

/// Runs `job` on `thread`'s VM, passing its output to `on_output`, until it
/// returns or `timeout` passes (then the vCPU is kicked) or `cancel` fires
/// (kicked at once).
pub(crate) fn run<T: Send + 'static>(
    thread: &VcpuThread,
    timeout: Duration,
    cancel: &CancelToken,
    on_output: Sink<'_>,
    job: impl FnOnce(&mut Vm, Sink<'_>) -> T + Send + 'static,
) -> Outcome<T> {
    let deadline = Instant::now() + timeout;
    let kicker = thread.kicker();
    kicker.clear();
    let (tx, rx) = mpsc::channel::<Msg<T>>();
    let submitted = thread.submit(move |vm| {
        let out = tx.clone();
        // The receiver outlives every send: it waits for Done, or has given
        // up on this job, in which case nothing needs the chunks.
        let value = job(vm, &mut |s, d| drop(out.send(Msg::Output(s, d.to_vec()))));
        drop(tx.send(Msg::Done(value)));
    });
    if !submitted {
        return Outcome {
            value: None,
            timed_out: false,
        };
    }
    cancel.attach(kicker);
    let mut timed_out = false;
    let value = loop {
        let wait = if timed_out {
            KICK_GRACE
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Output(stream, data)) => on_output(stream, &data),
            Ok(Msg::Done(v)) => break Some(v),
            Err(mpsc::RecvTimeoutError::Timeout) if !timed_out => {
                timed_out = true;
                kicker.kick();
            }
            Err(_) => break None,
        }
    };
    cancel.detach();
    Outcome { value, timed_out }
}
