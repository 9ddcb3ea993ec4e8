//! Ready-to-run VMs per template. A fork takes one (no KVM work on the request
//! path); a background thread tops the pool up; a killed sandbox's VM comes
//! back after its memory is mapped afresh over the same address (so its KVM
//! slot stays valid) and its state restored — which also keeps its thread, so
//! KVM_RUN never changes thread, and skips the 15-23 ms VM teardown.
//!
//! The refiller waits until the pool is half empty before it creates VMs,
//! then fills it up. Refilling after every fork made a steady loop of fork,
//! exec and kill create a VM per fork and tear one down per kill (the
//! recycled VM found the pool already full): 15-23 ms of kernel work per
//! cycle behind the caller's back, milliseconds at the 99th percentile.
//! With the low-water mark the recycled VMs alone keep such a loop going.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::vmm::VcpuThread;

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

/// A VM thread and the health cell its jobs update.
pub(crate) struct Shell {
    pub thread: VcpuThread,
    pub health: Arc<Mutex<Health>>,
}

impl Shell {
    pub fn new(thread: VcpuThread) -> Shell {
        Shell {
            thread,
            health: Arc::new(Mutex::new(Health::Ready)),
        }
    }
}

/// The idle shells of one template.
pub(crate) struct Pool {
    /// Oldest first: a fork takes the shell whose reset has had longest to finish.
    shells: Mutex<VecDeque<Shell>>,
    capacity: usize,
    wanted: Condvar,
    closed: AtomicBool,
    /// The refiller is filling up (from the low-water mark to capacity).
    refilling: AtomicBool,
}

impl Pool {
    pub fn new(capacity: usize) -> Pool {
        Pool {
            shells: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            wanted: Condvar::new(),
            closed: AtomicBool::new(false),
            refilling: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Shell>> {
        self.shells.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ready shell, if any, and wakes the refiller.
    pub fn take(&self) -> Option<Shell> {
        let shell = self.lock().pop_front();
        self.wanted.notify_one();
        shell
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

    /// Blocks until the pool wants another shell: while it fills up, until
    /// it is full; then until it is down to half. False once closed.
    pub fn wait_for_room(&self) -> bool {
        let mut shells = self.lock();
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return false;
            }
            let refilling = self.refilling.load(Ordering::SeqCst);
            if shells.len() <= self.capacity / 2 || (refilling && shells.len() < self.capacity) {
                self.refilling.store(true, Ordering::SeqCst);
                return true;
            }
            self.refilling.store(false, Ordering::SeqCst);
            shells = self.wanted.wait(shells).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Refuses new shells and returns the idle ones.
    pub fn close(&self) -> VecDeque<Shell> {
        self.closed.store(true, Ordering::SeqCst);
        self.wanted.notify_all();
        std::mem::take(&mut *self.lock())
    }

    /// Idle shells now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
