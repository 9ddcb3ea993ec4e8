//! One VM with one vCPU. Creation order is chosen for speed: the memory slot is
//! registered *before* the in-kernel irqchip, because the other order makes
//! KVM wait for an SRCU grace period (7.5 ms vs 0.12 ms measured here). No PIT
//! is created: none of our guests needs one, and it costs ~15 ms and a kernel
//! thread per VM.

use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_MEM_LOG_DIRTY_PAGES, Msrs, kvm_msr_entry, kvm_userspace_memory_region,
};
use kvm_ioctls::{VcpuFd, VmFd};

use super::dirty::{self, DirtyRing};
use super::irq::IrqLine;
use super::linux::COM1_IRQ;
use super::memory::GuestRam;
use super::serial::{ConsoleLog, SerialConsole};
use super::virtio::{NET_IRQ, NetBackend, NetHandle, VirtioNet};
use super::{
    Bus, Flavor, Hypervisor, MachineState, Pace, Quirks, Stop, VcpuState, VmState, VmmError,
};

/// Address of the three pages Intel VMX needs for real-mode emulation.
const TSS_ADDR: usize = 0xfffb_d000;

/// Whether a VM counts the pages its guest dirties ([`super::dirty`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    /// Forks: held to a limit on the memory they dirty.
    Dirty,
    /// Boot and probe VMs, whose memory is charged whole.
    Off,
}

/// A VM, its vCPU and its memory. Fields drop in order: the bus (whose
/// devices hold the VM fd for interrupts) before the VM and vCPU fds, and
/// those before the memory they map.
pub struct Vm {
    bus: Bus,
    dirty: Option<DirtyRing>,
    vm: Arc<VmFd>,
    vcpu: VcpuFd,
    ram: GuestRam,
    quirks: Quirks,
    /// Restores set the TSC offset directly (see `tsc.rs`).
    tsc_offset: bool,
    exits: u64,
}

impl Vm {
    /// Creates a VM over `ram` with a vCPU using `cpuid`.
    pub fn new(
        hv: &Hypervisor,
        ram: GuestRam,
        cpuid: &CpuId,
        tracking: Tracking,
    ) -> Result<Vm, VmmError> {
        let vm = hv.kvm().create_vm().map_err(VmmError::CreateVm)?;
        if hv.flavor() == Flavor::Hardware {
            vm.set_tss_address(TSS_ADDR).map_err(VmmError::SetTssAddr)?;
        }
        let ring = match tracking {
            Tracking::Dirty => {
                dirty::enable(&vm, hv.dirty_ring_entries())?;
                Some(hv.dirty_ring_entries())
            }
            Tracking::Off => None,
        };
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if ring.is_some() {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: 0,
            memory_size: ram.size() as u64,
            userspace_addr: ram.host_addr(),
        };
        // SAFETY: the region describes `ram`, which this Vm owns and drops only
        // after `vm` (field order), so KVM never sees the mapping go away early.
        unsafe { vm.set_user_memory_region(region) }.map_err(VmmError::SetMemoryRegion)?;
        vm.create_irq_chip().map_err(VmmError::CreateIrqchip)?;
        let vcpu = vm.create_vcpu(0).map_err(VmmError::CreateVcpu)?;
        vcpu.set_cpuid2(cpuid)
            .map_err(|source| VmmError::SetState {
                what: "CPUID2",
                source,
            })?;
        let dirty = ring.map(|n| DirtyRing::map(&vcpu, n)).transpose()?;
        Ok(Vm {
            bus: Bus::default(),
            dirty,
            vm: Arc::new(vm),
            vcpu,
            ram,
            quirks: hv.quirks(),
            tsc_offset: hv.tsc_offset(),
            exits: 0,
        })
    }

    /// Captures the whole machine (vCPU stopped, no I/O pending).
    pub fn capture(&self, hv: &Hypervisor, cpuid: &CpuId) -> Result<MachineState, VmmError> {
        Ok(MachineState {
            vcpu: VcpuState::capture(&self.vcpu, cpuid, hv.msrs())?,
            vm: VmState::capture(&self.vm)?,
            devices: self.bus.devices(),
        })
    }

    /// Puts the machine into `state` (memory is the caller's business, and
    /// is taken to be the template's again: the dirty count starts over),
    /// yielding between steps at `pace`.
    pub fn restore(&mut self, state: &MachineState, pace: Pace<'_>) -> Result<(), VmmError> {
        if let Some(ring) = &mut self.dirty {
            ring.clear();
        }
        state.vm.restore(&self.vm, pace)?;
        pace.step();
        state
            .vcpu
            .restore(&self.vcpu, self.quirks, self.tsc_offset, pace)?;
        pace.step();
        let vm = &self.vm;
        self.bus.restore(
            &state.devices,
            |gsi| IrqLine::new(Arc::clone(vm), gsi.into()),
            self.ram.guest_memory(),
        )?;
        self.exits = 0;
        Ok(())
    }

    /// The vCPU (for running and kicking).
    pub fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// Guest memory.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Runs until the guest needs the caller (see [`super::run_until_stop`]);
    /// a full dirty ring is counted here and never returned.
    pub fn run(&mut self) -> Result<Stop, VmmError> {
        loop {
            match super::run_until_stop(&mut self.vcpu, &mut self.bus, &mut self.exits)? {
                Stop::DirtyRingFull => {
                    let ram = (self.ram.host_addr(), self.ram.size());
                    let Some(ring) = &mut self.dirty else {
                        return Ok(Stop::Crashed("dirty ring full on an untracked VM".into()));
                    };
                    if let Some(over) = ring.on_full(&self.vm, ram)? {
                        return Ok(Stop::MemoryLimit(over));
                    }
                }
                stop => return Ok(stop),
            }
        }
    }

