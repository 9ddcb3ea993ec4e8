//! Branching a live sandbox: its current memory and machine state become a new
//! template, so an agent's state can be forked as cheaply as a fresh one. The
//! sandbox itself carries on unchanged.

use std::sync::Arc;

use super::template::Snapshot;
use super::{CancelToken, Engine, EngineError, TemplateInfo};
use crate::agent::AgentError;
use crate::vmm::memory::Memfd;

impl Engine {
    /// Captures sandbox `id` as a new template.
    pub fn snapshot_sandbox(&self, id: &str) -> Result<TemplateInfo, EngineError> {
        let hv = Arc::clone(&self.0.hv);
        let snap = self.converse(
            id,
            self.timeout_or_default(None),
            &CancelToken::new(),
            move |vm, tpl| {
                let mut capture = || {
                    // A stopped vCPU may owe the guest the end of its last
                    // doorbell write; finish it so the state is self-consistent.
                    vm.complete_pending_io()?;
                    let state = vm.capture(&hv, &tpl.cpuid)?;
                    let memfd = Memfd::create("zeroboot-branch", tpl.memory_bytes())?;
                    vm.ram().copy_into(&tpl.memfd, &memfd)?;
                    memfd.seal()?;
                    Ok(Snapshot {
                        memfd,
                        state,
                        mailbox: tpl.mailbox,
                    })
                };
                capture().map_err(AgentError::Vmm)
            },
        )?;
        let parent = self.sandbox(id)?.template.id.clone();
        self.register(format!("sandbox:{id} (from {parent})"), snap)
    }
}
