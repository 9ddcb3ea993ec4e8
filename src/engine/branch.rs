//! Branching a live sandbox: its state and the pages it changed become a new
//! template layered over the one it was forked from, so an agent's state can
//! be forked as cheaply as a fresh one. The sandbox is paused only while its
//! vCPU state and changed pages are copied, on its own thread, and carries on
//! unchanged afterwards.

use std::sync::Arc;

use super::layer::{Layer, Over};
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
        let hv = Arc::clone(&self.0.hv);
        let layer = self.converse(id, self.timeout_or_default(None), cancel, move |vm, tpl| {
            Layer::capture(vm, &hv, &tpl.family.cpuid, Over::Layer(&tpl.layer))
                .map_err(AgentError::Vmm)
        })?;
        let sb = self.sandbox(id)?;
        let source = format!("sandbox:{id} (from {})", sb.template.id);
        match how {
            Branching::Layer => {
                let family = Arc::clone(&sb.template.family);
                drop(sb);
                Ok(self.register(self.next_id("tpl"), source, Arc::new(layer), family))
            }
            Branching::FullCopy => {
                let manifest = sb.template.family.manifest.clone();
                self.register_root(source, layer.flatten()?, manifest, cancel)
            }
        }
    }
}
