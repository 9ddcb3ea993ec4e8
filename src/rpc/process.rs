//! What the worker does to its own process's signals: it turns SIGTERM and
//! SIGINT into a session event instead of letting them kill it mid-write.
//! (Its stdout is taken for frames by [`crate::stdio`].)

use std::io;

/// SIGTERM and SIGINT, blocked in every thread and received by one.
pub struct Signals(libc::sigset_t);

impl Signals {
    /// Blocks SIGTERM and SIGINT in the calling thread and in every thread
    /// it starts from now on. Call it before any thread is started, so no
    /// thread can take the signal's default action (ending the process).
    pub fn block() -> io::Result<Signals> {
        // SAFETY: sigemptyset/sigaddset initialise the zeroed set we own;
        // pthread_sigmask reads it and changes only this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let err = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
            Ok(Signals(set))
        }
    }

    /// Starts a thread that calls `on_signal` with each signal's name.
    pub fn watch(self, on_signal: impl Fn(&'static str) + Send + 'static) -> io::Result<()> {
        std::thread::Builder::new()
            .name("rpc-signals".into())
            .spawn(move || {
                loop {
                    let mut sig = 0;
                    // SAFETY: the set was initialised by `block`; sigwait
                    // writes one int.
                    let err = unsafe { libc::sigwait(&self.0, &mut sig) };
                    if err != 0 {
                        tracing::error!(error = %io::Error::from_raw_os_error(err), "sigwait failed");
                        return;
                    }
                    on_signal(if sig == libc::SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    });
                }
            })
            .map(drop)
    }
}
