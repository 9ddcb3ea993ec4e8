//! Per-exec freshness. Every fork of a snapshot starts with the same kernel
//! CRNG state and the same wall clock as the template, so before user code
//! runs the agent mixes the host's seed into the kernel pool, forces the CRNG
//! to reseed from it, and sets the wall clock to the host's send time.
//! (Userspace generators are reseeded from the fresh CRNG by the workers:
//! see `exec/zygote.py` and `exec/worker.js`.)

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('R', 0x03, int[2])`: add bytes to the input pool and credit them.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// The `struct rand_pool_info` RNDADDENTROPY takes: two ints, then the bytes.
fn pool_info(seed: &[u8; 32]) -> [u8; 40] {
    let mut info = [0u8; 40];
    info[0..4].copy_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info[4..8].copy_from_slice(&(seed.len() as i32).to_ne_bytes());
    info[8..].copy_from_slice(seed);
    info
}

/// Mixes `seed` into the kernel pool (credited as full entropy: it comes from
/// the host's CSPRNG) and reseeds the CRNG. Needs `CAP_SYS_ADMIN`.
fn reseed_kernel(seed: &[u8; 32]) -> io::Result<()> {
    let dev = File::open("/dev/urandom")?;
    let info = pool_info(seed);
    // SAFETY: `info` is a complete rand_pool_info whose buf_size matches its
    // trailing bytes; the kernel only reads it.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Splits nanoseconds since the epoch into a timespec.
fn timespec_of(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// Sets the wall clock. Needs `CAP_SYS_TIME`.
fn set_clock(ns: u64) -> io::Result<()> {
    let ts = timespec_of(ns);
    // SAFETY: `ts` is a valid timespec the kernel only reads.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mixes `seed` into the kernel's pools and, in a guest (`system`), sets
/// the clock to `clock_ns`. Outside a guest the agent is a test process: it
/// never touches the host's clock, and a refused reseed (not root) is not an
/// error there.
pub fn refresh(seed: &[u8; 32], clock_ns: u64, system: bool) -> io::Result<()> {
    match reseed_kernel(seed) {
        Ok(()) => {}
        Err(e) if system => return Err(e),
        Err(_) => {}
    }
    if system && clock_ns != 0 {
        set_clock(clock_ns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_info_credits_all_seed_bits() {
        let info = pool_info(&[7; 32]);
        assert_eq!(i32::from_ne_bytes(info[0..4].try_into().unwrap()), 256);
        assert_eq!(i32::from_ne_bytes(info[4..8].try_into().unwrap()), 32);
        assert_eq!(&info[8..], &[7; 32]);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr
        let iow = |nr: u64, size: u64| (1 << 30) | (size << 16) | ((b'R' as u64) << 8) | nr;
        assert_eq!(RNDADDENTROPY, iow(3, 8));
        assert_eq!(RNDRESEEDCRNG, ((b'R' as u64) << 8) | 7);
    }

    #[test]
    fn timespec_splits_seconds_and_nanoseconds() {
        let ts = timespec_of(1_700_000_000_123_456_789);
        assert_eq!((ts.tv_sec, ts.tv_nsec), (1_700_000_000, 123_456_789));
    }
}
