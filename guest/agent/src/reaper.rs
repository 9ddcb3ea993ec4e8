//! Reaping as PID 1: every orphan in the guest becomes the agent's child, and
//! its zombie stays until the agent waits for it.

/// Waits for every child that has exited, without blocking. Called between
/// requests, when the agent's own children are the Python zygote (restarted
/// if this reaps it), Node.js and shell workers (a dead one is noticed
/// through its pidfd and replaced) and orphans adopted by PID 1.
pub fn reap_orphans() {
    loop {
        // SAFETY: waitpid with a null status pointer writes nothing.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}
