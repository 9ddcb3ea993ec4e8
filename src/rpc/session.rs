//! The session: one reader thread that reads, parses and dispatches every
//! message in order, the [writer](super::writer) that whichever thread
//! finishes a call writes through, the [slow-work pool](super::pool), and
//! the calling thread, which waits for the session to end and ends it. The
//! shape follows rust-analyzer's lsp-server, without its writer thread and
//! its queue: a reply is written by the thread that produced it.
//!
//! How a session ends, and its exit code:
//!
//! | cause                                   | in-flight calls                      | code |
//! |-----------------------------------------|--------------------------------------|------|
//! | `exit` after `shutdown`                 | already stopped by `shutdown`        | 0    |
//! | `exit` without `shutdown` (as in LSP)   | sandboxes killed, calls answered     | 1    |
//! | end of input                            | 2 s to finish, then sandboxes killed | 0    |
//! | SIGTERM or SIGINT                       | sandboxes killed, calls answered     | 0    |
//! | output closed by the peer               | sandboxes killed                     | 0    |
//! | unrecoverable framing error             | sandboxes killed, calls answered     | 1    |
//!
//! "Answered" is best effort and bounded: once sandboxes are killed, calls
//! have [`DRAIN_GRACE`] to answer and the output [`WRITER_GRACE`] to drain;
//! then the worker exits whatever is still running or blocked (a slow call
//! stuck in the kernel, a peer that stopped reading). So the worker is gone
//! at most 10 s after SIGTERM, and at most 12 s after end of input.

use std::io::{BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::dispatch::dispatch;
use super::errors;
use super::framing::{FrameError, FrameReader, Framing};
use super::message::{self, Id, Incoming, Message};
use super::methods::Call;
use super::pool::Pool;
use super::process::Signals;
use super::reply::{Batch, Channel, Inflight, Reply};
use super::writer::Writer;
use crate::engine::{Engine, EngineConfig};

/// How long calls may run on after end of input before sandboxes are killed.
const EOF_GRACE: Duration = Duration::from_secs(2);
/// How long calls may take to answer once their sandboxes are killed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long the output may take to drain at the end.
pub const WRITER_GRACE: Duration = Duration::from_secs(5);
/// Input buffer size.
const READ_BUFFER: usize = 64 << 10;

/// What every call can see.
pub struct Session {
    /// The engine, or why KVM could not be opened.
    pub engine: Result<Engine, String>,
    /// The engine's limits (known even without KVM).
    pub config: EngineConfig,
    /// The writer and the calls in flight.
    pub channel: Arc<Channel>,
    /// Threads for slow calls.
    pub pool: Pool,
    /// Set once `shutdown` arrives or the session ends.
    pub shutting_down: AtomicBool,
    /// When the worker started.
    pub started: Instant,
    /// Largest accepted message body.
    pub max_message_bytes: usize,
}

/// Why a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Eof,
    Exit { after_shutdown: bool },
    Signal,
    Fatal,
    WriterGone,
}

impl Stop {
    fn code(self) -> u8 {
        match self {
            Stop::Eof | Stop::Signal | Stop::WriterGone => 0,
            Stop::Exit { after_shutdown } => u8::from(!after_shutdown),
            Stop::Fatal => 1,
        }
    }
}

/// Runs a session over `input` and `output` until it ends; returns the exit
/// code. With `signals`, SIGTERM and SIGINT end it too.
pub fn run(
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
    engine: Result<Engine, String>,
    config: EngineConfig,
    max_message_bytes: usize,
    signals: Option<Signals>,
) -> u8 {
    let (stop_tx, stop_rx) = mpsc::channel();
    let gone = stop_tx.clone();
    let writer = Writer::new(output, move || {
        let _ = gone.send(Stop::WriterGone);
    });
    let pool = match Pool::start() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the slow-work pool");
            return 1;
        }
    };
    let session = Arc::new(Session {
        engine,
        config,
        channel: Arc::new(Channel {
            writer,
            inflight: Inflight::default(),
        }),
        pool,
        shutting_down: AtomicBool::new(false),
        started: Instant::now(),
        max_message_bytes,
    });
    if let Some(signals) = signals {
        let tx = stop_tx.clone();
        let watched = signals.watch(move |name| {
            tracing::info!("{name}: shutting down");
            let _ = tx.send(Stop::Signal);
        });
        if let Err(e) = watched {
            tracing::error!(error = %e, "cannot start the signal thread");
            return 1;
        }
    }
    let reader = Arc::clone(&session);
    let started = std::thread::Builder::new()
        .name("rpc-reader".into())
        .spawn(move || {
            let stop = read_loop(&reader, input);
            let _ = stop_tx.send(stop);
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the reader thread");
        return 1;
    }
    // Every sender lives as long as the session, so this cannot fail; if it
    // did, ending as at end of input is the safe reading.
    let stop = stop_rx.recv().unwrap_or(Stop::Eof);
    tracing::info!(?stop, "session ending");
    finish(&session, stop);
    stop.code()
}

