//! What the worker does to its own process: it takes fd 1 for protocol
//! frames only, and it turns SIGTERM and SIGINT into a session event instead
//! of letting them kill it mid-write.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Moves the protocol stream off fd 1: returns a private duplicate of stdout
/// for frames and points fd 1 at stderr, so nothing else in the process (a
/// stray print in a dependency) can corrupt the protocol.
pub fn protocol_stdout() -> io::Result<File> {
    // SAFETY: F_DUPFD_CLOEXEC on fd 1 only creates a new descriptor.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: dup2 replaces fd 1, which Rust's stdout handle refers to by
    // number only; writes through it now reach stderr.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

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
