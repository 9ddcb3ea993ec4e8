//! An idle sandbox gives back the pages its runs left as they were.
//!
//! Every page a run writes becomes a private copy, and many end up holding
//! what the template holds: CPython's reference counts go up and back down,
//! kernel objects are allocated and freed, pages copied ahead for a first
//! request (the hot-page probe) are never changed. Once a sandbox has had no
//! request for a while (`EngineConfig::trim_idle_ms`, 5 ms by default),
//! its VM's thread compares each private page
//! with the template's and drops the copies that match
//! ([`Layer::trim`](super::layer::Layer::trim)), so an idle sandbox holds only
//! what it changed. Comparing and dropping ~450 pages costs about a
//! millisecond of CPU on the development machine, so the trim offers its CPU
//! to other threads as it goes and stops as soon as a request arrives; a
//! sandbox kept busy is never trimmed (its next run would only copy the same
//! pages again). docs/run-code.md has the figures.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::sandbox::Sandbox;
use super::{CancelToken, Engine, EngineError, session};

/// Sets `sb`'s trim to run once its VM has been idle for `idle_ms`
/// (replacing the trim an earlier request set); `None`: no trim.
pub(crate) fn when_idle(sb: &Sandbox, idle_ms: Option<u64>) {
    let Some(ms) = idle_ms else { return };
    let (layer, killed) = (Arc::clone(&sb.template.layer), Arc::clone(&sb.killed));
    let delay = Duration::from_millis(ms);
    sb.shell().thread.when_idle(delay, move |vm, busy| {
        // A killed sandbox's VM is on its way to another tenant.
        if killed.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = layer.trim(vm, busy) {
            tracing::warn!(error = %e, "an idle sandbox's pages could not be trimmed");
        }
    });
}

impl Engine {
    /// Trims sandbox `id` now, as an idle period would, and returns how many
    /// pages it gave back (the bench reports what an idle sandbox holds).
    pub fn trim(&self, id: &str) -> Result<usize, EngineError> {
        let sb = self.sandbox(id)?;
        let layer = Arc::clone(&sb.template.layer);
        let outcome = session::run(
            &sb.shell().thread,
            &self.0.deadlines,
            session::KICK_GRACE,
            &CancelToken::new(),
            move |vm| layer.trim(vm, &|| false),
        );
        let trimmed = outcome.value.ok_or_else(|| EngineError::SandboxUnusable {
            id: id.to_string(),
            reason: "its VM did not answer".into(),
        })?;
        Ok(trimmed?)
    }
}
