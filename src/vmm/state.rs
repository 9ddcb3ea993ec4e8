//! A machine's complete state, captured from the template VM and restored into
//! every fork. Each ioctl maps to its own error so a failure says what failed;
//! MSR counts are checked because KVM reports partial success, not an error.

use kvm_bindings::{
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, Msrs, kvm_clock_data,
    kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::{DeviceState, Pace, Quirks, VmmError, tsc};

/// State of the one vCPU.
///
/// Each KVM structure is stored as its bytes and read back only when it has
/// exactly its size: kvm-bindings' own deserializer pads a short one with
/// zeros and drops the excess of a long one (see [`exact`]).
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID the vCPU was created with (set on a new vCPU before anything else).
    #[serde(with = "exact::list")]
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General registers.
    #[serde(with = "exact")]
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    #[serde(with = "exact")]
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state.
    #[serde(with = "exact")]
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    #[serde(with = "exact")]
    pub xcrs: kvm_xcrs,
    /// Local APIC registers.
    #[serde(with = "exact")]
    pub lapic: kvm_lapic_state,
    /// Model-specific registers, every one KVM could read.
    #[serde(with = "exact::list")]
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    #[serde(with = "exact")]
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI...
    #[serde(with = "exact")]
    pub mp_state: kvm_mp_state,
    /// Debug registers.
    #[serde(with = "exact")]
    pub debugregs: kvm_debugregs,
}

/// VM-wide state: interrupt controllers and the KVM clock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC.
    #[serde(with = "exact::list")]
    pub irqchips: Vec<kvm_irqchip>,
    /// kvmclock.
    #[serde(with = "exact")]
    pub clock: kvm_clock_data,
}

/// Everything a fork needs besides memory.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    /// The vCPU.
    pub vcpu: VcpuState,
    /// The VM.
    pub vm: VmState,
    /// Emulated devices (none for the bare guest; absent in older files).
    #[serde(default)]
    pub devices: DeviceState,
}

/// Serde for KVM structures as their exact bytes.
mod exact {
    use serde::de::{Error, value::BytesDeserializer};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: for<'a> Deserialize<'a>,
        D: Deserializer<'de>,
    {
        from_bytes(&Vec::<u8>::deserialize(d)?)
    }

    fn from_bytes<T: for<'a> Deserialize<'a>, E: Error>(bytes: &[u8]) -> Result<T, E> {
        let want = size_of::<T>();
        if bytes.len() != want {
            return Err(E::custom(format!(
                "{} of {} bytes, not {want}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("state"),
                bytes.len()
            )));
        }
        T::deserialize(BytesDeserializer::<E>::new(bytes))
    }

    /// The same for a list of structures.
    pub mod list {
        use super::*;

        pub fn serialize<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v)
        }

        pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
        where
            T: for<'a> Deserialize<'a>,
            D: Deserializer<'de>,
        {
            Vec::<Vec<u8>>::deserialize(d)?
                .iter()
                .map(|b| from_bytes(b))
                .collect()
        }
    }
}

impl MachineState {
    /// Checks a state read from a file against what this host's KVM can take,
    /// before any of it reaches an ioctl: list lengths within KVM's limits,
    /// only MSRs this host saves, the three irqchips in order. Returns what is
    /// wrong, in words.
    pub fn check(&self, hv: &super::Hypervisor) -> Result<(), String> {
        let v = &self.vcpu;
        if v.cpuid.is_empty() || v.cpuid.len() > kvm_bindings::KVM_MAX_CPUID_ENTRIES {
            return Err(format!("{} CPUID entries", v.cpuid.len()));
        }
        if v.msrs.len() > hv.msrs().len() {
            return Err(format!(
                "{} MSRs, this host saves {}",
                v.msrs.len(),
                hv.msrs().len()
            ));
        }
        if let Some(m) = v.msrs.iter().find(|m| !hv.msrs().contains(&m.index)) {
            return Err(format!(
                "MSR {:#x}, which this host's KVM cannot restore",
                m.index
            ));
        }
        let chips: Vec<u32> = self.vm.irqchips.iter().map(|c| c.chip_id).collect();
        if chips
            != [
                KVM_IRQCHIP_PIC_MASTER,
                KVM_IRQCHIP_PIC_SLAVE,
                KVM_IRQCHIP_IOAPIC,
            ]
        {
            return Err(format!(
                "irqchips {chips:?}, expected PIC master, PIC slave, IOAPIC"
            ));
        }
        Ok(())
    }
}

fn get<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmmError> {
    r.map_err(|source| VmmError::GetState { what, source })
}

fn set<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VmmError> {
    r.map_err(|source| VmmError::SetState { what, source })
}

/// Reads one MSR: `None` when KVM cannot read it (KVM_GET_MSRS reports a
/// count, not an error, for an index it refuses).
pub(super) fn read_msr(vcpu: &VcpuFd, index: u32) -> Result<Option<u64>, kvm_ioctls::Error> {
    let mut one = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .expect("one entry is below the FAM limit");
    let read = vcpu.get_msrs(&mut one)?;
    Ok((read == 1).then(|| one.as_slice()[0].data))
}

fn write_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), VmmError> {
    let msrs = Msrs::from_entries(entries).map_err(|_| VmmError::MsrCount {
        op: "wrote",
        done: 0,
        wanted: entries.len(),
        first_missing: 0,
    })?;
    let wrote = set("MSRS", vcpu.set_msrs(&msrs))?;
    check_msrs("wrote", wrote, entries)
}

fn check_msrs(op: &'static str, done: usize, entries: &[kvm_msr_entry]) -> Result<(), VmmError> {
    if done == entries.len() {
        return Ok(());
    }
    Err(VmmError::MsrCount {
        op,
        done,
        wanted: entries.len(),
        first_missing: entries.get(done).map_or(0, |e| e.index),
    })
}

