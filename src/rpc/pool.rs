//! The slow-work pool: a few threads for calls that may take long on the
//! calling thread (loading, building, saving or unloading a template, a
//! snapshot, stats of a large sandbox, forks that create VMs), so the reader
//! never waits for them and `sandbox.kill`, `sandbox.list`, `worker.info`
//! and `shutdown` always answer at once. Execs and file transfers are not
//! here: they run on their sandbox's own VM thread.
//!
//! Bounded both ways: [`THREADS`] threads, and at most [`QUEUE`] calls
//! waiting; one more is refused at once with `resource_limit` instead of
//! queueing without end. A call cancelled while it waits is answered
//! without running; at shutdown, waiting calls are answered
//! `shutting_down`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::errors;
use super::reply::Reply;

/// Threads of the pool.
pub const THREADS: usize = 4;
/// Calls that may wait for a thread.
pub const QUEUE: usize = 256;

type Work = Box<dyn FnOnce(Reply) + Send>;

/// The pool; dropping it does not wait for its threads.
pub struct Pool(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    queue: VecDeque<(Reply, Work)>,
    closed: bool,
}

impl Pool {
    /// Starts the pool's threads.
    pub fn start() -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        for i in 0..THREADS {
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("rpc-slow-{i}"))
                .spawn(move || work(&s))?;
        }
        Ok(Pool(shared))
    }

    /// Runs `work` on a pool thread with `reply`, or refuses it at once when
    /// the queue is full or the pool closed.
    pub fn submit(&self, reply: Reply, work: impl FnOnce(Reply) + Send + 'static) {
        let mut state = self.0.lock();
        if state.closed {
            drop(state);
            return reply.err(errors::shutting_down());
        }
        if state.queue.len() >= QUEUE {
            drop(state);
            return reply.err(errors::busy(THREADS, QUEUE));
        }
        state.queue.push_back((reply, Box::new(work)));
        drop(state);
        self.0.ready.notify_one();
    }

    /// Refuses new work and answers every waiting call `shutting_down`;
    /// calls already running go on.
    pub fn close(&self) {
        let waiting: Vec<_> = {
            let mut state = self.0.lock();
            state.closed = true;
            state.queue.drain(..).collect()
        };
        self.0.ready.notify_all();
        for (reply, _) in waiting {
            reply.err(errors::shutting_down());
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn work(shared: &Shared) {
    loop {
        let (reply, work) = {
            let mut state = shared.lock();
            loop {
                if let Some(job) = state.queue.pop_front() {
                    break job;
                }
                if state.closed {
                    return;
                }
                state = shared.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        if reply.cancel_token().is_cancelled() {
            reply.err(errors::cancelled());
        } else {
            work(reply);
        }
    }
}
