//! Which CPUs the calling thread may run on. The bench measures its floors on
//! one CPU and across two: on a host whose idle CPUs halt into a hypervisor
//! (this project's development VM), waking a thread on another CPU costs tens
//! of microseconds, so a round trip's cost depends on where the scheduler put
//! the two ends. Tests that compare TSC readings pin themselves to one CPU:
//! hosts need not keep their CPUs' TSCs in step (the lane's emulated L1 does
//! not). A child process starts with its parent thread's set.

use std::io;

/// The calling thread's CPU set.
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The set the calling thread may run on now.
    pub fn current() -> io::Result<CpuSet> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a cpu_set_t of the size passed; pid 0 is the
        // calling thread.
        let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CpuSet(set))
    }

    /// A set of one CPU.
    pub fn one(cpu: usize) -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        CpuSet(set)
    }

    /// The CPUs in the set, lowest first.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET bounds-checks the index.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }

    /// Restricts the calling thread (and the children it spawns) to this set.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: the set is a valid cpu_set_t of the size passed; pid 0 is
        // the calling thread.
        let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_pinned_to_one_cpu_runs_there_and_gets_its_set_back() {
        let all = CpuSet::current().unwrap();
        let first = all.cpus()[0];
        std::thread::spawn(move || {
            CpuSet::one(first).apply().unwrap();
            assert_eq!(CpuSet::current().unwrap().cpus(), [first]);
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, first as i32);
            all.apply().unwrap();
            assert_eq!(CpuSet::current().unwrap().cpus(), all.cpus());
        })
        .join()
        .unwrap();
    }
}