    /// Sets the most pages the guest may hold privately (copied on write);
    /// `None` lifts the limit. Held between exits too on a tracked VM; an
    /// untracked one ignores it.
    pub fn set_dirty_limit(&mut self, pages: Option<u64>) {
        if let Some(ring) = &mut self.dirty {
            ring.set_limit(pages);
        }
    }

    /// Gives back private copies of pages that hold what the base file holds
    /// ([`GuestRam::discard`]); the dirty count is taken from the page
    /// tables again at the next look.
    pub fn discard(&mut self, gpas: &[u64]) -> Result<(), VmmError> {
        self.ram.discard(gpas)?;
        if let Some(ring) = &mut self.dirty {
            ring.clear();
        }
        Ok(())
    }

    /// Lets KVM finish the I/O instruction the vCPU stopped on (RIP moves past
    /// it) without running further, so captured state is self-consistent.
    pub fn complete_pending_io(&mut self) -> Result<(), VmmError> {
        self.vcpu.set_kvm_immediate_exit(1);
        let errno = match self.vcpu.run() {
            Err(e) => e.errno(),
            Ok(_) => libc::EPROTO,
        };
        self.vcpu.set_kvm_immediate_exit(0);
        match errno {
            libc::EINTR => Ok(()),
            other => Err(VmmError::Run(kvm_ioctls::Error::new(other))),
        }
    }

    /// Exits to userspace since creation or the last restore.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// Stray-access counters.
    pub fn bus_stats(&self) -> super::BusStats {
        self.bus.stats()
    }

    /// Sets the vCPU's registers (boot entry).
    pub fn set_entry(
        &self,
        regs: &kvm_bindings::kvm_regs,
        sregs: &kvm_bindings::kvm_sregs,
    ) -> Result<(), VmmError> {
        self.vcpu
            .set_sregs(sregs)
            .map_err(|source| VmmError::SetState {
                what: "SREGS",
                source,
            })?;
        self.vcpu
            .set_regs(regs)
            .map_err(|source| VmmError::SetState {
                what: "REGS",
                source,
            })
    }

    /// Sets MSRs (boot values), checking that KVM took every one.
    pub fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<(), VmmError> {
        let msrs = Msrs::from_entries(entries).map_err(|_| VmmError::MsrCount {
            op: "wrote",
            done: 0,
            wanted: entries.len(),
            first_missing: entries.first().map_or(0, |e| e.index),
        })?;
        let wrote = self
            .vcpu
            .set_msrs(&msrs)
            .map_err(|source| VmmError::SetState {
                what: "MSRS",
                source,
            })?;
        if wrote != entries.len() {
            return Err(VmmError::MsrCount {
                op: "wrote",
                done: wrote,
                wanted: entries.len(),
                first_missing: entries[wrote].index,
            });
        }
        Ok(())
    }

    /// Plugs in COM1, whose output goes to `out`.
    pub fn attach_serial(&mut self, out: ConsoleLog) {
        let irq = IrqLine::new(Arc::clone(&self.vm), COM1_IRQ.into());
        self.bus.attach_serial(SerialConsole::new(irq, out));
    }

    /// Plugs the network device into `backend` (adding the device in its
    /// reset state if the VM has none: a fork of a template taken without
    /// network). Returns the handle that delivers frames into it.
    pub fn attach_net(
        &mut self,
        backend: Arc<dyn NetBackend>,
        mac: [u8; 6],
        mtu: u16,
    ) -> NetHandle {
        let (vm, mem) = (&self.vm, self.ram.guest_memory());
        let dev = self.bus.net_or_insert(|| {
            let irq = IrqLine::new(Arc::clone(vm), NET_IRQ.into());
            VirtioNet::new(mem.clone(), irq, mac, mtu)
        });
        dev.lock()
            .unwrap_or_else(|e| e.into_inner())
            .attach(Some(backend));
        NetHandle(Arc::downgrade(dev))
    }

    /// Unplugs the network device's backend (before the VM's memory is
    /// reset for its next tenant: no frame may land in it after this).
    pub fn detach_net(&mut self) {
        if let Some(dev) = self.bus.net() {
            dev.lock().unwrap_or_else(|e| e.into_inner()).attach(None);
        }
    }

    /// Stops (or resumes) frames arriving into guest memory, so a snapshot's
    /// memory and its device state agree.
    pub fn pause_net(&mut self, paused: bool) {
        if let Some(dev) = self.bus.net() {
            dev.lock().unwrap_or_else(|e| e.into_inner()).pause(paused);
        }
    }

    /// The vCPU's general registers (where a stuck guest is, for diagnostics).
    pub fn regs(&self) -> Result<kvm_bindings::kvm_regs, VmmError> {
        self.vcpu.get_regs().map_err(|source| VmmError::GetState {
            what: "REGS",
            source,
        })
    }

    /// The vCPU's special registers (to start a boot layout from its reset state).
    pub fn sregs(&self) -> Result<kvm_bindings::kvm_sregs, VmmError> {
        self.vcpu.get_sregs().map_err(|source| VmmError::GetState {
            what: "SREGS",
            source,
        })
    }
}
