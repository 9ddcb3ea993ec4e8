//! The seccomp rule tables, one per kind of thread. A call not listed fails
//! with EPERM. Shared with every table: no executable memory may be mapped
//! (`mmap`/`mprotect` with PROT_EXEC), so a compromised thread cannot load
//! code.
//!
//! The worker's table allows what a session does: files (templates), its
//! pipes, threads (`clone` with CLONE_THREAD only: never a new process; no
//! `execve`), epoll and eventfds (tokio), an AF_UNIX socket pair (tokio's
//! signal handling), memfds, and KVM's ioctls; and for sandboxes' network
//! (src/net), Unix, IPv4, IPv6 and netlink sockets that connect out (the
//! reactor's TCP and UDP, the resolver's getaddrinfo). Nothing may listen or
//! accept, and no raw or packet socket can be made: the worker opens no port.
//!
//! The vCPU table allows what a vCPU thread does after its VM exists: run
//! the guest (KVM_RUN), get and set the vCPU's and VM's state (restore,
//! snapshot, crash reports), raise the serial interrupt, reset the dirty
//! ring, count private pages (PAGEMAP_SCAN, or reading the pagemap),
//! remap and copy guest memory (recycling, snapshots), write its call's
//! reply to the protocol stream, open its guest's outward IPv4 flows (the
//! user-mode network runs on the thread that serves the device), allocate,
//! wait, and end. No `openat`, no listening socket, no threads.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_device_attr, kvm_irq_level, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msrs, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::Filter;

const KVMIO: u64 = 0xae;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn ior<T>(nr: u64) -> u64 {
    ioc(2, nr, size_of::<T>())
}
const fn iow<T>(nr: u64) -> u64 {
    ioc(1, nr, size_of::<T>())
}
const fn iowr<T>(nr: u64) -> u64 {
    ioc(3, nr, size_of::<T>())
}

/// The ioctls a vCPU thread makes once its VM exists (numbers from
/// linux/kvm.h).
const VCPU_IOCTLS: &[u64] = &[
    io(0x80),                     // KVM_RUN
    ior::<kvm_regs>(0x81),        // KVM_GET_REGS
    iow::<kvm_regs>(0x82),        // KVM_SET_REGS
    ior::<kvm_sregs>(0x83),       // KVM_GET_SREGS
    iow::<kvm_sregs>(0x84),       // KVM_SET_SREGS
    iowr::<kvm_msrs>(0x88),       // KVM_GET_MSRS
    iow::<kvm_msrs>(0x89),        // KVM_SET_MSRS
    ior::<kvm_lapic_state>(0x8e), // KVM_GET_LAPIC
    iow::<kvm_lapic_state>(0x8f), // KVM_SET_LAPIC
    ior::<kvm_mp_state>(0x98),    // KVM_GET_MP_STATE
    iow::<kvm_mp_state>(0x99),    // KVM_SET_MP_STATE
    ior::<kvm_vcpu_events>(0x9f), // KVM_GET_VCPU_EVENTS
    iow::<kvm_vcpu_events>(0xa0), // KVM_SET_VCPU_EVENTS
    ior::<kvm_debugregs>(0xa1),   // KVM_GET_DEBUGREGS
    iow::<kvm_debugregs>(0xa2),   // KVM_SET_DEBUGREGS
    ior::<kvm_xsave>(0xa4),       // KVM_GET_XSAVE
    iow::<kvm_xsave>(0xa5),       // KVM_SET_XSAVE
    ior::<kvm_xcrs>(0xa6),        // KVM_GET_XCRS
    iow::<kvm_xcrs>(0xa7),        // KVM_SET_XCRS
    iowr::<kvm_irqchip>(0x62),    // KVM_GET_IRQCHIP
    ior::<kvm_irqchip>(0x63),     // KVM_SET_IRQCHIP
    iow::<kvm_clock_data>(0x7b),  // KVM_SET_CLOCK
    ior::<kvm_clock_data>(0x7c),  // KVM_GET_CLOCK
    iow::<kvm_irq_level>(0x61),   // KVM_IRQ_LINE
    iowr::<kvm_irq_level>(0x67),  // KVM_IRQ_LINE_STATUS
    iow::<kvm_device_attr>(0xe1), // KVM_SET_DEVICE_ATTR (TSC offset)
    iow::<kvm_device_attr>(0xe2), // KVM_GET_DEVICE_ATTR
    iow::<kvm_device_attr>(0xe3), // KVM_HAS_DEVICE_ATTR
    io(0xc7),                     // KVM_RESET_DIRTY_RINGS
    crate::vmm::pagemap::PAGEMAP_SCAN_IOCTL,
];

const FIONBIO: u64 = 0x5421;

/// Non-KVM ioctls the worker makes: PAGEMAP_SCAN, FIONBIO, TCGETS.
const WORKER_OTHER_IOCTLS: &[u64] = &[crate::vmm::pagemap::PAGEMAP_SCAN_IOCTL, FIONBIO, 0x5401];

/// What a vCPU thread calls for its guest's flows, besides `socket`.
const VCPU_NET: &[i64] = &[
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_epoll_ctl,
];

/// Calls both tables allow: memory, waiting, signals, ending.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    // A vCPU thread writes its call's reply to the protocol stream itself
    // (src/rpc/writer.rs: one writev per frame), so no hop to a writer.
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_ftruncate,
    libc::SYS_fcntl,
    libc::SYS_memfd_create,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Further calls of the worker's threads.
