//! Deadlines of running calls, kept by one thread for the whole engine. A call
//! runs on its VM's thread and nobody waits for it; when its deadline passes,
//! this thread marks it timed out and kicks the vCPU, and the call ends on
//! its own thread with a typed timeout.
//!
//! Cheap on the request path: arming is one insertion under a lock, and the
//! thread is woken only when a new deadline is earlier than the one it sleeps
//! towards, which for calls with equal timeouts is only the first of a burst.
//! Disarming removes the entry; the thread then wakes at most once at the
//! time it had planned, finds nothing due and sleeps again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::vmm::Kicker;

/// The engine's deadline keeper; dropping it ends its thread. The thread
/// starts with the engine's first template ([`Deadlines::start`]): an engine
/// starts no thread of its own, so the worker can drop its capabilities
/// (which belong to threads) once KVM is open.
pub(crate) struct Deadlines {
    shared: Arc<Shared>,
    started: Mutex<bool>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Due calls by (deadline, sequence number).
    due: BTreeMap<(Instant, u64), Entry>,
    next: u64,
    /// When the thread will look next (None: not until woken).
    planned: Option<Instant>,
    closed: bool,
}

struct Entry {
    kicker: Kicker,
    fired: Arc<AtomicBool>,
}

/// A deadline in force; dropping it disarms it.
pub(crate) struct Armed {
    shared: Arc<Shared>,
    key: (Instant, u64),
    fired: Arc<AtomicBool>,
}

impl Armed {
    /// True once the deadline passed and the vCPU was kicked for it.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.shared.lock().due.remove(&self.key);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deadlines {
    /// A keeper whose thread has not started.
    pub fn new() -> Deadlines {
        Deadlines {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
            }),
            started: Mutex::new(false),
        }
    }

    /// Starts the keeper thread unless it runs already. Deadlines armed
    /// before are kept from then on.
    pub fn start(&self) -> std::io::Result<()> {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if !*started {
            let keeper = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("deadlines".into())
                .spawn(move || keep(&keeper))?;
            *started = true;
        }
        Ok(())
    }

    /// Kicks `kicker` at `at` unless the returned guard is dropped first.
    pub fn arm(&self, at: Instant, kicker: Kicker) -> Armed {
        let fired = Arc::new(AtomicBool::new(false));
        let mut state = self.shared.lock();
        let key = (at, state.next);
        state.next += 1;
        state.due.insert(
            key,
            Entry {
                kicker,
                fired: Arc::clone(&fired),
            },
        );
        if state.planned.is_none_or(|p| at < p) {
            state.planned = Some(at);
            self.shared.wake.notify_one();
        }
        Armed {
            shared: Arc::clone(&self.shared),
            key,
            fired,
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn keep(shared: &Shared) {
    let mut state = shared.lock();
    while !state.closed {
        let now = Instant::now();
        while let Some(entry) = state.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let entry = entry.remove();
            entry.fired.store(true, Ordering::SeqCst);
            entry.kicker.kick();
        }
        state.planned = state.due.first_key_value().map(|(k, _)| k.0);
        state = match state.planned {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
