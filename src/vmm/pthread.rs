//! Threads for VMs, started without a single `mprotect`.
//!
//! Every KVM VM registers an MMU notifier on this process's address space, and
//! the kernel calls every one of them whenever a page-table range that already
//! exists changes: `mprotect` included, even on a range with no pages in it.
//! `std::thread` makes two such calls per thread (glibc's stack guard page and
//! std's signal-stack guard page), and leaves four mappings (VMAs: stack,
//! signal stack, a guard page for each), which every later `KVM_CREATE_VM`
//! walks while registering its notifier. With 1000 VMs alive a new thread took
//! ~0.55 ms instead of ~0.05 ms, and four of each VM's six mappings were its
//! thread's (docs/create-scaling.md).
//!
//! So VM threads are plain pthreads: glibc maps their stack readable and
//! writable in one go (guard size 0), and the thread itself turns the lowest
//! page of its stack into a guard with `MADV_GUARD_INSTALL`, which marks page
//! table entries without splitting the mapping or calling notifiers. On kernels
//! before 6.13, which lack it, the guard page is made with `mprotect` as before.
//! There is no alternate signal stack: a stack overflow still hits the guard
//! and kills the process with SIGSEGV, without std's message.

use std::ffi::{CString, c_void};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// `madvise` advice that installs guard markers (Linux 6.13, not yet in libc).
const MADV_GUARD_INSTALL: libc::c_int = 102;

const PAGE: usize = 4096;

type Body = Box<dyn FnOnce() + Send>;

/// A started thread. Dropping the handle detaches the thread (glibc frees its
/// stack when it ends); [`RawThread::join`] waits for it.
pub struct RawThread {
    id: libc::pthread_t,
    joined: bool,
}

impl RawThread {
    /// Starts `body` on a thread named `name` (cut to the kernel's 15 bytes)
    /// whose stack has `stack_size` usable bytes above a guard page.
    pub fn spawn(
        name: &str,
        stack_size: usize,
        body: impl FnOnce() + Send + 'static,
    ) -> io::Result<RawThread> {
        let name: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
        let name = CString::new(name).expect("NUL bytes were filtered out");
        let body: Body = Box::new(move || {
            // SAFETY: pthread_self has no preconditions; the name is a valid C
            // string of at most 15 bytes. A failure only leaves the name unset.
            unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
            body();
        });
        let arg = Box::into_raw(Box::new(body));
        let mut id: libc::pthread_t = 0;
        // SAFETY: `attr` is initialised before use and destroyed after; `start`
        // takes ownership of `arg` exactly once if the thread starts, and we take
        // it back below if it does not.
        let err = unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            let mut err = libc::pthread_attr_init(&mut attr);
            if err == 0 {
                err = libc::pthread_attr_setstacksize(&mut attr, stack_size + PAGE);
            }
            if err == 0 {
                err = libc::pthread_attr_setguardsize(&mut attr, 0);
            }
            if err == 0 {
                err = libc::pthread_create(&mut id, &attr, start, arg.cast());
            }
            libc::pthread_attr_destroy(&mut attr);
            err
        };
        if err != 0 {
            // SAFETY: the thread did not start, so `arg` is still ours.
            drop(unsafe { Box::from_raw(arg) });
            return Err(io::Error::from_raw_os_error(err));
        }
        Ok(RawThread { id, joined: false })
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        self.joined = true;
        // SAFETY: `id` names a thread started by `spawn`, neither joined nor
        // detached yet (`joined` guards against Drop detaching it too).
        unsafe { libc::pthread_join(self.id, std::ptr::null_mut()) };
    }
}

impl Drop for RawThread {
    fn drop(&mut self) {
        if !self.joined {
            // SAFETY: as in `join`: a started thread, not yet joined or detached.
            unsafe { libc::pthread_detach(self.id) };
        }
    }
}

extern "C" fn start(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the Box leaked by `spawn`, handed to this thread alone.
    let body = unsafe { Box::from_raw(arg.cast::<Body>()) };
    guard_own_stack();
    // A panic ends this thread only, as with std::thread; the panic hook has
    // already reported it, and unwinding out of this function would abort.
    let _ = catch_unwind(AssertUnwindSafe(body));
    std::ptr::null_mut()
}

/// Makes the lowest page of the calling thread's stack a guard page.
fn guard_own_stack() {
    let Some(low) = own_stack_low() else { return };
    // SAFETY: `low` is the first page of this thread's stack mapping, far below
    // the frames in use this early; guard markers only make it inaccessible.
    unsafe {
        if libc::madvise(low, PAGE, MADV_GUARD_INSTALL) != 0 {
            libc::mprotect(low, PAGE, libc::PROT_NONE);
        }
    }
}

/// Lowest address of the calling thread's stack.
fn own_stack_low() -> Option<*mut c_void> {
    // SAFETY: pthread_getattr_np fills `attr` (destroyed after use) for the
    // calling thread; pthread_attr_getstack only reads it.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let (mut addr, mut size) = (std::ptr::null_mut(), 0);
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        ok.then_some(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Whether this process can read one byte at `addr` (no fault, no signal).
    fn readable(addr: u64) -> bool {
        let mut byte = 0u8;
        let local = libc::iovec {
            iov_base: (&mut byte as *mut u8).cast(),
            iov_len: 1,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut c_void,
            iov_len: 1,
        };
        // SAFETY: reads into a local byte; a bad remote address is an error
        // return, not a fault.
        unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) == 1 }
    }

    #[test]
    fn a_thread_runs_with_its_name_and_a_guard_page_below_its_stack() {
        let (tx, rx) = mpsc::channel();
        let t = RawThread::spawn("a-rather-long-thread-name", 64 * 1024, move || {
            let mut name = [0u8; 16];
            // SAFETY: the buffer is 16 bytes, the size passed.
            unsafe { libc::pthread_getname_np(libc::pthread_self(), name.as_mut_ptr().cast(), 16) };
            let low = own_stack_low().unwrap() as u64;
            tx.send((name, readable(low), readable(low + PAGE as u64)))
                .unwrap();
        })
        .unwrap();
        let (name, guard_readable, above_readable) = rx.recv().unwrap();
        t.join();
        assert_eq!(&name, b"a-rather-long-t\0");
        assert!(!guard_readable, "the lowest stack page is a guard");
        assert!(above_readable, "the page above the guard is stack");
    }

    #[test]
    fn a_panic_ends_only_its_thread() {
        let t = RawThread::spawn("panics", 64 * 1024, || panic!("on purpose")).unwrap();
        t.join();
    }
}
