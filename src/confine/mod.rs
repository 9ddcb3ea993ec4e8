//! Least privilege for the worker: once /dev/kvm is open it needs no
//! capability and only a known set of system calls, so it gives up the rest.
//!
//! - [`drop_privileges`]: `NoNewPrivs`, and every capability dropped
//!   (effective, permitted, inheritable, ambient and bounding) when it runs
//!   as root. Capabilities belong to threads, so this runs before the worker
//!   starts any.
//! - Seccomp filters built with Firecracker's `seccompiler`, one per kind of
//!   thread ([`filters`]): the worker's, installed on every thread at once
//!   (TSYNC) before the session starts, so every later thread inherits it;
//!   and the vCPU's, much narrower (KVM_RUN and the few ioctls a vCPU thread
//!   makes), which each vCPU thread adds on top before the first guest
//!   instruction runs. A refused call fails with EPERM: the worker reports a
//!   typed error rather than dying, and nothing the call would have done
//!   happens.

mod caps;
mod filters;

use seccompiler::BpfProgram;

pub use caps::drop_privileges;

/// Why confinement failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("cannot set NoNewPrivs")]
    NoNewPrivs(#[source] std::io::Error),
    /// Dropping a capability failed.
    #[error("cannot drop capabilities")]
    Capabilities(#[source] std::io::Error),
    /// A filter could not be compiled (a bug in the rule tables).
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, String),
    /// The kernel refused the filter.
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, String),
}

/// Which filter a thread runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Every thread of `zeroboot serve`.
    Worker,
    /// A vCPU thread, on top of whatever its parent had.
    Vcpu,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::Worker => "worker",
            Filter::Vcpu => "vcpu",
        }
    }

    fn programs(self) -> Result<&'static [BpfProgram], ConfineError> {
        use std::sync::OnceLock;
        static WORKER: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
        static VCPU: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
        let cell = match self {
            Filter::Worker => &WORKER,
            Filter::Vcpu => &VCPU,
        };
        cell.get_or_init(|| filters::build(self))
            .as_deref()
            .map_err(|e| ConfineError::Build(self.name(), e.clone()))
    }
}

