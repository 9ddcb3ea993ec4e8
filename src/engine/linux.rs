//! Linux templates: a kernel and an initramfs (see [`crate::image`]) booted
//! until the agent, PID 1, registers its mailbox and says Ready — exactly the
//! point where the bare guest is captured — then captured and sealed the same
//! way. The result is the same [`Snapshot`], so forks, execs, pools,
//! recycling, branching and template files work unchanged.
//!
//! Only on hardware KVM. Under kvm-pvm, guest kernel code is emulated
//! instruction by instruction and a stock kernel dies in the emulator after
//! about 100 s, so [`Engine::build_template`] refuses at once with
//! [`EngineError::LinuxNeedsHardwareKvm`] instead of spinning.
//!
//! The boot runs on its own vCPU thread under a deadline: a kernel that hangs
//! idles in HLT, which never leaves KVM_RUN with an in-kernel irqchip, so the
//! vCPU is kicked and the error carries the end of the serial console.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::template::Snapshot;
use super::{Engine, EngineError, TemplateInfo};
use crate::agent::{self, AgentError, Mailbox};
use crate::vmm::memory::{GuestRam, Memfd, Sharing};
use crate::vmm::{
    ConsoleLog, ConsoleTail, Flavor, Hypervisor, MachineState, VcpuThread, Vm, linux,
};

/// Guest memory of a Linux template when the caller has no opinion. Only the
/// pages the guest touches cost host memory (the mapping is MAP_NORESERVE).
pub const DEFAULT_LINUX_MEMORY_MIB: usize = 512;
/// How long a kernel may take from its first instruction to the agent's Ready
/// (hardware KVM: about a second; the nested, emulated test lane: minutes).
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// How long a kicked vCPU may take to stop.
const KICK_GRACE: Duration = Duration::from_secs(5);

/// What a Linux boot needs.
struct LinuxSpec<'a> {
    kernel: &'a Path,
    initramfs: &'a Path,
    memory_mib: usize,
    cmdline: &'a str,
}

impl Engine {
    /// Boots `kernel` (a bzImage) with `initramfs` (whose `/init` is the
    /// zeroboot agent) in `memory_mib` MiB of guest memory, captures it at the
    /// agent's Ready and registers it as a template. `cmdline` defaults to
    /// [`crate::image::KERNEL_CMDLINE`]. `memory_mib` must lie in the
    /// configuration's range. Fails at once on kvm-pvm.
    pub fn build_template(
        &self,
        kernel: &Path,
        initramfs: &Path,
        memory_mib: usize,
        cmdline: Option<&str>,
    ) -> Result<TemplateInfo, EngineError> {
        let (min, max) = (
            self.0.config.min_linux_memory_mib,
            self.0.config.max_linux_memory_mib,
        );
        if !(min..=max).contains(&memory_mib) {
            return Err(EngineError::InvalidRequest(format!(
                "memory_mib must be between {min} and {max}"
            )));
        }
        if self.flavor() == Flavor::Pvm {
            return Err(EngineError::LinuxNeedsHardwareKvm);
        }
        let started = Instant::now();
        let snap = boot_linux(
            &self.0.hv,
            &LinuxSpec {
                kernel,
                initramfs,
                memory_mib,
                cmdline: cmdline.unwrap_or(crate::image::KERNEL_CMDLINE),
            },
        )?;
        tracing::info!(
            kernel = %kernel.display(),
            boot_ms = started.elapsed().as_millis() as u64,
            "Linux guest booted to Ready and captured"
        );
        self.register(format!("linux:{}", kernel.display()), snap)
    }
}

/// Boots the guest on its own vCPU thread and captures it at Ready.
fn boot_linux(hv: &Arc<Hypervisor>, spec: &LinuxSpec<'_>) -> Result<Snapshot, EngineError> {
    let bytes = spec
        .memory_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| EngineError::InvalidRequest(format!("{} MiB", spec.memory_mib)))?;
    let memfd = Memfd::create("zeroboot-linux", bytes)?;
    let ram = GuestRam::map(&memfd, Sharing::Shared)?;
    let boot = linux::load(&ram, spec.kernel, spec.initramfs, spec.cmdline)
        .map_err(|e| EngineError::InvalidRequest(crate::error_chain(&e)))?;
    let mut cpuid = hv.cpuid().clone();
    linux::adjust_cpuid(cpuid.as_mut_slice());
    let tail = ConsoleTail::default();

    let thread = {
        let (hv, cpuid, tail) = (Arc::clone(hv), cpuid.clone(), tail.clone());
        VcpuThread::spawn("vcpu-linux-template".into(), move || {
            let mut vm = Vm::new(&hv, ram, &cpuid)?;
            vm.attach_serial(ConsoleLog::recording(tail));
            let sregs = linux::entry_sregs(vm.sregs()?);
            vm.set_entry(&boot.regs, &sregs)?;
            vm.set_msrs(&boot.msrs)?;
            Ok(vm)
        })?
    };
    // A failed boot also says where the vCPU stopped: the one clue left
    // when a kernel spins with nothing on its console.
    type Captured = Result<(Mailbox, MachineState), (AgentError, Option<u64>)>;
    let (tx, rx) = mpsc::channel::<Captured>();
    let hv = Arc::clone(hv);
    let queued = thread.submit(move |vm| {
        let captured = agent::boot(vm)
            .and_then(|(mailbox, _ready)| {
                vm.complete_pending_io()?;
                Ok((mailbox, vm.capture(&hv, &cpuid)?))
            })
            .map_err(|e| (e, vm.regs().ok().map(|r| r.rip)));
        // The receiver waits for this (or gave up after the kick grace).
        drop(tx.send(captured));
    });
    let at = |rip: Option<u64>| rip.map_or(String::new(), |r| format!(" (vCPU at rip {r:#x})"));
    let outcome = if queued {
        rx.recv_timeout(BOOT_DEADLINE).map_err(|_| {
            thread.kicker().kick();
            // The kicked boot reports Interrupted; the deadline is the news.
            let rip = match rx.recv_timeout(KICK_GRACE) {
                Ok(Err((_, rip))) => rip,
                _ => None,
            };
            format!(
                "the agent did not report Ready within {} s{}",
                BOOT_DEADLINE.as_secs(),
                at(rip)
            )
        })
    } else {
        Err("the vCPU thread is gone".to_string())
    };
    // Tearing the VM down removes the last shared mapping, so sealing can succeed.
    thread.stop().join();
    let failed = |reason: String| EngineError::LinuxBoot {
        reason,
        console: tail.text(),
    };
    let (mailbox, state) = match outcome {
        Err(reason) => return Err(failed(reason)),
        Ok(Err((AgentError::Vmm(e), _))) => return Err(EngineError::Vmm(e)),
        Ok(Err((e, rip))) => return Err(failed(format!("{e}{}", at(rip)))),
        Ok(Ok(captured)) => captured,
    };
    memfd.seal()?;
    Ok(Snapshot {
        memfd,
        state,
        mailbox,
    })
}
