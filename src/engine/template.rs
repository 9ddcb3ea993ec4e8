//! Templates and their families.
//!
//! A template is a [`Layer`] with an id. Every template built, loaded or
//! branched from one root belongs to that root's [`Family`]: the same base
//! file and the same CPUID, so one pool of ready VMs serves them all. A
//! pooled VM is a fork of the root; a fork of a branch takes one and gets the
//! branch's pages and state written over it on its own thread, and a killed
//! sandbox's VM returns to the pool reset to the root. So a branch costs no
//! VM, no thread and no learning pass: only the pages it changed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kvm_bindings::CpuId;

use super::budget::{Charge, cost};
use super::deadline::Deadlines;
use super::layer::{Layer, Over, Ram};
use super::pool::{Health, Pool, Shell};
use super::{CancelToken, EngineError, session};
use crate::agent::{self, AgentError};
use crate::image::spec_image::Manifest;
use crate::vmm::memory::{GuestRam, MemoryFile, Sharing};
use crate::vmm::{Hypervisor, Pace, Tracking, VcpuThread, Vm, VmmError, layout, pagemap};

/// The bare guest image, built from guest/bare by build.rs.
pub static BARE_GUEST: &[u8] = include_bytes!(env!("ZEROBOOT_BARE_GUEST"));

/// How long the bare guest may take to boot to Ready (it takes milliseconds).
const BARE_BOOT_DEADLINE: Duration = Duration::from_secs(10);

/// Most pages a pooled VM copies ahead of its first exec (16 MiB; a Linux
/// guest's Python exec dirties ~770): a probe that dirtied more is not made
/// faster by copying ahead, and each pooled VM would hold the copies.
pub(crate) const MAX_HOT_PAGES: usize = 4096;

/// A loaded template.
pub struct Template {
    /// Id given by the engine.
    pub id: String,
    /// Where it came from: "builtin:bare", a file path, "linux:KERNEL" or a sandbox.
    pub source: String,
    pub(crate) layer: Arc<Layer>,
    pub(crate) family: Arc<Family>,
    /// A branch's VMs already restored to it (none for a root, whose forks
    /// take the family's pool).
    pub(crate) ready: Pool,
}

/// VMs a branch keeps restored to itself once it has been forked: its next
/// forks pay no restore on the request path (~0.1 ms of state ioctls). A
/// branch's first fork restores on the request path and starts these, so a
/// branch nobody forks costs no VM; each fork that takes one starts another.
pub(crate) const BRANCH_READY: usize = 2;

impl Template {
    /// True for a branch (a layer over its family's root).
    pub(crate) fn is_branch(&self) -> bool {
        !Arc::ptr_eq(&self.layer, &self.family.root)
    }

    /// Restores `shell` (a fork of the family's root) to this branch, on its
    /// own thread: queued before any request, so none can see the root.
    pub(crate) fn adopt(&self, shell: &Shell) {
        let (layer, family, health) = (
            Arc::clone(&self.layer),
            Arc::clone(&self.family),
            Arc::clone(&shell.health),
        );
        shell.thread.submit(move |vm| {
            if let Err(e) = layer.restore(vm, &family.hot_pages, Ram::Clean, Pace::Urgent) {
                *health.lock().unwrap_or_else(|e| e.into_inner()) = Health::Broken {
                    reason: format!("restoring the branch failed: {e}"),
                    recyclable: true,
                };
            }
        });
    }

    /// Tops a branch's ready VMs up from the family's pool, without waiting.
    /// Each is charged for the branch's pages it holds while idle, from
    /// spare budget only.
    pub(crate) fn prepare(&self) {
        while self.ready.has_room() {
            let Some(mut shell) = self.family.pool.take(false) else {
                return;
            };
            if !shell.cover_kept(cost::private(self.layer.view_pages())) {
                super::recycle::recycle(&self.family, None, shell, true);
                return;
            }
            self.adopt(&shell);
            if let Err(shell) = self.ready.offer(shell) {
                super::recycle::recycle(&self.family, None, shell, true);
                return;
            }
        }
    }

