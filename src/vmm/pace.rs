//! How a restore shares its CPU. A recycled VM's reset (a dozen vCPU and VM
//! ioctls, ~0.1 ms of CPU on kvm-pvm) runs on its VM's thread beside the next
//! request. On a busy CPU the scheduler lets a running thread finish its
//! slice before a woken one, so a request arriving meanwhile (the reader
//! thread woken by the client, another VM's thread woken for an exec) waited
//! for the whole reset: on one CPU a `sandbox.kill`, or the call after it,
//! took ~0.1 ms in one of ten. A reset nobody waits for yields between its
//! steps, so such a request waits for one step at most; once a request does
//! wait for it (a fork took the VM), it runs straight on, or it would yield
//! to the very resets and execs its own request is queued behind.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a restore yields the CPU between its steps.
#[derive(Clone, Copy, Debug)]
pub enum Pace<'a> {
    /// A request waits for it: no pauses.
    Urgent,
    /// Nobody waits for it until `wanted` is set: `sched_yield` between
    /// steps until then (it returns at once when no other thread is
    /// runnable on this CPU).
    Background {
        /// Set when a request starts waiting for the restore.
        wanted: &'a AtomicBool,
    },
}

impl Pace<'_> {
    /// A point between two steps of a restore.
    pub fn step(self) {
        if let Pace::Background { wanted } = self
            && !wanted.load(Ordering::Relaxed)
        {
            std::thread::yield_now();
        }
    }
}