impl VcpuState {
    /// Reads the state of a stopped vCPU (not inside KVM_RUN, no pending I/O).
    pub fn capture(vcpu: &VcpuFd, cpuid: &CpuId, msr_list: &[u32]) -> Result<VcpuState, VmmError> {
        let wanted: Vec<kvm_msr_entry> = msr_list
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&wanted).map_err(|_| VmmError::MsrCount {
            op: "read",
            done: 0,
            wanted: wanted.len(),
            first_missing: 0,
        })?;
        let read = get("MSRS", vcpu.get_msrs(&mut msrs))?;
        check_msrs("read", read, &wanted)?;
        Ok(VcpuState {
            cpuid: cpuid.as_slice().to_vec(),
            regs: get("REGS", vcpu.get_regs())?,
            sregs: get("SREGS", vcpu.get_sregs())?,
            xsave: get("XSAVE", vcpu.get_xsave())?,
            xcrs: get("XCRS", vcpu.get_xcrs())?,
            lapic: get("LAPIC", vcpu.get_lapic())?,
            msrs: msrs.as_slice().to_vec(),
            events: get("VCPU_EVENTS", vcpu.get_vcpu_events())?,
            mp_state: get("MP_STATE", vcpu.get_mp_state())?,
            debugregs: get("DEBUGREGS", vcpu.get_debug_regs())?,
        })
    }

    /// The CPUID as KVM wants it.
    pub fn cpuid(&self) -> Result<CpuId, VmmError> {
        CpuId::from_entries(&self.cpuid)
            .map_err(|_| VmmError::MissingCapability("CPUID entry count"))
    }

    /// Writes the state into a vCPU whose CPUID is already set.
    ///
    /// The order matters:
    /// - SREGS first: CR0/CR4/EFER decide how KVM interprets the rest, and it
    ///   carries the APIC base the LAPIC state is relative to.
    /// - XCRS before XSAVE: XCR0 decides which XSAVE components are valid.
    /// - REGS before VCPU_EVENTS: setting registers clears pending exceptions,
    ///   which the events then put back.
    /// - LAPIC before MSRS: the TSC-deadline MSR only sticks once the LAPIC is in
    ///   TSC-deadline mode.
    /// - The TSC before the other MSRs: KVM arms the TSC-deadline timer against
    ///   the guest's TSC when that MSR is written. With `tsc_offset` the TSC is
    ///   set through its offset, exactly (see `tsc.rs`), and not written again.
    /// - MP_STATE last, so the vCPU is runnable only once everything is in place.
    ///
    /// `quirks` adjust what the host needs adjusted (see [`Quirks`]). The
    /// vCPU is this thread's alone throughout, so yielding between steps
    /// (at `pace`) changes nothing but who else runs meanwhile.
    pub fn restore(
        &self,
        vcpu: &VcpuFd,
        quirks: Quirks,
        tsc_offset: bool,
        pace: Pace<'_>,
    ) -> Result<(), VmmError> {
        // One ioctl a step: each takes ~9 us on kvm-pvm.
        let paced = |what, r: Result<(), kvm_ioctls::Error>| {
            set(what, r)?;
            pace.step();
            Ok::<(), VmmError>(())
        };
        paced("SREGS", vcpu.set_sregs(&quirks.sregs(self.sregs)))?;
        paced("XCRS", vcpu.set_xcrs(&self.xcrs))?;
        // SAFETY: KVM_SET_XSAVE reads size_of::<kvm_xsave>() bytes, and
        // Hypervisor::open refused hosts whose XSAVE area is larger.
        paced("XSAVE", unsafe { vcpu.set_xsave(&self.xsave) })?;
        paced("REGS", vcpu.set_regs(&self.regs))?;
        paced("LAPIC", vcpu.set_lapic(&self.lapic))?;
        let tsc = self.msrs.iter().find(|m| m.index == tsc::MSR_IA32_TSC);
        match tsc {
            Some(tsc) if tsc_offset => {
                tsc::set_guest_tsc(vcpu, tsc.data)?;
                let rest: Vec<_> = self
                    .msrs
                    .iter()
                    .filter(|m| m.index != tsc.index)
                    .copied()
                    .collect();
                write_msrs(vcpu, &rest)?;
            }
            _ => write_msrs(vcpu, &self.msrs)?,
        }
        pace.step();
        paced("DEBUGREGS", vcpu.set_debug_regs(&self.debugregs))?;
        paced("VCPU_EVENTS", vcpu.set_vcpu_events(&self.events))?;
        // The last step: the caller yields after it.
        set("MP_STATE", vcpu.set_mp_state(self.mp_state))
    }
}

impl VmState {
    /// Reads the VM-wide state.
    pub fn capture(vm: &VmFd) -> Result<VmState, VmmError> {
        let mut irqchips = Vec::with_capacity(3);
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            get("IRQCHIP", vm.get_irqchip(&mut chip))?;
            irqchips.push(chip);
        }
        let mut clock = get("CLOCK", vm.get_clock())?;
        // Restore the clock exactly; no flag asks KVM to adjust it.
        clock.flags = 0;
        Ok(VmState { irqchips, clock })
    }

    /// Writes the VM-wide state, yielding between ioctls at `pace`.
    pub fn restore(&self, vm: &VmFd, pace: Pace<'_>) -> Result<(), VmmError> {
        for chip in &self.irqchips {
            set("IRQCHIP", vm.set_irqchip(chip))?;
            pace.step();
        }
        set("CLOCK", vm.set_clock(&self.clock))
    }
}
