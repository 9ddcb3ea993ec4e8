//! Cancelling an exec from another thread: the token remembers the vCPU to
//! kick, so cancel takes effect at once instead of at the next poll. A child
//! token is cancelled with its parent, and can be cancelled alone (a part of
//! a call that another part found pointless).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::vmm::Kicker;

/// A handle that cancels the exec it is passed to.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    target: Mutex<Option<Kicker>>,
    children: Mutex<Vec<Weak<Inner>>>,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels: the running exec's vCPU is kicked, a future exec stops at
    /// once; so are its children's.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// A token cancelled when this one is (at once if it already is), which
    /// can also be cancelled alone.
    pub(crate) fn child(&self) -> CancelToken {
        let child = CancelToken::new();
        let mut children = self.0.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&child.0));
        drop(children);
        if self.is_cancelled() {
            child.cancel();
        }
        child
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

impl Inner {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(k) = self
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            k.kick();
        }
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for child in children.iter().filter_map(Weak::upgrade) {
            child.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_cancelled_with_its_parent_and_alone() {
        let parent = CancelToken::new();
        let (a, b) = (parent.child(), parent.child());
        a.cancel();
        assert!(a.is_cancelled() && !b.is_cancelled() && !parent.is_cancelled());
        parent.cancel();
        assert!(b.is_cancelled());
        assert!(parent.child().is_cancelled(), "born cancelled");
    }
}
