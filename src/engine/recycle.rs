//! Returning a killed sandbox's VM to its template's pool.
//!
//! The reset makes every page the template's again: a tenant that dirtied
//! few pages gets them copied back in place (the VM keeps its warm KVM
//! mappings, so the next tenant's first run takes no page faults on them); one
//! that dirtied many gets the template mapped privately again over the same
//! host address (MAP_FIXED), so the slot need not change while the old pages are
//! freed. Then the full machine state is restored, as for a cold fork. No page,
//! register or device state of the previous tenant survives
//! (tests/engine_isolation.rs checks both paths).
//!
//! A sandbox killed before it ran anything goes back as it is: no guest
//! instruction ran and no page was written since its last reset. Resetting
//! it anyway queued one reset per fork on the VM's thread, and a loop of
//! forks and kills piled hundreds of them up in front of the next exec
//! (a 190 ms `exec_echo_us` maximum in the bench).

use std::sync::Arc;

use super::Template;
use super::pool::{Health, Shell};

/// Most dirty pages a reset copies back in place (1 MiB); more are dropped
/// by mapping the template again.
const IN_PLACE_RESET_PAGES: usize = 256;

/// Recycles `shell` into the pool of `tpl`, or tears it down when the pool is
/// full or the VM crashed. `ran` says whether the sandbox ran anything.
pub(crate) fn recycle(tpl: &Arc<Template>, shell: Shell, ran: bool) {
    let recyclable = match &*shell.health.lock().unwrap_or_else(|e| e.into_inner()) {
        Health::Ready => true,
        Health::Broken { recyclable, .. } => *recyclable,
    };
    if !recyclable || !tpl.pool.has_room() {
        drop(shell.thread.stop());
        return;
    }
    if ran && !reset(tpl, &shell) {
        return;
    }
    if let Err(shell) = tpl.pool.offer(shell) {
        drop(shell.thread.stop());
    }
}

/// Queues the reset on the VM's thread; false if the thread is gone.
fn reset(tpl: &Arc<Template>, shell: &Shell) -> bool {
    *shell.health.lock().unwrap_or_else(|e| e.into_inner()) = Health::Ready;
    shell.thread.kicker().clear();
    let health = Arc::clone(&shell.health);
    let t = Arc::clone(tpl);
    shell.thread.submit(move |vm| {
        let reset = vm
            .ram()
            .reset_private(&t.memfd, IN_PLACE_RESET_PAGES)
            .and_then(|_| vm.ram().precopy(&t.hot_pages))
            .and_then(|()| vm.restore(&t.state));
        if let Err(e) = reset {
            tracing::warn!(template = %t.id, error = %e, "recycling a VM failed");
            *health.lock().unwrap_or_else(|e| e.into_inner()) = Health::Broken {
                reason: format!("reset after recycling failed: {e}"),
                recyclable: false,
            };
        }
    })
}