const WORKER: &[i64] = &[
    // The signal thread waits for SIGTERM, SIGINT and SIGHUP (rpc/process.rs).
    libc::SYS_rt_sigtimedwait,
    libc::SYS_readv,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_fstatfs,
    libc::SYS_statx,
    libc::SYS_fsync,
    libc::SYS_flock,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_getdents64,
    libc::SYS_unlinkat,
    // What std and glibc call for remove_file, rename, hard_link,
    // create_dir(_all), remove_dir, access and read_link on x86_64 (the
    // old, non-*at system calls).
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_link,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_readlinkat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_prlimit64,
    libc::SYS_rt_sigaction,
    libc::SYS_tkill,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_uname,
    libc::SYS_sysinfo,
];

fn cond(arg: u8, op: Op, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, Len::Qword, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule with conditions")
}

/// One rule per value: the call is allowed when argument `arg` is one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, Op::Eq, v)]))
        .collect()
}

/// mmap/mprotect without PROT_EXEC.
fn no_exec() -> Vec<SeccompRule> {
    vec![rule(vec![cond(2, Op::MaskedEq(libc::PROT_EXEC as u64), 0)])]
}

fn rules(filter: Filter) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> =
        COMMON.iter().map(|&nr| (nr, Vec::new())).collect();
    map.insert(libc::SYS_mmap, no_exec());
    map.insert(libc::SYS_mprotect, no_exec());
    match filter {
        Filter::Vcpu => {
            let mut ioctl = one_of(1, VCPU_IOCTLS);
            ioctl.extend(one_of(1, &[FIONBIO]));
            map.insert(libc::SYS_ioctl, ioctl);
            // A networked guest's frames are handled on its VM's thread
            // (src/net/endpoint.rs), which opens the host's end of each flow:
            // IPv4 TCP and UDP sockets that connect out, registered with the
            // reactor's epoll. Nothing binds, listens or accepts.
            map.insert(libc::SYS_socket, one_of(0, &[libc::AF_INET as u64]));
            for nr in VCPU_NET {
                map.insert(*nr, Vec::new());
            }
        }
        Filter::Worker => {
            map.extend(WORKER.iter().map(|&nr| (nr, Vec::new())));
            let mut ioctl = vec![rule(vec![cond(1, Op::MaskedEq(0xff00), KVMIO << 8)])];
            ioctl.extend(one_of(1, WORKER_OTHER_IOCTLS));
            map.insert(libc::SYS_ioctl, ioctl);
            // Threads, never processes (clone3: see `build`).
            map.insert(libc::SYS_clone3, Vec::new());
            map.insert(
                libc::SYS_clone,
                vec![rule(vec![cond(
                    0,
                    Op::MaskedEq(libc::CLONE_THREAD as u64),
                    libc::CLONE_THREAD as u64,
                )])],
            );
            // tokio's signal handling: a connected pair of AF_UNIX sockets.
            map.insert(libc::SYS_socketpair, one_of(0, &[libc::AF_UNIX as u64]));
            // Sandboxes' network (src/net): the reactor connects out over
            // TCP and UDP, and the resolver's getaddrinfo uses UDP, netlink
            // (AI_ADDRCONFIG) and nscd's Unix socket. Nothing listens or
            // accepts, and no raw or packet socket is made.
            map.insert(
                libc::SYS_socket,
                one_of(
                    0,
                    &[
                        libc::AF_UNIX as u64,
                        libc::AF_INET as u64,
                        libc::AF_INET6 as u64,
                        libc::AF_NETLINK as u64,
                    ],
                ),
            );
            for nr in [
                libc::SYS_connect,
                libc::SYS_bind,
                libc::SYS_getsockname,
                libc::SYS_getpeername,
                libc::SYS_setsockopt,
                libc::SYS_getsockopt,
                libc::SYS_shutdown,
                libc::SYS_sendmmsg,
                libc::SYS_recvmmsg,
            ] {
                map.insert(nr, Vec::new());
            }
            // Thread names (and glibc's naming of anonymous mappings), and
            // what adding a filter takes: vCPU threads add theirs.
            map.insert(
                libc::SYS_prctl,
                one_of(
                    0,
                    &[
                        libc::PR_SET_NAME as u64,
                        libc::PR_GET_NAME as u64,
                        0x5356_4d41, // PR_SET_VMA
                        libc::PR_SET_NO_NEW_PRIVS as u64,
                    ],
                ),
            );
            map.insert(
                libc::SYS_seccomp,
                one_of(0, &[libc::SECCOMP_SET_MODE_FILTER as u64]),
            );
        }
    }
    map
}

/// Compiles the programs for `filter`, installed in order. The worker's
/// are two: its table (which lets clone3 through), and one that answers
/// clone3 with ENOSYS — glibc starts threads with clone3 and falls back to
/// clone, whose flags a filter can check, only on ENOSYS. (Of stacked
/// filters the most restrictive answer wins.)
pub(super) fn build(filter: Filter) -> Result<Vec<BpfProgram>, String> {
    let compile = |rules, mismatch, matched| -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .map_err(|e| e.to_string())?
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())
    };
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut programs = vec![compile(rules(filter), eperm, SeccompAction::Allow)?];
    if filter == Filter::Worker {
        let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
        programs.push(compile(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);
    }
    Ok(programs)
}
