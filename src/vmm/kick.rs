//! Stopping a vCPU from another thread without racing KVM_RUN: set
//! `kvm_run.immediate_exit`, then signal the vCPU thread. If the signal lands
//! before KVM_RUN starts, immediate_exit makes it return at once; if it lands
//! during, KVM_RUN returns EINTR. The handler does nothing; its only job is to
//! interrupt the ioctl (installed without SA_RESTART).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once};

use kvm_ioctls::VcpuFd;

use super::VmmError;

/// A vCPU thread's address for kicks; gone once the vCPU is dropped.
struct Target {
    immediate_exit: *const AtomicU8,
    thread: libc::pthread_t,
}

// SAFETY: the pointer targets the vCPU's kvm_run mapping, which lives as long
// as the Target is Some (the owner disarms it before dropping the vCPU); the
// pthread_t names a thread that exits only after disarming.
unsafe impl Send for Target {}

/// Shared handle that can stop one vCPU's KVM_RUN.
#[derive(Clone)]
pub struct Kicker(Arc<Mutex<Option<Target>>>);

fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: i32) {}

fn install_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a valid handler and empty mask is a
        // valid argument; the handler is async-signal-safe (it does nothing).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
                result = Err(VmmError::SignalHandler(std::io::Error::last_os_error()));
            }
        }
    });
    result
}

impl Kicker {
    /// Binds a kicker to `vcpu`, run by the calling thread.
    pub fn for_current_thread(vcpu: &mut VcpuFd) -> Result<Kicker, VmmError> {
        install_handler()?;
        let field: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
        Ok(Kicker(Arc::new(Mutex::new(Some(Target {
            immediate_exit: field.cast::<AtomicU8>().cast_const(),
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
        })))))
    }

    /// Makes the vCPU's current or next KVM_RUN return promptly.
    pub fn kick(&self) {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = guard.as_ref() {
            // SAFETY: Target is Some, so kvm_run is still mapped (see Target).
            unsafe { (*t.immediate_exit).store(1, Ordering::SeqCst) };
            // SAFETY: the thread is alive while Target is Some (see Target).
            unsafe { libc::pthread_kill(t.thread, kick_signal()) };
        }
    }

    /// Clears a pending kick before a new run.
    pub fn clear(&self) {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = guard.as_ref() {
            // SAFETY: as in `kick`.
            unsafe { (*t.immediate_exit).store(0, Ordering::SeqCst) };
        }
    }

    /// Arms immediate_exit without a signal (to complete a pending I/O exit).
    pub fn arm(&self) {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = guard.as_ref() {
            // SAFETY: as in `kick`.
            unsafe { (*t.immediate_exit).store(1, Ordering::SeqCst) };
        }
    }

    /// Detaches from the vCPU; later kicks do nothing. Called before the vCPU drops.
    pub fn disarm(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
