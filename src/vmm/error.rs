//! The VMM's error type: one variant per failing operation, so a message names
//! exactly which ioctl or syscall went wrong.

use kvm_ioctls::Error as KvmError;

/// Errors from the KVM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] KvmError),
    /// The KVM API version or a required capability is missing.
    #[error("KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// The host's guest FPU state does not fit the 4 KiB KVM_GET_XSAVE buffer.
    #[error("xsave state of {0} bytes exceeds 4096")]
    XsaveTooLarge(i32),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] KvmError),
    /// KVM_GET_MSR_INDEX_LIST failed.
    #[error("KVM_GET_MSR_INDEX_LIST failed")]
    MsrIndexList(#[source] KvmError),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] KvmError),
    /// KVM_SET_TSS_ADDR failed.
    #[error("KVM_SET_TSS_ADDR failed")]
    SetTssAddr(#[source] KvmError),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("KVM_SET_USER_MEMORY_REGION failed")]
    SetMemoryRegion(#[source] KvmError),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("KVM_CREATE_IRQCHIP failed")]
    CreateIrqchip(#[source] KvmError),
    /// KVM_CREATE_VCPU failed.
    #[error("KVM_CREATE_VCPU failed")]
    CreateVcpu(#[source] KvmError),
    /// memfd_create or ftruncate failed.
    #[error("cannot create guest memory of {size} bytes")]
    CreateMemory {
        /// Requested size.
        size: usize,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// mmap of guest memory failed.
    #[error("cannot map guest memory")]
    MapMemory(#[source] std::io::Error),
    /// Sealing the template memory failed.
    #[error("cannot seal template memory")]
    SealMemory(#[source] std::io::Error),
    /// A guest address range is outside guest memory.
    #[error("guest address {addr:#x}+{len:#x} is outside guest memory")]
    GuestAddress {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: usize,
    },
    /// The guest image does not fit guest memory.
    #[error("guest image of {0} bytes does not fit guest memory")]
    ImageTooLarge(usize),
    /// Reading one piece of vCPU or VM state failed.
    #[error("KVM_GET_{what} failed")]
    GetState {
        /// Which state.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: KvmError,
    },
    /// Writing one piece of vCPU or VM state failed.
    #[error("KVM_SET_{what} failed")]
    SetState {
        /// Which state.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: KvmError,
    },
    /// KVM read or wrote fewer MSRs than asked.
    #[error("KVM {op} {done} of {wanted} MSRs (first missing: {first_missing:#x})")]
    MsrCount {
        /// "read" or "wrote".
        op: &'static str,
        /// Entries processed.
        done: usize,
        /// Entries requested.
        wanted: usize,
        /// Index of the first MSR not processed.
        first_missing: u32,
    },
    /// A device's saved state cannot be restored.
    #[error("invalid {device} state: {detail}")]
    DeviceState {
        /// Which device.
        device: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// KVM_RUN failed with an unexpected error.
    #[error("KVM_RUN failed")]
    Run(#[source] KvmError),
    /// Spawning the vCPU thread failed.
    #[error("cannot spawn a vCPU thread")]
    SpawnThread(#[source] std::io::Error),
    /// Enabling, mapping or resetting the dirty-page ring failed.
    #[error("KVM dirty ring")]
    DirtyRing(#[source] std::io::Error),
    /// /proc/self/pagemap cannot be opened.
    #[error("cannot open /proc/self/pagemap")]
    Pagemap(#[source] std::io::Error),
    /// The vCPU thread's seccomp filter could not be installed.
    #[error("vCPU seccomp filter")]
    Confine(#[source] crate::confine::ConfineError),
    /// Installing the vCPU kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler")]
    SignalHandler(#[source] std::io::Error),
}
