//! The duties of the guest's init, done once at boot before anything else.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;

/// Filesystems the guest needs: (type, mount point, options).
const MOUNTS: &[(&str, &str, &str)] = &[
    ("proc", "/proc", ""),
    ("sysfs", "/sys", ""),
    ("devtmpfs", "/dev", "mode=0755"),
    ("devpts", "/dev/pts", "mode=0620,ptmxmode=0666"),
    ("tmpfs", "/dev/shm", "mode=1777"),
    ("tmpfs", "/tmp", "mode=1777"),
    ("tmpfs", "/run", "mode=0755"),
];

/// Environment for every program the guest runs (the kernel gives init
/// almost none).
const ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

fn mount(fstype: &str, target: &str, options: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let c = |s: &str| CString::new(s).expect("constant without NUL");
    let (fstype, target, options) = (c(fstype), c(target), c(options));
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID,
            options.as_ptr().cast(),
        )
    };
    match rc {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            e => Err(e),
        },
    }
}

/// Gives init a console on fds 0-2 when the initramfs had no `/dev/console`
/// for the kernel to open.
fn ensure_console() {
    // SAFETY: F_GETFD only queries descriptor 2.
    if unsafe { libc::fcntl(2, libc::F_GETFD) } != -1 {
        return;
    }
    if let Ok(console) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which are unused here.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// Mounts, console, environment, working directory, and the sysctl that keeps
/// the mailbox's locked pages where they are.
pub fn init() {
    for (fstype, target, options) in MOUNTS {
        if let Err(e) = mount(fstype, target, options) {
            eprintln!("zeroboot-agent: cannot mount {fstype} on {target}: {e}");
        }
    }
    ensure_console();
    // Compaction may otherwise migrate mlocked pages, moving the mailbox.
    if let Err(e) = fs::write("/proc/sys/vm/compact_unevictable_allowed", "0") {
        eprintln!("zeroboot-agent: cannot pin locked pages against compaction: {e}");
    }
    for (key, value) in ENV {
        // SAFETY: init runs this before starting any thread or child.
        unsafe { std::env::set_var(key, value) };
    }
    let home = "/root";
    if let Err(e) = fs::create_dir_all(home).and_then(|()| std::env::set_current_dir(home)) {
        eprintln!("zeroboot-agent: cannot enter {home}: {e}");
    }
}
