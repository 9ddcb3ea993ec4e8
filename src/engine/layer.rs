//! Layers: what a template's memory is, and the one way a machine is captured
//! and restored.
//!
//! A root layer is a base file (a sealed memfd, or a template file mapped from
//! the page cache) plus the machine state captured with it. A branch is its
//! parent plus the pages the sandbox changed: only those are copied, into a
//! [`PageStore`] of its own, and the base stays shared. Each layer carries a
//! flattened index of every page above the base (its own and its ancestors',
//! the newest copy of each), so a fork of a branch at depth 100 does exactly
//! what one at depth 1 does: map the base copy-on-write, write the indexed
//! pages over it, restore the state.
//!
//! Pages are reference-counted per store: a layer holds the stores its index
//! points into, and nothing else, so a store whose every page was rewritten
//! further down a chain is freed as soon as the layers that still show it
//! are gone. A chain that would pin more than twice the memory its index
//! shows is compacted instead (its live pages copied into one store), which
//! bounds what any branch costs by what it shows.
//!
//! Each store carries its share of the worker's memory budget
//! ([`Layer::pay`]): a branch's charge is released when the last layer
//! showing its pages goes, not when its own template is unloaded.
//!
//! This is the shape of Firecracker's `Persist` (save a state, restore a thing
//! from it): [`Layer::capture`] is the only way a running VM becomes a
//! template (the bare guest's boot, a Linux boot, a branch), and
//! [`Layer::restore`] the only way a VM becomes a fork of one (a cold VM, a
//! recycled VM, a pooled VM handed to a branch, the hot-page probe).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use kvm_bindings::CpuId;

use super::budget::{Charge, cost};
use super::reserve::PageReserve;
use crate::agent::Mailbox;
use crate::vmm::memory::{MemoryFile, PAGE};
use crate::vmm::pages::PageStore;
use crate::vmm::{Hypervisor, MachineState, Pace, Vm, VmmError};

/// A chain may hold at most this many times the pages its index shows
/// (plus [`COMPACT_SLACK`]) before the next branch compacts it.
const COMPACT_RATIO: usize = 2;
/// Pages of waste always tolerated, so small branches never compact.
const COMPACT_SLACK: usize = 256;
/// Most private pages a reset copies back in place (1 MiB); more are dropped
/// by mapping the base again.
pub(crate) const IN_PLACE_RESET_PAGES: usize = 256;
/// Pages a trim compares between two looks at whether a request waits.
const TRIM_STEP: usize = 16;

/// Where one indexed page lives.
#[derive(Clone, Copy, Debug)]
struct Entry {
    gpa: u64,
    store: u32,
    slot: u32,
}

/// A page store and the budget charge that pays for it (set once the
/// capture that made it is paid for); its pages go back to the reserve, with
/// their charge, when the last layer showing them goes.
struct Stored {
    pages: PageStore,
    charge: OnceLock<Charge>,
    reserve: Arc<PageReserve>,
}

impl Stored {
    fn new(pages: PageStore, reserve: &Arc<PageReserve>) -> Arc<Stored> {
        Arc::new(Stored {
            pages,
            charge: OnceLock::new(),
            reserve: Arc::clone(reserve),
        })
    }
}

impl Drop for Stored {
    fn drop(&mut self) {
        let span = self.pages.take_pages();
        self.reserve.keep(span, self.charge.get_mut());
    }
}

impl std::ops::Deref for Stored {
    type Target = PageStore;
    fn deref(&self) -> &PageStore {
        &self.pages
    }
}

/// A machine's memory and state: a base file, pages above it, and the state.
pub(crate) struct Layer {
    base: Arc<MemoryFile>,
    /// Every page above the base, sorted by address.
    index: Vec<Entry>,
    /// The stores `index` points into.
    stores: Vec<Arc<Stored>>,
    /// Pages this layer itself added (its share of `stores`).
    own_pages: usize,
    pub state: MachineState,
    pub mailbox: Mailbox,
    /// Branches between this layer and its base (0 for a root).
    pub depth: u32,
}

/// What a captured VM's memory is relative to.
pub(crate) enum Over<'a> {
    /// It booted over a shared mapping of `base`, which now holds its memory.
    Boot {
        /// The file the VM wrote into.
        base: Arc<MemoryFile>,
        /// The mailbox its agent registered.
        mailbox: Mailbox,
    },
    /// It is a fork of this layer; the pages it changed are kept in pages
    /// from `reserve`.
    Layer {
        parent: &'a Layer,
        reserve: &'a Arc<PageReserve>,
    },
}

