//! Mutable statics for a single-threaded, interrupt-free program.

use core::cell::UnsafeCell;

/// A static the one thread of the guest may mutate.
#[repr(C, align(4096))]
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: the guest runs one vCPU with interrupts off: there is no concurrency.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps an initial value.
    pub const fn new(v: T) -> Self {
        Global(UnsafeCell::new(v))
    }

    /// Raw pointer to the value.
    pub fn ptr(&self) -> *mut T {
        self.0.get()
    }

    /// Exclusive access.
    ///
    /// # Safety
    /// The caller holds no other reference obtained from this global.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get(&self) -> &mut T {
        // SAFETY: single thread, and the caller promises no aliasing reference.
        unsafe { &mut *self.0.get() }
    }
}
