//! Returning a killed sandbox's VM to a pool: its branch's, or its family's.
//!
//! The reset makes the VM a fresh fork of the branch or of the family's root
//! again, by the one restore path (`Layer::restore`): a tenant that dirtied few pages gets them
//! copied back in place (the VM keeps its warm KVM mappings, so the next
//! tenant's first run takes no page faults on them); one that dirtied many
//! gets the base mapped privately again over the same host address
//! (MAP_FIXED), so the slot need not change while the old pages are freed.
//! Then the full machine state is restored, as for a cold fork. No page,
//! register or device state of the previous tenant survives
//! (tests/engine_isolation.rs checks both paths).
//!
//! A sandbox killed before it ran anything (and without a network device)
//! goes back as it is: no guest
//! instruction ran and no page was written since its last reset. Resetting
//! it anyway queued one reset per fork on the VM's thread, and a loop of
//! forks and kills piled hundreds of them up in front of the next exec
//! (a 190 ms `exec_echo_us` maximum in the bench).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::budget::cost;
use super::layer::{IN_PLACE_RESET_PAGES, Layer, Ram};
use super::pool::{Health, Shell};
use super::template::{Family, Template};
use crate::vmm::Pace;

/// Recycles `shell`: back into the ready VMs of `branch` (the branch its
/// sandbox was forked from) while that branch wants more, so a branch forked
/// and killed in a loop restores its own state once per cycle, not the root's
/// and then its own; otherwise into the pool of `family`, reset to the root.
/// Torn down when neither has room or the VM crashed. `touched` says whether
/// the VM changed since its reset (the sandbox ran something, or a network
/// device was plugged in): one that did not, going back to the layer it was
/// forked from, needs no reset.
pub(crate) fn recycle(
    family: &Arc<Family>,
    branch: Option<&Template>,
    mut shell: Shell,
    touched: bool,
) {
    let (healthy, recyclable) = match &*shell.health.lock().unwrap_or_else(|e| e.into_inner()) {
        Health::Ready => (true, true),
        Health::Broken { recyclable, .. } => (false, *recyclable),
    };
    // A reset in place keeps up to IN_PLACE_RESET_PAGES private (and a
    // branch's VM its pages too): an idle VM holding them is charged for
    // them from spare budget, or not kept.
    let kept = |extra: u64| cost::private(IN_PLACE_RESET_PAGES as u64 + extra);
    let (pool, layer) = match branch {
        Some(t)
            if recyclable
                && t.is_branch()
                && t.ready.has_room()
                && shell.cover_kept(kept(t.layer.view_pages())) =>
        {
            (&t.ready, &t.layer)
        }
        _ if recyclable && family.pool.has_room() && shell.cover_kept(kept(0)) => {
            (&family.pool, &family.root)
        }
        _ => {
            drop(shell.retire());
            return;
        }
    };
    let unchanged = healthy && !touched && branch.is_some_and(|t| Arc::ptr_eq(&t.layer, layer));
    if !unchanged && !reset(family, layer, &shell) {
        return;
    }
    if let Err(shell) = pool.offer(shell) {
        drop(shell.retire());
    }
}

/// Queues the reset to `layer` on the VM's thread; false if the thread is gone.
fn reset(family: &Arc<Family>, layer: &Arc<Layer>, shell: &Shell) -> bool {
    *shell.health.lock().unwrap_or_else(|e| e.into_inner()) = Health::Ready;
    shell.thread.kicker().clear();
    let health = Arc::clone(&shell.health);
    let (f, l) = (Arc::clone(family), Arc::clone(layer));
    // Until a fork takes the VM from the pool, nobody waits for this reset.
    shell.wanted.store(false, Ordering::Relaxed);
    let wanted = Arc::clone(&shell.wanted);
    shell.thread.submit(move |vm| {
        let pace = Pace::Background { wanted: &wanted };
        // Whoever woke this thread (the reader, handing the VM over after
        // answering a kill) goes on first if it shares the CPU.
        pace.step();
        // No frame may land in memory handed to the next tenant.
        vm.detach_net();
        if let Err(e) = l.restore(vm, &f.hot_pages, Ram::Used, pace) {
            tracing::warn!(template = %f.name, error = %e, "recycling a VM failed");
            *health.lock().unwrap_or_else(|e| e.into_inner()) = Health::Broken {
                reason: format!("reset after recycling failed: {e}"),
                recyclable: false,
            };
        }
    })
}