/// How a VM's mapping stands before [`Layer::restore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ram {
    /// A fresh mapping of the base, or one already reset to it.
    Clean,
    /// A previous tenant's pages may be in it.
    Used,
}

/// Memory a layer accounts for, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerMemory {
    /// Pages this layer added itself.
    pub own_bytes: u64,
    /// Pages every fork of it gets written over the base (its and its ancestors').
    pub view_bytes: u64,
    /// Memory its page stores hold, shared with its ancestors and descendants.
    pub held_bytes: u64,
}

impl Layer {
    /// A root layer: `base` as captured with `state`.
    pub fn root(base: Arc<MemoryFile>, state: MachineState, mailbox: Mailbox) -> Layer {
        Layer {
            base,
            index: Vec::new(),
            stores: Vec::new(),
            own_pages: 0,
            state,
            mailbox,
            depth: 0,
        }
    }

    /// The base file every fork of this layer maps.
    pub fn base(&self) -> &Arc<MemoryFile> {
        &self.base
    }

    /// Guest memory size.
    pub fn memory_bytes(&self) -> usize {
        self.base.size()
    }

    /// Pages every fork of it gets written over the base.
    pub fn view_pages(&self) -> u64 {
        self.index.len() as u64
    }

    /// What this layer costs (one place, for accounting and reports).
    pub fn memory(&self) -> LayerMemory {
        LayerMemory {
            own_bytes: (self.own_pages * PAGE) as u64,
            view_bytes: (self.index.len() * PAGE) as u64,
            held_bytes: self.stores.iter().map(|s| s.bytes() as u64).sum(),
        }
    }

    /// What the stores a capture made and nothing pays for yet cost.
    pub fn unpaid_bytes(&self) -> u64 {
        self.stores
            .iter()
            .filter(|s| s.charge.get().is_none())
            .map(|s| cost::private(s.len() as u64))
            .sum()
    }

    /// Hands each store nothing pays for yet its share of `charge` (which
    /// covers [`Layer::unpaid_bytes`]); the rest of it is released.
    pub fn pay(&self, mut charge: Charge) {
        for s in self.stores.iter().filter(|s| s.charge.get().is_none()) {
            let share = charge.split(cost::private(s.len() as u64));
            // Only this layer's capture can have made an unpaid store.
            let _ = s.charge.set(share);
        }
    }

    /// Bytes of the budget its stores hold (shared with the layers that
    /// show the same pages).
    pub fn charged_bytes(&self) -> u64 {
        self.stores
            .iter()
            .filter_map(|s| s.charge.get())
            .map(Charge::bytes)
            .sum()
    }

    /// The indexed page at `gpa`, if the layer has one above the base.
    fn indexed(&self, gpa: u64) -> Option<&[u8]> {
        let i = self.index.binary_search_by_key(&gpa, |e| e.gpa).ok()?;
        Some(self.page(&self.index[i]))
    }

    fn page(&self, e: &Entry) -> &[u8] {
        self.stores[e.store as usize].page(e.slot as usize)
    }

    /// Whether this layer shows exactly `page` at `gpa`.
    fn shows(&self, gpa: u64, page: &[u8]) -> std::io::Result<bool> {
        match self.indexed(gpa) {
            Some(p) => Ok(p == page),
            None => self.base_holds(gpa, page),
        }
    }

    /// Whether the base holds exactly `page` at `gpa`.
    fn base_holds(&self, gpa: u64, page: &[u8]) -> std::io::Result<bool> {
        static ZERO: [u8; PAGE] = [0; PAGE];
        if !self.base.has_data(gpa as usize / PAGE)? {
            return Ok(page == ZERO);
        }
        let mut buf = [0u8; PAGE];
        self.base.read(gpa, &mut buf)?;
        Ok(buf == page)
    }

    /// Reads page `gpa` as this layer shows it into `buf`.
    pub fn read_page(&self, gpa: u64, buf: &mut [u8; PAGE]) -> std::io::Result<()> {
        match self.indexed(gpa) {
            Some(p) => {
                buf.copy_from_slice(p);
                Ok(())
            }
            None if !self.base.has_data(gpa as usize / PAGE)? => {
                buf.fill(0);
                Ok(())
            }
            None => self.base.read(gpa, buf),
        }
    }

