//! The engine owns templates and sandboxes and is the one API every front end
//! (JSON-RPC worker, CLI, bench, tests) calls. It knows nothing of JSON-RPC.
//!
//! Every method is synchronous and thread-safe; calls on different sandboxes
//! run fully in parallel (each VM has its own thread), calls on one sandbox
//! are serialised by a busy flag rather than queued, so a caller learns at once
//! that its sandbox is occupied.

mod branch;
mod budget;
mod cancel;
mod code;
mod config;
mod converse;
mod deadline;
mod error;
mod exec;
mod file;
mod files;
mod layer;
mod linux;
mod memory;
mod network;
mod pool;
mod recycle;
mod refill;
mod request;
mod reserve;
mod sandbox;
mod session;
mod spec;
mod template;
mod trim;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub use branch::Branching;
pub use budget::{DEFAULT_FRACTION_PERCENT as DEFAULT_MEMORY_PERCENT, available_memory};
pub use cancel::CancelToken;
pub use code::{CodeFailure, CodeRequest, CodeResult, ContextInfo, Language, MAX_CONTEXT_NAME};
pub use config::{EngineConfig, MAX_TIMEOUT_MS};
pub use converse::Done;
pub use error::EngineError;
pub use exec::ExecSink;
pub use file::FileInfo;
pub use layer::LayerMemory;
pub use linux::DEFAULT_LINUX_MEMORY_MIB;
pub use network::{ForkNetwork, NetworkSpec};
pub use request::{ExecRequest, ExecResult, OutputStream, Program};
pub use spec::SpecTemplate;
pub use template::{BARE_GUEST, Template};

use crate::image::spec_image::Manifest;
use crate::vmm::{Flavor, Hypervisor, pagemap};
use budget::{Budget, Charge, cost};
use deadline::Deadlines;
use layer::Layer;
use pool::{Health, Pool, Shell, Wanted};
use sandbox::{Counters, Sandbox};
use template::Family;

/// Public facts about a template.
#[derive(Clone, Debug)]
pub struct TemplateInfo {
    /// Its id.
    pub template: String,
    /// Where it came from.
    pub source: String,
    /// Guest memory size.
    pub memory_bytes: usize,
    /// Live sandboxes forked from it.
    pub sandboxes: usize,
    /// Idle VMs ready for its forks: a root's pool (which also feeds its
    /// branches), or the few a branch keeps restored to itself.
    pub pooled: usize,
    /// Bytes of the memory budget its own memory takes: a root's whole
    /// memory, or the pages a branch's captures copied (each VM forked from
    /// it, pooled or not, is charged separately).
    pub charged_bytes: u64,
    /// Branches between it and the template its memory comes from (0: a
    /// built, loaded or flattened template).
    pub depth: u32,
    /// The pages it holds above its base, in bytes.
    pub memory: LayerMemory,
}

/// What [`Engine::unload_template`] does with the template's live sandboxes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unload {
    /// Refuse while any live ([`EngineError::TemplateInUse`]).
    IfUnused,
    /// Kill them first.
    KillSandboxes,
    /// Leave them running: they keep the memory they were forked from until
    /// they are killed.
    KeepSandboxes,
}

/// Public facts about a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    /// Its id.
    pub sandbox: String,
    /// Its template.
    pub template: String,
    /// Whether it can run an exec.
    pub state: SandboxState,
}

/// Whether a sandbox can run an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SandboxState {
    /// Idle and healthy.
    Ready,
    /// Running a call.
    Busy,
    /// Stopped mid-request (timeout, cancel, crash, protocol violation); only
    /// kill remains.
    Broken {
        /// What happened.
        reason: String,
    },
}

/// Resource use of one sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStats {
    /// Its id.
    pub sandbox: String,
    /// Pages the sandbox holds privately (copied on write).
    pub dirty_pages: u64,
    /// Same, in KiB.
    pub private_dirty_kib: u64,
    /// VM exits to userspace so far.
    pub exits: u64,
    /// Requests served (execs, file operations, snapshots).
    pub execs: u64,
    /// Time since fork.
    pub uptime_ms: u64,
    /// Port accesses nothing answered.
    pub stray_pio: u64,
    /// MMIO accesses nothing answered.
    pub stray_mmio: u64,
    /// Most private memory it may hold, in bytes.
    pub memory_limit_bytes: u64,
    /// Network counters; `None` for a sandbox without network.
    pub network: Option<crate::net::NetStats>,
}

