//! Where the engine meets its memory budget ([`super::budget`]): what a
//! pooled VM, a sandbox and a template are charged, and how the page reserve
//! and idle pooled VMs give their memory back when a call needs it.

use std::sync::Arc;

use super::budget::{Charge, cost};
use super::pool::Shell;
use super::template::Family;
use super::{Engine, EngineError, Template};

/// A template's own cost besides its pages: its machine state and the
/// thread that refills its pool.
const TEMPLATE_FIXED: u64 = 128 << 10;

impl Engine {
    /// Charges `bytes` for `what`. When the budget falls short, the page
    /// reserve is emptied and idle pooled VMs are retired (and their memory
    /// waited for) before it gives up.
    pub(crate) fn charge(&self, what: &'static str, bytes: u64) -> Result<Charge, EngineError> {
        let short = match self.0.budget.charge(what, bytes) {
            Ok(c) => return Ok(c),
            Err(EngineError::OverBudget { available, .. }) => bytes - available,
            Err(e) => return Err(e),
        };
        let short = short.saturating_sub(self.0.reserve.empty());
        if short > 0 {
            self.reclaim(short);
        }
        self.0.budget.charge(what, bytes)
    }

    /// Retires idle pooled VMs until their charges reach `bytes` or none is
    /// left, and waits until their memory is gone.
    fn reclaim(&self, bytes: u64) {
        let templates: Vec<Arc<Template>> = self
            .0
            .templates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut freed = 0;
        let mut stopping = Vec::new();
        // A branch's ready VMs first (each also holds the branch's pages),
        // then the families' pools.
        let pools = templates
            .iter()
            .map(|t| &t.ready)
            .chain(templates.iter().map(|t| &t.family.pool));
        for pool in pools {
            while freed < bytes {
                let Some(shell) = pool.shrink(1).pop() else {
                    break;
                };
                freed += shell.charged();
                stopping.push(shell.retire());
            }
        }
        if !stopping.is_empty() {
            tracing::info!(
                vms = stopping.len(),
                freed,
                "memory budget: pooled VMs retired"
            );
        }
        for thread in stopping {
            thread.join();
        }
    }

    /// Gives back the memory kept for reuse (the page reserve) now, as the
    /// worker does by itself once it is idle.
    pub fn release_kept_memory(&self) {
        self.0.reserve.empty();
    }

    /// Starts a VM of `family` outside the pool, charged as a pooled one.
    pub(crate) fn new_shell(
        &self,
        family: &Arc<Family>,
        tracked: bool,
        what: &'static str,
    ) -> Result<Shell, EngineError> {
        let charge = self.charge(what, shell_cost(family))?;
        Ok(family.spawn_shell(&self.0.hv, tracked, charge)?)
    }
}

/// What a new VM of `family` is charged while it lives, idle or not: the VM
/// and the pages it copies ahead. (A recycled one is charged the pages its
/// reset may keep on top, and a branch's ready one the branch's pages:
/// [`super::recycle`], [`Template::prepare`].)
pub(crate) fn shell_cost(family: &Family) -> u64 {
    cost::vm(family.root.memory_bytes() as u64) + cost::private(family.hot_pages.len() as u64)
}

/// What a sandbox adds to its VM's charge: the pages it may hold privately,
/// as far as [`shell_cost`] does not already count them. A tracked sandbox
/// may pass its limit by up to `slack` pages before it is stopped; a fork of
/// a branch also holds the branch's pages, written over its memory by the
/// host (which the guest's dirty count does not see).
pub(crate) fn sandbox_cost(tpl: &Template, limit_pages: u64, slack: u64) -> u64 {
    let pages = tpl.memory_pages();
    let may_dirty = if limit_pages < pages {
        (limit_pages + slack + tpl.layer.view_pages()).min(pages)
    } else {
        pages
    };
    cost::private(may_dirty.saturating_sub(tpl.family.hot_pages.len() as u64))
}

/// What a template of `memory` bytes can cost: its whole memory, whatever
/// it holds now. A fork that touches a page the template never wrote (a hole
/// in its memfd), even only to read it, makes the kernel add a zeroed page to
/// the template's memfd for it, shared by every fork and kept until the
/// template goes (measured: 1024 reads of holes through a private mapping
/// grew a sealed memfd by 4 MiB).
pub(crate) fn template_cost(memory: u64) -> u64 {
    cost::shared(memory) + TEMPLATE_FIXED
}
