//! The process's one handle on /dev/kvm (reopening it per fork is wasted work),
//! with what every VM needs and never changes: supported CPUID, the MSRs that
//! can be saved, and which kind of KVM this is.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use super::{Quirks, VmmError};

/// Which KVM implementation backs /dev/kvm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Intel VT-x or AMD-V (also nested, e.g. under QEMU's emulated SVM).
    Hardware,
    /// kvm-pvm: a software hypervisor; CPL0 guest code is emulated, so a stock
    /// Linux guest cannot boot.
    Pvm,
}

impl Flavor {
    /// Name used in JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Hardware => "hardware",
            Flavor::Pvm => "pvm",
        }
    }

    fn detect() -> Flavor {
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            Flavor::Pvm
        } else {
            Flavor::Hardware
        }
    }
}

/// /dev/kvm plus the facts derived from it once per process.
pub struct Hypervisor {
    kvm: Kvm,
    cpuid: CpuId,
    msrs: Vec<u32>,
    flavor: Flavor,
    quirks: Quirks,
    tsc_offset: bool,
    dirty_ring: u32,
}

impl Hypervisor {
    /// Opens /dev/kvm and checks what zeroboot relies on.
    pub fn open() -> Result<Hypervisor, VmmError> {
        let kvm = Kvm::new().map_err(VmmError::OpenKvm)?;
        super::pagemap::pagemap().map_err(VmmError::Pagemap)?;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
            (Cap::Xsave, "XSAVE"),
            (Cap::Xcrs, "XCRS"),
            (Cap::UserMemory, "USER_MEMORY"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmmError::MissingCapability(name));
            }
        }
        let xsave = kvm.check_extension_int(Cap::Xsave2);
        if xsave > 4096 {
            return Err(VmmError::XsaveTooLarge(xsave));
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::SupportedCpuid)?;
        let index = kvm.get_msr_index_list().map_err(VmmError::MsrIndexList)?;
        let flavor = Flavor::detect();
        let (msrs, tsc_offset, dirty_ring) = probe_vcpu(&kvm, index.as_slice())?;
        // kvm-pvm accepts the attribute, but its guests read the host's TSC
        // directly: there is no offset to set.
        let tsc_offset = tsc_offset && flavor == Flavor::Hardware;
        let quirks = Quirks::detect();
        if quirks != Quirks::default() {
            tracing::info!(?quirks, "host hypervisor quirks in effect");
        }
        Ok(Hypervisor {
            kvm,
            cpuid,
            msrs,
            flavor,
            quirks,
            tsc_offset,
            dirty_ring,
        })
    }

    /// The KVM handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// CPUID every vCPU gets: what KVM supports, unchanged.
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// MSRs captured in a snapshot.
    pub fn msrs(&self) -> &[u32] {
        &self.msrs
    }

    /// Which KVM this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Workarounds this host needs.
    pub fn quirks(&self) -> Quirks {
        self.quirks
    }

    /// Entries of each VM's dirty ring: the most pages a guest can dirty
    /// between two counts (see `dirty.rs`).
    pub fn dirty_ring_entries(&self) -> u32 {
        self.dirty_ring
    }

    /// Whether restores can set the TSC exactly (see `tsc.rs`).
    pub fn tsc_offset(&self) -> bool {
        self.tsc_offset
    }
}

/// Keeps the MSRs a scratch vCPU can actually read: KVM_GET_MSRS stops at the
/// first failing index, so each one is probed alone, once per process. Also
/// says whether the vCPU's TSC offset can be set directly.
fn probe_vcpu(kvm: &Kvm, index: &[u32]) -> Result<(Vec<u32>, bool, u32), VmmError> {
    let vm = kvm.create_vm().map_err(VmmError::CreateVm)?;
    let ring = super::dirty::probe(&vm)?;
    let vcpu = vm.create_vcpu(0).map_err(VmmError::CreateVcpu)?;
    let ok = index
        .iter()
        .copied()
        .filter(|&msr| matches!(super::state::read_msr(&vcpu, msr), Ok(Some(_))))
        .collect();
    Ok((ok, super::tsc::offset_supported(&vcpu), ring))
}
