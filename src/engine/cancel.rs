//! Cancelling an exec from another thread: the token remembers the vCPU to
//! kick, so cancel takes effect at once instead of at the next poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::vmm::Kicker;

/// A handle that cancels the exec it is passed to.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    target: Mutex<Option<Kicker>>,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: the running exec's vCPU is kicked, a future exec stops at once.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        if let Some(k) = self
            .0
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            k.kick();
        }
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Points the token at the vCPU now running; kicks at once if already cancelled.
    pub(crate) fn attach(&self, kicker: &Kicker) {
        *self.0.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(kicker.clone());
        if self.is_cancelled() {
            kicker.kick();
        }
    }

    /// Forgets the vCPU once the exec is over.
    pub(crate) fn detach(&self) {
        *self.0.target.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