/// How a fork is made.
#[derive(Clone, Debug, Default)]
pub struct ForkOptions {
    /// Network for the sandbox.
    pub network: ForkNetwork,
    /// Most private memory (pages copied on write) the sandbox may hold, in
    /// bytes, rounded up to whole pages; `None`: the template's size. A
    /// sandbox that dirties more is stopped with
    /// [`EngineError::SandboxMemoryLimit`].
    pub memory_limit: Option<u64>,
}

/// A fork's result.
#[derive(Clone, Debug)]
pub struct Forked {
    /// The new sandbox.
    pub sandbox: String,
    /// Time the fork took, as the engine saw it.
    pub fork_us: u64,
    /// Whether a pooled VM was used (false: created on the request path).
    pub pooled: bool,
}

/// A killed sandbox, gone from every list; dropping this hands its VM to be
/// recycled (which wakes the VM's thread) unless a call still running on it
/// holds it longer.
pub struct Killed {
    _sandbox: Arc<Sandbox>,
}

/// The sandbox's limit in pages: the caller's, or the template's size.
fn memory_limit(opts: &ForkOptions, tpl: &Template) -> Result<u64, EngineError> {
    let size = tpl.memory_bytes() as u64;
    match opts.memory_limit {
        None => Ok(size / PAGE),
        Some(0) => Err(EngineError::InvalidRequest(
            "memory_limit must be at least one page".into(),
        )),
        Some(bytes) => Ok(bytes.min(size).div_ceil(PAGE)),
    }
}

/// Bytes per guest page.
const PAGE: u64 = 4096;

/// What a fork was admitted with (see [`Engine::admit`]).
struct Admitted {
    /// Its memory limit in pages.
    limit: u64,
    /// Whether its VM must count dirtied pages (the limit is below the
    /// template's size).
    tracked: bool,
    /// The budget held for what it may dirty.
    charge: Charge,
}

/// Smallest guest memory of the bare template: all its program touches.
pub const BARE_MEMORY_MIB: usize = crate::vmm::layout::BARE_MEMORY >> 20;
/// Largest: what its 1 GiB identity map reaches.
pub const MAX_BARE_MEMORY_MIB: usize = 1024;

/// VM creators per core in [`Engine::fork_many`]. Creating a VM sleeps in
/// the kernel for part of its time (SRCU grace periods when the memory slot
/// and the irqchip are installed, longer the more VMs are alive), so more
/// creators than cores keep the cores busy: 1000 forks + execs took 0.92-1.02 s
/// with 4 per core against 1.21-1.45 s with 1, at the same CPU time (2 cores).
const CREATORS_PER_CORE: usize = 4;

/// A ready VM for a fork of `tpl`, if there is one: one its branch keeps
/// restored to itself, else one from its family's pool (a fork of the root,
/// which a branch goes over on the VM's thread before any request). Forks of
/// a root skip the branch pool's lock.
fn take_pooled(tpl: &Template, tracked: bool) -> Option<Shell> {
    if tpl.is_branch()
        && let Some(shell) = tpl.ready.take(tracked)
    {
        return Some(shell);
    }
    let shell = tpl.family.pool.take(tracked)?;
    if tpl.is_branch() {
        tpl.adopt(&shell);
    }
    Some(shell)
}

/// The engine (cheap to clone; clones share everything).
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    hv: Arc<Hypervisor>,
    config: EngineConfig,
    budget: Arc<Budget>,
    /// Populated pages kept for the next branch.
    reserve: Arc<reserve::PageReserve>,
    templates: RwLock<HashMap<String, Arc<Template>>>,
    sandboxes: RwLock<HashMap<String, Arc<Sandbox>>>,
    next_id: AtomicU64,
    shut: AtomicBool,
    /// Wakes the refill thread.
    wanted: Arc<Wanted>,
    refiller: Mutex<Option<std::thread::JoinHandle<()>>>,
    networking: network::Networking,
    deadlines: Deadlines,
}

