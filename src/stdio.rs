//! The protocol's stdout, kept private from the rest of the process. Both
//! stdio front ends (`zeroboot serve` and `zeroboot mcp`) write frames to a
//! duplicate of fd 1 and point fd 1 itself at stderr, so nothing else in the
//! process (a stray print in a dependency) can corrupt the protocol.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// Moves the protocol stream off fd 1: returns a private duplicate of stdout
/// for frames and points fd 1 at stderr.
pub(crate) fn protocol_stdout() -> io::Result<File> {
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
