//! Ready-to-run VMs per template. A fork takes one (no KVM work on the request
//! path); a background thread tops the pool up; a killed sandbox's VM comes
//! back after its memory is mapped afresh over the same address (so its KVM
//! slot stays valid) and its state restored — which also keeps its thread, so
//! KVM_RUN never changes thread, and skips the 15-23 ms VM teardown.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::budget::Charge;
use crate::vmm::{RawThread, VcpuThread};

/// Whether a VM can run an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Stopped at the agent's doorbell, waiting for a request.
    Ready,
    /// Stopped somewhere unknown; only kill makes sense.
    Broken {
        /// What happened.
        reason: String,
        /// Whether a full reset may bring it back (false after a crash, where
        /// the vCPU's state is whatever the fault left).
        recyclable: bool,
    },
}

/// A VM thread, the health cell its jobs update, and what it is charged.
pub(crate) struct Shell {
    pub thread: VcpuThread,
    pub health: Arc<Mutex<Health>>,
    /// Whether its VM counts dirtied pages (serves sandboxes whose memory
    /// limit is below their template's size).
    pub tracked: bool,
    charge: Charge,
    /// Bytes of its charge covering pages it keeps private while idle.
    kept: u64,
    /// Set while a request holds the VM (from the fork that takes it out of
    /// a pool): a recycling reset still running then stops yielding its CPU
    /// ([`crate::vmm::Pace`]).
    pub wanted: Arc<AtomicBool>,
}

impl Shell {
    pub fn new(thread: VcpuThread, tracked: bool, charge: Charge) -> Shell {
        Shell {
            thread,
            health: Arc::new(Mutex::new(Health::Ready)),
            tracked,
            charge,
            kept: 0,
            wanted: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Makes the charge cover `bytes` of pages the VM keeps private while
    /// idle (what a recycling reset leaves, a branch's pages), from spare
    /// budget only; false when there is none.
    pub fn cover_kept(&mut self, bytes: u64) -> bool {
        if bytes > self.kept {
            if !self.charge.grow_spare(bytes - self.kept) {
                return false;
            }
            self.kept = bytes;
        }
        true
    }

    /// Bytes charged for it.
    pub fn charged(&self) -> u64 {
        self.charge.bytes()
    }

    /// Ends the VM's thread; the charge is released once the VM is gone.
    pub fn retire(self) -> RawThread {
        let charge = self.charge;
        self.thread.stop_then(move || drop(charge))
    }
}

/// The idle shells of one template.
pub(crate) struct Pool {
    /// Oldest first: a fork takes the shell whose reset has had longest to finish.
    shells: Mutex<VecDeque<Shell>>,
    capacity: usize,
    /// Wakes the engine's refill thread.
    wanted: Arc<Wanted>,
    closed: AtomicBool,
    /// The refiller is filling up (from the low-water mark to capacity).
    refilling: AtomicBool,
}

/// A wake-up call for the refill thread: some pool has room.
#[derive(Default)]
pub(crate) struct Wanted {
    pending: Mutex<bool>,
    cv: Condvar,
}

impl Wanted {
    /// Wakes the waiter (or makes its next wait return at once).
    pub fn notify(&self) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits for a notification or `timeout`, and consumes it.
    pub fn wait(&self, timeout: std::time::Duration) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (mut pending, _) = self
            .cv
            .wait_timeout_while(pending, timeout, |p| !*p)
            .unwrap_or_else(|e| e.into_inner());
        *pending = false;
    }
}

impl Pool {
    pub fn new(capacity: usize, wanted: Arc<Wanted>) -> Pool {
        Pool {
            shells: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            wanted,
            closed: AtomicBool::new(false),
            refilling: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Shell>> {
        self.shells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the oldest ready shell of the kind asked for, if any, and wakes
    /// the refiller. A full pool with none of that kind gives up its oldest
    /// shell so the refiller can make one.
    pub fn take(&self, tracked: bool) -> Option<Shell> {
        let mut shells = self.lock();
        let taken = match shells.iter().position(|s| s.tracked == tracked) {
            Some(i) => shells
                .remove(i)
                .inspect(|s| s.wanted.store(true, Ordering::Relaxed)),
            None => {
                if shells.len() >= self.capacity
                    && let Some(other) = shells.pop_front()
                {
                    drop(other.retire());
                }
                None
            }
        };
        drop(shells);
        self.wanted.notify();
        taken
    }

    /// Takes up to `n` idle shells (the newest first) to free their memory.
    pub fn shrink(&self, n: usize) -> Vec<Shell> {
        let mut shells = self.lock();
        let keep = shells.len().saturating_sub(n);
        shells.split_off(keep).into()
    }

    /// Adds a shell if there is room; hands it back otherwise.
    pub fn offer(&self, shell: Shell) -> Result<(), Shell> {
        let mut shells = self.lock();
        if self.closed.load(Ordering::SeqCst) || shells.len() >= self.capacity {
            return Err(shell);
        }
        shells.push_back(shell);
        Ok(())
    }

    /// True when a shell could be added.
    pub fn has_room(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.lock().len() < self.capacity
    }

    /// Whether the refiller should make another shell: once the pool is down
    /// to half, until it is full again. Refilling after every fork put a VM
    /// creation beside nearly every request on a 2-core host.
    pub fn wants_more(&self) -> bool {
        let len = self.lock().len();
        if self.capacity == 0 || self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let refilling = self.refilling.load(Ordering::SeqCst);
        let wants = len <= self.capacity / 2 || (refilling && len < self.capacity);
        self.refilling.store(wants, Ordering::SeqCst);
        wants
    }

    /// Refuses new shells and returns the idle ones.
    pub fn close(&self) -> VecDeque<Shell> {
        self.closed.store(true, Ordering::SeqCst);
        std::mem::take(&mut *self.lock())
    }

    /// Idle shells now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
