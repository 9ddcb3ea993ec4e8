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

#[cfg(test)]
mod tests {
    use std::io::{self, Write};
    use std::sync::mpsc;
    use std::time::Duration;

    use serde_json::Value;
    use serde_json::value::RawValue;

    use super::*;
    use crate::rpc::framing::Framing;
    use crate::rpc::message::Id;
    use crate::rpc::reply::{Channel, Inflight};
    use crate::rpc::writer::Writer;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn replies(sink: &Sink) -> Vec<Value> {
        let out = sink.0.lock().unwrap().clone();
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn reply(channel: &Arc<Channel>, n: usize) -> Reply {
        let id = Id::from_raw(RawValue::from_string(n.to_string()).unwrap()).unwrap();
        Reply::request(channel, Framing::Ndjson, id, None)
            .unwrap_or_else(|_| panic!("id {n} twice"))
    }

    /// The pool takes `THREADS` calls at once and `QUEUE` more; one more is
    /// refused at once. Waiting calls are answered without running when
    /// cancelled, and `shutting_down` when the pool closes.
    #[test]
    fn the_pool_is_bounded_and_answers_what_it_will_not_run() {
        let sink = Sink::default();
        let channel = Arc::new(Channel {
            writer: Writer::new(Box::new(sink.clone()), || {}),
            inflight: Inflight::default(),
        });
        let pool = Pool::start().unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (started_tx, started) = mpsc::channel();
        for n in 0..THREADS {
            let (gate, started_tx) = (Arc::clone(&gate), started_tx.clone());
            pool.submit(reply(&channel, n), move |r| {
                started_tx.send(()).unwrap();
                gate.lock().unwrap().recv().unwrap();
                r.ok(&"ran");
            });
        }
        for _ in 0..THREADS {
            started.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let mut waiting = Vec::new();
        for n in THREADS..THREADS + QUEUE {
            let r = reply(&channel, n);
            waiting.push(r.cancel_token().clone());
            pool.submit(r, |r| r.ok(&"ran"));
        }
        pool.submit(reply(&channel, 9999), |r| r.ok(&"ran"));
        let refused = replies(&sink);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0]["id"], 9999);
        assert_eq!(refused[0]["error"]["code"], errors::RESOURCE_LIMIT);
        waiting[0].cancel();
        for _ in 0..THREADS {
            release.send(()).unwrap();
        }
        // The cancelled call is answered without running, the rest run.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while replies(&sink).len() < 1 + THREADS + QUEUE {
            assert!(std::time::Instant::now() < deadline, "calls never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let all = replies(&sink);
        let cancelled: Vec<_> = all
            .iter()
            .filter(|r| r["error"]["code"] == errors::REQUEST_CANCELLED)
            .collect();
        assert_eq!(cancelled.len(), 1);
        assert_eq!(cancelled[0]["id"], THREADS);
        assert_eq!(
            all.iter().filter(|r| r["result"] == "ran").count(),
            THREADS + QUEUE - 1
        );

        // Closed: waiting calls and new ones are answered shutting_down.
        let (hold, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        for n in 0..THREADS {
            let held = Arc::clone(&held);
            pool.submit(reply(&channel, 20_000 + n), move |r| {
                held.lock().unwrap().recv().unwrap();
                r.ok(&"ran");
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        pool.submit(reply(&channel, 30_000), |r| r.ok(&"ran"));
        pool.close();
        pool.submit(reply(&channel, 30_001), |r| r.ok(&"ran"));
        let closing: Vec<_> = replies(&sink)
            .into_iter()
            .filter(|r| r["id"].as_u64() >= Some(30_000))
            .collect();
        assert_eq!(closing.len(), 2, "{closing:?}");
        for r in closing {
            assert_eq!(r["error"]["data"]["kind"], "shutting_down");
        }
        for _ in 0..THREADS {
            hold.send(()).unwrap();
        }
        assert!(channel.inflight.wait_empty(Duration::from_secs(10)));
    }
}