    /// Guest memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.layer.memory_bytes()
    }

    /// Guest memory size in pages.
    pub(crate) fn memory_pages(&self) -> u64 {
        self.layer.memory_bytes() as u64 / 4096
    }
}

/// What a root template and all its branches share.
pub(crate) struct Family {
    /// The root's id, for thread names and logs.
    pub name: String,
    /// The layer pooled VMs are forks of.
    pub root: Arc<Layer>,
    pub cpuid: CpuId,
    pub pool: Pool,
    /// Pages a first exec dirties, copied ahead of time in pooled VMs.
    pub hot_pages: Vec<u64>,
    /// What the root's image holds, when it was built from a spec; every
    /// branch of the family runs that image, and its files record it.
    pub manifest: Option<Manifest>,
    /// The network its forks get unless they say otherwise (the spec's).
    pub network: Option<super::NetworkSpec>,
    /// Templates of the family still registered; the pool closes at zero.
    members: AtomicUsize,
    /// What the root's memory costs the worker's budget, held while any
    /// template, sandbox or layer of the family needs it.
    charge: Charge,
}

/// A new root layer and what it holds: what [`Family::new`] starts from.
pub(crate) struct Root {
    pub layer: Layer,
    /// What its image holds, when built from a spec.
    pub manifest: Option<Manifest>,
    /// The budget charge for its memory.
    pub charge: Charge,
}

