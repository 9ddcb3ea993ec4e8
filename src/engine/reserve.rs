//! The page reserve: populated pages kept for the next branch.
//!
//! Copying a page into a new branch costs ~0.7 us on the development host;
//! making the page it is copied into costs as much again (the host is itself
//! a guest, and each first touch of a page exits to its hypervisor). So a
//! branch's pages are kept here when the last layer showing them goes, with
//! the tail a capture did not use, and the next capture copies into pages
//! that are already there: a worker that keeps branching (a search tree, a
//! rollout checkpointing every step) pays the copy and nothing else.
//!
//! What the reserve holds is charged to the memory budget like everything
//! else (a store's charge moves in with its pages; a kept page never takes
//! the last eighth of the budget), is bounded by [`MAX_PAGES`], goes first
//! when a call is short of budget, and is unmapped after [`IDLE`] unused
//! (the refill thread looks), where the worker's RSS shows it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::budget::{Budget, Charge};
use crate::vmm::VmmError;
use crate::vmm::memory::PAGE;
use crate::vmm::pages::{PageStore, Pages};

/// Most pages kept (64 MiB).
const MAX_PAGES: usize = 16 << 10;
/// Unused this long, the reserve is emptied.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// Populated pages waiting for a branch.
pub(crate) struct PageReserve {
    budget: Arc<Budget>,
    held: Mutex<Held>,
}

struct Held {
    /// Disjoint spans sorted by address; adjacent ones are joined.
    spans: Vec<Pages>,
    pages: usize,
    /// Pays for `pages`.
    charge: Charge,
    last_used: Instant,
}

impl PageReserve {
    /// An empty reserve charging `budget`.
    pub fn new(budget: &Arc<Budget>) -> PageReserve {
        PageReserve {
            budget: Arc::clone(budget),
            held: Mutex::new(Held {
                spans: Vec::new(),
                pages: 0,
                charge: budget.nothing(),
                last_used: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A store with room for `pages`: in the smallest kept span that fits
    /// (its charge released: the caller pays for the store), or in new pages.
    pub fn store(&self, pages: usize) -> Result<PageStore, VmmError> {
        let pages = pages.max(1);
        let mut held = self.lock();
        held.last_used = Instant::now();
        let fit = (held.spans.iter().enumerate())
            .filter(|(_, s)| s.len() >= pages)
            .min_by_key(|(_, s)| s.len())
            .map(|(i, _)| i);
        let Some(i) = fit else {
            drop(held);
            return PageStore::with_capacity(pages);
        };
        let mut span = held.spans.remove(i);
        let rest = span.split_off(pages);
        held.insert(rest);
        held.pages -= pages;
        let bytes = (held.pages * PAGE) as u64;
        held.charge.shrink_to(bytes);
        Ok(PageStore::in_pages(span))
    }

    /// Keeps `span` for a later store, paid by what `paid` holds for it or
    /// else by spare budget; unmaps it when the reserve is full or the budget
    /// has no room.
    pub fn keep(&self, span: Pages, paid: Option<&mut Charge>) {
        if span.is_empty() {
            return;
        }
        let bytes = span.bytes() as u64;
        let mut charge = match paid {
            Some(c) => c.split(bytes),
            None => self.budget.nothing(),
        };
        let mut held = self.lock();
        if held.pages + span.len() > MAX_PAGES
            || (charge.bytes() < bytes && !charge.grow_spare(bytes - charge.bytes()))
        {
            return;
        }
        held.pages += span.len();
        held.charge.absorb(charge);
        held.insert(span);
    }

    /// Unmaps every kept page now; returns the bytes of budget released.
    pub fn empty(&self) -> u64 {
        let mut held = self.lock();
        let freed = held.charge.bytes();
        let spans = std::mem::take(&mut held.spans);
        held.pages = 0;
        held.charge.shrink_to(0);
        drop(held);
        drop(spans);
        freed
    }

    /// Empties the reserve if nothing took or kept pages for [`IDLE`].
    pub fn empty_if_idle(&self) {
        let idle = {
            let held = self.lock();
            held.pages > 0 && held.last_used.elapsed() >= IDLE
        };
        if idle {
            self.empty();
        }
    }

    /// Pages kept now.
    #[cfg(test)]
    fn pages(&self) -> usize {
        self.lock().pages
    }
}

impl Held {
    /// Adds `span`, joined to its neighbours where adjacent.
    fn insert(&mut self, mut span: Pages) {
        if span.is_empty() {
            return;
        }
        self.last_used = Instant::now();
        let at = self.spans.partition_point(|s| s.addr() < span.addr());
        if at < self.spans.len() {
            let next = self.spans.remove(at);
            if let Err(next) = span.join(next) {
                self.spans.insert(at, next);
            }
        }
        if at > 0 {
            if let Err(back) = self.spans[at - 1].join(span) {
                self.spans.insert(at, back);
            }
        } else {
            self.spans.insert(0, span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_pages_are_reused_and_joined_and_charged() {
        let budget = Budget::new(1 << 30);
        let reserve = PageReserve::new(&budget);
        let mut big = Pages::populate(10).unwrap();
        let start = big.addr();
        let tail = big.split_off(4);
        let mut paid = budget.charge("test", (4 * PAGE) as u64).unwrap();
        reserve.keep(big, Some(&mut paid));
        assert_eq!(paid.bytes(), 0, "the charge moved in with the pages");
        reserve.keep(tail, None);
        assert_eq!(reserve.pages(), 10);
        assert_eq!(budget.used(), (10 * PAGE) as u64);
        // Joined into one span: a store of 10 fits, at the same address.
        let mut store = reserve.store(10).unwrap();
        assert_eq!(reserve.pages(), 0);
        assert_eq!(budget.used(), 0, "the store's caller pays for it");
        let span = store.take_pages();
        assert_eq!((span.addr(), span.len()), (start, 10));
        let mut again = PageStore::in_pages(span);
        assert_eq!(again.push(&[3; PAGE]), 0);
        reserve.keep(again.take_pages(), None);
        let s = reserve.store(3).unwrap();
        drop(s);
        assert_eq!(reserve.pages(), 7);
        assert_eq!(reserve.empty(), (7 * PAGE) as u64);
        assert_eq!((reserve.pages(), budget.used()), (0, 0));
    }

    #[test]
    fn a_full_budget_unmaps_instead_of_keeping() {
        let budget = Budget::new((8 * PAGE) as u64);
        let reserve = PageReserve::new(&budget);
        reserve.keep(Pages::populate(8).unwrap(), None);
        assert_eq!(reserve.pages(), 0, "would take the budget's last eighth");
        let s = reserve.store(2).unwrap();
        assert_eq!(budget.used(), 0);
        drop(s);
    }

    #[test]
    fn an_idle_reserve_empties() {
        let budget = Budget::new(1 << 30);
        let reserve = PageReserve::new(&budget);
        reserve.keep(Pages::populate(2).unwrap(), None);
        reserve.empty_if_idle();
        assert_eq!(reserve.pages(), 2);
        reserve.lock().last_used -= IDLE;
        reserve.empty_if_idle();
        assert_eq!((reserve.pages(), budget.used()), (0, 0));
    }
}
