//! The few Linux calls std does not wrap, each behind a safe function so the
//! rest of the agent holds no raw file descriptors.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turns a `-1`-on-error return value into an `io::Result`.
fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we borrow; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) }.into())?;
    // SAFETY: as above.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags as i32 | libc::O_NONBLOCK,
        )
    }
    .into())?;
    Ok(())
}

/// A descriptor that becomes readable when process `pid` exits (Linux 5.3+).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: the kernel just returned this descriptor (close-on-exec) and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `poll(2)`, retried on `EINTR`; returns the number of ready descriptors.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        match cvt(n.into()) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits up to `timeout_ms` for `fd` to have `events`; false on timeout.
fn wait_for(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }];
    Ok(poll(&mut pfd, timeout_ms)? > 0)
}

/// Waits up to `timeout_ms` (-1: for ever) for `fd` to be readable (or
/// closed, or a pidfd's process to have exited); false on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    wait_for(fd, libc::POLLIN, timeout_ms)
}

/// Waits up to `timeout_ms` for `fd` to take writes; false on timeout.
pub fn wait_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    wait_for(fd, libc::POLLOUT, timeout_ms)
}

/// Sends `sig` to process `pid` alone.
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    cvt(unsafe { libc::kill(pid as libc::pid_t, sig) }.into()).map(drop)
}

/// Sends `SIGKILL` to process `pid` alone. A process already gone is not an
/// error.
pub fn kill(pid: u32) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    match cvt(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }.into()) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// Sends `SIGKILL` to every process of group `pgid`. A group that is already
/// gone is not an error.
pub fn kill_group(pgid: u32) -> io::Result<()> {
    // SAFETY: kill takes integers only; a negative pid names a process group.
    match cvt(unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) }.into()) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other.map(drop),
    }
}

/// A connected pair of close-on-exec Unix sockets of `kind`.
fn socket_pair(kind: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    }
    .into())?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of `SOCK_SEQPACKET` sockets: message boundaries are
/// kept, so each request is one `send` and one `recv`.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket_pair(libc::SOCK_SEQPACKET)
}

/// A connected pair of `SOCK_STREAM` sockets (what Node.js can use).
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket_pair(libc::SOCK_STREAM)
}

/// Makes `cmd`'s child find `fd` as its descriptor 3 (and `fd` itself must
/// stay open until the child is spawned).
pub fn pass_as_fd3(cmd: &mut std::process::Command, fd: BorrowedFd<'_>) {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // dup2 or fcntl, which are async-signal-safe; `raw` is open there
    // (inherited). dup2 clears close-on-exec on the copy; a descriptor that
    // already is 3 has it cleared by hand.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends one message on `sock` carrying `data` and duplicates of `fds`
/// (`SCM_RIGHTS`).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    const MAX_FDS: usize = 4;
    assert!(
        fds.len() <= MAX_FDS,
        "send_with_fds: at most {MAX_FDS} descriptors"
    );
    // Room for one cmsghdr with MAX_FDS ints, u64-aligned as cmsghdr needs.
    let mut control = [0u64; 8];
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as libc::c_uint;
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is pure arithmetic.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as usize;
    assert!(msg.msg_controllen <= std::mem::size_of_val(&control));
    // SAFETY: msg_control points at `control`, which is large enough (checked
    // above) for one header, so CMSG_FIRSTHDR returns a valid, aligned pointer
    // into it and CMSG_DATA points at its `payload` bytes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as usize;
        std::ptr::copy_nonoverlapping(
            raw.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            payload as usize,
        );
    }
    // SAFETY: msg points at live buffers (`iov` over `data`, `control`) for the call.
    let sent =
        cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } as libc::c_long)?;
    if sent as usize != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short sendmsg on a seqpacket socket",
        ));
    }
    Ok(())
}

/// Reaps child `pid` if it has exited (`Ok(None)`: still running).
pub fn try_wait(pid: u32) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: `status` is a valid int for waitpid to write.
    let n = cvt(unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) }.into())?;
    Ok((n != 0).then(|| std::process::ExitStatus::from_raw(status)))
}

/// Makes the agent the reaper of its descendants' orphans (what PID 1 is
/// anyway): a worker whose zygote died becomes the agent's child.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }.into()).map(drop)
}

/// True when this process is PID 1 (the guest's init).
pub fn is_init() -> bool {
    std::process::id() == 1
}