/// Kills every sandbox and lets running calls answer, within bounds.
fn finish(s: &Session, stop: Stop) {
    s.shutting_down.store(true, Ordering::SeqCst);
    let inflight = &s.channel.inflight;
    if stop == Stop::Eof && inflight.len() > 0 {
        inflight.wait_empty(EOF_GRACE);
    }
    s.pool.close();
    if let Ok(engine) = &s.engine {
        let started = Instant::now();
        engine.shutdown();
        tracing::debug!(elapsed = ?started.elapsed(), "engine shut down");
    }
    if !inflight.wait_empty(DRAIN_GRACE) {
        tracing::warn!(
            calls = inflight.len(),
            "calls still running at exit are dropped"
        );
    }
    if stop != Stop::WriterGone && !s.channel.writer.wait_idle(WRITER_GRACE) {
        tracing::warn!("output not drained in time; exiting anyway");
    }
}

/// Reads, parses and dispatches messages until the session must end.
fn read_loop(s: &Arc<Session>, input: Box<dyn Read + Send>) -> Stop {
    let mut frames = FrameReader::new(
        BufReader::with_capacity(READ_BUFFER, input),
        s.max_message_bytes,
    );
    loop {
        // Back-pressure: answers the peer does not read stop the reading.
        s.channel.writer.wait_for_room();
        let read = frames.read();
        let framing = frames.framing().unwrap_or(Framing::Ndjson);
        match read {
            Ok(Some(body)) => {
                if let Some(stop) = on_message(s, framing, &body) {
                    return stop;
                }
            }
            Ok(None) => return Stop::Eof,
            Err(FrameError::TooLarge { length, limit }) => {
                tracing::warn!(length, limit, "message too large; skipped");
                Reply::unregistered(&s.channel, framing, Id::null(), None)
                    .err(errors::message_too_large(length, limit));
            }
            Err(e) => {
                tracing::error!(error = %e, "unreadable input; the stream cannot be resynchronised, exiting");
                if let Some(framing) = frames.framing() {
                    Reply::unregistered(&s.channel, framing, Id::null(), None)
                        .err(errors::parse_error("framing", e.to_string()));
                }
                return Stop::Fatal;
            }
        }
    }
}

fn on_message(s: &Arc<Session>, framing: Framing, body: &[u8]) -> Option<Stop> {
    match message::parse(body) {
        Message::Single(item) => on_item(s, framing, item, None),
        Message::Batch(items) => {
            let answered =
                |i: &Incoming| matches!(i, Incoming::Request { .. } | Incoming::Invalid { .. });
            let batch = Batch::new(framing, items.iter().filter(|i| answered(i)).count());
            let mut next = 0;
            let mut stop = None;
            for item in items {
                let slot = answered(&item).then(|| {
                    next += 1;
                    (&batch, next - 1)
                });
                stop = stop.or(on_item(s, framing, item, slot));
            }
            stop
        }
    }
}

fn on_item(
    s: &Arc<Session>,
    framing: Framing,
    item: Incoming,
    slot: Option<(&Arc<Batch>, usize)>,
) -> Option<Stop> {
    match item {
        Incoming::Request { id, call } => {
            if s.shutting_down.load(Ordering::SeqCst) {
                Reply::unregistered(&s.channel, framing, id, slot).err(errors::shutting_down());
                return None;
            }
            match (Reply::request(&s.channel, framing, id, slot), call) {
                (Err(refused), _) => {
                    let error = errors::duplicate_id(refused.id().raw());
                    tracing::warn!(id = refused.id().raw().get(), "duplicate id refused");
                    refused.err(error);
                }
                (Ok(reply), Ok(call)) => dispatch(s, framing, call, reply),
                (Ok(reply), Err(error)) => reply.err(error),
            }
            None
        }
        Incoming::Notification { method, call } => on_notification(s, framing, &method, call),
        Incoming::Invalid { id, error } => {
            tracing::warn!(error = %error.message(), "invalid message");
            Reply::unregistered(&s.channel, framing, id, slot).err(error);
            None
        }
        Incoming::Response => {
            tracing::warn!("ignoring a response: this worker sends no requests");
            None
        }
    }
}

fn on_notification(
    s: &Arc<Session>,
    framing: Framing,
    method: &str,
    call: Option<Result<Call, jsonrpsee::types::ErrorObjectOwned>>,
) -> Option<Stop> {
    match call {
        Some(Ok(Call::Exit(_))) => {
            let after_shutdown = s.shutting_down.load(Ordering::SeqCst);
            return Some(Stop::Exit { after_shutdown });
        }
        Some(Ok(Call::CancelRequest(p))) => match Id::from_raw(p.id) {
            Some(id) => s.channel.inflight.cancel(&id),
            None => tracing::warn!("$/cancelRequest with an invalid id"),
        },
        Some(Ok(_)) if s.shutting_down.load(Ordering::SeqCst) => {
            tracing::debug!(method, "ignoring notification after shutdown");
        }
        // Runs like a request; its answer has nowhere to go.
        Some(Ok(call)) => dispatch(s, framing, call, Reply::nowhere(&s.channel, framing)),
        Some(Err(e)) => tracing::warn!(method, error = %e.message(), "ignoring notification"),
        None if method.starts_with("$/") => tracing::debug!(method, "ignoring notification"),
        None => tracing::debug!(method, "ignoring unknown notification"),
    }
    None
}
