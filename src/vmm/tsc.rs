//! Putting a restored vCPU's TSC exactly where the snapshot left it.
//!
//! Restoring MSR_IA32_TSC with KVM_SET_MSRS is not exact: KVM takes a host
//! write that lands within one second of the value it expects for the VM as
//! an attempt to synchronise vCPUs, and keeps its own value instead. A VM
//! recycled less than a second after its previous restore would run ahead by
//! the gap, and on Linux < 6.7 a fresh VM whose template was captured less
//! than a second of TSC time after its boot would run behind the snapshot, so
//! the LAPIC timer deadline the guest armed before capture fires late. The
//! TSC_OFFSET vCPU attribute (Linux 5.16) sets the offset with no heuristic:
//! read the guest's TSC and offset, then move the offset by the difference.
//! Hosts without the attribute keep the MSR write. Under kvm-pvm a guest
//! reads the host's TSC itself (no hardware offsetting), so neither applies.

use std::os::fd::AsRawFd;

use kvm_bindings::{KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET, kvm_device_attr};
use kvm_ioctls::VcpuFd;

use super::VmmError;
use super::state::read_msr;

/// The time-stamp counter MSR.
pub const MSR_IA32_TSC: u32 = 0x10;

/// `_IOW(KVMIO, nr, struct kvm_device_attr)`: kvm-ioctls wraps the device
/// attribute ioctls of a vCPU only on aarch64.
const fn attr_ioctl_nr(nr: u64) -> u64 {
    const IOC_WRITE: u64 = 1;
    const KVMIO: u64 = 0xae;
    (IOC_WRITE << 30) | ((size_of::<kvm_device_attr>() as u64) << 16) | (KVMIO << 8) | nr
}
const KVM_SET_DEVICE_ATTR: u64 = attr_ioctl_nr(0xe1);
const KVM_GET_DEVICE_ATTR: u64 = attr_ioctl_nr(0xe2);
const KVM_HAS_DEVICE_ATTR: u64 = attr_ioctl_nr(0xe3);

/// Runs a device-attribute ioctl on the vCPU's TSC offset, which KVM reads
/// from (SET) or writes to (GET) `value`.
fn offset_ioctl(vcpu: &VcpuFd, request: u64, value: &mut u64) -> Result<(), kvm_ioctls::Error> {
    let attr = kvm_device_attr {
        flags: 0,
        group: KVM_VCPU_TSC_CTRL,
        attr: KVM_VCPU_TSC_OFFSET.into(),
        addr: std::ptr::from_mut(value) as u64,
    };
    // SAFETY: `attr` lives across the call and its `addr` points at a live,
    // exclusively borrowed u64: the TSC offset attribute is exactly 8 bytes,
    // which KVM copies in (SET) or out (GET); HAS touches neither.
    let r = unsafe { libc::ioctl(vcpu.as_raw_fd(), request as libc::c_ulong, &attr) };
    if r == 0 {
        Ok(())
    } else {
        Err(kvm_ioctls::Error::last())
    }
}

/// Whether KVM lets this vCPU's TSC offset be set directly.
pub fn offset_supported(vcpu: &VcpuFd) -> bool {
    offset_ioctl(vcpu, KVM_HAS_DEVICE_ATTR, &mut 0).is_ok()
}

/// Makes the guest's TSC read `value` now, whatever KVM made of earlier writes.
pub fn set_guest_tsc(vcpu: &VcpuFd, value: u64) -> Result<(), VmmError> {
    let now = read_msr(vcpu, MSR_IA32_TSC)
        .map_err(|source| VmmError::GetState {
            what: "MSRS (TSC)",
            source,
        })?
        .ok_or(VmmError::MsrCount {
            op: "read",
            done: 0,
            wanted: 1,
            first_missing: MSR_IA32_TSC,
        })?;
    let mut offset = 0;
    offset_ioctl(vcpu, KVM_GET_DEVICE_ATTR, &mut offset).map_err(|source| VmmError::GetState {
        what: "DEVICE_ATTR (TSC offset)",
        source,
    })?;
    let mut moved = offset.wrapping_add(value.wrapping_sub(now));
    offset_ioctl(vcpu, KVM_SET_DEVICE_ATTR, &mut moved).map_err(|source| VmmError::SetState {
        what: "DEVICE_ATTR (TSC offset)",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // linux/kvm.h: _IOW(KVMIO, 0xe1..0xe3, struct kvm_device_attr), 24 bytes.
        assert_eq!(KVM_SET_DEVICE_ATTR, 0x4018_aee1);
        assert_eq!(KVM_GET_DEVICE_ATTR, 0x4018_aee2);
        assert_eq!(KVM_HAS_DEVICE_ATTR, 0x4018_aee3);
    }
}