impl Family {
    /// A family for a new root layer, with `pool` (empty). Its
    /// hot pages are learnt by running a probe in a throwaway VM, which is
    /// also the proof that the guest answers at all: one that does not within
    /// `timeout` is refused with [`EngineError::TemplateUnresponsive`].
    pub fn new(
        hv: &Arc<Hypervisor>,
        deadlines: &Deadlines,
        name: String,
        root: Root,
        pool: Pool,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<Family, EngineError> {
        let cpuid = root.layer.state.vcpu.cpuid()?;
        let mut family = Family {
            name,
            root: Arc::new(root.layer),
            cpuid,
            pool,
            hot_pages: Vec::new(),
            network: super::network::template_default(root.manifest.as_ref()),
            manifest: root.manifest,
            members: AtomicUsize::new(0),
            charge: root.charge,
        };
        family.hot_pages = family.learn_hot_pages(hv, deadlines, timeout, cancel)?;
        Ok(family)
    }

    /// Learns which pages every first request dirties by running a probe in
    /// a throwaway VM, so pooled VMs can copy them before a request arrives.
    /// The probe is an exec with no argv: both agents refuse it after taking
    /// it in and before running anything (the bare guest on its output path,
    /// the Linux agent with an error), so what it learns is the request path
    /// itself, which every request takes. A probe that ran an interpreter
    /// would make every fork copy that interpreter's pages, whatever the fork
    /// runs: measured in the lane, a JavaScript fork + run made 3440 KiB
    /// private with a Python probe, of which ~270 pages were Python's.
    fn learn_hot_pages(
        &self,
        hv: &Arc<Hypervisor>,
        deadlines: &Deadlines,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<Vec<u64>, EngineError> {
        let frame = super::ExecRequest::default().frame(Duration::ZERO)?;
        let (root, cpuid, h) = (Arc::clone(&self.root), self.cpuid.clone(), Arc::clone(hv));
        let thread = VcpuThread::spawn(format!("probe-{}", self.name), move || {
            let ram = GuestRam::map(root.base(), Sharing::Private)?;
            let mut vm = Vm::new(&h, ram, &cpuid, Tracking::Off)?;
            root.restore(&mut vm, &[], Ram::Clean, Pace::Urgent)?;
            Ok(vm)
        })
        .map_err(|e| EngineError::TemplateUnresponsive {
            detail: format!("its state cannot be restored: {}", crate::error_chain(&e)),
        })?;
        let mailbox = self.root.mailbox;
        let outcome = session::run(&thread, deadlines, timeout, cancel, move |vm| {
            let mut link = agent::VmLink {
                vm: &mut *vm,
                mailbox: &mailbox,
            };
            let answer = agent::exec(&mut link, &frame, 0, &mut |_, _| {}, None);
            let rip = vm.regs().map(|r| r.rip).ok();
            let (addr, size) = (vm.ram().host_addr(), vm.ram().size());
            let hot = pagemap::private_page_offsets(addr, size, MAX_HOT_PAGES)
                .map(Option::unwrap_or_default);
            (answer, rip, hot)
        });
        drop(thread.stop());
        let at = |rip: Option<u64>| rip.map_or(String::new(), |r| format!(" (vCPU at rip {r:#x})"));
        let unresponsive = |detail: String| EngineError::TemplateUnresponsive { detail };
        match outcome.value {
            None => Err(unresponsive(format!(
                "the guest neither answered a probe exec within {} ms nor stopped when kicked",
                timeout.as_millis()
            ))),
            Some((Err(AgentError::Interrupted), _, _)) if cancel.is_cancelled() => {
                Err(EngineError::Cancelled)
            }
            Some((Err(AgentError::Interrupted), rip, _)) if outcome.timed_out => {
                Err(unresponsive(format!(
                    "the guest did not answer a probe exec within {} ms{}",
                    timeout.as_millis(),
                    at(rip)
                )))
            }
            Some((Err(AgentError::Vmm(e)), rip, _)) => Err(unresponsive(format!(
                "running the guest failed{}: {}",
                at(rip),
                crate::error_chain(&e)
            ))),
            Some((Ok(_) | Err(AgentError::Agent { .. }), _, hot)) => hot
                .map_err(|e| EngineError::ResourceLimit(format!("cannot read the page map: {e}"))),
            Some((Err(e), rip, _)) => Err(unresponsive(format!(
                "the guest did not answer a probe exec{}: {e}",
                at(rip)
            ))),
        }
    }

    /// Counts one more registered template of this family.
    pub fn join(&self) {
        self.members.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one template fewer; the last one out closes the pool and
    /// returns its idle VMs to be stopped.
    pub fn leave(&self) {
        if self.members.fetch_sub(1, Ordering::SeqCst) == 1 {
            for shell in self.pool.close() {
                drop(shell.retire());
            }
        }
    }

    /// Bytes of the budget the root's memory holds.
    pub fn charged_bytes(&self) -> u64 {
        self.charge.bytes()
    }

    /// Starts a new VM thread restored to the root (a cold fork), charged
    /// `charge`; a `tracked` one counts the pages its guest dirties.
    pub fn spawn_shell(
        self: &Arc<Self>,
        hv: &Arc<Hypervisor>,
        tracked: bool,
        charge: Charge,
    ) -> Result<Shell, VmmError> {
        let (family, hv) = (Arc::clone(self), Arc::clone(hv));
        let tracking = if tracked {
            Tracking::Dirty
        } else {
            Tracking::Off
        };
        let thread = VcpuThread::spawn(format!("vcpu-{}", self.name), move || {
            let ram = GuestRam::map(family.root.base(), Sharing::Private)?;
            let mut vm = Vm::new(&hv, ram, &family.cpuid, tracking)?;
            family
                .root
                .restore(&mut vm, &family.hot_pages, Ram::Clean, Pace::Urgent)?;
            Ok(vm)
        })?;
        Ok(Shell::new(thread, tracked, charge))
    }
}

/// Builds a booting guest's VM over its memory, with its CPUID.
pub(crate) type MakeVm =
    Box<dyn FnOnce(&Hypervisor, GuestRam, &CpuId) -> Result<Vm, VmmError> + Send>;

/// A guest booting on its own vCPU thread: `make` builds its VM over a
/// shared mapping of `base`.
pub(crate) struct Boot<'a> {
    pub base: MemoryFile,
    pub cpuid: CpuId,
    pub deadline: Duration,
    pub deadlines: &'a Deadlines,
    pub cancel: &'a CancelToken,
    pub make: MakeVm,
}

/// Why a boot failed.
pub(crate) enum BootFailure {
    /// KVM itself failed.
    Vmm(VmmError),
    /// The caller cancelled.
    Cancelled,
    /// The guest did not reach Ready: what happened, and where its vCPU was.
    Guest(String),
}

impl Boot<'_> {
    /// Runs the guest until its agent registers its mailbox and says Ready,
    /// under the deadline, then captures it as a root layer over the sealed base.
    pub fn run(self, hv: &Arc<Hypervisor>, name: &str) -> Result<Layer, BootFailure> {
        let base = Arc::new(self.base);
        let ram = GuestRam::map(&base, Sharing::Shared).map_err(BootFailure::Vmm)?;
        let (h, cpuid, make) = (Arc::clone(hv), self.cpuid.clone(), self.make);
        let thread = VcpuThread::spawn(format!("boot-{name}"), move || make(&h, ram, &cpuid))
            .map_err(BootFailure::Vmm)?;
        let (h, b, cpuid) = (Arc::clone(hv), Arc::clone(&base), self.cpuid);
        let outcome = session::run(
            &thread,
            self.deadlines,
            self.deadline,
            self.cancel,
            move |vm| {
                agent::boot(vm)
                    .and_then(|(mailbox, _ready)| {
                        let over = Over::Boot { base: b, mailbox };
                        Ok(Layer::capture(vm, &h, &cpuid, over)?)
                    })
                    // A failed boot also says where the vCPU stopped: the one
                    // clue left when a kernel spins with nothing on its console.
                    .map_err(|e| (e, vm.regs().ok().map(|r| r.rip)))
            },
        );
        // Tearing the VM down removes the last shared mapping, so sealing can succeed.
        thread.stop().join();
        let at = |rip: Option<u64>| rip.map_or(String::new(), |r| format!(" (vCPU at rip {r:#x})"));
        let layer = match outcome.value {
            Some(Ok(layer)) => layer,
            Some(Err((AgentError::Interrupted, _))) if self.cancel.is_cancelled() => {
                return Err(BootFailure::Cancelled);
            }
            Some(Err((AgentError::Interrupted, rip))) if outcome.timed_out => {
                return Err(BootFailure::Guest(format!(
                    "the agent did not report Ready within {} s{}",
                    self.deadline.as_secs(),
                    at(rip)
                )));
            }
            Some(Err((AgentError::Vmm(e), _))) => return Err(BootFailure::Vmm(e)),
            Some(Err((e, rip))) => return Err(BootFailure::Guest(format!("{e}{}", at(rip)))),
            None if outcome.timed_out => {
                return Err(BootFailure::Guest(format!(
                    "the agent did not report Ready within {} s, and the vCPU did not stop",
                    self.deadline.as_secs()
                )));
            }
            None => return Err(BootFailure::Guest("the vCPU thread is gone".into())),
        };
        base.seal().map_err(BootFailure::Vmm)?;
        Ok(layer)
    }
}

/// Boots the bare guest in `memory_bytes` of memory to its Ready point and captures it.
pub(crate) fn boot_bare(
    hv: &Arc<Hypervisor>,
    deadlines: &Deadlines,
    memory_bytes: usize,
    cancel: &CancelToken,
) -> Result<Layer, EngineError> {
    let base = MemoryFile::create("zeroboot-bare", memory_bytes)?;
    let boot = Boot {
        base,
        cpuid: hv.cpuid().clone(),
        deadline: BARE_BOOT_DEADLINE,
        deadlines,
        cancel,
        make: Box::new(|hv, ram, cpuid| {
            layout::write_bare_boot(&ram, BARE_GUEST)?;
            let vm = Vm::new(hv, ram, cpuid, Tracking::Off)?;
            let sregs = layout::bare_entry_sregs(vm.sregs()?);
            vm.set_entry(&layout::bare_entry_regs(), &sregs)?;
            Ok(vm)
        }),
    };
    boot.run(hv, "bare").map_err(|f| match f {
        BootFailure::Vmm(e) => EngineError::Vmm(e),
        BootFailure::Cancelled => EngineError::Cancelled,
        BootFailure::Guest(why) => EngineError::GuestProtocol {
            detail: format!("bare guest failed to boot: {why}"),
        },
    })
}
