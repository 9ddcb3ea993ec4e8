//! Linux templates: a kernel and an initramfs (see [`crate::image`]) booted
//! until the agent, PID 1, registers its mailbox and says Ready — exactly the
//! point where the bare guest is captured — then captured and sealed the same
//! way, by the same capture. The result is a root [`Layer`], so forks, execs, pools,
//! recycling, branching and template files work unchanged.
//!
//! Only on hardware KVM. Under kvm-pvm, guest kernel code is emulated
//! instruction by instruction and a stock kernel dies in the emulator after
//! about 100 s, so [`Engine::build_template`] refuses at once with
//! [`EngineError::LinuxNeedsHardwareKvm`] instead of spinning.
//!
//! The boot runs on its own vCPU thread under a deadline and honours cancel
//! (`session.rs`): a kernel that hangs idles in HLT, which never leaves
//! KVM_RUN with an in-kernel irqchip, so the vCPU is kicked and the error
//! carries the end of the serial console.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::budget::cost;
use super::deadline::Deadlines;
use super::layer::Layer;
use super::memory;
use super::template::{Boot, BootFailure};
use super::{CancelToken, Engine, EngineError, TemplateInfo};
use crate::image::spec_image::Manifest;
use crate::vmm::memory::{GuestRam, MemoryFile, Sharing};
use crate::vmm::{ConsoleLog, ConsoleTail, Flavor, Hypervisor, Tracking, Vm, linux};

/// Guest memory of a Linux template when the caller has no opinion. Only the
/// pages the guest touches cost host memory (the mapping is MAP_NORESERVE).
pub const DEFAULT_LINUX_MEMORY_MIB: usize = 512;
/// How long a kernel may take from its first instruction to the agent's Ready
/// (hardware KVM: about a second; the nested, emulated test lane: minutes).
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

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
        cancel: &CancelToken,
    ) -> Result<TemplateInfo, EngineError> {
        self.boot_template(kernel, initramfs, memory_mib, cmdline, None, cancel)
    }

    /// [`Engine::build_template`], recording `manifest` with the template.
    pub(crate) fn boot_template(
        &self,
        kernel: &Path,
        initramfs: &Path,
        memory_mib: usize,
        cmdline: Option<&str>,
        manifest: Option<Manifest>,
        cancel: &CancelToken,
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
        let bytes = (memory_mib as u64).saturating_mul(1 << 20);
        let charge = self.charge("template", memory::template_cost(bytes) + cost::vm(bytes))?;
        let started = Instant::now();
        self.start_threads()?;
        let layer = boot_linux(
            &self.0.hv,
            &self.0.deadlines,
            &LinuxSpec {
                kernel,
                initramfs,
                memory_mib,
                cmdline: cmdline.unwrap_or(crate::image::KERNEL_CMDLINE),
            },
            cancel,
        )?;
        tracing::info!(
            kernel = %kernel.display(),
            boot_ms = started.elapsed().as_millis() as u64,
            "Linux guest booted to Ready and captured"
        );
        self.register_root(
            format!("linux:{}", kernel.display()),
            layer,
            manifest,
            cancel,
            charge,
        )
    }
}

/// Boots the guest on its own vCPU thread and captures it at Ready.
fn boot_linux(
    hv: &Arc<Hypervisor>,
    deadlines: &Deadlines,
    spec: &LinuxSpec<'_>,
    cancel: &CancelToken,
) -> Result<Layer, EngineError> {
    let bytes = spec
        .memory_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| EngineError::InvalidRequest(format!("{} MiB", spec.memory_mib)))?;
    let base = MemoryFile::create("zeroboot-linux", bytes)?;
    let loader = GuestRam::map(&base, Sharing::Shared)?;
    let boot = linux::load(&loader, spec.kernel, spec.initramfs, spec.cmdline)
        .map_err(|e| EngineError::InvalidRequest(crate::error_chain(&e)))?;
    drop(loader);
    let mut cpuid = hv.cpuid().clone();
    linux::adjust_cpuid(cpuid.as_mut_slice());
    let tail = ConsoleTail::default();
    let console = tail.clone();
    let booted = Boot {
        base,
        cpuid,
        deadline: BOOT_DEADLINE,
        deadlines,
        cancel,
        make: Box::new(move |hv, ram, cpuid| {
            let mut vm = Vm::new(hv, ram, cpuid, Tracking::Off)?;
            vm.attach_serial(ConsoleLog::recording(console));
            let sregs = linux::entry_sregs(vm.sregs()?);
            vm.set_entry(&boot.regs, &sregs)?;
            vm.set_msrs(&boot.msrs)?;
            Ok(vm)
        }),
    }
    .run(hv, "linux");
    booted.map_err(|f| match f {
        BootFailure::Vmm(e) => EngineError::Vmm(e),
        BootFailure::Cancelled => EngineError::Cancelled,
        BootFailure::Guest(reason) => EngineError::LinuxBoot {
            reason,
            console: tail.text(),
        },
    })
}
