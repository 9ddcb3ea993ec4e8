//! Everything that touches KVM. Nothing above this module sees an ioctl, and
//! nothing in here knows about templates, sandboxes or JSON-RPC.
//!
//! `unsafe` lives here and in [`memory`] only: raw mappings, `kvm_run` fields
//! written from another thread, and ioctls whose size contracts kvm-ioctls
//! cannot check.

mod bus;
mod compat;
mod dirty;
mod error;
mod hypervisor;
mod irq;
mod kick;
pub mod layout;
mod limits;
pub mod linux;
pub mod memory;
mod pace;
pub mod pagemap;
pub mod pages;
mod pthread;
mod quirks;
mod serial;
mod state;
mod thread;
mod tsc;
mod vcpu;
mod virtio;
mod vm;
mod x86;

pub use bus::{Bus, BusStats, DeviceState};
pub use compat::incompatibility as cpuid_incompatibility;
pub use dirty::DirtyOverLimit;
pub use error::VmmError;
pub use hypervisor::{Flavor, Hypervisor};
pub use kick::Kicker;
pub use limits::{one_malloc_arena, raise_nofile};
pub use pace::Pace;
pub use pthread::RawThread;
pub use quirks::Quirks;
pub use serial::{ConsoleLog, ConsoleTail, SerialRegs};
pub use state::{MachineState, VcpuState, VmState};
pub use thread::{VcpuThread, live_vms};
pub use vcpu::{Stop, run_until_stop};
pub use virtio::{NET_IRQ, NET_MMIO_BASE, NET_MMIO_SIZE, NetBackend, NetHandle};
pub use vm::{Tracking, Vm};