impl Engine {
    /// Opens KVM and starts an empty engine.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let hv = Hypervisor::open().map_err(EngineError::KvmUnavailable)?;
        crate::vmm::raise_nofile();
        crate::vmm::one_malloc_arena();
        let budget = Budget::new(config.max_memory.unwrap_or_else(budget::default_limit));
        Ok(Engine(Arc::new(Inner {
            hv: Arc::new(hv),
            config,
            reserve: Arc::new(reserve::PageReserve::new(&budget)),
            budget,
            templates: RwLock::new(HashMap::new()),
            sandboxes: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shut: AtomicBool::new(false),
            wanted: Arc::new(Wanted::default()),
            refiller: Mutex::new(None),
            networking: network::Networking::default(),
            deadlines: Deadlines::new(),
        })))
    }

    /// Starts the deadline and refill threads with the first template: an
    /// engine starts no thread of its own, so the worker can drop its
    /// capabilities (which belong to threads) once KVM is open.
    fn start_threads(&self) -> Result<(), EngineError> {
        self.0.deadlines.start().map_err(|e| {
            EngineError::ResourceLimit(format!("cannot start the deadline thread: {e}"))
        })?;
        let mut refiller = self.0.refiller.lock().unwrap_or_else(|e| e.into_inner());
        // Started without pools too: it also empties the idle page reserve.
        if refiller.is_none() {
            let handle = refill::start(Arc::downgrade(&self.0), Arc::clone(&self.0.wanted))
                .map_err(|e| {
                    EngineError::ResourceLimit(format!("cannot start the pool thread: {e}"))
                })?;
            *refiller = Some(handle);
        }
        Ok(())
    }

    /// Most pages a sandbox can dirty between two looks at its count: how far
    /// past its limit it may get before it is stopped.
    pub fn dirty_check_pages(&self) -> u32 {
        self.0.hv.dirty_ring_entries()
    }

    /// The memory budget: (bytes in all, bytes charged now).
    pub fn memory_budget(&self) -> (u64, u64) {
        (self.0.budget.limit(), self.0.budget.used())
    }

    /// Which KVM backs this engine.
    pub fn flavor(&self) -> Flavor {
        self.0.hv.flavor()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.0.config
    }

    fn next_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}",
            self.0.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn template(&self, id: &str) -> Result<Arc<Template>, EngineError> {
        self.0
            .templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::TemplateNotFound(id.to_string()))
    }

    fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>, EngineError> {
        self.0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))
    }

    /// Loads a built-in template ("bare").
    pub fn load_builtin(&self, name: &str) -> Result<TemplateInfo, EngineError> {
        self.load_builtin_sized(name, None)
    }

    /// Loads a built-in template with `memory_mib` MiB of guest memory
    /// (default: the guest's own size; the bare guest takes 32 to 1024).
    pub fn load_builtin_sized(
        &self,
        name: &str,
        memory_mib: Option<usize>,
    ) -> Result<TemplateInfo, EngineError> {
        let cancel = CancelToken::new();
        let (layer, charge) = match name {
            "bare" => {
                let mib = memory_mib.unwrap_or(crate::vmm::layout::BARE_MEMORY >> 20);
                if !(BARE_MEMORY_MIB..=MAX_BARE_MEMORY_MIB).contains(&mib) {
                    return Err(EngineError::InvalidRequest(format!(
                        "the bare guest takes {BARE_MEMORY_MIB} to {MAX_BARE_MEMORY_MIB} MiB, not {mib}"
                    )));
                }
                let bytes = (mib as u64) << 20;
                let charge =
                    self.charge("template", memory::template_cost(bytes) + cost::vm(bytes))?;
                self.start_threads()?;
                let layer = template::boot_bare(&self.0.hv, &self.0.deadlines, mib << 20, &cancel)?;
                (layer, charge)
            }
            other => {
                return Err(EngineError::InvalidRequest(format!(
                    "unknown builtin template {other:?}"
                )));
            }
        };
        self.register_root(format!("builtin:{name}"), layer, None, &cancel, charge)
    }

    /// Loads a template saved by [`Engine::save_template`]: its memory is
    /// mapped from the file, copy-on-write, not copied. It is charged what a
    /// template of its size can hold once its header is read and checked,
    /// before any guest runs: forks that touch a page of a hole make the
    /// page cache hold it.
    pub fn load_file(
        &self,
        path: &std::path::Path,
        cancel: &CancelToken,
    ) -> Result<TemplateInfo, EngineError> {
        let charge = self.charge("template", memory::template_cost(0))?;
        let file::Opened {
            layer,
            manifest,
            body_check,
        } = file::open(path, &self.0.hv)?;
        // The memory is read and hashed on a second thread while the probe
        // runs the guest in a throwaway VM (each takes about as long); the
        // template is registered only once both passed, and a failed check
        // stops the probe. No thread to spare: one after the other.
        let probe_cancel = cancel.child();
        let family = std::thread::scope(|scope| {
            let hashing = std::thread::Builder::new()
                .name("template-check".into())
                .spawn_scoped(scope, || {
                    let checked = body_check.verify(cancel);
                    if checked.is_err() {
                        probe_cancel.cancel();
                    }
                    checked
                });
            match hashing {
                Ok(hashing) => {
                    let family = self.root_family(layer, manifest, &probe_cancel, charge);
                    let checked = hashing.join().unwrap_or_else(|_| {
                        Err(EngineError::ResourceLimit(
                            "checking the template file failed".into(),
                        ))
                    });
                    checked.and(family)
                }
                Err(_) => body_check
                    .verify(cancel)
                    .and_then(|()| self.root_family(layer, manifest, cancel, charge)),
            }
        })?;
        Ok(self.register_root_family(path.display().to_string(), family))
    }

    /// What a template file holds (its header only: no KVM, no guest memory).
    pub fn inspect_file(path: &std::path::Path) -> Result<FileInfo, EngineError> {
        file::inspect(path)
    }

    /// Writes a template (a branch included: the file holds its whole
    /// memory) to a new file that [`Engine::load_file`] can read; returns the
    /// file's size.
    pub fn save_template(
        &self,
        id: &str,
        path: &std::path::Path,
        cancel: &CancelToken,
    ) -> Result<u64, EngineError> {
        let tpl = self.template(id)?;
        file::write(&tpl.layer, tpl.family.manifest.as_ref(), path, cancel)
    }

    /// Registers a new root layer: its own family, whose probe must answer.
    fn register_root(
        &self,
        source: String,
        layer: Layer,
        manifest: Option<Manifest>,
        cancel: &CancelToken,
        charge: Charge,
    ) -> Result<TemplateInfo, EngineError> {
        let family = self.root_family(layer, manifest, cancel, charge)?;
        Ok(self.register_root_family(source, family))
    }

    /// A new family for a root layer, named with a new template id, whose
    /// probe answered. `charge` covered it while it was made; it ends up
    /// covering what the root can hold ([`memory::template_cost`]), and the
    /// probe's VM is charged while it runs.
    fn root_family(
        &self,
        layer: Layer,
        manifest: Option<Manifest>,
        cancel: &CancelToken,
        mut charge: Charge,
    ) -> Result<Arc<Family>, EngineError> {
        // Before the probe: its run has a deadline.
        self.start_threads()?;
        let size = layer.memory_bytes() as u64;
        let held = memory::template_cost(size);
        if held > charge.bytes() {
            charge.absorb(self.charge("template", held - charge.bytes())?);
        }
        charge.shrink_to(held);
        let _probe = self.charge(
            "template",
            cost::vm(size) + cost::private(template::MAX_HOT_PAGES as u64),
        )?;
        Ok(Arc::new(Family::new(
            &self.0.hv,
            &self.0.deadlines,
            self.next_id("tpl"),
            template::Root {
                layer,
                manifest,
                charge,
            },
            Pool::new(self.0.config.pool_size, Arc::clone(&self.0.wanted)),
            self.timeout_or_default(None),
            cancel,
        )?))
    }

    /// Registers the root template of `family`, under its name.
    fn register_root_family(&self, source: String, family: Arc<Family>) -> TemplateInfo {
        let layer = Arc::clone(&family.root);
        let info = self.register(family.name.clone(), source, layer, family);
        self.0.wanted.notify();
        info
    }

    /// Adds a template of `family` to the registry.
    fn register(
        &self,
        id: String,
        source: String,
        layer: Arc<Layer>,
        family: Arc<Family>,
    ) -> TemplateInfo {
        family.join();
        let branch = !Arc::ptr_eq(&layer, &family.root);
        let tpl = Arc::new(Template {
            id: id.clone(),
            source,
            layer,
            family,
            ready: Pool::new(
                if branch { template::BRANCH_READY } else { 0 },
                Arc::clone(&self.0.wanted),
            ),
        });
        self.0
            .templates
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&tpl));
        self.template_info(&tpl)
    }

    fn template_info(&self, tpl: &Arc<Template>) -> TemplateInfo {
        let sandboxes = self
            .0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| Arc::ptr_eq(&s.template, tpl))
            .count();
        TemplateInfo {
            template: tpl.id.clone(),
            source: tpl.source.clone(),
            memory_bytes: tpl.memory_bytes(),
            sandboxes,
            pooled: if tpl.is_branch() {
                tpl.ready.len()
            } else {
                tpl.family.pool.len()
            },
            charged_bytes: if tpl.is_branch() {
                tpl.layer.charged_bytes()
            } else {
                tpl.family.charged_bytes()
            },
            depth: tpl.layer.depth,
            memory: tpl.layer.memory(),
        }
    }

    /// Lists templates.
    pub fn list_templates(&self) -> Vec<TemplateInfo> {
        let tpls: Vec<_> = self
            .0
            .templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<_> = tpls.iter().map(|t| self.template_info(t)).collect();
        out.sort_by(|a, b| a.template.cmp(&b.template));
        out
    }

    /// Unloads a template; `how` says what happens to its live sandboxes.
    /// Returns how many were killed. Its memory is freed once no sandbox and
    /// no branch of it needs it any more.
    pub fn unload_template(&self, id: &str, how: Unload) -> Result<usize, EngineError> {
        let tpl = self.template(id)?;
        let children: Vec<String> = self
            .0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| Arc::ptr_eq(&s.template, &tpl))
            .map(|s| s.id.clone())
            .collect();
        if !children.is_empty() && how == Unload::IfUnused {
            return Err(EngineError::TemplateInUse {
                template: id.to_string(),
                sandboxes: children.len(),
            });
        }
        if self
            .0
            .templates
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .is_none()
        {
            // Unloaded concurrently.
            return Err(EngineError::TemplateNotFound(id.to_string()));
        }
        for shell in tpl.ready.close() {
            recycle::recycle(&tpl.family, None, shell, true);
        }
        tpl.family.leave();
        if how != Unload::KillSandboxes {
            return Ok(0);
        }
        for child in &children {
            // A child killed concurrently is already gone: nothing to do.
            let _ = self.kill(child);
        }
        Ok(children.len())
    }

    /// Forks one sandbox from a template, with the template's network (see
    /// [`ForkNetwork::Template`]): a pooled VM if one is ready, else a VM
    /// created now (a cold fork, 0.5-10 ms).
    pub fn fork(&self, template: &str) -> Result<Forked, EngineError> {
        self.fork_with(template, &ForkOptions::default())
    }

    /// Forks one sandbox from a template as `opts` say.
    pub fn fork_with(&self, template: &str, opts: &ForkOptions) -> Result<Forked, EngineError> {
        let start = Instant::now();
        let tpl = self.fork_allowed(template)?;
        let admitted = self.admit(&tpl, opts)?;
        let (shell, pooled) = match take_pooled(&tpl, admitted.tracked) {
            Some(shell) => (shell, true),
            None => {
                let shell = self.new_shell(&tpl.family, admitted.tracked, "sandbox")?;
                if tpl.is_branch() {
                    // A VM of the family is a fork of its root: the branch
                    // goes over it before any request (on the request path).
                    tpl.adopt(&shell);
                }
                (shell, false)
            }
        };
        self.enroll(tpl, shell, pooled, start, opts, admitted)
    }

    /// Forks one sandbox from a template as `opts` say, only if a pooled VM
    /// is ready: `Ok(None)` when none is. Never creates a VM, so it takes
    /// about a microsecond whatever the pool holds.
    pub fn fork_pooled(
        &self,
        template: &str,
        opts: &ForkOptions,
    ) -> Result<Option<Forked>, EngineError> {
        let start = Instant::now();
        let tpl = self.fork_allowed(template)?;
        let admitted = self.admit(&tpl, opts)?;
        take_pooled(&tpl, admitted.tracked)
            .map(|shell| self.enroll(tpl, shell, true, start, opts, admitted))
            .transpose()
    }

    /// The template to fork, if a fork is allowed now.
    fn fork_allowed(&self, template: &str) -> Result<Arc<Template>, EngineError> {
        let tpl = self.template(template)?;
        if self.0.shut.load(Ordering::SeqCst) {
            return Err(EngineError::ResourceLimit(
                "the engine is shutting down".into(),
            ));
        }
        if self
            .0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= self.0.config.max_sandboxes
        {
            return Err(EngineError::ResourceLimit(format!(
                "at most {} sandboxes may live at once",
                self.0.config.max_sandboxes
            )));
        }
        Ok(tpl)
    }

    /// A fork's memory limit, and the budget charged for what it may dirty
    /// (before a VM is taken, so a refusal costs no pooled VM).
    fn admit(&self, tpl: &Template, opts: &ForkOptions) -> Result<Admitted, EngineError> {
        let limit = memory_limit(opts, tpl)?;
        let slack = u64::from(self.0.hv.dirty_ring_entries());
        Ok(Admitted {
            limit,
            tracked: limit < tpl.memory_pages(),
            charge: self.charge("sandbox", memory::sandbox_cost(tpl, limit, slack))?,
        })
    }

    /// Registers a new sandbox of `tpl` on `shell`, with the network `opts`
    /// resolve to.
    fn enroll(
        &self,
        tpl: Arc<Template>,
        shell: Shell,
        pooled: bool,
        start: Instant,
        opts: &ForkOptions,
        admitted: Admitted,
    ) -> Result<Forked, EngineError> {
        let id = self.next_id("sb");
        let net = opts
            .network
            .resolve(tpl.family.network.as_ref())
            .map(|spec| self.sandbox_net(spec, &id))
            .transpose()?;
        if tpl.is_branch() {
            tpl.prepare();
        }
        if let Some(net) = &net {
            // Queued after the branch's restore (which replaces the devices).
            net.plug(&shell.thread);
        }
        let sandbox = Arc::new(Sandbox {
            id: id.clone(),
            vm_id: u64::from_le_bytes(request::fresh_seed()[..8].try_into().expect("8 bytes")),
            template: tpl,
            shell: Some(shell),
            net,
            busy: AtomicBool::new(false),
            killed: Arc::new(AtomicBool::new(false)),
            ran: AtomicBool::new(false),
            created: Instant::now(),
            execs: AtomicU64::new(0),
            counters: Arc::new(Mutex::new(Counters::default())),
            memory_limit: admitted.limit,
            _charge: admitted.charge,
        });
        self.0
            .sandboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), sandbox);
        Ok(Forked {
            sandbox: id,
            fork_us: start.elapsed().as_micros() as u64,
            pooled,
        })
    }

    /// Forks `count` sandboxes with the template's network, creating VMs on
    /// all cores in parallel.
    pub fn fork_many(&self, template: &str, count: usize) -> Result<Vec<Forked>, EngineError> {
        self.fork_many_with(template, count, &ForkOptions::default())
    }

    /// Forks `count` sandboxes (1 to `max_fork_count`) as `opts` say,
    /// creating VMs on all cores in parallel. All or nothing: on a failure
    /// the forks made are killed.
    pub fn fork_many_with(
        &self,
        template: &str,
        count: usize,
        opts: &ForkOptions,
    ) -> Result<Vec<Forked>, EngineError> {
        let max = self.0.config.max_fork_count;
        if count == 0 || count > max {
            return Err(EngineError::InvalidRequest(format!(
                "count must be between 1 and {max}"
            )));
        }
        self.template(template)?;
        let workers = (std::thread::available_parallelism().map_or(2, |n| n.get())
            * CREATORS_PER_CORE)
            .min(count.max(1));
        let results: Vec<Result<Forked, EngineError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let n = count / workers + usize::from(w < count % workers);
                    s.spawn(move || {
                        (0..n)
                            .map(|_| self.fork_with(template, opts))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("fork worker panicked"))
                .collect()
        });
        let mut forked = Vec::with_capacity(count);
        let mut first_err = None;
        for r in results {
            match r {
                Ok(f) => forked.push(f),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        if let Some(e) = first_err {
            for f in &forked {
                let _ = self.kill(&f.sandbox);
            }
            return Err(e);
        }
        Ok(forked)
    }

    /// Kills a sandbox. Returns at once: a running exec is stopped, and the VM
    /// is recycled or torn down on its own thread once the returned [`Killed`]
    /// is dropped (a caller with an answer to give can give it first).
    pub fn kill(&self, id: &str) -> Result<Killed, EngineError> {
        let sb = self
            .0
            .sandboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        sb.killed.store(true, Ordering::SeqCst);
        if sb.busy.load(Ordering::SeqCst) {
            sb.shell().thread.kicker().kick();
        }
        Ok(Killed { _sandbox: sb })
    }

    /// Lists sandboxes.
    pub fn list_sandboxes(&self) -> Vec<SandboxInfo> {
        let mut out: Vec<SandboxInfo> = self
            .0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|s| {
                let state = match s.health() {
                    Health::Broken { reason, .. } => SandboxState::Broken { reason },
                    Health::Ready if s.busy.load(Ordering::SeqCst) => SandboxState::Busy,
                    Health::Ready => SandboxState::Ready,
                };
                SandboxInfo {
                    sandbox: s.id.clone(),
                    template: s.template.id.clone(),
                    state,
                }
            })
            .collect();
        out.sort_by(|a, b| a.sandbox.cmp(&b.sandbox));
        out
    }

    /// Resource use of a sandbox.
    pub fn stats(&self, id: &str) -> Result<SandboxStats, EngineError> {
        let sb = self.sandbox(id)?;
        let (addr, size) = sb.shell().thread.ram_range();
        let dirty_pages = pagemap::private_pages(addr, size)
            .map_err(|e| EngineError::ResourceLimit(format!("cannot read page map: {e}")))?;
        let c = *sb.counters.lock().unwrap_or_else(|e| e.into_inner());
        Ok(SandboxStats {
            sandbox: sb.id.clone(),
            dirty_pages,
            private_dirty_kib: dirty_pages * 4,
            exits: c.exits,
            execs: sb.execs.load(Ordering::Relaxed),
            uptime_ms: sb.created.elapsed().as_millis() as u64,
            stray_pio: c.stray.stray_pio,
            stray_mmio: c.stray.stray_mmio,
            memory_limit_bytes: sb.memory_limit * PAGE,
            network: sb.net.as_ref().map(network::SandboxNet::stats),
        })
    }

    /// Number of live sandboxes.
    pub fn sandbox_count(&self) -> usize {
        self.0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Kills every sandbox and empties every pool; later forks are refused.
    pub fn shutdown(&self) {
        self.0.shut.store(true, Ordering::SeqCst);
        let ids: Vec<String> = self
            .0
            .sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.kill(&id);
        }
        let tpls: Vec<_> = self
            .0
            .templates
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, tpl) in tpls {
            for shell in tpl.ready.close() {
                drop(shell.retire());
            }
            tpl.family.leave();
        }
        self.0.wanted.notify();
        let refiller = self
            .0
            .refiller
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = refiller {
            let _ = h.join();
        }
    }
}
