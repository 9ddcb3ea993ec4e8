//! Opening a serial port (a 16550 under QEMU) as a raw byte channel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Opens `path` read-write in raw mode: no echo, no line editing, no flow
/// control characters, 8-bit clean, so frames pass through unchanged.
pub fn open_serial(path: &str) -> io::Result<File> {
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    let fd = port.as_raw_fd();
    // SAFETY: termios is plain old data; tcgetattr fills it before it is read.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the duration of the call and `tio` is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: cfmakeraw only edits the struct we own.
    unsafe { libc::cfmakeraw(&mut tio) };
    // 115200 baud, set by hand: the libc crate binds cfsetspeed to a
    // versioned glibc symbol that a static link cannot resolve.
    tio.c_cflag = (tio.c_cflag & !libc::CBAUD) | libc::B115200;
    tio.c_ispeed = libc::B115200;
    tio.c_ospeed = libc::B115200;
    tio.c_cc[libc::VMIN] = 1;
    tio.c_cc[libc::VTIME] = 0;
    // SAFETY: `fd` is open and `tio` is a fully initialised termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(port)
}
