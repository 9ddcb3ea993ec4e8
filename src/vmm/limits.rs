//! Process settings that bound how many VMs can live and how fast they come:
//! each VM holds a VM fd and a vCPU fd, so the default soft limit of 1024
//! descriptors caps a worker at ~500; and each VM's MMU notifier makes
//! changes to this process's page tables cost more (see [`one_malloc_arena`]).

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Makes every thread allocate from glibc's main arena. By default each new
/// thread may get its own arena (up to 8 per core), and such an arena grows
/// its heap a page at a time with `mprotect`, which calls every MMU notifier
/// of the process, one per live VM. With 1000 VMs being created that was ~700
/// `mprotect` calls, ~20% of the CPU time of creating them (measured: 1.30 s
/// vs 1.07 s of CPU for 1000 forks + execs). The main arena grows with `brk`
/// in 128 KiB steps, which calls no notifier. The cost is one lock for
/// allocations on every thread, which glibc's per-thread cache mostly avoids
/// (a fork through `zeroboot serve` may take ~40 µs longer at p50 while the
/// pool refills; docs/create-scaling.md).
/// Arenas made before the call stay in use, so the engine calls it when it
/// starts, before any VM or worker thread exists.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; any value is valid.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    };
}
