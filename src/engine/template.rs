//! A template: sealed memory plus the captured machine state and the guest's
//! mailbox. Forks map the memory privately and restore the state; nothing a
//! fork does can reach the template (the memfd is sealed against writes).

use std::sync::Arc;

use kvm_bindings::CpuId;

use super::EngineError;
use super::pool::Pool;
use crate::agent::{self, Mailbox};
use crate::vmm::memory::{self, GuestRam, Memfd, Sharing};
use crate::vmm::{Hypervisor, MachineState, VcpuThread, Vm, VmmError, layout};

/// The bare guest image, built from guest/bare by build.rs.
pub static BARE_GUEST: &[u8] = include_bytes!(env!("ZEROBOOT_BARE_GUEST"));

/// A loaded template.
pub struct Template {
    /// Id given by the engine.
    pub id: String,
    /// Where it came from: "builtin:bare" or a file path.
    pub source: String,
    pub(crate) memfd: Memfd,
    pub(crate) state: MachineState,
    pub(crate) mailbox: Mailbox,
    pub(crate) cpuid: CpuId,
    pub(crate) pool: Pool,
    /// Pages a first exec dirties, copied ahead of time in pooled VMs.
    pub(crate) hot_pages: Vec<u64>,
}

/// What a template is made of, before it gets an id and a pool.
pub(crate) struct Snapshot {
    pub memfd: Memfd,
    pub state: MachineState,
    pub mailbox: Mailbox,
}

impl Snapshot {
    /// Boots the bare guest to its Ready point and captures it.
    pub fn boot_bare(hv: &Hypervisor) -> Result<Snapshot, EngineError> {
        let memfd = Memfd::create("zeroboot-bare", layout::BARE_MEMORY)?;
        let ram = GuestRam::map(&memfd, Sharing::Shared)?;
        layout::write_bare_boot(&ram, BARE_GUEST)?;
        let mut vm = Vm::new(hv, ram, hv.cpuid())?;
        let sregs = layout::bare_entry_sregs(vm.sregs()?);
        vm.set_entry(&layout::bare_entry_regs(), &sregs)?;
        let (mailbox, _ready) = agent::boot(&mut vm).map_err(|e| match e {
            agent::AgentError::Vmm(v) => EngineError::Vmm(v),
            other => EngineError::GuestProtocol {
                detail: format!("bare guest failed to boot: {other}"),
            },
        })?;
        vm.complete_pending_io()?;
        let state = vm.capture(hv, hv.cpuid())?;
        // Dropping the VM unmaps the shared view, after which sealing can succeed.
        drop(vm);
        memfd.seal()?;
        Ok(Snapshot {
            memfd,
            state,
            mailbox,
        })
    }
}

impl Template {
    /// Wraps a snapshot with its id and an empty pool of `pool_size`.
    pub(crate) fn new(
        id: String,
        source: String,
        snap: Snapshot,
        pool_size: usize,
    ) -> Result<Template, EngineError> {
        let cpuid = snap.state.vcpu.cpuid()?;
        Ok(Template {
            id,
            source,
            memfd: snap.memfd,
            state: snap.state,
            mailbox: snap.mailbox,
            cpuid,
            pool: Pool::new(pool_size),
            hot_pages: Vec::new(),
        })
    }

    /// Learns which pages a first exec dirties by running a probe in a
    /// throwaway VM, so pooled VMs can copy them before a request arrives.
    /// The probe is Python `pass`: a Linux guest's hot path (its zygote), and
    /// on the bare guest, which has no Python, an unknown command answered on
    /// the same request/response path as any other. An agent that refuses it
    /// (no Python in the image) has still answered through that path.
    pub(crate) fn learn_hot_pages(&mut self, hv: &Hypervisor) -> Result<(), EngineError> {
        let ram = GuestRam::map(&self.memfd, Sharing::Private)?;
        let mut vm = Vm::new(hv, ram, &self.cpuid)?;
        vm.restore(&self.state)?;
        let probe = super::ExecRequest {
            argv: vec!["pass".into()],
            program: super::Program::Python,
            ..Default::default()
        };
        let frame = probe.frame(std::time::Duration::ZERO)?;
        match agent::exec(&mut vm, &self.mailbox, &frame, 0, &mut |_, _| {}) {
            Ok(_) | Err(agent::AgentError::Agent { .. }) => {}
            Err(e) => return Err(EngineError::from_agent(e)),
        }
        self.hot_pages = memory::private_page_addrs(vm.ram().host_addr(), vm.ram().size())
            .map_err(|e| EngineError::ResourceLimit(format!("cannot read page map: {e}")))?;
        Ok(())
    }

    /// Guest memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memfd.size()
    }

    /// Starts a new VM thread restored to this template (a cold fork).
    pub(crate) fn spawn_shell(
        self: &Arc<Self>,
        hv: &Arc<Hypervisor>,
    ) -> Result<VcpuThread, VmmError> {
        let (tpl, hv) = (Arc::clone(self), Arc::clone(hv));
        VcpuThread::spawn(format!("vcpu-{}", self.id), move || {
            let ram = GuestRam::map(&tpl.memfd, Sharing::Private)?;
            ram.precopy(&tpl.hot_pages)?;
            let mut vm = Vm::new(&hv, ram, &tpl.cpuid)?;
            vm.restore(&tpl.state)?;
            Ok(vm)
        })
    }
}