    /// Whether page `gpa` of this layer may hold something other than zeros
    /// (false: certainly zero).
    pub fn may_have_data(&self, gpa: u64) -> std::io::Result<bool> {
        Ok(self.indexed(gpa).is_some() || self.base.has_data(gpa as usize / PAGE)?)
    }

    /// Captures the stopped machine in `vm`: its state (with `cpuid`, the
    /// CPUID its vCPU was created with) and its memory. A VM that booted over
    /// a shared mapping of `base` wrote straight into it ([`Over::Boot`]): the
    /// result is a root layer over that base. A fork of a layer
    /// ([`Over::Layer`]) gives a branch of it holding only the pages that now
    /// differ from what the layer shows. The VM is untouched and runs on.
    pub fn capture(
        vm: &mut Vm,
        hv: &Hypervisor,
        cpuid: &CpuId,
        over: Over<'_>,
    ) -> Result<Layer, VmmError> {
        // A vCPU stopped in an I/O exit owes the guest the end of that
        // instruction; finish it so the state is self-consistent.
        vm.complete_pending_io()?;
        // Frames arriving meanwhile would make the memory read below
        // disagree with the network device's captured queues.
        vm.pause_net(true);
        let layer = Self::capture_paused(vm, hv, cpuid, over);
        vm.pause_net(false);
        layer
    }

    /// [`Layer::capture`] once nothing else writes the guest's memory.
    fn capture_paused(
        vm: &mut Vm,
        hv: &Hypervisor,
        cpuid: &CpuId,
        over: Over<'_>,
    ) -> Result<Layer, VmmError> {
        let state = vm.capture(hv, cpuid)?;
        let (parent, reserve) = match over {
            Over::Boot { base, mailbox } => return Ok(Layer::root(base, state, mailbox)),
            Over::Layer { parent, reserve } => (parent, reserve),
        };
        let io = |e: std::io::Error| VmmError::MapMemory(e);
        let private = vm.ram().private_pages().map_err(io)?;
        let mut store = reserve.store(private.len())?;
        let mut added = Vec::new();
        for gpa in private {
            // Each page is read once, straight into the store's next slot,
            // which is kept only if the page differs from the parent's.
            let page = store.spare();
            vm.ram().read(gpa, page)?;
            if !parent.shows(gpa, page).map_err(io)? {
                added.push((gpa, store.keep() as u32));
            }
        }
        reserve.keep(store.shrink(), None);
        let own_pages = store.len();
        let mut layer = parent.stack(Stored::new(store, reserve), &added, state);
        layer.own_pages = own_pages;
        if layer.wasteful() {
            layer.compact(reserve)?;
        }
        Ok(layer)
    }

