//! A vCPU's own thread. KVM_RUN on a vCPU from a thread other than the one
//! that last ran it makes KVM wait for an RCU grace period (the vCPU's pid
//! changes), so each VM lives on one thread for its whole life and work is sent
//! to it as closures. Dropping the VM (15-23 ms of SRCU waits here) also
//! happens on that thread, off every request path. The thread is a
//! [`RawThread`]: starting a `std::thread` costs time proportional to the
//! number of VMs alive (see [`super::pthread`]).
//!
//! A thread also holds at most one *idle* job: work worth doing once the VM
//! has had nothing to do for a while (giving back memory), which must not
//! hold up a request. It runs when no message has come for its delay, and is
//! told whether one is waiting now so it can stop early.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::pthread::RawThread;
use super::{Kicker, Vm, VmmError};

type Job = Box<dyn FnOnce(&mut Vm) + Send>;
/// An idle job: gets the VM and a probe that says whether a message waits.
type IdleJob = Box<dyn FnOnce(&mut Vm, &dyn Fn() -> bool) + Send>;

enum Msg {
    Run(Job),
    /// Replace the idle job.
    Idle((Duration, IdleJob)),
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
    /// Messages sent and not yet taken by the thread.
    queued: Arc<AtomicUsize>,
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
        let queued = Arc::new(AtomicUsize::new(0));
        let waiting = Arc::clone(&queued);
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
            let mut idle: Option<(Duration, IdleJob)> = None;
            loop {
                let msg = match &idle {
                    None => inbox.recv().ok(),
                    Some((delay, _)) => match inbox.recv_timeout(*delay) {
                        Ok(msg) => Some(msg),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            let (_, job) = idle.take().expect("matched Some");
                            job(&mut vm, &|| waiting.load(Ordering::SeqCst) > 0);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => None,
                    },
                };
                let Some(msg) = msg else { break };
                waiting.fetch_sub(1, Ordering::SeqCst);
                match msg {
                    Msg::Run(job) => job(&mut vm),
                    Msg::Idle(job) => idle = Some(job),
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
                queued,
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
        self.send(Msg::Run(Box::new(job))).is_ok()
    }

    /// Sets the thread's idle job (replacing any earlier one): it runs once,
    /// after `delay` without a message, and gets a probe that turns true as
    /// soon as a message waits.
    pub fn when_idle(
        &self,
        delay: Duration,
        job: impl FnOnce(&mut Vm, &dyn Fn() -> bool) + Send + 'static,
    ) {
        // A thread that is gone has no VM left to be idle.
        let _ = self.send(Msg::Idle((delay, Box::new(job))));
    }

    fn send(&self, msg: Msg) -> Result<(), mpsc::SendError<Msg>> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        self.jobs.send(msg).inspect_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        })
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
        if let Err(mpsc::SendError(Msg::Stop(after))) = self.send(Msg::Stop(Box::new(after))) {
            // The thread has already ended.
            after();
        }
        self.handle
    }
}
