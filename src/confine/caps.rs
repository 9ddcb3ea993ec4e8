//! NoNewPrivs and capabilities.

use std::io;

use super::ConfineError;

/// Sets NoNewPrivs on the calling thread (inherited by its children and kept
/// across execve): no setuid binary or file capability can raise privileges
/// again, and seccomp filters may be installed without CAP_SYS_ADMIN.
pub(super) fn no_new_privs() -> Result<(), ConfineError> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant arguments reads no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(())
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets NoNewPrivs and, if the calling thread holds any capability (it runs
/// as root), drops them all: bounding and ambient sets first (that needs
/// CAP_SETPCAP), then effective, permitted and inheritable. Call it before
/// the process starts threads: capabilities are per thread. Returns whether
/// there was anything to drop.
pub fn drop_privileges() -> Result<bool, ConfineError> {
    no_new_privs()?;
    let err = |e| ConfineError::Capabilities(e);
    let mut data = [CapData::default(); 2];
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capget writes two cap data structs for version 3, which `data` holds.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if data
        .iter()
        .all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0)
    {
        return Ok(false);
    }
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with constant arguments; EINVAL for a cap the kernel
        // does not know is harmless and ignored.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let none = [CapData::default(); 2];
    // SAFETY: capset reads the header and two cap data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, none.as_ptr()) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(true)
}
