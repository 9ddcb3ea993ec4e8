//! A sandbox: one forked VM, its template, and what it has done. When the last
//! reference goes (after kill, and after any exec still unwinding), its VM is
//! recycled into its family's pool or torn down on its own thread; the
//! template's layer (and the pages it holds) lives as long as a sandbox or a
//! registered template needs it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Template;
use super::budget::Charge;
use super::network::SandboxNet;
use super::pool::{Health, Shell};
use crate::vmm::BusStats;

/// A live sandbox.
pub(crate) struct Sandbox {
    pub id: String,
    /// Names this VM to the guest agent (random, so no two sandboxes share
    /// it, even across workers): a persistent context that sees a new one
    /// has been copied into a new VM and reseeds its random generators.
    pub vm_id: u64,
    pub template: Arc<Template>,
    pub shell: Option<Shell>,
    pub net: Option<SandboxNet>,
    pub busy: AtomicBool,
    /// Shared with the sandbox's idle trim, which a kill calls off.
    pub killed: Arc<AtomicBool>,
    /// Set once a conversation was started: until then the VM is exactly as
    /// its pool held it, and recycling it needs no reset.
    pub ran: AtomicBool,
    pub created: Instant,
    pub execs: AtomicU64,
    pub counters: Arc<Mutex<Counters>>,
    /// Most pages it may hold privately.
    pub memory_limit: u64,
    /// What the pages it may dirty cost the budget (its VM's own cost is
    /// charged to the shell).
    pub _charge: Charge,
}

/// Counters the vCPU thread updates after each exec.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub exits: u64,
    pub stray: BusStats,
}

impl Sandbox {
    pub fn shell(&self) -> &Shell {
        self.shell
            .as_ref()
            .expect("a live sandbox has its shell until dropped")
    }

    pub fn health(&self) -> Health {
        self.shell()
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_health(&self, h: Health) {
        *self
            .shell()
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = h;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(shell) = self.shell.take() {
            // A plugged network device is undone only by a reset.
            let touched = self.ran.load(Ordering::SeqCst) || self.net.is_some();
            super::recycle::recycle(&self.template.family, Some(&self.template), shell, touched);
        }
    }
}
