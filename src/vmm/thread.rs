//! A vCPU's own thread. KVM_RUN on a vCPU from a thread other than the one
//! that last ran it makes KVM wait for an RCU grace period (the vCPU's pid
//! changes), so each VM lives on one thread for its whole life and work is sent
//! to it as closures. Dropping the VM (15-23 ms of SRCU waits here) also
//! happens on that thread, off every request path. The thread is a
//! [`RawThread`]: starting a `std::thread` costs time proportional to the
//! number of VMs alive (see [`super::pthread`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use super::pthread::RawThread;
use super::{Kicker, Vm, VmmError};

type Job = Box<dyn FnOnce(&mut Vm) + Send>;

enum Msg {
    Run(Job),
    /// End the thread; run this once the VM is dropped.
    Stop(Box<dyn FnOnce() + Send>),
}

/// VM threads alive in this process, VM not yet dropped.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Number of VMs whose thread has not finished tearing them down.
pub fn live_vms() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Stack for vCPU threads: they run the exit loop and frame handling only.
const STACK_SIZE: usize = 256 * 1024;

/// Handle to a thread that owns a [`Vm`].
pub struct VcpuThread {
    jobs: mpsc::Sender<Msg>,
    kicker: Kicker,
    handle: RawThread,
    ram: (u64, usize),
}

impl VcpuThread {
    /// Starts a thread, builds the VM on it with `make`, and returns once the
    /// VM exists (or failed to).
    pub fn spawn(
        name: String,
        make: impl FnOnce() -> Result<Vm, VmmError> + Send + 'static,
    ) -> Result<VcpuThread, VmmError> {
        let (jobs, inbox) = mpsc::channel::<Msg>();
        type Ready = Result<(Kicker, (u64, usize)), VmmError>;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Ready>(1);
        LIVE.fetch_add(1, Ordering::SeqCst);
        let handle = RawThread::spawn(&name, STACK_SIZE, move || {
            struct Live;
            impl Drop for Live {
                fn drop(&mut self) {
                    LIVE.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _live = Live;
            // The filter goes on before the first job: no guest instruction
            // runs without it.
            let built = make()
                .and_then(|mut vm| Kicker::for_current_thread(vm.vcpu_mut()).map(|k| (vm, k)))
                .and_then(|pair| {
                    crate::confine::enter_vcpu().map_err(VmmError::Confine)?;
                    Ok(pair)
                });
            let (mut vm, kicker) = match built {
                Ok(pair) => pair,
                Err(e) => {
                    // The spawner waits on the other end; it cannot be gone.
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let ram = (vm.ram().host_addr(), vm.ram().size());
            if ready_tx.send(Ok((kicker.clone(), ram))).is_err() {
                kicker.disarm();
                return;
            }
            let mut after = None;
            while let Ok(msg) = inbox.recv() {
                match msg {
                    Msg::Run(job) => job(&mut vm),
                    Msg::Stop(f) => {
                        after = Some(f);
                        break;
                    }
                }
            }
            kicker.disarm();
            drop(vm);
            if let Some(after) = after {
                after();
            }
        })
        .map_err(|e| {
            LIVE.fetch_sub(1, Ordering::SeqCst);
            VmmError::SpawnThread(e)
        })?;
        match ready_rx.recv() {
            Ok(Ok((kicker, ram))) => Ok(VcpuThread {
                jobs,
                kicker,
                handle,
                ram,
            }),
            Ok(Err(e)) => {
                handle.join();
                Err(e)
            }
            Err(_) => {
                handle.join();
                Err(VmmError::SpawnThread(std::io::Error::other(
                    "vCPU thread died while starting",
                )))
            }
        }
    }

    /// Queues work for the VM; false if the thread is gone.
    pub fn submit(&self, job: impl FnOnce(&mut Vm) + Send + 'static) -> bool {
        self.jobs.send(Msg::Run(Box::new(job))).is_ok()
    }

    /// Host address and size of the VM's memory mapping (for page accounting).
    pub fn ram_range(&self) -> (u64, usize) {
        self.ram
    }

    /// The kicker for this vCPU.
    pub fn kicker(&self) -> &Kicker {
        &self.kicker
    }

    /// Ends the thread (the VM is dropped there); the handle lets a caller
    /// wait, and dropping it lets the thread finish on its own.
    pub fn stop(self) -> RawThread {
        self.stop_then(|| {})
    }

    /// As [`VcpuThread::stop`], and runs `after` on the thread once the VM
    /// (and the kernel memory it held) is gone.
    pub fn stop_then(self, after: impl FnOnce() + Send + 'static) -> RawThread {
        self.kicker.kick();
        if let Err(mpsc::SendError(Msg::Stop(after))) = self.jobs.send(Msg::Stop(Box::new(after))) {
            // The thread has already ended.
            after();
        }
        self.handle
    }
}