    /// A child of `self`: its index overridden by `added` (address, slot in
    /// `store`), holding only the stores the result still points into.
    fn stack(&self, store: Arc<Stored>, added: &[(u64, u32)], state: MachineState) -> Layer {
        let new_store = self.stores.len() as u32;
        let mut index = Vec::with_capacity(self.index.len() + added.len());
        let (mut old, mut new) = (self.index.iter().peekable(), added.iter().peekable());
        loop {
            let take_new = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(o), Some(n)) => n.0 <= o.gpa,
            };
            if take_new {
                let &(gpa, slot) = new.next().expect("peeked");
                if old.peek().is_some_and(|o| o.gpa == gpa) {
                    old.next();
                }
                index.push(Entry {
                    gpa,
                    store: new_store,
                    slot,
                });
            } else {
                index.push(*old.next().expect("peeked"));
            }
        }
        let mut stores = self.stores.clone();
        stores.push(store);
        let (index, stores) = keep_used(index, stores);
        Layer {
            base: Arc::clone(&self.base),
            index,
            stores,
            own_pages: 0,
            state,
            mailbox: self.mailbox,
            depth: self.depth + 1,
        }
    }

    /// True when the stores held pin far more pages than the index shows.
    fn wasteful(&self) -> bool {
        let held: usize = self.stores.iter().map(|s| s.len()).sum();
        held > COMPACT_RATIO * self.index.len() + COMPACT_SLACK
    }

    /// Copies every indexed page into one store of this layer's own.
    fn compact(&mut self, reserve: &Arc<PageReserve>) -> Result<(), VmmError> {
        let mut store = reserve.store(self.index.len())?;
        let mut index = Vec::with_capacity(self.index.len());
        for e in &self.index {
            let slot = store.push(self.page(e)) as u32;
            index.push(Entry {
                gpa: e.gpa,
                store: 0,
                slot,
            });
        }
        self.own_pages = store.len();
        self.index = index;
        self.stores = vec![Stored::new(store, reserve)];
        Ok(())
    }

    /// This layer's memory copied whole into a new sealed memfd: a root with
    /// the same state, sharing nothing with its ancestors.
    pub fn flatten(self) -> Result<Layer, VmmError> {
        let io = |e: std::io::Error| VmmError::CreateMemory {
            size: self.memory_bytes(),
            source: e,
        };
        let base = MemoryFile::create("zeroboot-flat", self.memory_bytes())?;
        let mut page = [0u8; PAGE];
        for gpa in (0..self.memory_bytes() as u64).step_by(PAGE) {
            if self.may_have_data(gpa).map_err(io)? {
                self.read_page(gpa, &mut page).map_err(io)?;
                if page.iter().any(|&b| b != 0) {
                    base.write(gpa, &page).map_err(io)?;
                }
            }
        }
        base.seal()?;
        Ok(Layer::root(Arc::new(base), self.state, self.mailbox))
    }

    /// Gives back the private pages of `vm` (a fork of this layer) that hold
    /// what the base holds, and returns how many. Pages this layer indexes
    /// are kept even then: a dropped page shows the base, and a branch
    /// captured later would take this layer's copy for it instead. Stops
    /// early (giving back what it found) once `stop` says a request waits.
    pub fn trim(&self, vm: &mut Vm, stop: &dyn Fn() -> bool) -> Result<usize, VmmError> {
        // A frame landing in a page between its comparison and its drop
        // would be lost.
        vm.pause_net(true);
        let same = self.unchanged(vm, stop);
        let trimmed = same.and_then(|same| vm.discard(&same).map(|()| same.len()));
        vm.pause_net(false);
        trimmed
    }

    /// The private pages of `vm` that hold what the base holds and that this
    /// layer does not index, until `stop` (looked at every [`TRIM_STEP`]
    /// pages, where the CPU is also offered to any other thread).
    fn unchanged(&self, vm: &Vm, stop: &dyn Fn() -> bool) -> Result<Vec<u64>, VmmError> {
        let io = |e: std::io::Error| VmmError::MapMemory(e);
        let mut page = [0u8; PAGE];
        let mut same = Vec::new();
        let private = vm.ram().private_pages().map_err(io)?;
        for (i, &gpa) in private.iter().enumerate() {
            if i % TRIM_STEP == 0 {
                if stop() {
                    break;
                }
                // Work nobody waits for: a thread woken on this CPU (a
                // reader, another VM's request) runs first.
                std::thread::yield_now();
            }
            if self.indexed(gpa).is_some() {
                continue;
            }
            vm.ram().read(gpa, &mut page)?;
            if self.base_holds(gpa, &page).map_err(io)? {
                same.push(gpa);
            }
        }
        Ok(same)
    }

    /// Makes `vm` a fresh fork of this layer: its memory shows exactly what
    /// this layer shows (base, `hot` pages copied ahead, indexed pages written
    /// over it) and its machine state is this layer's. `pace` says whether a
    /// request waits for it ([`Pace`]).
    pub fn restore(
        &self,
        vm: &mut Vm,
        hot: &[u64],
        ram: Ram,
        pace: Pace<'_>,
    ) -> Result<(), VmmError> {
        if ram == Ram::Used {
            vm.ram().reset_private(&self.base, IN_PLACE_RESET_PAGES)?;
            pace.step();
        }
        vm.ram().precopy(hot)?;
        vm.ram()
            .place(self.index.iter().map(|e| (e.gpa, self.page(e))))?;
        pace.step();
        vm.restore(&self.state, pace)
    }
}

/// Drops the stores no entry points into and renumbers the rest.
fn keep_used(mut index: Vec<Entry>, stores: Vec<Arc<Stored>>) -> (Vec<Entry>, Vec<Arc<Stored>>) {
    let mut renumber = HashMap::new();
    let mut kept = Vec::new();
    for e in &mut index {
        let n = *renumber.entry(e.store).or_insert_with(|| {
            kept.push(Arc::clone(&stores[e.store as usize]));
            kept.len() as u32 - 1
        });
        e.store = n;
    }
    (index, kept)
}