static SECCOMP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the filters on or off for threads that start from now on (off:
/// `zeroboot serve --no-seccomp`, and benchmarks measuring their cost).
pub fn set_seccomp(on: bool) {
    SECCOMP.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Installs the vCPU filter on the calling thread unless filters are off.
pub fn enter_vcpu() -> Result<(), ConfineError> {
    if SECCOMP.load(std::sync::atomic::Ordering::SeqCst) {
        install(Filter::Vcpu)?;
    }
    Ok(())
}

/// Installs `filter` on the calling thread (and the threads it starts).
pub fn install(filter: Filter) -> Result<(), ConfineError> {
    let programs = filter.programs()?;
    caps::no_new_privs()?;
    for p in programs {
        seccompiler::apply_filter(p)
            .map_err(|e| ConfineError::Install(filter.name(), e.to_string()))?;
    }
    Ok(())
}

/// Installs `filter` on every thread of the process at once.
pub fn install_all_threads(filter: Filter) -> Result<(), ConfineError> {
    let programs = filter.programs()?;
    caps::no_new_privs()?;
    for p in programs {
        seccompiler::apply_filter_all_threads(p)
            .map_err(|e| ConfineError::Install(filter.name(), e.to_string()))?;
    }
    if filter == Filter::Worker {
        WORKER_FILTERED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(())
}

static WORKER_FILTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the worker's filter is on this process: it can then start no
/// program (a spec's image build, which runs apt, uv and cargo, must have
/// happened before, outside the worker).
pub fn worker_filtered() -> bool {
    WORKER_FILTERED.load(std::sync::atomic::Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a new thread under `filter` and returns what it returned.
    fn under<T: Send + 'static>(filter: Filter, f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            install(filter).expect("filter installs");
            f()
        })
        .join()
        .expect("the filtered thread ran")
    }

    fn errno_of(r: libc::c_long) -> i32 {
        assert_eq!(r, -1, "the call succeeded");
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }

    // SAFETY (for the raw calls below): each is a plain system call with
    // scalar arguments or null pointers, which a filter refuses before the
    // kernel reads anything.

    #[test]
    fn a_vcpu_thread_may_not_open_files_local_sockets_listeners_or_executable_memory() {
        let results = under(Filter::Vcpu, || {
            // SAFETY: see above.
            unsafe {
                [
                    errno_of(libc::syscall(
                        libc::SYS_socket,
                        libc::AF_UNIX,
                        libc::SOCK_STREAM,
                        0,
                    )),
                    errno_of(libc::syscall(
                        libc::SYS_socket,
                        libc::AF_NETLINK,
                        libc::SOCK_RAW,
                        0,
                    )),
                    // On a bad fd: the filter answers before the fd is looked at.
                    errno_of(libc::syscall(libc::SYS_bind, -1, 0, 0)),
                    errno_of(libc::syscall(libc::SYS_listen, -1, 1)),
                    errno_of(libc::syscall(libc::SYS_accept4, -1, 0, 0, 0)),
                    errno_of(libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        c"/etc/passwd".as_ptr(),
                        0,
                    )),
                    errno_of(libc::syscall(libc::SYS_execve, c"/bin/true".as_ptr(), 0, 0)),
                    // KVM_CREATE_VM on a bad fd: the filter answers before the fd is looked at.
                    errno_of(libc::syscall(libc::SYS_ioctl, -1, 0xae01, 0)),
                    errno_of(libc::syscall(
                        libc::SYS_mmap,
                        0,
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )),
                ]
            }
        });
        assert_eq!(results, [libc::EPERM; 9]);
        // KVM_RUN on a bad fd passes the filter and meets the kernel's EBADF.
        let run = under(Filter::Vcpu, || {
            // SAFETY: see above.
            errno_of(unsafe { libc::syscall(libc::SYS_ioctl, -1, 0xae80, 0) })
        });
        assert_eq!(run, libc::EBADF);
    }

    #[test]
    fn the_worker_may_start_threads_and_connect_out_but_no_process_and_no_listener() {
        let (threads, results) = under(Filter::Worker, || {
            let threads = std::thread::spawn(|| 7).join().unwrap() == 7;
            let mut pair = [0; 2];
            // SAFETY: see above; `pair` has room for the two descriptors.
            let results = unsafe {
                let unix = libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr());
                libc::close(pair[0]);
                libc::close(pair[1]);
                [
                    unix as i32,
                    errno_of(libc::syscall(
                        libc::SYS_socket,
                        libc::AF_PACKET,
                        libc::SOCK_RAW,
                        0,
                    )),
                    errno_of(libc::syscall(libc::SYS_listen, 0, 1)),
                    errno_of(libc::syscall(libc::SYS_accept4, 0, 0, 0, 0)),
                    errno_of(libc::syscall(libc::SYS_execve, c"/bin/true".as_ptr(), 0, 0)),
                    // fork: a clone without CLONE_THREAD.
                    errno_of(libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0)),
                    errno_of(libc::syscall(libc::SYS_clone3, 0, 0)),
                    errno_of(libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0)),
                ]
            };
            (threads, results)
        });
        assert!(threads, "std threads start under the worker's filter");
        assert_eq!(
            results,
            [
                0,
                libc::EPERM,
                libc::EPERM,
                libc::EPERM,
                libc::EPERM,
                libc::EPERM,
                libc::ENOSYS,
                libc::EPERM
            ]
        );
    }

    #[test]
    fn the_worker_may_do_what_saving_a_template_and_the_image_cache_do_with_files() {
        let dir = std::env::temp_dir().join(format!("zb-confine-fs-{}", std::process::id()));
        let d = dir.clone();
        let done = under(Filter::Worker, move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(d.join("cache"))?;
            let tmp = d.join("t.tmp");
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?
                .write_all(b"x")?;
            std::fs::hard_link(&tmp, d.join("t"))?;
            std::fs::remove_file(&tmp)?;
            std::fs::rename(d.join("t"), d.join("u"))?;
            std::fs::remove_file(d.join("u"))?;
            std::fs::remove_dir(d.join("cache"))?;
            std::fs::remove_dir(&d)
        });
        let _ = std::fs::remove_dir_all(&dir);
        done.expect("every step runs under the worker's filter");
    }
}
