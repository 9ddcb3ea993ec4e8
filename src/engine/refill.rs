//! The one thread that keeps every family's pool full (a root template and
//! its branches share one): once a pool is down to half, it makes one VM per
//! such family in turn until they are full,
//! from spare budget only (a pool never takes the last eighth of it), and
//! sleeps until a fork takes a pooled VM, a template arrives, or 100 ms pass
//! (budget released elsewhere). One thread for all pools: a worker with
//! hundreds of templates does not hold hundreds of idle threads. It also
//! empties the page reserve once it is idle ([`super::reserve`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::pool::Wanted;
use super::template::Family;
use super::{Inner, memory};

/// Longest sleep between looks at the pools.
const IDLE: Duration = Duration::from_millis(100);

/// Starts the thread; it ends once the engine shuts down or is dropped.
pub(super) fn start(
    inner: Weak<Inner>,
    wanted: Arc<Wanted>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pool-refill".into())
        .spawn(move || {
            while let Some(made) = round(&inner) {
                if !made {
                    wanted.wait(IDLE);
                }
            }
        })
}

/// Offers one VM to each pool with room; `None` once the engine is gone.
fn round(inner: &Weak<Inner>) -> Option<bool> {
    let inner = inner.upgrade()?;
    if inner.shut.load(Ordering::SeqCst) {
        return None;
    }
    inner.reserve.empty_if_idle();
    let mut families: Vec<Arc<Family>> = Vec::new();
    for tpl in inner
        .templates
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        if !families.iter().any(|f| Arc::ptr_eq(f, &tpl.family)) {
            families.push(Arc::clone(&tpl.family));
        }
    }
    let mut made = false;
    for family in families {
        if !family.pool.wants_more() {
            continue;
        }
        let Some(charge) = inner.budget.charge_spare(memory::shell_cost(&family)) else {
            continue;
        };
        match family.spawn_shell(&inner.hv, false, charge) {
            Ok(shell) => {
                if let Err(shell) = family.pool.offer(shell) {
                    drop(shell.retire());
                }
                made = true;
            }
            Err(e) => {
                tracing::warn!(template = %family.name, error = %e, "cannot refill the pool")
            }
        }
    }
    Some(made)
}
