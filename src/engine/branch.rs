//! Branching a live sandbox: its state and the pages it changed become a new
//! template layered over the one it was forked from, so an agent's state can
//! be forked as cheaply as a fresh one. The sandbox is paused only while its
//! vCPU state and changed pages are copied, on its own thread, and carries on
//! unchanged afterwards.
//!
//! The budget is charged before the capture for what it can copy (the pages
//! the sandbox holds privately; a full copy: the whole memory too), then
//! exactly what the branch kept: a layer costs what it captured.

use std::sync::Arc;

use super::budget::cost;
use super::layer::{Layer, Over};
use super::memory;
use super::{CancelToken, Engine, EngineError, TemplateInfo};
use crate::agent::AgentError;

/// What a branch holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Branching {
    /// The pages the sandbox changed, over its template's memory (shared).
    #[default]
    Layer,
    /// A full copy of its memory in a new template of its own, with its own
    /// pool: what every branch cost before layers. Costs a copy of the whole
    /// memory once; its forks then place nothing.
    FullCopy,
}

impl Engine {
    /// Captures sandbox `id` as a new template.
    pub fn snapshot_sandbox(
        &self,
        id: &str,
        how: Branching,
        cancel: &CancelToken,
    ) -> Result<TemplateInfo, EngineError> {
        let (private, size) = {
            let sb = self.sandbox(id)?;
            let (addr, size) = sb.shell().thread.ram_range();
            let private = crate::vmm::pagemap::private_pages(addr, size)
                .map_err(|e| EngineError::ResourceLimit(format!("cannot read page map: {e}")))?;
            (private, size as u64)
        };
        let copy = match how {
            Branching::Layer => 0,
            Branching::FullCopy => memory::template_cost(size),
        };
        let mut charge = self.charge("snapshot", cost::private(private) + copy)?;
        let (hv, reserve) = (Arc::clone(&self.0.hv), Arc::clone(&self.0.reserve));
        let layer = self.converse(id, self.timeout_or_default(None), cancel, move |vm, tpl| {
            let over = Over::Layer {
                parent: &tpl.layer,
                reserve: &reserve,
            };
            Layer::capture(vm, &hv, &tpl.family.cpuid, over).map_err(AgentError::Vmm)
        })?;
        let sb = self.sandbox(id)?;
        let source = format!("sandbox:{id} (from {})", sb.template.id);
        match how {
            Branching::Layer => {
                // The sandbox ran on between the count and the capture.
                let kept = layer.unpaid_bytes();
                if kept > charge.bytes() {
                    charge.absorb(self.charge("snapshot", kept - charge.bytes())?);
                }
                layer.pay(charge);
                let family = Arc::clone(&sb.template.family);
                drop(sb);
                Ok(self.register(self.next_id("tpl"), source, Arc::new(layer), family))
            }
            Branching::FullCopy => {
                let manifest = sb.template.family.manifest.clone();
                self.register_root(source, layer.flatten()?, manifest, cancel, charge)
            }
        }
    }
}
