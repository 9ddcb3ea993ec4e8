//! A restored vCPU's TSC is the snapshot's, however soon after an earlier
//! restore of the same VM it comes: what a recycled VM goes through. (KVM
//! treats a host TSC write within a second of the value it expects as a
//! synchronisation and keeps its own value; `vmm/tsc.rs` sets the offset.)
//! The test runs on one CPU: TSCs of different host CPUs need not agree, and
//! in the lane's emulated L1 they differ by up to a millisecond.

mod support;

use std::time::Duration;

use support::kvm_or_skip;
use zeroboot::affinity::CpuSet;
use zeroboot::vmm::memory::{GuestRam, MemoryFile, Sharing};
use zeroboot::vmm::{Flavor, Hypervisor, MachineState, Pace, Tracking, Vm};

const MSR_IA32_TSC: u32 = 0x10;

fn tsc(state: &MachineState) -> u64 {
    state
        .vcpu
        .msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .expect("snapshots hold the TSC")
        .data
}

#[test]
fn a_second_restore_within_a_second_sets_the_snapshot_tsc() {
    if !kvm_or_skip("a_second_restore_within_a_second_sets_the_snapshot_tsc") {
        return;
    }
    let hv = Hypervisor::open().expect("KVM");
    if hv.flavor() == Flavor::Pvm {
        eprintln!("skipping: kvm-pvm guests read the host's TSC, nothing is restored");
        return;
    }
    assert!(
        hv.tsc_offset(),
        "this KVM cannot set a vCPU's TSC offset (KVM_VCPU_TSC_OFFSET, Linux >= 5.16)"
    );
    let here = CpuSet::current().expect("affinity").cpus()[0];
    CpuSet::one(here).apply().expect("pin to one CPU");
    let ram = GuestRam::map(
        &MemoryFile::create("tsc-test", 2 << 20).unwrap(),
        Sharing::Private,
    )
    .unwrap();
    let mut vm = Vm::new(&hv, ram, hv.cpuid(), Tracking::Off).unwrap();
    let mut state = vm.capture(&hv, hv.cpuid()).unwrap();
    let snapshot_tsc = 1u64 << 40;
    for m in state
        .vcpu
        .msrs
        .iter_mut()
        .filter(|m| m.index == MSR_IA32_TSC)
    {
        m.data = snapshot_tsc;
    }
    vm.restore(&state, Pace::Urgent).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    vm.restore(&state, Pace::Urgent).unwrap();
    let after = tsc(&vm.capture(&hv, hv.cpuid()).unwrap());
    // The capture follows the restore within microseconds; a TSC that ran on
    // through the 0.6 s between restores would be >= 6e8 cycles ahead at any
    // TSC rate of 1 GHz or more.
    assert!(
        after >= snapshot_tsc && after - snapshot_tsc < 60_000_000,
        "guest TSC {after} after restoring {snapshot_tsc} ({} cycles ahead)",
        after.wrapping_sub(snapshot_tsc)
    );
}
